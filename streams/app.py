"""The stream processors as a Faust app: thin agents around the pure rules.

Topology::

  border.<R>.alert, .case (8) + control ──rekey──► streams.subjects  (N partitions, keyed by subject token)
                                            └───► streams.regional  (1 partition: alerts, cases, control)
  border.<R>.clearance (4) ─────────────subjects──► (read where they are, when co-partitioned; see below)
  streams.subjects ──subjects──► alerts.derived, alerts.to.<R>, risk.scores
                            └──► streams.regional (diverted and crew clearances, hourly flow partials)
  streams.regional ──regional──► alerts.derived, alerts.to.<R>, trends, risk.scores

Clearances are nearly all the traffic. The stations key a clearance by its subject and partition with
Kafka's murmur2 partitioner (connectors/publisher.py), which is also how the subject table places a
subject: partition p of every clearance topic then holds the subjects of subject partition p, Faust assigns
the co-partitioned topics' partition p to one worker, and the subject stage reads the clearance where it
is. A clearance that is not where its subject's state is (another partitioner, no key, topics with another
partition count) is forwarded to streams.subjects first, as alerts and cases are. The re-key step forwards
the value's bytes untouched (only alerts and cases, which are few, are decoded to find their subjects).
State lives in tables with compacted changelog topics and is recovered after a restart.

Event time: the subject stage's watermark is the smallest of its partitions' and
its source partitions' (largest event time minus ``lateness_minutes``; one idle
for ``idle_partition_seconds`` stops holding it back); the regional stage has one
partition and its own, wider lateness. Deadlines fire on watermarks only.
"""
from __future__ import annotations

import asyncio
import heapq
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import faust
from aiokafka.partitioner import murmur2

from schemas.codec import get_codec
from schemas.deadletter import headers_for
from schemas.errors import EventError
from schemas.eventtime import EventTimeBounds
from streams import catchup, derived, metrics, ruleset, subject as subject_rules
from streams.event_time import RecordClock, Watermark
from streams.deadlines import Deadlines
from streams.decoding import PlainDecoder
from streams.events import for_avro
from streams.flow import FlowCounter
from streams.regional import SECTIONS, RegionalRules
from yrdbus import kafka_config, topics
from yrdbus.settings import get_settings

log = logging.getLogger("yrdbus.streams")

# the regional table's key of its upstreams' largest event times (the watermark's state)
WATERMARK_KEY = "watermark"
OUTPUT_KIND = {"derived_alert": "derived_alert", "trend": "trend", "risk": "risk"}


@dataclass
class StreamsConfig:
    bootstrap: str
    app_id: str = "yrdbus-streams"
    prefix: str = ""                 # a private copy of every topic (tests, side-by-side runs)
    partitions: int = 4              # partitions of the subject-keyed internal topic
    data_dir: Path = Path("var/streams")
    rules: str | None = None
    replication: int = 1
    metrics_port: int | None = None

    def t(self, name: str) -> str:
        return self.prefix + name

    @property
    def subject_topic(self) -> str:
        return self.t("streams.subjects")

    @property
    def regional_topic(self) -> str:
        return self.t("streams.regional")


def _kind_of_source(name: str, prefix: str) -> str:
    bare = name[len(prefix):] if prefix and name.startswith(prefix) else name
    if bare == topics.CONTROL:
        return "control"
    return bare.rsplit(".", 1)[-1]


def upstream_key(topic: str, partition) -> str:
    """Where a record reaching a stage came from: ``<topic>|<partition>`` (the watermarks' and the flow
    counter's key of a source partition; ``subjects|<p>`` for the subject stage's partition p)."""
    return f"{topic}|{partition}"


def _source_of(headers: dict, source: str) -> str:
    """The source partition a forwarded record came from, from the re-key step's headers."""
    return upstream_key(source, headers.get("yrd-source-partition", ""))


def restorable(maxima: dict, bounds: EventTimeBounds, where: str) -> dict:
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


def origin_of(headers: dict) -> tuple[int, int] | None:
    """The source partition and offset of a record the re-key step forwarded (None: not forwarded, or by an
    older worker). A dead letter names them, so the worker's and the sink's dead letters of one source record
    name the same origin (``dead_letters`` keeps one row per origin)."""
    try:
        return int(headers["yrd-source-partition"]), int(headers["yrd-source-offset"])
    except (KeyError, ValueError):
        return None


class ProcessingError(EventError):
    """An event a stage could not process (a fault of the stage, not of the event's contract)."""

    reason = "processing_error"


