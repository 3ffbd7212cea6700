"""144-hour visa-free transit: TRANSIT_OVERSTAY, TRANSIT_EXIT_TO_ORIGIN, TRANSIT_OUT_OF_AREA.

A TRANSIT_144H entry opens a stay with a deadline (entry + ``hours``). The stay's exit is its first EXIT crossing
after the entry (by event time); its first crossing outside the permitted regions, at or before the exit, is out
of the area. The overstay is raised when the exit is after the deadline, or when the watermark passes the
deadline with no exit known (an exit exactly at the deadline is in time). Judged again on every event of the
subject: an exit before the deadline read after the watermark passed it (a late upload) withdraws the overstay,
an earlier exit or crossing outside read late takes over from a later one, an exit read late that ends the stay
before a crossing outside withdraws that crossing's alert.
"""
from __future__ import annotations

from streams import derived
from streams.events import iso
from streams.subject.state import Alerts


def next_deadline(state: dict) -> int | None:
    pending = [s["deadline"] for s in state["stays"] if s.get("exit") is None and not s.get("overstay")]
    return min(pending) if pending else None


def _earlier(a: dict, b: dict | None) -> bool:
    return b is None or (a["at"], a["id"]) < (b["at"], b["id"])


class Transit:
    def __init__(self, rs, alerts: Alerts):
        self.rs = rs
        self.alerts = alerts
        tr = rs["transit"]
        self.transit_ms = rs.hours_ms("transit", "hours")
        self.permitted = list(tr["permitted_regions"])
        self.ports = set(tr["ports"])
        self.nationalities = set(tr["nationalities"])
        self.keep_ms = rs.days_ms("transit", "keep_days")

    def on_clearance(self, state: dict, ev: dict, c: dict) -> None:
        if ev.get("entry_basis") == "TRANSIT_144H" and ev["direction"] == "ENTRY" \
                and not any(s["entry"] == c["id"] for s in state["stays"]):
            stay = {
                "entry": c["id"], "region": c["region"], "port": c["port"], "at": c["at"],
                "deadline": c["at"] + self.transit_ms, "origin": ev.get("origin_country"),
                "nationality": ev.get("nationality"), "exit": None, "overstay": False, "away": None,
                "eligible": ev.get("nationality") in self.nationalities and c["port"] in self.ports,
            }
            state["stays"].append(stay)
            state["stays"].sort(key=lambda s: (s["at"], s["entry"]))
            # the re-key step merges the regions' streams in its own order: the stay's later crossings may
            # have come first (an exit read from one region's topic before the entry from another's)
            for later in state["crossings"]:
                self._see(stay, later)
        for stay in state["stays"]:
            self._see(stay, c)

    def _see(self, stay: dict, c: dict) -> None:
        """Crossing ``c`` against one stay: its first crossing outside the area, its first exit."""
        if c["at"] <= stay["at"] or c["id"] == stay["entry"]:
            return
        if c["region"] not in self.permitted and _earlier(c, stay.get("away")):
            stay["away"] = c
        if c["direction"] == "EXIT" and _earlier(c, stay.get("exit")):
            stay["exit"] = c

    def on_watermark(self, state: dict, watermark: int) -> None:
        for stay in state["stays"]:
            # an exit exactly at the deadline is in time: overstay only once the watermark is past it
            if stay.get("exit") is None and not stay.get("overstay") and watermark > stay["deadline"]:
                stay["overstay"] = True

    def judge(self, state: dict, subject: str, now: int) -> list:
        outs: list = []
        for stay in state["stays"]:
            ex, away = stay.get("exit"), stay.get("away")
            out = away if away is not None and (ex is None or away["at"] <= ex["at"]) else None
            outs += self._one(state, subject, now, f"oa|{stay['entry']}", out,
                              lambda c: self._out_of_area(stay, c, subject),
                              lambda e: self._why_not_out(stay, e))
            late = ex["at"] > stay["deadline"] if ex is not None else bool(stay.get("overstay"))
            outs += self._one(state, subject, now, f"ov|{stay['entry']}", stay if late else None,
                              lambda _: self._overstay(stay, subject),
                              lambda e: f"the stay's exit at {ex.get('port')} ({ex['region']}) at {iso(ex['at'])} "
                                        f"(event {ex['id']}) was in time: its deadline was {iso(stay['deadline'])}")
            home = ex if ex is not None and ex.get("dest") and stay.get("origin") \
                and ex["dest"] == stay["origin"] else None
            outs += self._one(state, subject, now, f"eo|{stay['entry']}", home,
                              lambda c: self._exit_to_origin(stay, c, subject),
                              lambda e: f"the stay's exit is the earlier crossing at {ex.get('port')} ({ex['region']}) "
                                        f"at {iso(ex['at'])} (event {ex['id']}), toward {ex.get('dest')}")
        return outs

    def _one(self, state, subject, now, key, want, make, why) -> list:
        """The alert of ``key`` made of ``want`` (a crossing, the stay, or None for no alert)."""
        if Alerts.decided(state, key):
            return []
        outs: list = []
        ident = None if want is None else want.get("id", want.get("entry"))
        live = Alerts.live(state, key)
        for e in live:
            if e["crossing"] != ident:
                outs += self.alerts.withdraw(state, e, why(e), subject, now)
        if want is not None and not any(e["crossing"] == ident for e in live):
            outs += self.alerts.raise_(state, key, make(want), subject, crossing=ident)
        return outs

    def _why_not_out(self, stay: dict, entry: dict) -> str:
        ex, away = stay.get("exit"), stay.get("away")
        if ex is not None and ex["at"] < entry["alert"]["occurred_at"]:
            return (f"the stay ended with the exit at {ex.get('port')} ({ex['region']}) at {iso(ex['at'])} "
                    f"(event {ex['id']}), before this crossing")
        return (f"one per stay: the subject crossed outside {'/'.join(self.permitted)} earlier, at {away['port']} "
                f"({away['region']}) at {iso(away['at'])} (event {away['id']})")

    @staticmethod
    def _details(stay) -> dict:
        return {"entry_event": stay["entry"], "entry_region": stay["region"], "entry_port": stay["port"],
                "nationality": stay.get("nationality"), "origin_country": stay.get("origin"),
                "eligible": "yes" if stay.get("eligible") else "no"}

    def _overstay(self, stay, subject) -> dict:
        # evidence is the entry alone: the same alert whether the deadline passed on the
        # watermark or a late exit showed it
        return derived.make(
            self.rs, "transit", "TRANSIT_OVERSTAY", "HIGH", [stay["region"]],
            [r for r in self.permitted if r != stay["region"]], [stay["entry"]], stay["deadline"],
            f"144-hour transit stay from {stay['port']} ({stay['region']}) ran past its deadline",
            subject=subject, port_code=stay["port"], details=self._details(stay), key="overstay")

    def _exit_to_origin(self, stay, c, subject) -> dict:
        return derived.make(
            self.rs, "transit", "TRANSIT_EXIT_TO_ORIGIN", "MEDIUM", [c["region"]], [stay["region"]],
            [stay["entry"], c["id"]], c["at"],
            f"144-hour transit traveller left from {c['port']} toward {c['dest']}, the country they came from",
            subject=subject, port_code=c["port"], station_id=c["station"], conveyance_id=c["conveyance"],
            details={**self._details(stay), "destination_country": c["dest"]}, key="exit_to_origin",
            published_at=c["pub"])

    def _out_of_area(self, stay, c, subject) -> dict:
        return derived.make(
            self.rs, "transit", "TRANSIT_OUT_OF_AREA", "HIGH", [c["region"]], [stay["region"]],
            [stay["entry"], c["id"]], c["at"],
            f"144-hour transit traveller (entered {stay['port']}) crossed at {c['port']} in {c['region']}, outside "
            f"{'/'.join(self.permitted)}",
            subject=subject, port_code=c["port"], station_id=c["station"], conveyance_id=c["conveyance"],
            details=self._details(stay), key="out_of_area", published_at=c["pub"])

    def prune(self, state: dict, now: int, keep_ms: int) -> None:
        """A stay is kept ``keep_ms`` after its exit (a crossing during it may still be read), and ``keep_days``
        after its deadline without one."""
        state["stays"] = [s for s in state["stays"]
                          if not (s.get("exit") is not None and now - s["exit"]["at"] > keep_ms)
                          and now - s["deadline"] <= self.keep_ms]
