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
from schemas.codec import get_codec
from schemas.eventtime import EventTimeBounds
from streams import derived, ruleset
from streams.evaluate import last_versions
from streams.decoding import PlainDecoder
from streams.faust_workarounds import subject_partition
from streams.regional_stage import RegionalStage
from streams.scripted import _dt
from streams.subject_stage import SubjectStage, upstream_key
from yrdbus import topics
from yrdbus.settings import get_settings

REGIONS = ("SH", "JS", "ZJ", "AH")
SOURCE_PARTITIONS = topics.DEFAULT_PARTITIONS
TICK_S = 2.0
EPOCH_S = 1_700_000_000.0        # the reader's clock starts here (any fixed point)


class Pipeline:
    def __init__(self, partitions: int = 4, rs=None, rate: float = 5_000.0):
        rs = rs or ruleset.default()
        self.codec = get_codec()
        bounds = EventTimeBounds.from_settings(get_settings())
        decoder = PlainDecoder(self.codec, bounds)
        self.partitions, self.rate = partitions, rate
        self.subject = SubjectStage(rs, decoder, bounds, partitions, {}, {})
        self.regional = RegionalStage(rs, decoder, bounds, {})
        self.subject.wants_regional = self.regional.rules.vessel.wants
        self.sources = [topics.source(r, k) for r in REGIONS for k in ("clearance", "alert", "case")]
        regional_sources = [t for t in self.sources if not t.endswith(".clearance")]
        self.subject.assigned(list(range(partitions)), [upstream_key(t, p) for t in self.sources
                                                        for p in range(SOURCE_PARTITIONS)])
        self.regional.assigned([upstream_key("subjects", p) for p in range(partitions)]
                               + [upstream_key(t, p) for t in regional_sources for p in range(SOURCE_PARTITIONS)])
        self.offsets: dict = defaultdict(int)
        self.versions: list[dict] = []      # every derived alert sent, in order
        self.outputs = 0

    # ------------------------------------------------------------------ delivery
    def deliver(self, delivery: list) -> "Pipeline":
        """Every (publish time, kind, record) of ``delivery`` read in publish order, with the worker's ticks."""
        placed = sorted(((at, n, kind, rec, *self._place(kind, rec)) for n, (at, kind, rec) in enumerate(delivery)),
                        key=lambda x: (x[0], x[1]))
        published = [(x[0], (x[4], x[5])) for x in placed]
        now, next_tick, unread_from = 0.0, TICK_S, 0
        for i, (at, _, kind, rec, topic, part, key) in enumerate(placed):
            now = max(now + 1.0 / self.rate, at)
            while next_tick <= now:
                self._tick(next_tick, self._behind(published, i, next_tick))
                next_tick += TICK_S
            self._read(kind, rec, topic, part, key, at, now)
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
    def _read(self, kind, rec, topic, part, key, published: float, now: float) -> None:
        raw = self.codec.encode(kind, rec)
        offset = self.offsets[(topic, part)]
        self.offsets[(topic, part)] += 1
        src = upstream_key(topic, part)
        if kind == "clearance":            # read in place: the stations key clearances by subject
            assert subject_partition(key, self.partitions) == part
            self._subject(self.subject.step(part, kind, raw, key, EPOCH_S + published, (part, src), src, topic), now)
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
        tick = json.dumps({"_kind": "tick", "busy": sorted(reg_busy)}).encode()
        self._regional(self.regional.step(tick, {"yrd-via": "tick"}, "streams.regional", EPOCH_S + now))

    def _subject(self, step, now: float) -> None:
        assert step.error is None, step.error
        for value, headers in step.forward:
            h = {k: v.decode() for k, v in headers}
            self._regional(self.regional.step(value, h, "streams.regional", EPOCH_S + now))
        self._sent(step.outs)
        self.subject.flow_table.update(step.flow)
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
                json.dumps(v)               # what the table's changelog writes (the stage goes on with its own copy)
                self.regional.table[k] = v

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


def answer_in_order(script, partitions: int = 4) -> dict[str, str]:
    """The live alerts of the two stages fed a ``streams.scripted.Script``'s events in event-time order, at an
    hour of event time a second: the answer a worker must give however the same events reach it."""
    events = sorted(script.events, key=lambda e: (e[3]["occurred_at"], e[3]["event_id"]))
    t0 = events[0][3]["occurred_at"]
    times = ("occurred_at", "published_at", "starts_at", "ends_at")
    return Pipeline(partitions=partitions).deliver(
        [((rec["occurred_at"] - t0) / 3_600_000, kind, {k: (_dt(v) if k in times else v) for k, v in rec.items()})
         for kind, _, _, rec in events]).live()