def subject_partition(key: bytes, partitions: int) -> int:
    """The partition of a subject's key among ``partitions``: Kafka's murmur2 partitioner, as the stations' producer
    (librdkafka's ``murmur2_random``) and the Java client place a keyed record."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


class SubjectTable(faust.Table):
    """A table whose changelog partition is the key's partition in the subject topic (Kafka's murmur2
    partitioner, as the producer chose it), not the partition of the event being processed.

    Faust's own ``use_partitioner`` asks the producer's metadata synchronously and fails while a new
    changelog topic's metadata is not yet cached; the partition is a pure function of the key anyway.
    """

    def partition_for_key(self, key):
        return subject_partition(key.encode() if isinstance(key, str) else key, self.partitions)


def build_app(cfg: StreamsConfig) -> faust.App:
    rs = ruleset.load(cfg.rules) if cfg.rules else ruleset.default()
    codec = get_codec()
    # a source event dated outside the contract's bounds is dead-lettered where it is decoded, before any stage
    # observes its time: a forged date must not move a watermark (nor fire every deadline on the way)
    bounds = EventTimeBounds.from_settings(get_settings())
    decoder = PlainDecoder(codec, bounds)
    brokers = [f"kafka://{h.strip()}" for h in cfg.bootstrap.split(",") if h.strip()]
    app = faust.App(
        cfg.app_id,
        broker=brokers,
        store="memory://",            # state is rebuilt from the compacted changelogs on start
        datadir=str(cfg.data_dir),
        topic_partitions=cfg.partitions,
        topic_replication_factor=cfg.replication,
        table_standby_replicas=0,
        web_enabled=False,
        consumer_auto_offset_reset="earliest",
        # small fetches interleave partitions finely, so one partition's backlog cannot race far ahead
        consumer_max_fetch_size=256 * 1024,
        producer_acks=-1,
        # 5 ms: a subject step waits for its outputs' acks before it writes its state (emit), and with 50 ms
        # of linger that wait held the stage: 3,400 against 4,900 events/s (docs/benchmarks.md). 50 ms was
        # chosen while every clearance was forwarded through streams.subjects; they are now read in place
        producer_linger=0.005,
        producer_max_batch_size=256 * 1024,
        producer_compression_type="lz4",
        # a worker that dies is noticed after this long, and its partitions move to the others
        broker_session_timeout=10.0,
        broker_heartbeat_interval=2.0,
        # A new worker creates its internal topics (streams.*, changelogs) just before it joins its group; on a
        # busy broker they may not be in the metadata yet when the group leader assigns partitions, and they are
        # then left out of the assignment. The re-key step still fills streams.subjects, but nobody reads it
        # until a metadata refresh notices the topics and rebalances: aiokafka's default is 5 minutes. 10 s
        # bounds that stall (and lets partitions added by `yrdbus topics apply` be picked up as soon).
        consumer_metadata_max_age_ms=10_000,
        # no timer or agent runs on the leader only: no leader-election topic to create and assign
        topic_disable_leader=True,
        key_serializer="raw",
        value_serializer="raw",
    )

    sources = [cfg.t(topics.source(r, k)) for r in ("SH", "JS", "ZJ", "AH") for k in ("clearance", "alert", "case")]
    regional_sources = [t for t in sources if not t.endswith(".clearance")]   # what the re-key step forwards there
    clearance_sources = [t for t in sources if t.endswith(".clearance")]     # what the subject stage reads itself
    control_topic = cfg.t(topics.CONTROL)
    source_topic = app.topic(*regional_sources, control_topic, key_type=bytes, value_type=bytes)
    clearance_topic = app.topic(*clearance_sources, key_type=bytes, value_type=bytes)
    subject_topic = app.topic(cfg.subject_topic, partitions=cfg.partitions, internal=True,
                              key_type=bytes, value_type=bytes)
    regional_topic = app.topic(cfg.regional_topic, partitions=1, internal=True, key_type=bytes, value_type=bytes)
    out = {
        "derived": app.topic(cfg.t(topics.DERIVED_ALERTS), key_type=bytes, value_type=bytes),
        "trend": app.topic(cfg.t(topics.TRENDS), key_type=bytes, value_type=bytes),
        "risk": app.topic(cfg.t(topics.RISK_SCORES), key_type=bytes, value_type=bytes),
        **{f"to.{r}": app.topic(cfg.t(topics.routed_alerts(r)), key_type=bytes, value_type=bytes)
           for r in ("SH", "JS", "ZJ", "AH")},
    }
    dlq_topics: dict[str, faust.TopicT] = {}

    # subject tokens are the keys of the subject topic too: the changelog partition of a key is the topic
    # partition of the same key, whichever event wrote it (deadlines fire on the watermark, while another
    # subject's event is being processed)
    table_schema = faust.Schema(key_type=str, key_serializer="raw", value_serializer="json")
    # A subject's state is kept as the JSON bytes of its changelog record and parsed when its subject is met:
    # held parsed, the dicts and lists cost several times the bytes (a million subjects in state, docs/benchmarks.md).
    subject_schema = faust.Schema(key_type=str, key_serializer="raw", value_type=bytes, value_serializer="raw")
    subjects_table = app.tables.add(SubjectTable(app, name="subjects", default=None, partitions=cfg.partitions,
                                                 schema=subject_schema, value_type=bytes))
    flow_table = app.Table("flowcounts", default=None, partitions=cfg.partitions,
                           schema=table_schema)
    regional_table = app.Table("regional", default=None, partitions=1,
                               schema=table_schema)

    srules = subject_rules.SubjectRules(rs)
    rrules = RegionalRules(rs)
    counter = FlowCounter(rs, cfg.partitions)
    # The subject stage's watermark is the slowest of its own partitions (one read ahead of another must not fire
    # the other's deadlines) and of the source partitions the re-key step forwards from (a source partition
    # whose backlog is not re-keyed yet, after a restart or while a worker that joined takes it over, may hold
    # a traveller's exit: the transit deadline must wait for it). Silence is measured on the clock of the
    # stage's own topic (its records' timestamps: see RecordClock), and a
    # partition with records still to read, here or at another worker's re-key step, is not silent.
    sub_clock, reg_clock = RecordClock(), RecordClock()
    sub_idle_s = float(rs["event_time"]["idle_partition_seconds"])
    sub_wm = Watermark(rs.minutes_ms("event_time", "lateness_minutes"),
                       int(sub_idle_s * 1000), clock=sub_clock)
    # The regional stage is fed by two forwarders (the re-key step: alerts and cases of every source partition;
    # the subject stage: flow partials and some clearances of every subject partition), each reading at its own
    # pace, and the re-key step reads a backlog a fetch at a time (a sparse alert partition's whole day before a
    # case partition's first hour). Its watermark is the slowest upstream's, each keyed by where it comes from;
    # an upstream silent for global_idle_seconds stops holding it back. Silent is measured on the clock of the
    # stage's own topic (its records' timestamps, a tick every 2 s), not the wall clock: a stage reading its
    # topic behind must not take an upstream whose records wait in the unread part for an idle one.
    reg_wm = Watermark(rs.minutes_ms("event_time", "global_lateness_minutes"),
                       int(float(rs["event_time"].get("global_idle_seconds", 10)) * 1000),
                       clock=reg_clock)
    lateness = rs.minutes_ms("event_time", "lateness_minutes")

    vias: dict[str, list] = {}   # subject partition -> the header naming it as the regional stage's upstream
    # every stage's records in their partition's order, a run Faust skipped read again first
    catchup.commit_past_known_gaps()
    in_turn = catchup.Turns(lambda: app.consumer, kafka_config.client_config(**{"bootstrap.servers": cfg.bootstrap}),
                            on_skip=lambda topic, n: metrics.labelled(metrics.UNDELIVERED, topic).inc(n))
    deadlines = Deadlines()   # the subject stage's pending transit deadlines, fired on its watermark
    st = {"rescan": True, "ephemeral": {}, "ephemeral_heap": [],
          "reg_last_wm": None, "flow_dirty": {}, "regional": None, "has_regional": False,
          "reg_expect": None, "reg_wm_dirty": False,
          "sub_expect": None, "active_at": 0.0, "sub_parts": [], "flow_wm": {},
          "part_max": {}, "in_place": set()}

    def partitions_of(names) -> list[str]:
        """The upstream keys of every partition of these topics."""
        return [upstream_key(name, p) for name in names
                for p in range(app.consumer.topic_partitions(name) or topics.DEFAULT_PARTITIONS)]

    @app.on_partitions_assigned.connect
    async def _assigned(app_, assigned, **kwargs):  # noqa: ARG001
        st["rescan"] = True
        st["regional"] = None
        st["has_regional"] = any(tp.topic == cfg.regional_topic for tp in assigned)
        in_turn.forget(assigned)
        # the clearance topics partitioned as the subject stage is: a clearance there may be read in place
        st["in_place"] = {t for t in clearance_sources
                          if (app.consumer.topic_partitions(t) or topics.DEFAULT_PARTITIONS) == cfg.partitions}
        if st["has_regional"]:
            # every upstream of the regional stage holds its watermark back until it has spoken (or gone idle),
            # from the stage's first record on
            st["reg_expect"] = [upstream_key("subjects", p) for p in range(cfg.partitions)] \
                + partitions_of(regional_sources)
        log.debug("assigned %d partitions (regional stage here: %s)", len(assigned), st["has_regional"])
        mine = [tp.partition for tp in assigned if tp.topic == cfg.subject_topic]
        st["part_max"] = {p: m for p, m in st["part_max"].items() if p in mine}
        for k in list(sub_wm.maxima()):
            if (k if isinstance(k, int) else k[0]) not in mine:
                sub_wm.forget(k)
        st["sub_parts"] = mine
        if mine:
            # ticks for a while, whether or not there is anything to re-key: the stage's clock must move on for
            # its silent upstreams to go idle, or a restart with nothing new would judge nothing
            st["active_at"] = time.monotonic()
            # every (subject partition, source partition) pair holds the stage back from its next record on,
            # until it speaks or goes silent; those already known count as just heard from (the rebalance
            # itself was a silence of nobody's making)
            every = partitions_of(sources)
            st["sub_expect"] = [(p, s) for p in mine for s in every]

    # ------------------------------------------------------------------ output
    async def dead_letter(source: str, raw: bytes, key, error, partition=None, offset=None) -> None:
        name = topics.dead_letter(source)
        t = dlq_topics.get(name) or dlq_topics.setdefault(name, app.topic(name, key_type=bytes, value_type=bytes))
        await t.send(key=key, value=raw, headers=headers_for(source, error, partition=partition, offset=offset))
        metrics.labelled(metrics.DEAD, name, getattr(error, "reason", "error")).inc()
        log.warning("dead letter %s: %s", name, error)

    async def emit(outs: list) -> None:
        """Send the outputs and wait until the broker has them: only then may the state that records them
        (an alert's "done" mark) go to the changelog, or a crash in between would lose the alert."""
        if not outs:
            return
        now = int(time.time() * 1000)
        futs = []
        for kind, rec in outs:
            rec["emitted_at"] = now
            metrics.labelled(metrics.OUTPUTS, kind).inc()
            if kind == "derived_alert":
                raw = codec.encode("derived_alert", for_avro(rec))
                key = rec["alert_id"].encode()
                futs.append(await out["derived"].send(key=key, value=raw))
                for region in derived.recipients(rec):
                    futs.append(await out[f"to.{region}"].send(key=key, value=raw))
                    metrics.labelled(metrics.DERIVED, rec["kind"], region).inc()
                metrics.labelled(metrics.EMIT_LAG, kind).observe(max(0.0, (now - rec["occurred_at"]) / 1000))
            elif kind == "trend":
                futs.append(await out["trend"].send(key=rec["signal_id"].encode(),
                                                    value=codec.encode("trend", for_avro(rec))))
            elif kind == "risk":
                key = f"{rec['subject_kind']}:{rec['subject']}".encode()
                futs.append(await out["risk"].send(key=key, value=codec.encode("risk", for_avro(rec))))
        await asyncio.gather(*futs)

    async def guarded(stage: str, event, handler) -> None:
        """One event through a handler; a failure is logged and dead-lettered, and the stage goes on."""
        try:
            await handler(event)
        except Exception as exc:  # a bug must not stop the stage: the event is kept with the reason
            log.exception("%s: event at %s[%s]@%s failed", stage, event.message.topic, event.message.partition,
                          event.message.offset)
            await dead_letter(event.message.topic, event.value, event.key,
                              ProcessingError(f"{stage} stage failed on this event: {type(exc).__name__}: {exc}"),
                              event.message.partition, event.message.offset)

    # ------------------------------------------------------------------ re-key
    @app.agent(source_topic)
    async def rekey(stream):
        async for event in stream.events():
            await in_turn(event, rekey_event)

    @app.agent(clearance_topic)
    async def clearances(stream):
        async for event in stream.events():
            await in_turn(event, clearance_event)

    async def clearance_event(event) -> None:
        """A clearance in its subject's partition goes through the subject stage here; any other is re-keyed."""
        msg, key = event.message, event.key
        if key and msg.topic in st["in_place"] and subject_partition(key, cfg.partitions) == msg.partition:
            src = upstream_key(msg.topic, msg.partition)
            metrics.labelled(metrics.EVENTS_IN, msg.topic, "clearances").inc()
            async with subject_turn:
                await guarded("subjects", event, lambda e: subject_step(e, "clearance", msg.topic, (msg.partition, src),
                                                                          src))
        else:
            await rekey_event(event)

    async def rekey_event(event) -> None:
        msg = event.message
        st["active_at"] = time.monotonic()
        kind = _kind_of_source(msg.topic, cfg.prefix)
        raw, key = event.value, event.key
        metrics.labelled(metrics.EVENTS_IN, msg.topic, "rekey").inc()
        headers = [("yrd-kind", kind.encode()), ("yrd-source", msg.topic.encode()),
                   ("yrd-source-partition", str(msg.partition).encode()),
                   ("yrd-source-offset", str(msg.offset).encode())]
        try:
            if kind == "clearance" and key:
                await subject_topic.send(key=key, value=raw, headers=headers)
                return
            rec = decoder.decode(raw, kind)
            if kind == "clearance":
                await subject_topic.send(key=rec["subject"].encode(), value=raw, headers=headers)
                return
            if kind == "alert" and rec.get("subject"):
                await subject_topic.send(key=rec["subject"].encode(), value=raw, headers=headers)
            elif kind == "case":
                for s in sorted(set(rec.get("subjects") or [])):
                    await subject_topic.send(key=s.encode(), value=raw, headers=headers)
            await regional_topic.send(key=b"regional", value=raw, headers=headers)
        except EventError as exc:
            await dead_letter(msg.topic, raw, key, exc, msg.partition, msg.offset)

    # ------------------------------------------------------------------ subject stage
    def rescan() -> None:
        pending = ((subject_rules.next_deadline(json.loads(raw)) if raw else None, s)
                   for s, raw in subjects_table.items())
        deadlines.reset((d, s) for d, s in pending if d is not None)
        st["rescan"] = False

    def durable_state(s: str) -> dict | None:
        raw = subjects_table.get(s)
        return json.loads(raw) if raw else None

    def load_subject(s: str) -> dict:
        state = durable_state(s)
        if state is None:
            hit = st["ephemeral"].get(s)
            state = hit if hit is not None else subject_rules.new_state()
        return state

    def store_subject(s: str, state: dict, at: int, writes: dict) -> None:
        """Keep a subject's state; its changelog write waits in ``writes`` until the outputs are sent."""
        if subject_rules.is_durable(state):
            writes[s] = state
            st["ephemeral"].pop(s, None)
            d = subject_rules.next_deadline(state)
            if d is not None:
                deadlines.add(d, s)
        else:
            if s in subjects_table or s in writes:
                writes[s] = None
            if state["crossings"]:
                st["ephemeral"][s] = state
                heapq.heappush(st["ephemeral_heap"], (at, s))

    # The subject stage reads two agents' records (streams.subjects, and the clearances read where they are):
    # one step at a time, or two steps of one subject could interleave at their awaits.
    subject_turn = asyncio.Lock()

    @app.agent(subject_topic)
    async def subjects(stream):
        async for event in stream.events():
            await in_turn(event, subject_turned)

    async def subject_turned(event) -> None:
        async with subject_turn:
            await guarded("subjects", event, subject_event)

    async def subject_event(event) -> None:
        """A record of streams.subjects: a forwarded event (its headers say what and from where) or a tick."""
        msg = event.message
        headers = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in (event.headers or {}).items()} \
            if isinstance(event.headers, dict) else {k: v.decode() for k, v in (event.headers or [])}
        kind, source = headers.get("yrd-kind", "clearance"), headers.get("yrd-source", msg.topic)
        # a subject partition is a merge of the source partitions in the order they were re-keyed, not in event
        # time: what it holds of one source partition is in that partition's order, so each pair is a stream
        src = _source_of(headers, source)
        upstream = (msg.partition, src) if "yrd-source-partition" in headers else msg.partition
        await subject_step(event, kind, source, upstream, src, origin_of(headers))

    async def subject_step(event, kind: str, source: str, upstream, src: str, origin=None) -> None:
        """One record through the subject stage: ``upstream`` is the watermark's key of where it came from (subject
        partition, source partition), ``src`` the source partition's."""
        msg = event.message
        raw, key = event.value, event.key
        sub_clock.advance(msg.timestamp)
        if st["sub_expect"]:
            sub_wm.touch(sub_wm.maxima())
            # what the partitions' upstreams had given before a restart (kept with their flow counts): the
            # stage must not fall back behind it, or a restart at the end of a stream would judge nothing more
            for p in st["sub_parts"]:
                kept = restorable((flow_table.get(str(p)) or {}).get("wm") or {}, bounds, f"flowcounts[{p}]")
                sub_wm.restore({(p, src): m for src, m in kept.items()})
                if kept:
                    st["part_max"][p] = max(st["part_max"].get(p, -(1 << 62)), *kept.values())
            sub_wm.expect(st["sub_expect"])
            st["sub_expect"] = None
        if st["rescan"]:
            rescan()
        part = str(msg.partition)
        if kind == "tick":
            metrics.labelled(metrics.TICKS, "subjects").inc()
            busy = json.loads(raw).get("busy") or ()
            sub_wm.touch((p, s) for p in st["sub_parts"] for s in busy)
            await subject_close(msg.partition, flow_table.get(part) or FlowCounter.new_state(), [], {})
            return
        st["active_at"] = time.monotonic()
        metrics.labelled(metrics.EVENTS_IN, source, "subjects").inc()
        try:
            ev = decoder.decode(raw, kind)
        except EventError as exc:
            await dead_letter(source, raw, key, exc, *(origin or (msg.partition, msg.offset)))
            return
        s = key.decode() if key else (ev.get("subject") or "")
        if sub_wm.observe(upstream, ev["occurred_at"]):
            metrics.labelled(metrics.LATE, "subjects").inc()
        if ev["occurred_at"] > st["part_max"].get(msg.partition, -(1 << 62)):
            st["part_max"][msg.partition] = ev["occurred_at"]
        outs: list = []
        writes: dict = {}   # subject -> its new state (None: delete), written once the outputs are sent
        state = load_subject(s)
        outs += srules.on_event(state, ev, s)
        store_subject(s, state, ev["occurred_at"], writes)
        via = via_of(part)
        fstate = flow_table.get(part) or FlowCounter.new_state()
        if kind == "clearance":
            wm = sub_wm.current()
            for p in counter.on_clearance(fstate, ev, msg.partition, wm, source=src):
                await regional_topic.send(key=b"regional", value=json.dumps(p).encode(), headers=via)
            if ev.get("scheduled_port") or rrules.vessel.wants(ev):
                await regional_topic.send(key=b"regional", value=raw, headers=[
                    ("yrd-kind", b"clearance"), ("yrd-source", source.encode()), *via])
            st["flow_dirty"][part] = st["flow_dirty"].get(part, 0) + 1
        await subject_close(msg.partition, fstate, outs, writes)

    def via_of(part: str) -> list:
        """The header naming subject partition ``part`` as the regional stage's upstream."""
        return vias.get(part) or vias.setdefault(part, [("yrd-via", upstream_key("subjects", part).encode())])

    async def subject_close(partition: int, fstate: dict, outs: list, writes: dict) -> None:
        """The end of a subject-stage step (an event or a tick): what the watermark has passed, the flow
        counts kept, the outputs sent and then the states written."""
        await subject_watermark(partition, fstate, outs, writes)
        keep_flow(str(partition), fstate)
        await subject_outputs(outs, writes)

    def keep_flow(part: str, fstate: dict) -> None:
        """The partition's flow counts go to its changelog every so often, not on every clearance, with the
        largest event time each of its upstreams has given so far (restored after a restart)."""
        if st["flow_dirty"].get(part, 0) >= 200 or part not in flow_table:
            p = int(part)
            fstate["wm"] = {k[1]: m for k, m in sub_wm.maxima().items() if isinstance(k, tuple) and k[0] == p}
            flow_table[part] = fstate
            st["flow_dirty"][part] = 0

    async def subject_watermark(partition: int, fstate: dict, outs: list, writes: dict) -> None:
        """Judge what the subject stage's watermark has passed: transit deadlines, forgotten crossings, flow
        buckets of ``partition``."""
        part = str(partition)
        via = via_of(part)
        wm = sub_wm.current()
        metrics.labelled(metrics.WATERMARK, "subjects").set(max(0, wm) / 1000)
        rose = deadlines.watermark(wm)

        def current(hs: str) -> int | None:
            # a state changed in this step (this event's subject) is read from the step, not the table
            hstate = writes[hs] if hs in writes else durable_state(hs)
            return subject_rules.next_deadline(hstate) if hstate is not None else None

        # a deadline learned already due (a transit entry read after the watermark passed its deadline: a late
        # upload) fires at once, on the highest watermark the stage has reached, not when it next rises
        for _, hs in deadlines.due(current):
            hstate = writes[hs] if hs in writes else durable_state(hs)
            outs += srules.on_watermark(hstate, hs, deadlines.judge)
            store_subject(hs, hstate, deadlines.judge, writes)
        if rose:
            while st["ephemeral_heap"] and st["ephemeral_heap"][0][0] < wm - lateness:
                _, es = heapq.heappop(st["ephemeral_heap"])
                e = st["ephemeral"].get(es)
                if e is not None and all(c["at"] < wm - lateness for c in e["crossings"]):
                    del st["ephemeral"][es]
        # A partition's flow counts wait only for the clearance sources it counts (FlowCounter holds them back by
        # the slowest one still active), not for the stage's watermark: that one also waits for sparse alert and
        # case sources, and the regional stage, which hears nothing from a partition until it sends an hour, would
        # judge the hours without it. Each partition's counts are judged on the largest event time it has read.
        fwm = st["part_max"].get(partition, -(1 << 62)) - lateness
        if fwm > st["flow_wm"].get(part, -(1 << 62)):
            st["flow_wm"][part] = fwm
            for p in counter.on_watermark(fstate, fwm, partition):
                await regional_topic.send(key=b"regional", value=json.dumps(p).encode(), headers=via)
                st["flow_dirty"][part] = 1 << 30

    async def subject_outputs(outs: list, writes: dict) -> None:
        await emit(outs)
        for ws, wstate in writes.items():
            if wstate is not None:
                subjects_table[ws] = json.dumps(wstate, separators=(",", ":")).encode()
            elif ws in subjects_table:
                del subjects_table[ws]
        metrics.labelled(metrics.TABLE, "subjects").set(len(subjects_table))
        metrics.labelled(metrics.TABLE, "subjects_recent").set(len(st["ephemeral"]))

    # ------------------------------------------------------------------ regional stage
    def regional_state() -> dict:
        if st["regional"] is None:
            fresh = rrules.new_state()
            st["regional"] = {sec: (regional_table.get(sec) or fresh[sec]) for sec in SECTIONS if sec != "vessel"}
            # vessels are many and change one at a time: one table key each
            st["regional"]["vessel"] = {k[len("vessel:"):]: v for k, v in regional_table.items()
                                        if k.startswith("vessel:")}
            # the upstreams' event times so far: what was processed before a restart is not read again
            reg_wm.restore(restorable(regional_table.get(WATERMARK_KEY) or {}, bounds, f"regional[{WATERMARK_KEY}]"))
        return st["regional"]

    # The regional watermark only moves when the stage reads something; once its upstreams fall silent (the end
    # of a backlog, a quiet night), a tick through its own topic lets it see them go idle and judge what is due.
    # Every worker's tick also names the upstreams it still has records of to read (a restart's backlog): silent
    # so far, they are not idle, and must not let the regional stage judge hours whose events they hold.
    # The ticks also keep the stage's clock (its records' timestamps) going when nothing else comes.
    # The subject stage gets the same: a worker's tick reaches each subject partition, naming the source
    # partitions it has a backlog of; its own subject partitions with records still to read it touches here.
    @app.timer(interval=2.0)
    async def ticks():
        behind = backlogged()
        await in_turn.reread_stalled(behind + backlogged((control_topic,)))
        busy: set[str] = set()
        clearance_sources = []
        sources_behind = sorted(upstream_key(tp.topic, tp.partition) for tp in behind if tp.topic in sources)
        # a subject partition with records still to read: the upstreams it has heard from are not idle (one that
        # never spoke goes idle as usual, or it would hold the stage at minus infinity while any backlog lasts),
        # nor are its flow counters' sources
        behind_parts = {tp.partition for tp in behind if tp.topic == cfg.subject_topic}
        if behind_parts:
            sub_wm.touch(k for k in sub_wm.maxima() if isinstance(k, tuple) and k[0] in behind_parts)
            for bp in behind_parts:
                counter.touch(bp, ((flow_table.get(str(bp)) or {}).get("sources") or {}))
        # while it has a backlog, and after the last record it re-keyed or judged until the subject stage's silent
        # upstreams have gone idle on its clock (which these ticks move) and what is due is judged, however late the
        # ticks come on a busy machine; then a quiet bus's topics stay quiet
        if sources_behind or time.monotonic() - st["active_at"] < sub_idle_s + 5 or not sub_wm.settled():
            tick = json.dumps({"_kind": "tick", "busy": sources_behind}).encode()
            for p in range(app.consumer.topic_partitions(cfg.subject_topic) or cfg.partitions):
                await subject_topic.send(value=tick, partition=p, headers=[("yrd-kind", b"tick")])
        for tp in behind:
            if tp.topic == cfg.subject_topic:
                busy.add(upstream_key("subjects", tp.partition))
            elif tp.topic in regional_sources:
                busy.add(upstream_key(tp.topic, tp.partition))
            else:   # a clearance not yet re-keyed may reach any subject partition, and from there the stage
                busy.update(upstream_key("subjects", p) for p in range(cfg.partitions))
                clearance_sources.append(upstream_key(tp.topic, tp.partition))
        # the same for this worker's flow counters: a clearance source it has a backlog of is not idle
        if clearance_sources:
            for tp in app.consumer.assignment():
                if tp.topic == cfg.subject_topic:
                    counter.touch(tp.partition, clearance_sources)
        if busy or st["has_regional"]:
            await regional_topic.send(key=b"regional", value=json.dumps({"_kind": "tick", "busy": sorted(busy)})
                                      .encode(), headers=[("yrd-via", b"tick")])

    def backlogged(names=None) -> list:
        """The partitions of ``names`` (default: the source and subject topics) of which this worker has records
        not yet processed."""
        names = set(names) if names is not None else {*sources, cfg.subject_topic}
        behind = []
        for tp in app.consumer.assignment():
            if tp.topic not in names:
                continue
            try:   # the end offset the consumer last heard of (no request: the tick must not queue behind fetches)
                hw = app.consumer.highwater(tp)
            except Exception:  # revoked meanwhile
                continue
            nxt = in_turn.next_offset(tp)
            if hw is None or (hw > 0 and (nxt is None or nxt < hw)):
                behind.append(tp)
        return behind

    @app.agent(regional_topic)
    async def regional(stream):
        async for event in stream.events():
            await in_turn(event, lambda e: guarded("regional", e, regional_event))

    async def regional_event(event) -> None:
        msg = event.message
        raw = event.value
        headers = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in (event.headers or {}).items()} \
            if isinstance(event.headers, dict) else {k: v.decode() for k, v in (event.headers or [])}
        source = headers.get("yrd-source", msg.topic)
        reg_clock.advance(msg.timestamp)
        if raw[:1] == b"{":
            ev = json.loads(raw)
        else:
            try:
                ev = decoder.decode(raw, headers.get("yrd-kind"))
            except EventError as exc:
                await dead_letter(source, raw, event.key, exc, *(origin_of(headers) or (msg.partition, msg.offset)))
                return
            if ev["_kind"] == "control":
                ev["occurred_at"] = ev.get("occurred_at") or ev["starts_at"]
        state = regional_state()
        if st["reg_expect"]:
            reg_wm.expect(st["reg_expect"])
            st["reg_expect"] = None
        if ev["_kind"] == "tick":
            metrics.labelled(metrics.TICKS, "regional").inc()
            reg_wm.touch(ev.get("busy") or ())
            await regional_watermark(state, [], set())
            return
        metrics.labelled(metrics.EVENTS_IN, source, "regional").inc()
        # an operator's control event is issued on its own clock: it does not move event time on
        upstream = headers.get("yrd-via") or _source_of(headers, source)
        if ev["_kind"] != "control":
            before = reg_wm.peak(upstream)
            if reg_wm.observe(upstream, ev["occurred_at"]):
                metrics.labelled(metrics.LATE, "regional").inc()
            if reg_wm.peak(upstream) != before:
                st["reg_wm_dirty"] = True
        first_hour = state["trend"]["first_hour"]
        outs = rrules.on_event(state, ev)
        touched = set(rrules.touched(ev))
        if ev["_kind"] != "case" and state["trend"]["first_hour"] == first_hour:
            touched.discard("trend")
        await regional_watermark(state, outs, touched)

    async def regional_watermark(state: dict, outs: list, touched: set) -> None:
        """Advance the regional watermark, send the outputs, then write the changed state."""
        wm = reg_wm.current()
        metrics.labelled(metrics.WATERMARK, "regional").set(max(0, wm) / 1000)
        if st["reg_last_wm"] is None or wm > st["reg_last_wm"]:
            st["reg_last_wm"] = wm
            more, changed = rrules.on_watermark(state, wm)
            if changed:
                log.debug("regional watermark %s: trends judged to hour %s, flow to hour %s, %d outputs due",
                          wm, state["trend"]["judged"], state["flow"]["judged"], len(more))
            outs += more
            touched |= set(changed)
        await emit(outs)
        for sec in sorted(touched):
            regional_table[sec] = state[sec]
        if st["reg_wm_dirty"]:
            regional_table[WATERMARK_KEY] = reg_wm.maxima()
            st["reg_wm_dirty"] = False
        for vid in sorted(rrules.vessel.dirty):
            if vid in state["vessel"]:
                regional_table[f"vessel:{vid}"] = state["vessel"][vid]
            elif f"vessel:{vid}" in regional_table:
                del regional_table[f"vessel:{vid}"]
        rrules.vessel.dirty.clear()

    app.yrd_config = cfg
    app.yrd_stage_topics = (subject_topic, regional_topic)
    app.yrd_rules = rs
    return app


