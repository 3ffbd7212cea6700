"""The regional stage: the cross-subject detectors on one partition fed by every region.

Kept apart from Kafka and Faust, as the subject stage is: a step takes one record of streams.regional (its
bytes, headers and record timestamp) and returns the outputs to send and the table keys to write after them.

Its upstreams are two forwarders (the re-key step: alerts and cases of every source partition; the subject
stage: flow partials and some clearances of every subject partition), each reading at its own pace. Its
watermark is the slowest upstream's largest event time minus ``global_lateness_minutes``; an upstream silent
for ``global_idle_seconds`` on the clock of the stage's own topic (its records' timestamps, a tick every 2 s)
stops holding it back, and a tick names the upstreams that still have records to read (not idle). Each worker's
tick also names the upstreams it holds: one that no tick names (in a rebalance, revoked from one worker and not yet
taken up by another) is not idle either (``event_time.Claims``).
"""
from __future__ import annotations

import json
import logging
from collections.abc import MutableMapping

from schemas.errors import EventError
from streams import metrics
from streams.event_time import Claims, RecordClock, Watermark
from streams.regional import SECTIONS, RegionalRules
from streams.subject_stage import Step, restorable, upstream_key

log = logging.getLogger("yrdbus.streams")

# the regional table's key of its upstreams' largest event times (the watermark's state)
WATERMARK_KEY = "watermark"
# the prefix of a flow partial's key (``flow:<port>|<hour>``: the subject partitions' counts of that port and hour).
# The flow section keeps them apart from the rest of it: written whole on every count read, the section (some
# 50 KB with two days of counts and the ports' history) was 317 MB of changelog for a simulated week at 0.02 of
# the volume, most of the worker's CPU spent encoding and compressing it.
FLOW_PARTIAL = "flow:"


def source_of(headers: dict, source: str) -> str:
    """The source partition a forwarded record came from, from the re-key step's headers."""
    return upstream_key(source, headers.get("yrd-source-partition", ""))


def origin_of(headers: dict) -> tuple[int, int] | None:
    """The source partition and offset of a record the re-key step forwarded (None: not forwarded, or by an
    older worker). A dead letter names them, so the worker's and the sink's dead letters of one source record
    name the same origin (``dead_letters`` keeps one row per origin)."""
    try:
        return int(headers["yrd-source-partition"]), int(headers["yrd-source-offset"])
    except (KeyError, ValueError):
        return None


