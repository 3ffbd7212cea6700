"""The cross-subject detectors, run on one single-partition stage fed by all four
regions: document-fraud spread, trends and systemic escalation, passenger-flow
surge, conveyance following, heightened mode and broadcast, vessel risk.

Pure: ``on_event(state, event)`` and ``on_watermark(state, watermark)`` change
the plain state in place and return ``[(kind, record)]`` outputs. The state is
one dict per detector so the stage can store each under its own table key.

Late events: within ``[event_time] allowed_delay_hours`` of the watermark, an event read after the window it falls
in was judged (a flow hour, a trend window, a fraud-spread window, an escalation; a heightened-mode window read
after the hours it covers) has the windows it changes judged again at once, in ``on_event`` (flow hours at the
stage's next tick or judging, ``on_tick``: once for a late region's whole file, not once a count): the alerts are then
those of the event-time order, with the same ids, and one it disproves is withdrawn (``derived.withdrawn``).
Older events judge nothing again; ``beyond_delay`` counts them.
"""
from __future__ import annotations

from streams.conveyance import ConveyanceFollowing
from streams.flow import FlowSurge
from streams.fraud import FraudSpread
from streams.heightened import Heightened
from streams.trends import Trends
from streams.vessel import VesselRisk

SECTIONS = ("fraud", "trend", "flow", "conveyance", "heightened", "vessel")


class RegionalRules:
    def __init__(self, rs):
        self.rs = rs
        self.fraud = FraudSpread(rs)
        self.trend = Trends(rs)
        self.flow = FlowSurge(rs)
        self.conveyance = ConveyanceFollowing(rs)
        self.heightened = Heightened(rs)
        self.vessel = VesselRisk(rs)

    def new_state(self) -> dict:
        return {"fraud": FraudSpread.new_state(), "trend": Trends.new_state(), "flow": FlowSurge.new_state(),
                "conveyance": ConveyanceFollowing.new_state(), "heightened": Heightened.new_state(),
                "vessel": VesselRisk.new_state()}

    @staticmethod
    def touched(ev: dict) -> tuple[str, ...]:
        """The state sections an event can change (the stage writes back only these)."""
        kind = ev["_kind"]
        # vessels are not listed: VesselRisk.dirty names the ones that changed
        if kind == "alert":
            return ("fraud", "conveyance", "heightened", "trend")
        if kind == "case":
            return ("trend",)
        if kind == "control":
            return ("heightened", "trend", "flow")
        if kind == "clearance":
            # the conveyance section changes only for a flight that landed away from its scheduled port; most
            # clearances the stage reads are vessel crews', and a write of the unchanged section would cost a
            # changelog record of all of it each time
            sched = ev.get("scheduled_port")
            return ("conveyance", "trend") if sched and sched != ev.get("port_code") else ("trend",)
        if kind == "flow_partial":
            return ("flow",)
        return ()

    def unchanged(self, ev: dict) -> bool:
        """Whether ``ev``, just read, changed nothing: a flow partial of the count already held."""
        return ev["_kind"] == "flow_partial" and self.flow.unchanged

    def on_event(self, state: dict, ev: dict) -> list:
        kind = ev["_kind"]
        outs: list = []
        if kind != "flow_partial":
            outs += self.trend.note_time(state["trend"], ev["occurred_at"], state["heightened"])
        if kind == "alert":
            outs += self.heightened.on_alert(state["heightened"], ev)
            outs += self.fraud.on_alert(state["fraud"], ev)
            outs += self.conveyance.on_alert(state["conveyance"], ev)
            outs += self.vessel.on_alert(state["vessel"], ev)
        elif kind == "case":
            outs += self.trend.on_case(state["trend"], ev, state["heightened"])
            outs += self.vessel.on_case(state["vessel"], ev)
        elif kind == "control":
            more, span = self.heightened.on_control(state["heightened"], ev)
            outs += more
            if span is not None and span[1] > span[0]:
                # a window (or a change to one) read after hours it covers were judged: they are judged again
                # with its thresholds, and what they no longer raise is withdrawn
                outs += self.trend.rejudge_since(state["trend"], span[0], state["heightened"])
                outs += self.flow.rejudge_since(state["flow"], span[0], span[1], state["heightened"])
        elif kind == "clearance":
            outs += self.conveyance.on_clearance(state["conveyance"], ev)
            outs += self.vessel.on_clearance(state["vessel"], ev)
        elif kind == "flow_partial":
            outs += self.flow.on_partial(state["flow"], ev, state["heightened"])
        return outs

    @staticmethod
    def beyond_delay(state: dict) -> dict:
        """Events read later than the allowed delay, by section (kept in the state): counted where they can be,
        but they judged no window again. The stage exports them as a metric."""
        return {sec: int(state[sec].get("beyond_delay", 0)) for sec in ("fraud", "trend", "flow")}

    def on_tick(self, state: dict) -> tuple[list, tuple[str, ...]]:
        """The flow hours whose counts changed after they were judged, judged again; and the sections changed."""
        if not state["flow"].get("late"):
            return [], ()
        return self.flow.judge_late(state["flow"], state["heightened"]), ("flow",)

    def on_watermark(self, state: dict, watermark: int) -> tuple[list, tuple[str, ...]]:
        """Outputs due at this watermark, and the sections it changed."""
        before = _sizes(state)
        late = bool(state["flow"].get("late"))
        judged = (state["trend"]["judged"], state["flow"]["judged"])
        outs = self.fraud.on_watermark(state["fraud"], watermark)
        spread = bool(outs)
        outs += self.trend.on_watermark(state["trend"], watermark, state["heightened"])
        outs += self.flow.on_watermark(state["flow"], watermark, state["heightened"])
        self.fraud.prune(state["fraud"], watermark)
        self.conveyance.prune(state["conveyance"], watermark)
        self.heightened.prune(state["heightened"], watermark)
        after = _sizes(state)
        changed = tuple(sec for sec in ("fraud", "conveyance", "heightened") if before[sec] != after[sec]
                        or (sec == "fraud" and spread))
        if state["trend"]["judged"] != judged[0]:
            changed += ("trend",)
        if state["flow"]["judged"] != judged[1] or late:
            changed += ("flow",)
        return outs, changed


def _sizes(state: dict) -> dict:
    """A cheap fingerprint of the pruned sections: prune only ever removes entries."""
    return {sec: tuple(len(v) for v in state[sec].values() if isinstance(v, (dict, list)))
            for sec in ("fraud", "conveyance", "heightened")}
