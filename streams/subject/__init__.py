"""Detectors whose state is one subject's (traveller's): cross-region hit (``cross_region_hit.py``), port
shopping (``port_shopping.py``), 144-hour transit tracking (``transit.py``), and the traveller's risk score.

Pure: ``on_event(state, event, subject)`` and ``on_watermark(state, subject, watermark)``
take the subject's state (a plain, JSON-serialisable dict, changed in place, ``state.py``) and
return outputs ``[(kind, record)]`` with kind ``derived_alert`` or ``risk``.
Times are epoch millis of event time; nothing here reads a clock.

Every rule is judged again on each event of the subject over what the state knows, so that the answer is
the same whatever order the events are read in (within ``[event_time] allowed_delay_hours``): an alert that
events read later disprove is withdrawn (``derived.withdrawn``: same id, status WITHDRAWN, the reason), the
one they imply raised. Reading an event again changes nothing and sends nothing.
"""
from __future__ import annotations

from streams import risk
from streams.subject.cross_region_hit import CrossRegionHit
from streams.subject.port_shopping import PortShopping
from streams.subject.state import MAX_CROSSINGS, Alerts, add_crossing, crossing, is_durable, new_state
from streams.subject.transit import Transit, next_deadline

__all__ = ["MAX_CROSSINGS", "SubjectRules", "is_durable", "new_state", "next_deadline"]


class SubjectRules:
    def __init__(self, rs):
        self.rs = rs
        self.active_ms = rs.days_ms("cross_region_hit", "active_days")
        self.shop_ms = rs.hours_ms("port_shopping", "window_hours")
        self.transit_ms = rs.hours_ms("transit", "hours")
        self.transit_keep_ms = rs.days_ms("transit", "keep_days")
        self.lateness_ms = rs.minutes_ms("event_time", "lateness_minutes")
        # what an event read this late can still change: the alerts raised, the crossings and stays it is
        # judged with, the refusals those crossings are matched to
        self.delay_ms = int(float(rs["event_time"].get("allowed_delay_hours", 48)) * 3_600_000)
        self.keep_ms = self.delay_ms + self.lateness_ms
        self.crossing_keep_ms = max(self.shop_ms, self.delay_ms) + self.lateness_ms
        self.weights = rs["risk"]["traveller"]
        self.alerts = Alerts(rs, self.keep_ms)
        self.cross_region = CrossRegionHit(rs, self.alerts)
        self.port_shopping = PortShopping(rs, self.alerts)
        self.transit = Transit(rs, self.alerts)

    active_at = staticmethod(CrossRegionHit.active_at)

    # ------------------------------------------------------------------ entry points
    def on_event(self, state: dict, ev: dict, subject: str) -> list:
        kind, at = ev["_kind"], ev["occurred_at"]
        outs: list = []
        if kind == "clearance":
            c = crossing(ev)
            add_crossing(state, c)
            if ev.get("decision") == "REFUSED":
                outs += self.port_shopping.on_refusal(state, ev, subject)
            self.transit.on_clearance(state, ev, c)
        elif kind == "alert":
            self.cross_region.on_alert(state, ev)
            if ev.get("status", "RAISED") not in ("RESOLVED", "DISMISSED"):
                if ev["kind"] == "REFUSAL":
                    outs += self.port_shopping.on_refusal(state, ev, subject)
                name = ev["kind"].lower()
                name = name if name in self.weights else risk.severity_factor(ev["severity"])
                outs += self.alerts.risk(state, subject, name, ev["event_id"], at, ev["region"])
        elif kind == "case" and ev.get("stage") == "OPENED":
            outs += self.alerts.risk(state, subject, "case", ev["event_id"], at, ev["region"])
        outs += self._judge(state, subject, at)
        self._prune(state, at)
        return outs

    def on_watermark(self, state: dict, subject: str, watermark: int) -> list:
        self.transit.on_watermark(state, watermark)
        outs = self._judge(state, subject, watermark)
        self._prune(state, watermark)
        return outs

    def _judge(self, state: dict, subject: str, now: int) -> list:
        return (self.cross_region.judge(state, subject, now) + self.port_shopping.judge(state, subject, now)
                + self.transit.judge(state, subject, now))

    # ------------------------------------------------------------------ housekeeping
    def _prune(self, state, now: int) -> None:
        if state.get("resolutions"):
            # a resolution matters to flags raised before it, which are kept active_days at most
            state["resolutions"] = [r for r in state["resolutions"] if now - r["at"] <= self.active_ms]
            if not state["resolutions"]:
                del state["resolutions"]
        self.alerts.prune(state, now)
        if not (state["flags"] or state["refusals"] or state["stays"] or state["done"] or state.get("raised")):
            if state["crossings"] and now - state["crossings"][0]["at"] > self.crossing_keep_ms:
                state["crossings"] = [c for c in state["crossings"] if now - c["at"] <= self.crossing_keep_ms]
            return
        state["crossings"] = [c for c in state["crossings"] if now - c["at"] <= self.crossing_keep_ms]
        state["flags"] = [f for f in state["flags"] if now - f["at"] <= self.active_ms]
        # a refusal matters to entries within the window after it, which may be read the allowed delay late
        state["refusals"] = [r for r in state["refusals"] if now - r["at"] <= self.shop_ms + self.keep_ms]
        self.transit.prune(state, now, self.keep_ms)
        horizon = max(self.active_ms, self.transit_keep_ms + self.transit_ms)
        state["done"] = {k: t for k, t in state["done"].items() if now - t <= horizon}