class RegionalStage:
    """The regional stage's state (``table``: one key per detector section, one per vessel, and the watermark's)
    and its watermark."""

    def __init__(self, rs, decoder, bounds, table: MutableMapping):
        self.rules = RegionalRules(rs)
        self.decoder, self.bounds, self.table = decoder, bounds, table
        self.clock = RecordClock()
        self.wm = Watermark(rs.minutes_ms("event_time", "global_lateness_minutes"),
                            int(float(rs["event_time"].get("global_idle_seconds", 10)) * 1000), clock=self.clock)
        self.state: dict | None = None
        self.last_wm: int | None = None
        self.expecting: list | None = None
        self.wm_dirty = False
        self.flow_inline = False        # the table's flow section still holds its partials inline
        # the upstreams the workers' ticks say they hold (half the idle time: a partition nobody holds is held
        # back before it could go idle)
        self.claims = Claims(self.wm.idle_ms / 2000)
        self.upstreams: set[str] = set()
        self.subject_upstreams: list[str] = []
        self.claims_checked = float("-inf")

    def assigned(self, upstreams: list[str] | None) -> None:
        """The worker now holds the stage: every upstream holds its watermark back until it has spoken (or gone
        idle), from the stage's first record on; the state is read again from the table."""
        self.state = None
        self.expecting = upstreams
        if upstreams:
            self.upstreams = set(upstreams)
            self.subject_upstreams = [u for u in upstreams if u.startswith("subjects|")]

    def _hold_unclaimed(self) -> None:
        """Upstreams no worker has claimed lately (a rebalance under way) are not idle, however silent; nor is
        any subject partition while a clearance source is unclaimed (its clearances may reach any of them)."""
        now = self.clock()
        self.claims_checked = now
        unclaimed = self.claims.unclaimed(now)
        if unclaimed:
            hold = [u for u in unclaimed if u in self.upstreams]
            if len(hold) < len(unclaimed):
                hold += self.subject_upstreams
            self.wm.touch(hold)

    def _state(self) -> dict:
        if self.state is None:
            fresh = self.rules.new_state()
            self.state = {sec: (self.table.get(sec) or fresh[sec]) for sec in SECTIONS if sec != "vessel"}
            # flow partials: one key each; a section written by an older worker holds them inline, and they are
            # written as keys of their own with the next write
            flow = self.state["flow"] = dict(self.state["flow"])
            inline = flow.get("partials") or {}
            flow["partials"] = {**inline, **{k[len(FLOW_PARTIAL):]: v for k, v in self.table.items()
                                             if k.startswith(FLOW_PARTIAL)}}
            self.rules.flow.dirty = set(inline)
            self.flow_inline = bool(inline)
            # vessels are many and change one at a time: one table key each
            self.state["vessel"] = {k[len("vessel:"):]: v for k, v in self.table.items() if k.startswith("vessel:")}
            # the upstreams' event times so far: what was processed before a restart is not read again
            kept = restorable(self.table.get(WATERMARK_KEY) or {}, self.bounds, f"regional[{WATERMARK_KEY}]")
            self.wm.restore(kept)
            # they count as claimed now: one no worker's tick names from here on is held back. A worker killed and
            # started again joins its group while the dead one is still a member: the partitions given to the
            # dead one are read by nobody until its session times out, while the new one's ticks move the clock.
            self.claims.claim(kept, self.clock())
        return self.state

    def step(self, raw: bytes, headers: dict, topic: str, timestamp: float | None) -> Step:
        """One record of streams.regional: a tick, a forwarded event (headers say what and from where), a flow
        partial or a forwarded clearance. ``step.writes`` are table keys (None: delete)."""
        source = headers.get("yrd-source", topic)
        self.clock.advance(timestamp)
        step = Step()
        if raw[:1] == b"{":
            ev = json.loads(raw)
        else:
            try:
                ev = self.decoder.decode(raw, headers.get("yrd-kind"))
            except EventError as exc:
                step.error = exc
                return step
            if ev["_kind"] == "control":
                ev["occurred_at"] = ev.get("occurred_at") or ev["starts_at"]
        state = self._state()
        if self.expecting:
            self.wm.expect(self.expecting)
            self.expecting = None
        if ev["_kind"] == "tick":
            metrics.labelled(metrics.TICKS, "regional").inc()
            self.wm.touch(ev.get("busy") or ())
            self.claims.claim(ev.get("held") or (), self.clock())
            self._hold_unclaimed()
            outs, changed = self.rules.on_tick(state)
            step.outs += outs
            self._watermark(state, set(changed), step)
            return step
        metrics.labelled(metrics.EVENTS_IN, source, "regional").inc()
        if self.clock() - self.claims_checked >= 1.0:
            self._hold_unclaimed()
        # an operator's control event is issued on its own clock: it does not move event time on
        upstream = headers.get("yrd-via") or source_of(headers, source)
        if ev["_kind"] != "control":
            before = self.wm.peak(upstream)
            if self.wm.observe(upstream, ev["occurred_at"]):
                metrics.labelled(metrics.LATE, "regional").inc()
            if self.wm.peak(upstream) != before:
                self.wm_dirty = True
        first_hour = state["trend"]["first_hour"]
        beyond = self.rules.beyond_delay(state)
        step.outs += self.rules.on_event(state, ev)
        for sec, n in self.rules.beyond_delay(state).items():
            if n > beyond[sec]:
                metrics.labelled(metrics.BEYOND_DELAY, "regional", sec).inc(n - beyond[sec])
        touched = set(self.rules.touched(ev))
        # a case changes the trend section; a control (a heightened window read late) may judge trends again
        if ev["_kind"] not in ("case", "control") and state["trend"]["first_hour"] == first_hour:
            touched.discard("trend")
        if self.rules.unchanged(ev):
            touched.clear()
        elif ev["_kind"] == "flow_partial" and not self.rules.flow.meta_changed:
            touched.discard("flow")         # its count alone changed: written as its own key below
        self._watermark(state, touched, step)
        return step

    def _watermark(self, state: dict, touched: set, step: Step) -> None:
        """Advance the watermark; the outputs due, then the changed state to write."""
        wm = self.wm.current()
        metrics.labelled(metrics.WATERMARK, "regional").set(max(0, wm) / 1000)
        if self.last_wm is None or wm > self.last_wm:
            self.last_wm = wm
            more, changed = self.rules.on_watermark(state, wm)
            if changed:
                log.debug("regional watermark %s: trends judged to hour %s, flow to hour %s, %d outputs due",
                          wm, state["trend"]["judged"], state["flow"]["judged"], len(more))
            step.outs += more
            touched |= set(changed)
        if self.flow_inline:
            touched.add("flow")
            self.flow_inline = False
        for sec in sorted(touched):
            step.writes[sec] = state[sec] if sec != "flow" else {k: v for k, v in state[sec].items()
                                                                 if k != "partials"}
        partials = state["flow"]["partials"]
        for key in sorted(self.rules.flow.dirty):
            step.writes[FLOW_PARTIAL + key] = partials.get(key)
        self.rules.flow.dirty.clear()
        if self.wm_dirty:
            step.writes[WATERMARK_KEY] = self.wm.maxima()
            self.wm_dirty = False
        for vid in sorted(self.rules.vessel.dirty):
            step.writes[f"vessel:{vid}"] = state["vessel"].get(vid)
        self.rules.vessel.dirty.clear()