def worker_topics(app: faust.App) -> list[topics.TopicSpec]:
    """The worker's own topics: the two internal stage topics and the changelog of each table.

    Faust would create them itself as the worker starts, just before it joins its group; on a busy or
    multi-broker cluster they may then be missing from the metadata the group is assigned from (and the
    internal topics are left out of the assignment, or auto-created by a metadata request with the broker's
    default partitions). Created with the bus's topics first, they are there, as Faust would declare them.
    """
    kept = 30 * topics.DAY_MS     # as long as the source topics: a worker away that long loses nothing unread
    declared = [(t, "stream layer stage topic") for t in app.yrd_stage_topics]
    declared += [(table.changelog_topic, f"changelog of the stream layer's {table.name} table")
                 for table in app.tables.values()]
    return [topics.TopicSpec(t.get_topic_name(), t.partitions, -1 if t.compacting else kept,
                             "compact" if t.compacting else "delete", purpose,
                             replication=app.yrd_config.replication, fixed_partitions=True)
            for t, purpose in declared]


def ensure_topics(cfg: StreamsConfig, app: faust.App | None = None) -> None:
    """The topics the stream layer reads and writes exist before the worker subscribes: the bus's topics
    (``yrdbus.topics``; on a secured cluster only admin applies them) and, given the worker's ``app``, its
    own (``worker_topics``, which its principal owns)."""
    topics.ensure(cfg.bootstrap, prefix=cfg.prefix, timeout=60)
    if app is not None:
        topics.apply(cfg.bootstrap, timeout=60, specs=worker_topics(app))
