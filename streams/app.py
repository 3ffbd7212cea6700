"""The stream processors as a Faust app: thin wiring around the stages (streams/subject_stage.py,
streams/regional_stage.py), which hold the rules, the watermarks and the deadlines and run without Kafka.

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

Every workaround of Faust's internals is in streams/faust_workarounds.py.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import faust

from schemas import kafka_config, topics
from schemas.codec import get_codec
from schemas.errors import EventError
from schemas.eventtime import EventTimeBounds
from schemas.settings import get_settings
from streams import escalation, faust_workarounds, metrics, ruleset, watchdog
from streams.decoding import PlainDecoder
from streams.emitter import Emitter
from streams.escalation import EscalationStage
from streams.faust_workarounds import SubjectTable, subject_partition
from streams.regional_stage import WATERMARK_KEY, RegionalStage, origin_of, source_of
from streams.subject_stage import SubjectStage, restorable, upstream_key

log = logging.getLogger("yrdbus.streams")

__all__ = ["StreamsConfig", "build_app", "worker_topics", "ensure_topics", "subject_partition", "restorable",
           "upstream_key", "origin_of", "WATERMARK_KEY", "ProcessingError"]


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
    stall_s: float = 0.0             # the watchdog's time (streams/watchdog.py); 0: none (`yrdbus worker`: 60 s)

    def t(self, name: str) -> str:
        return self.prefix + name

    @property
    def subject_topic(self) -> str:
        return self.t("streams.subjects")

    @property
    def regional_topic(self) -> str:
        return self.t("streams.regional")

    @property
    def escalation_topic(self) -> str:
        return self.t("streams.escalation")


def _kind_of_source(name: str, prefix: str) -> str:
    bare = name[len(prefix):] if prefix and name.startswith(prefix) else name
    if bare == topics.CONTROL:
        return "control"
    return bare.rsplit(".", 1)[-1]


def _headers(event) -> dict:
    """A Faust event's headers as text."""
    if isinstance(event.headers, dict):
        return {k: (v.decode() if isinstance(v, bytes) else v) for k, v in event.headers.items()}
    return {k: v.decode() for k, v in (event.headers or [])}


class ProcessingError(EventError):
    """An event a stage could not process (a fault of the stage, not of the event's contract)."""

    reason = "processing_error"


