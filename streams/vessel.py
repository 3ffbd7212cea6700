"""Vessel risk: a dynamic rating of each vessel (IMO number), from its alerts,
cases (stowaways above all), crew changes, ports of origin and past incidents,
emitted to ``risk.scores`` with the factors that made it."""
from __future__ import annotations

from streams import risk


def vessel_id(conveyance_id: str | None) -> str | None:
    """The vessel part of a conveyance id (IMO number before the voyage)."""
    if not conveyance_id:
        return None
    return conveyance_id.split("/", 1)[0]


class VesselRisk:
    def __init__(self, rs):
        self.rs = rs
        #: vessels whose state changed since the stage last stored them (not part of the state)
        self.dirty: set[str] = set()
        self.w = rs["risk"]["vessel"]
        self.high_risk = set(self.w.get("high_risk_origins", []))
        self.horizon_ms = rs.days_ms("risk", "horizon_days")

    @staticmethod
    def new_state() -> dict:
        return {}

    def wants(self, ev: dict) -> bool:
        """Whether a clearance matters to a vessel's rating (the subject stage forwards only those)."""
        return ev.get("conveyance_type") == "VESSEL" and (
            ev.get("entry_basis") == "CREW" or ev.get("lane") == "CREW" or ev.get("origin_country") in self.high_risk)

    def _vessel(self, state, vid) -> dict:
        self.dirty.add(vid)
        return state.setdefault(vid, {"factors": [], "voyages": [], "incident": False})

    def _add(self, state, vid, name, evidence, at, region, weight=None) -> list:
        v = self._vessel(state, vid)
        if not risk.add_factor(v["factors"], name, float(self.w.get(name, 0) if weight is None else weight),
                               evidence, at):
            return []
        risk.prune(v["factors"], at, self.horizon_ms)
        return [("risk", risk.score_record(self.rs, "VESSEL", vid, v["factors"], region, at))]

    def _voyage(self, state, vid, conveyance_id, ev) -> list:
        v = self._vessel(state, vid)
        if conveyance_id in v["voyages"]:
            return []
        v["voyages"] = (v["voyages"] + [conveyance_id])[-20:]
        if v["incident"] and len(v["voyages"]) > 1:
            return self._add(state, vid, "past_incident", f"voyage:{conveyance_id}", ev["occurred_at"], ev["region"])
        return []

    def on_alert(self, state: dict, ev: dict) -> list:
        vid = vessel_id(ev.get("conveyance_id")) if ev.get("conveyance_type") == "VESSEL" else None
        if vid is None:
            return []
        outs = self._voyage(state, vid, ev["conveyance_id"], ev)
        name = ev["kind"].lower() if ev["kind"].lower() in self.w else risk.severity_factor(ev.get("severity"))
        outs += self._add(state, vid, name, ev["event_id"], ev["occurred_at"], ev["region"])
        self._vessel(state, vid)["incident"] = True
        return outs

    def on_case(self, state: dict, ev: dict) -> list:
        vid = vessel_id(ev.get("conveyance_id")) if ev.get("conveyance_type") == "VESSEL" else None
        if vid is None or ev.get("stage") != "OPENED":
            return []
        outs = self._voyage(state, vid, ev["conveyance_id"], ev)
        name = "stowaway_case" if ev.get("case_type") == "STOWAWAY" else "case"
        outs += self._add(state, vid, name, ev["event_id"], ev["occurred_at"], ev["region"])
        self._vessel(state, vid)["incident"] = True
        return outs

    def on_clearance(self, state: dict, ev: dict) -> list:
        vid = vessel_id(ev.get("conveyance_id"))
        if vid is None or not self.wants(ev):
            return []
        outs = self._voyage(state, vid, ev["conveyance_id"], ev)
        if ev.get("origin_country") in self.high_risk:
            outs += self._add(state, vid, "high_risk_origin", f"voyage:{ev['conveyance_id']}", ev["occurred_at"],
                              ev["region"])
        if ev.get("entry_basis") == "CREW" or ev.get("lane") == "CREW":
            v = self._vessel(state, vid)
            crew = sum(f["weight"] for f in v["factors"] if f["name"] == "crew_change")
            room = float(self.w.get("crew_change_max", 0)) - crew
            if room > 0:
                outs += self._add(state, vid, "crew_change", ev["event_id"], ev["occurred_at"], ev["region"],
                                  weight=min(room, float(self.w.get("crew_change", 0))))
        return outs

    def prune(self, state: dict, now: int) -> None:
        for vid in list(state):
            risk.prune(state[vid]["factors"], now, self.horizon_ms)
            if not state[vid]["factors"]:
                del state[vid]
                self.dirty.add(vid)
