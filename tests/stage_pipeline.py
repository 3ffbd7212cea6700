"""Both stages wired as the worker wires them (streams/app.py), without Kafka, for tests that try many orders.

Source records are placed as the stations' producer places them (murmur2 of the key over the source topic's
partitions); a clearance goes through the subject stage where it is read, an alert or a case is re-keyed to its
subjects' partitions and forwarded to the regional stage, as the worker does; what the subject stage forwards
reaches the regional stage at once. Ticks come every 2 s of the reader's clock, naming the source partitions with
records published but not yet read (the worker's backlog), and at the end until every upstream has gone idle.

A delivery is a list of (publish time in seconds, kind, record); the reader takes them in publish order at
``rate`` records a second at most (a backlog when they are published faster). Kafka's record timestamps are the
publish times for source records, the reader's clock for what the worker itself writes.
"""
from __future__ import annotations

import json
from collections import defaultdict

from connectors.publisher import StationPublisher
from kit.scripted import _dt
from schemas import topics
from schemas.codec import get_codec
from schemas.eventtime import EventTimeBounds
from schemas.settings import get_settings
from streams import derived, ruleset
from streams.decoding import PlainDecoder
from streams.evaluate import last_versions
from streams.faust_workarounds import subject_partition
from streams.regional_stage import RegionalStage
from streams.subject_stage import SubjectStage, upstream_key

REGIONS = ("SH", "JS", "ZJ", "AH")
SOURCE_PARTITIONS = topics.DEFAULT_PARTITIONS
TICK_S = 2.0
EPOCH_S = 1_700_000_000.0        # the reader's clock starts here (any fixed point)


class Pipeline:
    def __init__(self, partitions: int = 4, rs=None, rate: float = 5_000.0):
        self.rs = rs or ruleset.default()
        self.codec = get_codec()
        self.partitions, self.rate = partitions, rate
        self.sources = [topics.source(r, k) for r in REGIONS for k in ("clearance", "alert", "case")]
        self.restarts = 0
        self._start({}, {}, {})
        self.offsets: dict = defaultdict(int)
        self.versions: list[dict] = []      # every derived alert sent, in order
        self.outputs = 0

    def _start(self, subjects: dict, flow: dict, regional: dict) -> None:
        """Both stages on these tables (what their changelogs hold), assigned every partition."""
        bounds = EventTimeBounds.from_settings(get_settings())
        decoder = PlainDecoder(self.codec, bounds)
        self.subject = SubjectStage(self.rs, decoder, bounds, self.partitions, subjects, flow)
        self.regional = RegionalStage(self.rs, decoder, bounds, regional)
        self.subject.wants_regional = self.regional.rules.vessel.wants
        regional_sources = [t for t in self.sources if not t.endswith(".clearance")]
        self.subject.assigned(list(range(self.partitions)), [upstream_key(t, p) for t in self.sources
                                                             for p in range(SOURCE_PARTITIONS)])
        self.regional.assigned([upstream_key("subjects", p) for p in range(self.partitions)]
                               + [upstream_key(t, p) for t in regional_sources for p in range(SOURCE_PARTITIONS)])

    def restart(self) -> None:
        """A worker killed after it committed what it had read, and started again: new stages, on nothing but
        what the tables hold."""
        self.restarts += 1
        self._start(self.subject.subjects, self.subject.flow_table, self.regional.table)

    # ------------------------------------------------------------------ delivery
    def deliver(self, delivery: list, restarts=(), replay: int = 0) -> "Pipeline":
        """Every (publish time, kind, record) of ``delivery`` read in publish order, with the worker's ticks;
        the stages restarted (``restart``) before each of the records numbered in ``restarts``, and the
        ``replay`` records before it read again (the worker had read them after its last commit)."""
        restarts = set(restarts)
        placed = sorted(((at, n, kind, rec, *self._place(kind, rec)) for n, (at, kind, rec) in enumerate(delivery)),
                        key=lambda x: (x[0], x[1]))
        offsets = []
        for x in placed:                      # each record's offset in its topic's partition
            offsets.append(self.offsets[(x[4], x[5])])
            self.offsets[(x[4], x[5])] += 1
        published = [(x[0], (x[4], x[5])) for x in placed]
        now, next_tick, unread_from = 0.0, TICK_S, 0
        for i, (at, _, kind, rec, topic, part, key) in enumerate(placed):
            if i in restarts:
                self.restart()
                for j in range(max(0, i - replay), i):
                    x = placed[j]
                    self._read(x[2], x[3], x[4], x[5], x[6], offsets[j], x[0], now)
            now = max(now + 1.0 / self.rate, at)
            while next_tick <= now:
                self._tick(next_tick, self._behind(published, i, next_tick))
                next_tick += TICK_S
            self._read(kind, rec, topic, part, key, offsets[i], at, now)
            unread_from = i + 1
        for _ in range(int(30 / TICK_S)):            # silence: every upstream goes idle, what is due is judged
            now = next_tick
            self._tick(now, set())
            next_tick += TICK_S
        assert unread_from == len(placed)
        return self

    @staticmethod
    def _place(kind: str, rec: dict) -> tuple[str, int, bytes | None]:
        return place(kind, rec)

    @staticmethod
    def _behind(published: list, i: int, t: float) -> set[str]:
        """Source partitions with records published by ``t`` and not yet read (records ``i`` on)."""
        busy = set()
        for at, tp in published[i:]:
            if at > t:
                break
            busy.add(tp)
        return busy

    # ------------------------------------------------------------------ the worker's steps
    def _read(self, kind, rec, topic, part, key, offset: int, published: float, now: float) -> None:
        raw = self.codec.encode(kind, rec)
        src = upstream_key(topic, part)
        if kind == "clearance":            # read in place: the stations key clearances by subject
            assert subject_partition(key, self.partitions) == part
            self._subject(self.subject.step(part, kind, raw, key, EPOCH_S + published, (part, src), src, topic,
                                            offset), now)
            return
        headers = {"yrd-kind": kind, "yrd-source": topic, "yrd-source-partition": str(part),
                   "yrd-source-offset": str(offset)}
        subjects = [rec.get("subject")] if kind == "alert" else (rec.get("subjects") or []) if kind == "case" else []
        for s in sorted({s for s in subjects if s}):
            p = subject_partition(s.encode(), self.partitions)
            self._subject(self.subject.step(p, kind, raw, s.encode(), EPOCH_S + now, (p, src), src, topic), now)
        self._regional(self.regional.step(raw, headers, topic, EPOCH_S + now))

    def _tick(self, now: float, busy: set) -> None:
        sources_behind = sorted(upstream_key(t, p) for t, p in busy)
        clearance_sources = [upstream_key(t, p) for t, p in busy if t.endswith(".clearance")]
        self.subject.behind(set(), clearance_sources)
        for p in range(self.partitions):
            self._subject(self.subject.tick(p, sources_behind, EPOCH_S + now), now)
        reg_busy = {upstream_key(t, p) for t, p in busy if not t.endswith(".clearance") and t != topics.CONTROL}
        if clearance_sources:
            reg_busy |= {upstream_key("subjects", p) for p in range(self.partitions)}
        # one worker holds every partition, and its ticks say so
        held = [upstream_key("subjects", p) for p in range(self.partitions)] + [
            upstream_key(t, p) for t in self.sources for p in range(SOURCE_PARTITIONS)]
        tick = json.dumps({"_kind": "tick", "busy": sorted(reg_busy), "held": held}).encode()
        self._regional(self.regional.step(tick, {"yrd-via": "tick"}, "streams.regional", EPOCH_S + now))

    def _subject(self, step, now: float) -> None:
        assert step.error is None, step.error
        for value, headers in step.forward:
            h = {k: v.decode() for k, v in headers}
            self._regional(self.regional.step(value, h, "streams.regional", EPOCH_S + now))
        self._sent(step.outs)
        for k, v in step.flow.items():
            if v is None:
                self.subject.flow_table.pop(k, None)
            else:
                self.subject.flow_table[k] = json.loads(json.dumps(v))   # as the changelog keeps it
        for k, v in step.writes.items():
            if v is None:
                self.subject.subjects.pop(k, None)
            else:
                self.subject.subjects[k] = json.dumps(v, separators=(",", ":")).encode()

    def _regional(self, step) -> None:
        assert step.error is None, step.error
        self._sent(step.outs)
        for k, v in step.writes.items():
            if v is None:
                self.regional.table.pop(k, None)
            else:
                # what the table's changelog keeps (the stage goes on with its own copy)
                self.regional.table[k] = json.loads(json.dumps(v))

    def _sent(self, outs: list) -> None:
        self.outputs += len(outs)
        self.versions += [dict(r) for k, r in outs if k == "derived_alert"]

    # ------------------------------------------------------------------ the answer
    def live(self) -> dict[str, str]:
        """The live derived alerts: id -> kind (the last version of each id, unless it withdraws it)."""
        last = {}
        for a in self.versions:
            last[a["alert_id"]] = a
        return {i: a["kind"] for i, a in last.items() if derived.is_live(a)}