def _faust_app(cfg: StreamsConfig) -> faust.App:
    brokers = [f"kafka://{h.strip()}" for h in cfg.bootstrap.split(",") if h.strip()]
    return faust.App(
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


def write_all(table, writes: dict, encode=None) -> None:
    """A stage step's state writes into its table: a value is set (``encode``d), None deletes the key."""
    for key, value in writes.items():
        if value is not None:
            table[key] = encode(value) if encode else value
        elif key in table:
            del table[key]


def build_app(cfg: StreamsConfig) -> faust.App:
    """The worker's Faust app: its topics, tables and agents, wired to the stages."""
    return Worker(cfg).app


class Worker:
    """The Faust wiring of one worker: which records reach which stage, in their partition's turn, and what a
    stage's step asks for sent and written."""

    def __init__(self, cfg: StreamsConfig):
        self.cfg = cfg
        self.rules = rs = ruleset.load(cfg.rules) if cfg.rules else ruleset.default()
        self.codec = codec = get_codec()
        # a source event dated outside the contract's bounds is dead-lettered where it is decoded, before any stage
        # observes its time: a forged date must not move a watermark (nor fire every deadline on the way)
        self.bounds = EventTimeBounds.from_settings(get_settings())
        self.decoder = PlainDecoder(codec, self.bounds)
        self.app = app = _faust_app(cfg)
        self.sources = [cfg.t(topics.source(r, k)) for r in ("SH", "JS", "ZJ", "AH")
                        for k in ("clearance", "alert", "case")]
        # what the re-key step forwards to the regional stage, and what the subject stage reads itself
        self.regional_sources = [t for t in self.sources if not t.endswith(".clearance")]
        self.clearance_sources = [t for t in self.sources if t.endswith(".clearance")]
        self.control_topic = cfg.t(topics.CONTROL)
        self.source_topic = app.topic(*self.regional_sources, self.control_topic, key_type=bytes, value_type=bytes)
        self.clearance_topic = app.topic(*self.clearance_sources, key_type=bytes, value_type=bytes)
        self.subject_topic = app.topic(cfg.subject_topic, partitions=cfg.partitions, internal=True,
                                       key_type=bytes, value_type=bytes)
        self.regional_topic = app.topic(cfg.regional_topic, partitions=1, internal=True,
                                        key_type=bytes, value_type=bytes)
        # the alerts as emitted and the officers' dispositions of them, for the escalation stage
        self.feedback_topic = app.topic(cfg.t(topics.DERIVED_ALERTS), cfg.t(topics.DISPOSITIONS),
                                        key_type=bytes, value_type=bytes)
        self.escalation_topic = app.topic(cfg.escalation_topic, partitions=1, internal=True,
                                          key_type=bytes, value_type=bytes)
        self.emitter = Emitter(app, codec, cfg.t)
        self._tables()
        self.subject = SubjectStage(rs, self.decoder, self.bounds, cfg.partitions, self.subjects_table,
                                    self.flow_table)
        self.regional = RegionalStage(rs, self.decoder, self.bounds, self.regional_table)
        self.escalation = EscalationStage(rs, self.escalation_table)
        self.subject.wants_regional = self.regional.rules.vessel.wants
        self.has_regional = False
        self.in_place: set[str] = set()
        self.held: frozenset = frozenset()     # (topic, partition) of the partitions whose offsets this worker commits
        # every stage's records in their partition's order, a run Faust skipped read again first
        faust_workarounds.commit_past_known_gaps()
        faust_workarounds.flush_before_commit()
        self.turns = faust_workarounds.Turns(
            lambda: app.consumer, kafka_config.client_config(**{"bootstrap.servers": cfg.bootstrap}),
            on_skip=lambda topic, n: metrics.labelled(metrics.UNDELIVERED, topic).inc(n), group=cfg.app_id)
        # The subject stage reads two agents' records (streams.subjects, and the clearances read where they are):
        # one step at a time, or two steps of one subject could interleave at their awaits.
        self.subject_turn = asyncio.Lock()
        self._agents()
        app.on_partitions_assigned.connect(self._assigned)
        self.watchdog = self._watchdog()
        app.yrd_config = cfg
        app.yrd_stage_topics = (self.subject_topic, self.regional_topic, self.escalation_topic)
        app.yrd_rules = rs

    def _tables(self) -> None:
        app, cfg = self.app, self.cfg
        # subject tokens are the keys of the subject topic too: the changelog partition of a key is the topic
        # partition of the same key, whichever event wrote it (deadlines fire on the watermark, while another
        # subject's event is being processed)
        table_schema = faust.Schema(key_type=str, key_serializer="raw", value_serializer="json")
        # A subject's state is kept as the JSON bytes of its changelog record and parsed when its subject is met:
        # held parsed, the dicts and lists cost several times the bytes (a million subjects, docs/benchmarks.md).
        subject_schema = faust.Schema(key_type=str, key_serializer="raw", value_type=bytes, value_serializer="raw")
        self.subjects_table = app.tables.add(SubjectTable(app, name="subjects", default=None,
                                                          partitions=cfg.partitions, schema=subject_schema,
                                                          value_type=bytes))
        self.flow_table = app.Table("flowcounts", default=None, partitions=cfg.partitions, schema=table_schema)
        self.regional_table = app.Table("regional", default=None, partitions=1, schema=table_schema)
        self.escalation_table = app.Table("escalation", default=None, partitions=1, schema=table_schema)

    def _watchdog(self) -> watchdog.Watchdog | None:
        """The thread that starts this worker again when it holds records and commits nothing (streams/watchdog.py);
        started with the app."""
        cfg, app = self.cfg, self.app
        if not cfg.stall_s or cfg.stall_s <= 0:
            return None

        def stalled(waiting, stall_s) -> None:
            names = ", ".join(f"{t}[{p}]" for t, p in waiting[:8]) + (" ..." if len(waiting) > 8 else "")
            log.critical("stalled: records waiting in %s and no offset committed for %.0f s while the broker "
                         "answers; the stacks follow", names, stall_s)
            try:
                watchdog.dump_stacks(app.loop)
            finally:
                watchdog.start_again(f"no progress for {stall_s:.0f} s")

        dog = watchdog.Watchdog(kafka_config.client_config(**{"bootstrap.servers": cfg.bootstrap}), cfg.app_id,
                                cfg.stall_s, assigned=lambda: self.held,
                                recovering=lambda: bool(getattr(app, "in_recovery", False)), on_stall=stalled)

        @app.task
        async def _start_watchdog() -> None:
            dog.start()
        return dog

    def partitions_of(self, names) -> list[str]:
        """The upstream keys of every partition of these topics."""
        return [upstream_key(name, p) for name in names
                for p in range(self.app.consumer.topic_partitions(name) or topics.DEFAULT_PARTITIONS)]

    async def _assigned(self, app_, assigned, **kwargs):  # noqa: ARG002
        cfg = self.cfg
        self.has_regional = any(tp.topic == cfg.regional_topic for tp in assigned)
        committed_here = {*self.sources, self.control_topic, cfg.subject_topic, cfg.regional_topic,
                          cfg.escalation_topic, *self.feedback_topic.topics}
        self.held = frozenset((tp.topic, tp.partition) for tp in assigned if tp.topic in committed_here)
        self.turns.forget(assigned)
        # the clearance topics partitioned as the subject stage is: a clearance there may be read in place
        self.in_place = {t for t in self.clearance_sources
                         if (self.app.consumer.topic_partitions(t) or topics.DEFAULT_PARTITIONS) == cfg.partitions}
        self.regional.assigned([upstream_key("subjects", p) for p in range(cfg.partitions)]
                               + self.partitions_of([*self.regional_sources, self.control_topic])
                               if self.has_regional else None)
        log.debug("assigned %d partitions (regional stage here: %s)", len(assigned), self.has_regional)
        self.subject.assigned([tp.partition for tp in assigned if tp.topic == cfg.subject_topic],
                              self.partitions_of(self.sources))

    # ------------------------------------------------------------------ agents
    def _agents(self) -> None:
        app, turns = self.app, self.turns

        @app.agent(self.source_topic)
        async def rekey(stream):
            async for event in stream.events():
                await turns(event, self.rekey_event)

        @app.agent(self.clearance_topic)
        async def clearances(stream):
            async for event in stream.events():
                await turns(event, self.clearance_event)

        @app.agent(self.subject_topic)
        async def subjects(stream):
            async for event in stream.events():
                await turns(event, self.subject_turned)

        @app.agent(self.regional_topic)
        async def regional(stream):
            async for event in stream.events():
                await turns(event, lambda e: self.guarded("regional", e, self.regional_event))

        @app.agent(self.feedback_topic)
        async def feedback(stream):
            async for event in stream.events():
                await turns(event, lambda e: self.guarded("escalation", e, self.feedback_event))

        @app.agent(self.escalation_topic)
        async def escalations(stream):
            async for event in stream.events():
                await turns(event, lambda e: self.guarded("escalation", e, self.escalation_event))

        app.timer(interval=2.0)(self.ticks)

    async def guarded(self, stage: str, event, handler) -> None:
        """One event through a handler; a failure is logged and dead-lettered, and the stage goes on."""
        try:
            await handler(event)
        except Exception as exc:  # a bug must not stop the stage: the event is kept with the reason
            msg = event.message
            log.exception("%s: event at %s[%s]@%s failed", stage, msg.topic, msg.partition, msg.offset)
            await self.emitter.dead_letter(
                msg.topic, event.value, event.key,
                ProcessingError(f"{stage} stage failed on this event: {type(exc).__name__}: {exc}"),
                msg.partition, msg.offset)

    # ------------------------------------------------------------------ re-key
    async def clearance_event(self, event) -> None:
        """A clearance in its subject's partition goes through the subject stage here; any other is re-keyed."""
        msg, key = event.message, event.key
        if key and msg.topic in self.in_place and subject_partition(key, self.cfg.partitions) == msg.partition:
            src = upstream_key(msg.topic, msg.partition)
            metrics.labelled(metrics.EVENTS_IN, msg.topic, "clearances").inc()
            async with self.subject_turn:
                await self.guarded("subjects", event,
                                   lambda e: self.subject_step(e, "clearance", msg.topic, (msg.partition, src), src,
                                                               (msg.partition, msg.offset)))
        else:
            await self.rekey_event(event)

    async def rekey_event(self, event) -> None:
        msg = event.message
        self.subject.active_at = time.monotonic()
        kind = _kind_of_source(msg.topic, self.cfg.prefix)
        raw, key = event.value, event.key
        metrics.labelled(metrics.EVENTS_IN, msg.topic, "rekey").inc()
        headers = [("yrd-kind", kind.encode()), ("yrd-source", msg.topic.encode()),
                   ("yrd-source-partition", str(msg.partition).encode()),
                   ("yrd-source-offset", str(msg.offset).encode())]
        try:
            if kind == "clearance" and key:
                await self.subject_topic.send(key=key, value=raw, headers=headers)
                return
            rec = self.decoder.decode(raw, kind)
            if kind == "clearance":
                await self.subject_topic.send(key=rec["subject"].encode(), value=raw, headers=headers)
                return
            if kind == "alert" and rec.get("subject"):
                await self.subject_topic.send(key=rec["subject"].encode(), value=raw, headers=headers)
            elif kind == "case":
                for s in sorted(set(rec.get("subjects") or [])):
                    await self.subject_topic.send(key=s.encode(), value=raw, headers=headers)
            await self.regional_topic.send(key=b"regional", value=raw, headers=headers)
        except EventError as exc:
            await self.emitter.dead_letter(msg.topic, raw, key, exc, msg.partition, msg.offset)

    # ------------------------------------------------------------------ subject stage
    async def subject_turned(self, event) -> None:
        async with self.subject_turn:
            await self.guarded("subjects", event, self.subject_event)

    async def subject_event(self, event) -> None:
        """A record of streams.subjects: a forwarded event (its headers say what and from where) or a tick."""
        msg = event.message
        headers = _headers(event)
        kind, source = headers.get("yrd-kind", "clearance"), headers.get("yrd-source", msg.topic)
        if kind == "tick":
            busy = json.loads(event.value).get("busy") or ()
            await self.subject_done(self.subject.tick(msg.partition, busy, msg.timestamp))
            return
        # a subject partition is a merge of the source partitions in the order they were re-keyed, not in event
        # time: what it holds of one source partition is in that partition's order, so each pair is a stream
        src = source_of(headers, source)
        upstream = (msg.partition, src) if "yrd-source-partition" in headers else msg.partition
        await self.subject_step(event, kind, source, upstream, src, origin_of(headers))

    async def subject_step(self, event, kind: str, source: str, upstream, src: str, origin=None) -> None:
        msg = event.message
        step = self.subject.step(msg.partition, kind, event.value, event.key, msg.timestamp, upstream, src, source,
                                 origin[1] if origin else None)
        if step.error is not None:
            await self.emitter.dead_letter(source, event.value, event.key, step.error,
                                           *(origin or (msg.partition, msg.offset)))
            return
        await self.subject_done(step)

    async def subject_done(self, step) -> None:
        """A subject step's records forwarded, its outputs sent, then its states written."""
        for value, headers in step.forward:
            await self.regional_topic.send(key=b"regional", value=value, headers=headers)
        await self.emitter.emit(step.outs)
        write_all(self.flow_table, step.flow)
        write_all(self.subjects_table, step.writes, lambda v: json.dumps(v, separators=(",", ":")).encode())
        self.subject.sizes()

    # ------------------------------------------------------------------ regional stage
    async def regional_event(self, event) -> None:
        msg = event.message
        headers = _headers(event)
        step = self.regional.step(event.value, headers, msg.topic, msg.timestamp)
        if step.error is not None:
            await self.emitter.dead_letter(headers.get("yrd-source", msg.topic), event.value, event.key, step.error,
                                           *(origin_of(headers) or (msg.partition, msg.offset)))
            return
        await self.emitter.emit(step.outs)
        write_all(self.regional_table, step.writes)

    # ------------------------------------------------------------------ escalation stage
    async def feedback_event(self, event) -> None:
        """An alert as emitted or an officer's disposition, forwarded to the escalation stage's one partition."""
        rec = escalation.forwarded(self.codec, event.value)
        if rec is not None:
            await self.escalation_topic.send(key=b"escalation", value=escalation.encode(rec))

    async def escalation_event(self, event) -> None:
        step = self.escalation.step(json.loads(event.value))
        await self.emitter.emit(step.outs)
        write_all(self.escalation_table, step.writes)

    # ------------------------------------------------------------------ ticks
    # The regional watermark only moves when the stage reads something; once its upstreams fall silent (the end
    # of a backlog, a quiet night), a tick through its own topic lets it see them go idle and judge what is due.
    # Every worker's tick also names the upstreams it still has records of to read (a restart's backlog): silent
    # so far, they are not idle, and must not let the regional stage judge hours whose events they hold.
    # The ticks also keep the stage's clock (its records' timestamps) going when nothing else comes.
    # The subject stage gets the same: a worker's tick reaches each subject partition, naming the source
    # partitions it has a backlog of; its own subject partitions with records still to read it touches here.
    async def ticks(self) -> None:
        cfg = self.cfg
        behind = self.backlogged({*self.sources, cfg.subject_topic, self.control_topic})
        await self.turns.reread_stalled(behind)
        await self.turns.reread_uncommitted()
        # an operator's control record moves no event time, but one still to read holds the regional stage back:
        # read after the hours it covers were judged beyond the allowed delay, its heightened-mode window would
        # change nothing (a worker joining left control[0] unread for a while: seen in the scale-out test's log)
        control_behind = [upstream_key(tp.topic, tp.partition) for tp in behind if tp.topic == self.control_topic]
        behind = [tp for tp in behind if tp.topic != self.control_topic]
        sources_behind = sorted(upstream_key(tp.topic, tp.partition) for tp in behind if tp.topic in self.sources)
        busy: set[str] = set(control_behind)
        clearance_sources = []
        for tp in behind:
            if tp.topic == cfg.subject_topic:
                busy.add(upstream_key("subjects", tp.partition))
            elif tp.topic in self.regional_sources:
                busy.add(upstream_key(tp.topic, tp.partition))
            else:   # a clearance not yet re-keyed may reach any subject partition, and from there the stage
                busy.update(upstream_key("subjects", p) for p in range(cfg.partitions))
                clearance_sources.append(upstream_key(tp.topic, tp.partition))
        self.subject.behind({tp.partition for tp in behind if tp.topic == cfg.subject_topic}, clearance_sources)
        if self.subject.wants_ticks(sources_behind):
            tick = json.dumps({"_kind": "tick", "busy": sources_behind}).encode()
            for p in range(self.app.consumer.topic_partitions(cfg.subject_topic) or cfg.partitions):
                await self.subject_topic.send(value=tick, partition=p, headers=[("yrd-kind", b"tick")])
        # what this worker holds of the regional stage's upstreams (and of the clearance sources that feed them):
        # a partition no worker's tick names is in a rebalance, and the regional stage must not see it go idle
        held = sorted(upstream_key("subjects", tp.partition) if tp.topic == cfg.subject_topic
                      else upstream_key(tp.topic, tp.partition)
                      for tp in self.app.consumer.assignment()
                      if tp.topic in (cfg.subject_topic, self.control_topic) or tp.topic in self.sources)
        await self.escalation_topic.send(key=b"escalation", value=escalation.encode(
            {"_kind": "tick", "now": int(time.time() * 1000)}))
        if busy or held or self.has_regional:
            await self.regional_topic.send(key=b"regional", value=json.dumps(
                {"_kind": "tick", "busy": sorted(busy), "held": held}).encode(), headers=[("yrd-via", b"tick")])

    def backlogged(self, names) -> list:
        """The partitions of ``names`` of which this worker has records not yet processed."""
        behind = []
        for tp in self.app.consumer.assignment():
            if tp.topic not in names:
                continue
            try:   # the end offset the consumer last heard of (no request: the tick must not queue behind fetches)
                hw = self.app.consumer.highwater(tp)
            except Exception:  # revoked meanwhile
                continue
            nxt = self.turns.next_offset(tp)
            if hw is None or (hw > 0 and (nxt is None or nxt < hw)):
                behind.append(tp)
        return behind


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
    (``schemas.topics``; on a secured cluster only admin applies them) and, given the worker's ``app``, its
    own (``worker_topics``, which its principal owns)."""
    topics.ensure(cfg.bootstrap, prefix=cfg.prefix, timeout=60)
    if app is not None:
        topics.apply(cfg.bootstrap, timeout=60, specs=worker_topics(app))
