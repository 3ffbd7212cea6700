"""The subject stage: every event of one traveller through the subject rules, in its partition's turn.

Kept apart from Kafka and Faust: a step takes one record (where it came from, its bytes, its record timestamp)
and returns what to do, in order: the records to forward to the regional stage, the outputs to send, and the
states to write once the outputs are on the broker. ``streams/app.py`` does the sending and writing; tests feed
records in any order and read the steps.

Event time: the stage's watermark is the smallest of its partitions' and of the source partitions the re-key
step forwards from (largest event time minus ``lateness_minutes``); one silent for ``idle_partition_seconds``
on the clock of the stage's own topic (its records' timestamps) stops holding it back. Transit deadlines fire
on it; a deadline already due when it is learned fires at once.
"""
from __future__ import annotations

import copy
import json
import logging
import time
from collections.abc import MutableMapping
from dataclasses import dataclass, field

from schemas.errors import EventError
from streams import metrics, subject as subject_rules
from streams.deadlines import Deadlines
from streams.event_time import RecordClock, Watermark
from streams.flow import HOUR, FlowCounter

log = logging.getLogger("yrdbus.streams")

NEVER = -(1 << 62)


def upstream_key(topic: str, partition) -> str:
    """Where a record reaching a stage came from: ``<topic>|<partition>`` (the watermarks' and the flow
    counter's key of a source partition; ``subjects|<p>`` for the subject stage's partition p)."""
    return f"{topic}|{partition}"


def restorable(maxima: dict, bounds, where: str) -> dict:
    """The persisted largest event times of ``where`` that lie within the event-time bounds. One outside them
    (kept from a forged event before the worker checked event time where it reads) is left out with a warning:
    restored, it would put the watermark in the year 9999 again; left out, its upstream holds the stage back
    until it speaks or goes idle, as a new one does."""
    kept = {}
    for k, m in maxima.items():
        if bounds.contains(m):
            kept[k] = m
        else:
            log.warning("%s: the persisted event time %s of upstream %s is outside the event-time bounds; "
                        "not restored (yrdbus worker repair-watermark rewrites it)", where, m, k)
    return kept


@dataclass
class Step:
    """What one step of a stage asks of its wiring, in this order: forward ``forward`` to the regional stage
    (value, headers), send ``outs`` and wait for the broker, then write ``flow`` and ``writes`` (None: delete).
    ``error``: the record could not be decoded (dead-letter it; nothing else to do)."""
    forward: list = field(default_factory=list)
    outs: list = field(default_factory=list)
    writes: dict = field(default_factory=dict)
    flow: dict = field(default_factory=dict)
    error: EventError | None = None


