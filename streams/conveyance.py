"""Conveyance following: when a flight scheduled for one region's port lands at
another region's port (its clearances carry ``scheduled_port`` != ``port_code``),
the alerts pending for the conveyance or its passengers go to the station where
it actually landed (CONVEYANCE_DIVERTED, one per pending alert).

An alert is pending from its time until it is resolved or dismissed (by event time, whichever record is read
first): a diversion after its resolution sends nothing on, and a resolution read after the diversion it precedes
withdraws what was sent on."""
from __future__ import annotations

from schemas.reference import ports as reference_ports
from streams import derived


class ConveyanceFollowing:
    def __init__(self, rs):
        self.rs = rs
        c = rs["conveyance"]
        self.kinds = set(c["pending_kinds"])
        self.pending_ms = rs.hours_ms("conveyance", "pending_hours")
        self.keep_ms = rs.hours_ms("conveyance", "keep_diverted_hours")
        self.delay_ms = rs.allowed_delay_ms()
        self.ports = reference_ports()

    @staticmethod
    def new_state() -> dict:
        # resolved: the resolutions and dismissals read ({kind, subject, conveyance, region, at}); sent: the
        # alerts sent on, by the key of ``done``, to withdraw one a resolution read late disproves
        return {"pending": [], "diverted": {}, "passengers": {}, "done": {}, "resolved": [], "sent": {}}

    @staticmethod
    def _ends(r: dict, p: dict) -> bool:
        """Resolution ``r`` ends pending alert ``p``: the same kind and region, the same subject (the same
        conveyance for an alert on a conveyance alone), at or after it."""
        same = p["subject"] == r["subject"] if r["subject"] else p["conveyance"] == r["conveyance"]
        return same and p["kind"] == r["kind"] and p["region"] == r["region"] and r["at"] >= p["at"]

    def _resolved(self, state: dict, p: dict, at: int) -> bool:
        """``p`` was resolved at or before ``at``."""
        return any(self._ends(r, p) and r["at"] <= at for r in state.get("resolved", ()))

    def _resolve(self, state: dict, ev: dict) -> list:
        r = {"id": ev["event_id"], "kind": ev["kind"], "subject": ev.get("subject"),
             "conveyance": ev.get("conveyance_id"), "region": ev["region"], "at": ev["occurred_at"]}
        if not r["subject"] and not r["conveyance"]:
            return []
        resolved = state.setdefault("resolved", [])
        if any(x["id"] == r["id"] for x in resolved):
            return []
        resolved.append(r)
        outs: list = []
        sent = state.setdefault("sent", {})
        for p in state["pending"]:
            key = f"cd|{p['id']}"
            a = sent.get(key)
            if a is not None and self._ends(r, p) and r["at"] <= a["occurred_at"]:
                outs.append(("derived_alert", derived.withdrawn(
                    a, f"{p['kind']} {p['id']} was {ev['status'].lower()} before the diversion")))
                del sent[key]
                state["done"].pop(key, None)
        return outs

    def on_alert(self, state: dict, ev: dict) -> list:
        if ev["kind"] not in self.kinds:
            return []
        if ev.get("status") in ("RESOLVED", "DISMISSED"):
            return self._resolve(state, ev)
        if not ev.get("subject") and not ev.get("conveyance_id"):
            return []
        p = {"id": ev["event_id"], "subject": ev.get("subject"), "conveyance": ev.get("conveyance_id"),
             "region": ev["region"], "kind": ev["kind"], "severity": ev["severity"], "at": ev["occurred_at"],
             "pub": ev.get("published_at")}
        if any(x["id"] == p["id"] for x in state["pending"]):
            return []
        state["pending"].append(p)
        outs: list = []
        # a diversion read before the alert
        if p["conveyance"] in state["diverted"]:
            outs += self._notify(state, p, state["diverted"][p["conveyance"]])
        elif p["subject"] in state["passengers"]:
            d = state["diverted"].get(state["passengers"][p["subject"]]["conveyance"])
            if d is not None:
                outs += self._notify(state, p, d, state["passengers"][p["subject"]])
        return outs

    def on_clearance(self, state: dict, ev: dict) -> list:
        sched, landed = ev.get("scheduled_port"), ev["port_code"]
        if not sched or sched == landed:
            return []
        sp, lp = self.ports.get(sched), self.ports.get(landed)
        if sp is None or lp is None or sp.region == lp.region:
            return []
        conv = ev["conveyance_id"]
        c = {"id": ev["event_id"], "at": ev["occurred_at"], "subject": ev["subject"], "pub": ev.get("published_at"),
             "conveyance": conv}
        d = state["diverted"].get(conv)
        if d is None:
            d = {"conveyance": conv, "port": landed, "station": ev["station_id"] or lp.station_id,
                 "region": lp.region, "scheduled": sched, "scheduled_region": sp.region, "first": c}
            state["diverted"][conv] = d
        elif c["at"] < d["first"]["at"]:
            d["first"] = c           # the flight's earliest clearance, whichever is read first
        state["passengers"][ev["subject"]] = c
        outs: list = []
        for p in state["pending"]:
            if p["conveyance"] == conv or p["subject"] == ev["subject"]:
                outs += self._notify(state, p, d, c if p["subject"] == ev["subject"] else None)
        return outs

    def _notify(self, state: dict, p: dict, d: dict, clearance: dict | None = None) -> list:
        if abs(d["first"]["at"] - p["at"]) > self.pending_ms:
            return []
        key = f"cd|{p['id']}"
        if key in state["done"]:
            return []
        c = clearance or d["first"]
        at = max(p["at"], c["at"])
        if self._resolved(state, p, at):
            return []
        state["done"][key] = c["at"]
        a = derived.make(
            self.rs, "conveyance", "CONVEYANCE_DIVERTED", p["severity"], [d["region"]],
            [d["scheduled_region"], p["region"]], [p["id"], c["id"]], at,
            f"{d['conveyance']} scheduled for {d['scheduled']} landed at {d['port']}: pending {p['kind']} "
            f"from {p['region']} goes to {d['station']}",
            # the id names the pending alert and where its conveyance landed, not the clearance that showed
            # it (which of the flight's clearances is read first depends on arrival order)
            key=f"{d['conveyance']}|{d['port']}", id_evidence=[p["id"]],
            subject=p["subject"], conveyance_id=d["conveyance"], port_code=d["port"], station_id=d["station"],
            details={"scheduled_port": d["scheduled"], "pending_alert": p["id"], "pending_kind": p["kind"],
                     "pending_region": p["region"]},
            published_at=c["pub"] if p["at"] <= c["at"] else p["pub"])
        state.setdefault("sent", {})[key] = a
        return [("derived_alert", a)]

    def prune(self, state: dict, now: int) -> None:
        # each kept for the allowed delay past its own time: a clearance or an alert read that late still meets
        # the alerts and diversions it would have met in order
        state["pending"] = [p for p in state["pending"] if now - p["at"] <= self.pending_ms + self.delay_ms]
        state["diverted"] = {k: d for k, d in state["diverted"].items()
                             if now - d["first"]["at"] <= self.keep_ms + self.delay_ms}
        state["passengers"] = {k: c for k, c in state["passengers"].items()
                               if now - c["at"] <= self.keep_ms + self.delay_ms}
        state["done"] = {k: t for k, t in state["done"].items()
                         if now - t <= self.keep_ms + self.pending_ms + self.delay_ms}
        state["sent"] = {k: a for k, a in state.get("sent", {}).items() if k in state["done"]}
        state["resolved"] = [r for r in state.get("resolved", ()) if now - r["at"] <= self.pending_ms + self.delay_ms]
