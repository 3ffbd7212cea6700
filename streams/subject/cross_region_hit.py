"""CROSS_REGION_HIT: a subject with an active flag (WATCHLIST_HIT, FORGED_DOCUMENT, IMPOSTOR alert) from region A
crosses in region B.

One hit per flag and region: the first crossing in B (by event time) within ``active_days`` of the flag while the
flag was active. Judged again on every event of the subject, so that a record read late changes the answer: a
RESOLVED or DISMISSED record showing the flag ended at or before the crossing withdraws the hit, an earlier
crossing in B read after a later one takes the hit over (the later one's withdrawn).
"""
from __future__ import annotations

from schemas.reference import REGIONS
from streams import derived
from streams.events import iso
from streams.subject.state import Alerts, in_order


class CrossRegionHit:
    def __init__(self, rs, alerts: Alerts):
        self.rs = rs
        self.alerts = alerts
        self.flag_kinds = set(rs["cross_region_hit"]["flag_kinds"])
        self.active_ms = rs.days_ms("cross_region_hit", "active_days")

    def on_alert(self, state: dict, ev: dict) -> None:
        kind, status = ev["kind"], ev.get("status", "RAISED")
        if status in ("RESOLVED", "DISMISSED"):
            # kept, not applied to the flags known now: a flag read after its resolution (another order of
            # arrival) must be as resolved as one read before it
            r = {"id": ev["event_id"], "kind": kind, "region": ev["region"], "at": ev["occurred_at"], "status": status}
            ends = state.setdefault("resolutions", [])
            if not any(x["id"] == r["id"] for x in ends):
                ends.append(r)
                ends.sort(key=lambda x: (x["at"], x["id"]))
        elif kind in self.flag_kinds:
            flag = {"id": ev["event_id"], "region": ev["region"], "kind": kind, "at": ev["occurred_at"],
                    "severity": ev["severity"], "station": ev["station_id"]}
            if not any(f["id"] == flag["id"] for f in state["flags"]):
                state["flags"].append(flag)

    @staticmethod
    def ended_by(state: dict, flag: dict, t: int) -> dict | None:
        """The first resolution (or dismissal) of ``flag`` between its raising and event time ``t``."""
        return next((r for r in state.get("resolutions") or ()
                     if r["kind"] == flag["kind"] and r["region"] == flag["region"] and flag["at"] <= r["at"] <= t),
                    None)

    @classmethod
    def active_at(cls, state: dict, flag: dict, t: int) -> bool:
        """A flag is active at event time ``t`` when it was raised at or before ``t`` and not resolved (or
        dismissed) between its raising and ``t``, whichever of the records was read first."""
        return flag["at"] <= t and cls.ended_by(state, flag, t) is None

    def hits(self, state: dict, flag: dict, c: dict) -> bool:
        return c["region"] != flag["region"] and 0 <= c["at"] - flag["at"] <= self.active_ms \
            and self.active_at(state, flag, c["at"])

    def judge(self, state: dict, subject: str, now: int) -> list:
        if not state["flags"]:
            return []
        outs: list = []
        crossings = in_order(state["crossings"])
        known = {c["id"] for c in crossings}
        for flag in state["flags"]:
            for region in REGIONS:
                if region == flag["region"]:
                    continue
                key = f"xr|{flag['id']}|{region}"
                if Alerts.decided(state, key):
                    continue
                live = Alerts.live(state, key)
                if any(e["crossing"] not in known for e in live):
                    continue        # its crossing is forgotten (past the allowed delay): final
                first = next((c for c in crossings if c["region"] == region and self.hits(state, flag, c)), None)
                for e in live:
                    if first is not None and e["crossing"] == first["id"]:
                        continue
                    outs += self.alerts.withdraw(state, e, self._why_not(state, flag, e, first), subject, now)
                if first is not None and not any(e["crossing"] == first["id"] for e in live):
                    outs += self.alerts.raise_(state, key, self._alert(flag, first, subject), subject,
                                               crossing=first["id"])
        return outs

    def _why_not(self, state: dict, flag: dict, entry: dict, first: dict | None) -> str:
        c_at = entry["alert"]["occurred_at"]
        r = self.ended_by(state, flag, c_at)
        if r is not None:
            return (f"{flag['kind']} {flag['id']} from {flag['region']} was {r.get('status', 'RESOLVED')} at "
                    f"{iso(r['at'])} (event {r['id']}), at or before the crossing at {iso(c_at)}")
        return (f"one hit per flag and region: the subject crossed in {first['region']} earlier, at {first['port']} "
                f"at {iso(first['at'])} (event {first['id']})")

    def _alert(self, flag: dict, c: dict, subject: str) -> dict:
        return derived.make(
            self.rs, "cross_region_hit", "CROSS_REGION_HIT", flag["severity"],
            [c["region"]], [flag["region"]], [flag["id"], c["id"]], c["at"],
            f"{flag['kind']} from {flag['region']} ({flag['station']}): subject crossed at {c['port']} in {c['region']}",
            subject=subject, port_code=c["port"], station_id=c["station"], conveyance_id=c["conveyance"],
            details={"flag_kind": flag["kind"], "flag_region": flag["region"], "flag_event": flag["id"],
                     "direction": c["direction"]},
            key=c["region"], published_at=c["pub"])