class SubjectStage:
    """One worker's share of the subject stage: the subject partitions it holds, their tables
    (``subjects``: token -> the JSON bytes of its state; ``flow``: ``<partition>|<port>|<hour>`` -> a count of
    clearances, one key each, written with the step that changes it, and ``<partition>`` -> the rest of its flow
    counter's state, written every so often) and their watermark, deadlines and flow counters."""

    def __init__(self, rs, decoder, bounds, partitions: int, subjects: MutableMapping, flow: MutableMapping,
                 wants_regional=None):
        self.rules = subject_rules.SubjectRules(rs)
        self.decoder, self.bounds, self.partitions = decoder, bounds, partitions
        self.subjects, self.flow_table = subjects, flow
        self.wants_regional = wants_regional or (lambda ev: False)
        self.counter = FlowCounter(rs, partitions)
        self.lateness = rs.minutes_ms("event_time", "lateness_minutes")
        self.idle_s = float(rs["event_time"]["idle_partition_seconds"])
        self.clock = RecordClock()
        self.wm = Watermark(self.lateness, int(self.idle_s * 1000), clock=self.clock)
        self.deadlines = Deadlines()
        # A traveller with nothing on record is kept in the table too, as long as a refusal or a flag read late (up
        # to the allowed delay behind the watermark) may still need the crossings: then forgotten (a tombstone)
        self.allowed_delay = rs.allowed_delay_ms()
        self.forgets = Deadlines()
        self.rescan = True
        self.flow_dirty: dict[str, int] = {}
        self.fstates: dict[str, dict] = {}      # partition -> its flow counter's state, read from the table once
        self.held: set[str] = set()             # the partitions held before the last assignment too
        self.flow_wm: dict[str, int] = {}
        self.part_max: dict[int, int] = {}
        self.parts: list[int] = []
        self.expecting: list | None = None
        self.active_at = 0.0
        self._vias: dict[str, list] = {}

    # ------------------------------------------------------------------ assignment
    def assigned(self, mine: list[int], sources: list[str]) -> None:
        """The worker now holds subject partitions ``mine``; ``sources`` are every source partition's key."""
        self.rescan = True
        self.part_max = {p: m for p, m in self.part_max.items() if p in mine}
        for k in list(self.wm.maxima()):
            if (k if isinstance(k, int) else k[0]) not in mine:
                self.wm.forget(k)
        # the flow states of the partitions it held before are its own; the others are read once their tables
        # are recovered (at the first record after the assignment, ``_start``)
        self.held = {str(p) for p in mine if p in self.parts}
        self.fstates = {p: st for p, st in self.fstates.items() if p in self.held}
        self.parts = mine
        if mine:
            # ticks for a while, whether or not there is anything to re-key: the stage's clock must move on for
            # its silent upstreams to go idle, or a restart with nothing new would judge nothing
            self.active_at = time.monotonic()
            # every (subject partition, source partition) pair holds the stage back from its next record on,
            # until it speaks or goes silent; those already known count as just heard from (the rebalance
            # itself was a silence of nobody's making)
            self.expecting = [(p, s) for p in mine for s in sources]

    def _start(self) -> None:
        """The first record after an assignment: what was kept before is restored, and every upstream expected."""
        # (a state read before the tables were recovered, by ``behind``, is not kept)
        self.fstates = {p: st for p, st in self.fstates.items() if p in self.held}
        self.wm.touch(self.wm.maxima())
        # what the partitions' upstreams had given before a restart (kept with their flow counts): the
        # stage must not fall back behind it, or a restart at the end of a stream would judge nothing more
        for p in self.parts:
            fstate = self._fstate(str(p))
            kept = restorable(fstate.get("wm") or {}, self.bounds, f"flowcounts[{p}]")
            self.wm.restore({(p, src): m for src, m in kept.items()})
            if kept:
                self.part_max[p] = max(self.part_max.get(p, NEVER), *kept.values())
        self.wm.expect(self.expecting)
        self.expecting = None

    def _fstate(self, part: str) -> dict:
        """Partition ``part``'s flow counter state, read from the table the first time after an assignment."""
        fstate = self.fstates.get(part)
        if fstate is None:
            fstate = self.fstates[part] = self._load_flow(part)
        return fstate

    def _load_flow(self, part: str) -> dict:
        """The flow counter state kept in the table: its counts (one key each; inside the state in a table of an
        earlier release), those of hours outside the event-time bounds left out. Every count of an hour the
        partition had passed is sent again at the next tick: what it sent after the state was last written is not
        known (a partial replaces what the partition sent before, so sending one again changes nothing)."""
        kept = self.flow_table.get(part)
        fstate = {**FlowCounter.new_state(), **copy.deepcopy(kept)} if isinstance(kept, dict) else \
            FlowCounter.new_state()
        counts, upto = dict(fstate.get("counts") or {}), {}
        prefix = part + "|"
        for k, v in list(self.flow_table.items()):
            if isinstance(k, str) and k.startswith(prefix):
                if isinstance(v, dict) and isinstance(v.get("n"), int):
                    counts[k[len(prefix):]], upto[k[len(prefix):]] = v["n"], dict(v.get("upto") or {})
                elif isinstance(v, int):
                    counts[k[len(prefix):]] = v
        fstate["counts"] = {k: n for k, n in counts.items()
                            if self.bounds.contains((FlowCounter.hour_of(k) + 1) * HOUR - 1)}
        fstate["upto"] = {k: u for k, u in upto.items() if k in fstate["counts"]}
        progress = fstate.get("progress")
        if isinstance(progress, int) and not self.bounds.contains((progress + 1) * HOUR - 1):
            # hours "sent" up to a forged date: every clearance would count as late and go out at once, its
            # hour's end moving the regional watermark on; left out as the maxima are (repair-watermark
            # rewrites it), the partition reports its hours again as its own watermark passes them
            log.warning("flowcounts[%s]: the persisted progress (hour of %s) is outside the event-time bounds; "
                        "not restored (yrdbus worker repair-watermark rewrites it)", part, (progress + 1) * HOUR - 1)
            fstate["progress"] = progress = None
        if isinstance(progress, int):
            passed = {k: True for k in fstate["counts"] if FlowCounter.hour_of(k) <= progress}
            fstate["pending"] = {**(fstate.get("pending") or {}), **passed}
            fstate["sent"] = {**(fstate.get("sent") or {}), **passed}
        return fstate

    def _rescan(self) -> None:
        """The pending deadlines and crossings to forget of every subject the worker holds now."""
        deadlines, forgets = [], []
        for s, raw in self.subjects.items():
            if not raw:
                continue
            state = json.loads(raw)
            d = subject_rules.next_deadline(state)
            if d is not None:
                deadlines.append((d, s))
            f = self.forget_at(state)
            if f is not None:
                forgets.append((f, s))
        self.deadlines.reset(deadlines)
        self.forgets.reset(forgets)
        self.rescan = False

    # ------------------------------------------------------------------ state
    def durable_state(self, s: str) -> dict | None:
        raw = self.subjects.get(s)
        return json.loads(raw) if raw else None

    def load(self, s: str) -> dict:
        state = self.durable_state(s)
        return state if state is not None else subject_rules.new_state()

    def forget_at(self, state: dict | None) -> int | None:
        """When a traveller with nothing on record but crossings may be forgotten: once the watermark is the
        allowed delay past the newest crossing (None: not such a traveller)."""
        if state is None or subject_rules.is_durable(state) or not state["crossings"]:
            return None
        return max(c["at"] for c in state["crossings"]) + self.allowed_delay

    def store(self, s: str, state: dict, writes: dict) -> None:
        """Keep a subject's state; its write waits in ``writes`` until the outputs are sent. Every traveller who
        crossed is kept, nothing on record or not: a refusal or a flag read later, or after a rebalance or a
        restart, must still find the crossing."""
        if subject_rules.is_durable(state):
            writes[s] = state
            d = subject_rules.next_deadline(state)
            if d is not None:
                self.deadlines.add(d, s)
        elif state["crossings"]:
            writes[s] = state
            self.forgets.add(self.forget_at(state), s)
        elif s in self.subjects or s in writes:
            writes[s] = None

    def via(self, part: str) -> list:
        """The header naming subject partition ``part`` as the regional stage's upstream."""
        return self._vias.get(part) or self._vias.setdefault(part, [("yrd-via", upstream_key("subjects", part)
                                                                     .encode())])

    # ------------------------------------------------------------------ steps
    def tick(self, partition: int, busy, timestamp: float | None) -> Step:
        """A tick through ``partition``: the stage's clock moves on; ``busy`` source partitions are not idle."""
        self._begin(timestamp)
        metrics.labelled(metrics.TICKS, "subjects").inc()
        self.wm.touch((p, s) for p in self.parts for s in busy or ())
        step = Step()
        fstate = self._fstate(str(partition))
        # the new totals of passed hours that late clearances changed since the last tick
        via = self.via(str(partition))
        step.forward += [(json.dumps(p).encode(), via) for p in self.counter.flush(fstate, partition)]
        self._close(partition, fstate, step)
        return step

    def step(self, partition: int, kind: str, raw: bytes, key: bytes | None, timestamp: float | None,
             upstream, src: str, source: str, offset: int | None = None) -> Step:
        """One record of ``kind`` read in subject partition ``partition``: ``upstream`` is the watermark's key of
        where it came from (subject partition, source partition), ``src`` the source partition's, ``offset`` the
        record's offset there (a clearance counted once, however often it is read)."""
        self._begin(timestamp)
        self.active_at = time.monotonic()
        metrics.labelled(metrics.EVENTS_IN, source, "subjects").inc()
        step = Step()
        try:
            ev = self.decoder.decode(raw, kind)
        except EventError as exc:
            step.error = exc
            return step
        s = key.decode() if key else (ev.get("subject") or "")
        if self.wm.observe(upstream, ev["occurred_at"]):
            metrics.labelled(metrics.LATE, "subjects").inc()
        if ev["occurred_at"] > self.part_max.get(partition, NEVER):
            self.part_max[partition] = ev["occurred_at"]
        state = self.load(s)
        step.outs += self.rules.on_event(state, ev, s)
        self.store(s, state, step.writes)
        part = str(partition)
        fstate = self._fstate(part)
        if kind == "clearance":
            via = self.via(part)
            beyond = fstate.get("beyond_delay", 0)
            key = FlowCounter.key_of(ev)
            counted = fstate["counts"].get(key)
            for p in self.counter.on_clearance(fstate, ev, partition, self.wm.current(), source=src, offset=offset):
                step.forward.append((json.dumps(p).encode(), via))
            if fstate.get("beyond_delay", 0) > beyond:
                metrics.labelled(metrics.BEYOND_DELAY, "subjects", "flow").inc(fstate["beyond_delay"] - beyond)
            elif fstate["counts"].get(key) != counted:
                # the count goes to the changelog with the step that changed it, with the offset of the last
                # clearance of each source in it: a restart loses none and counts none twice
                step.flow[f"{part}|{key}"] = {"n": fstate["counts"][key], "upto": fstate["upto"][key]} \
                    if key in fstate.get("upto", {}) else fstate["counts"][key]
            if ev.get("scheduled_port") or self.wants_regional(ev):
                step.forward.append((raw, [("yrd-kind", b"clearance"), ("yrd-source", source.encode()), *via]))
            self.flow_dirty[part] = self.flow_dirty.get(part, 0) + 1
        self._close(partition, fstate, step)
        return step

    def _begin(self, timestamp: float | None) -> None:
        self.clock.advance(timestamp)
        if self.expecting:
            self._start()
        if self.rescan:
            self._rescan()

    def _close(self, partition: int, fstate: dict, step: Step) -> None:
        """The end of a step (an event or a tick): what the watermark has passed, and the flow counts kept."""
        self._watermark(partition, fstate, step)
        part = str(partition)
        # the rest of the partition's flow counter goes to its changelog every so often, not on every clearance,
        # with the largest event time each of its upstreams has given so far (restored after a restart): what it
        # loses in a crash (hours sent, sources' event times) makes it send again or wait longer, never count less
        if self.flow_dirty.get(part, 0) >= 200 or part not in self.flow_table:
            fstate["wm"] = {k[1]: m for k, m in self.wm.maxima().items() if isinstance(k, tuple) and k[0] == partition}
            step.flow[part] = {k: v for k, v in fstate.items() if k not in ("counts", "pending", "upto")}
            self.flow_dirty[part] = 0

    def _watermark(self, partition: int, fstate: dict, step: Step) -> None:
        """Judge what the watermark has passed: transit deadlines, forgotten crossings, flow buckets."""
        part = str(partition)
        wm = self.wm.current()
        metrics.labelled(metrics.WATERMARK, "subjects").set(max(0, wm) / 1000)
        rose = self.deadlines.watermark(wm)
        self.forgets.watermark(wm)
        writes = step.writes
        seen: dict[str, dict | None] = {}

        def state_of(hs: str) -> dict | None:
            # a state changed in this step is read from the step, not the table; each parsed once
            if hs in writes:
                return writes[hs]
            if hs not in seen:
                seen[hs] = self.durable_state(hs)
            return seen[hs]

        def current(hs: str) -> int | None:
            hstate = state_of(hs)
            return subject_rules.next_deadline(hstate) if hstate is not None else None

        # a deadline learned already due (a transit entry read after the watermark passed its deadline: a late
        # upload) fires at once, on the highest watermark the stage has reached, not when it next rises
        for _, hs in self.deadlines.due(current):
            hstate = state_of(hs)
            step.outs += self.rules.on_watermark(hstate, hs, self.deadlines.judge)
            self.store(hs, hstate, writes)
        if rose:
            for _, fs in self.forgets.due(lambda fs: self.forget_at(state_of(fs))):
                writes[fs] = None
        # A partition's flow counts wait only for the clearance sources it counts (FlowCounter holds them back by
        # the slowest one still active), not for the stage's watermark: that one also waits for sparse alert and
        # case sources, and the regional stage, which hears nothing from a partition until it sends an hour, would
        # judge the hours without it. Each partition's counts are judged on the largest event time it has read,
        # held back by its slowest active source: so it moves on when that source goes idle as well (at a tick:
        # after the last record nothing else comes), not only when a record raises the largest event time.
        fwm = self.part_max.get(partition, NEVER) - self.lateness
        held = self.counter.watermark(fstate, fwm, partition)
        if held > self.flow_wm.get(part, NEVER):
            self.flow_wm[part] = held
            via = self.via(part)
            dropped: list[str] = []
            for p in self.counter.on_watermark(fstate, fwm, partition, dropped):
                step.forward.append((json.dumps(p).encode(), via))
            for key in dropped:
                step.flow[f"{part}|{key}"] = None
                self.flow_dirty[part] = 1 << 30

    # ------------------------------------------------------------------ backlog
    def behind(self, parts, clearance_sources) -> None:
        """This worker has records still to read of subject partitions ``parts`` and of clearance source
        partitions ``clearance_sources``: the upstreams they have heard from are not idle (one that never spoke
        goes idle as usual, or it would hold the stage at minus infinity while any backlog lasts), nor are their
        flow counters' sources."""
        if parts:
            self.wm.touch(k for k in self.wm.maxima() if isinstance(k, tuple) and k[0] in parts)
            for bp in parts:
                self.counter.touch(bp, self._fstate(str(bp)).get("sources") or {})
        if clearance_sources:
            for p in self.parts:
                self.counter.touch(p, clearance_sources)

    def wants_ticks(self, sources_behind) -> bool:
        """While a backlog lasts, and after the last record until the silent upstreams (and flow sources) have gone
        idle on the stage's clock (which ticks move) and what is due is judged, however late the ticks come on a busy
        machine; then a quiet bus's topics stay quiet."""
        # (the flow counters' sources go idle on their own clock, ``flow_idle_seconds``)
        idle_s = max(self.idle_s, self.counter.idle_s)
        return bool(sources_behind) or time.monotonic() - self.active_at < idle_s + 5 or not self.wm.settled()

    def sizes(self) -> None:
        metrics.labelled(metrics.TABLE, "subjects").set(len(self.subjects))