def place(kind: str, rec: dict) -> tuple[str, int, bytes | None]:
    """The topic, partition and key a station's producer gives a record."""
    key = StationPublisher.key_for(kind, rec)
    if kind == "control":
        return topics.CONTROL, 0, key
    return topics.source(rec["region"], kind), subject_partition(key, SOURCE_PARTITIONS), key


def kafka_records(events, codec, prefix: str) -> list[tuple[str, bytes | None, bytes]]:
    """(topic, key, value) of (kind, record) events, as the stations publish them to a bus of ``prefix``."""
    out = []
    for kind, rec in events:
        topic, _, key = place(kind, rec)
        out.append((prefix + topic, key, codec.encode(kind, rec)))
    return out


def live(alerts: list[dict]) -> dict[str, str]:
    """The alerts that stand among records read from a topic: id -> kind of the last version of each id, unless it
    withdraws it."""
    return {a["alert_id"]: a["kind"] for a in last_versions(alerts) if derived.is_live(a)}


def in_order(script, partitions: int = 4) -> Pipeline:
    """The two stages fed a ``kit.scripted.Script``'s events in event-time order, at an hour of event time a
    second."""
    events = sorted(script.events, key=lambda e: (e[3]["occurred_at"], e[3]["event_id"]))
    t0 = events[0][3]["occurred_at"]
    times = ("occurred_at", "published_at", "starts_at", "ends_at")
    return Pipeline(partitions=partitions).deliver(
        [((rec["occurred_at"] - t0) / 3_600_000, kind, {k: (_dt(v) if k in times else v) for k, v in rec.items()})
         for kind, _, _, rec in events])


def answer_in_order(script, partitions: int = 4) -> dict[str, str]:
    """The live alerts of ``in_order``: the answer a worker must give however the same events reach it."""
    return in_order(script, partitions).live()
