"""PORT_SHOPPING: a refusal (REFUSED clearance or REFUSAL alert) in region A, then an entry attempt in region B
within ``window_hours``.

One alert per refusal episode and region of entry. Judged on the refusals and entries known, in event time: an
entry in B is matched to the first refusal in A within the window before it; the first matched entry raises
the alert and its refusal starts the episode; a later entry whose refusal is within the window of the
episode's is the same episode. The alert's id is made of the region refused in and the entry, not of which
refusal came first, so a station's REFUSED clearance and its officer's REFUSAL alert a minute later (two topics,
read in either order) give one alert. Judged again on every event: an earlier entry read after a later one takes
the alert over, a refusal read late that joins two episodes into one withdraws the second one's alert.
"""
from __future__ import annotations

from schemas.reference import REGIONS
from streams import derived
from streams.events import iso
from streams.subject.state import Alerts, in_order


class PortShopping:
    def __init__(self, rs, alerts: Alerts):
        self.rs = rs
        self.alerts = alerts
        self.shop_ms = rs.hours_ms("port_shopping", "window_hours")

    def on_refusal(self, state: dict, ev: dict, subject: str) -> list:
        r = {"id": ev["event_id"], "region": ev["region"], "at": ev["occurred_at"]}
        if any(x["id"] == r["id"] for x in state["refusals"]):
            return []
        state["refusals"].append(r)
        state["refusals"].sort(key=lambda x: (x["at"], x["id"]))
        return self.alerts.risk(state, subject, "refusal", r["id"], r["at"], r["region"])

    def refusal_before(self, refusals: list, c: dict) -> dict | None:
        """The first refusal at most the window before entry ``c``."""
        return next((r for r in refusals if 0 <= c["at"] - r["at"] <= self.shop_ms), None)

    def judge(self, state: dict, subject: str, now: int) -> list:
        if not state["refusals"]:
            return []
        outs: list = []
        refusals = in_order(state["refusals"])
        entries = [c for c in in_order(state["crossings"]) if c["direction"] == "ENTRY"]
        known = {c["id"] for c in entries}
        for a in sorted({r["region"] for r in refusals}):
            refused = [r for r in refusals if r["region"] == a]
            for b in REGIONS:
                if b == a:
                    continue
                key = f"ps|{a}|{b}"
                live = Alerts.live(state, key)
                # the episode alerted on last that is final now (its entry forgotten) goes on as far as it reaches
                prev = state["done"].get(key)
                for e in live:
                    if e["crossing"] not in known:
                        prev = e["done"] if prev is None else max(prev, e["done"])
                episodes, joined = [], {}     # joined: entry id -> (its refusal, the episode's first refusal's time)
                for c in entries:
                    if c["region"] != b:
                        continue
                    r = self.refusal_before(refused, c)
                    if r is None:
                        continue
                    if prev is not None and abs(r["at"] - prev) <= self.shop_ms:
                        joined[c["id"]] = (r, prev)
                        continue
                    episodes.append((c, r))
                    prev = r["at"]
                want = {derived.alert_id("port_shopping", [f"refused-in|{a}", c["id"]], b) for c, _ in episodes}
                for e in live:
                    if e["crossing"] in known and e["alert"]["alert_id"] not in want:
                        outs += self.alerts.withdraw(state, e, self._why_not(e, joined, episodes), subject, now)
                for c, r in episodes:
                    if not any(e["crossing"] == c["id"] for e in live):
                        outs += self.alerts.raise_(state, key, self._alert(c, r, subject), subject,
                                                   crossing=c["id"], done=r["at"])
        return outs

    def _why_not(self, entry: dict, joined: dict, episodes: list) -> str:
        """Why the alert of ``entry`` is not the episode's: its refusal is within the window of an episode's first
        refusal (alerted on with an earlier entry)."""
        if entry["crossing"] not in joined:
            return "one alert per refusal episode and region of entry: this entry's episode was alerted on before"
        r, first = joined[entry["crossing"]]
        alerted = next((c for c, x in reversed(episodes) if x["at"] == first), None)
        by = f", alerted on with the entry at {alerted['port']} at {iso(alerted['at'])} (event {alerted['id']})" \
            if alerted is not None else ", alerted on before"
        return (f"one alert per refusal episode and region of entry: the refusal before this entry, at {iso(r['at'])} "
                f"(event {r['id']}) in {r['region']}, is of the episode that began with the refusal at "
                f"{iso(first)}{by}")

    def _alert(self, c: dict, ref: dict, subject: str) -> dict:
        hours = (c["at"] - ref["at"]) / 3_600_000
        return derived.make(
            self.rs, "port_shopping", "PORT_SHOPPING", "HIGH", [c["region"]], [ref["region"]],
            [ref["id"], c["id"]], c["at"],
            f"refused in {ref['region']}, entry attempt at {c['port']} in {c['region']} {hours:.1f} h later",
            subject=subject, port_code=c["port"], station_id=c["station"], conveyance_id=c["conveyance"],
            details={"refused_in": ref["region"], "refusal_event": ref["id"], "hours_after_refusal": f"{hours:.2f}"},
            key=c["region"], published_at=c["pub"], id_evidence=[f"refused-in|{ref['region']}", c["id"]])
