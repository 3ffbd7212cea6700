"""The ClickHouse sink: every event of every kind, every derived output and every dead letter, stored once.

One confluent-kafka consumer reads the source topics, ``alerts.derived``, ``trends``, ``risk.scores`` and
every ``dlq.*`` topic. Records are batched per table and inserted when a batch holds
``sink_batch_rows`` rows or its oldest row has waited ``sink_batch_age_s``. Offsets are committed
(synchronously) only after the batch's insert succeeded.

**Nothing doubled.** Each batch is a set of offset ranges, one per partition, and a partition feeds one
table, so batches of one partition follow each other without overlap. Before inserting, the sink writes
the ranges to ``sink_batches``; it inserts with ``insert_deduplication_token`` = a hash of the table and
the ranges (the same ClickHouse mechanism the Kafka Connect sink uses for exactly-once, with the state
kept in the store itself). After a crash, a newly assigned partition whose logged range lies at or
beyond the committed offset is read again from exactly those offsets, rebuilt into the same rows and
inserted with the same token: ClickHouse drops it if it had been inserted, and its materialized views
with it (``non_replicated_deduplication_window`` on one node, Keeper on a cluster).

**Nothing lost.** When an insert fails the sink validates the batch once in Python: records that do not
decode go to the dead-letter topic and the rest is inserted; when every record decodes, ClickHouse is
unavailable, and the sink pauses its partitions and retries with exponential backoff until it succeeds.

**Fast path.** Records are not decoded in Python (about 13-18 us each with fastavro): the sink checks the
framing and the schema id (a dict look-up) and hands ClickHouse the Avro bodies in one container block
(``connectors/clickhouse/tables.py``).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone

from prometheus_client import Counter, Gauge, Histogram

from connectors.clickhouse import tables as T
from schemas import contract
from schemas.errors import EventError, UndecodableError, UnknownSchemaError

log = logging.getLogger("yrdbus.sink")
_UNSEEN = object()   # a topic whose route is not looked up yet (None: a topic the sink does not store)

ROWS_WRITTEN = Counter("yrdbus_sink_rows_written_total", "Rows the sink inserted, by table.", ["table"])
INSERT_SECONDS = Histogram("yrdbus_sink_batch_insert_duration_seconds", "Time to insert one batch.", ["table"],
                           buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
INSERT_FAILURES = Counter("yrdbus_sink_insert_failures_total", "Failed insert attempts, by table.", ["table"])
CONSUMER_LAG = Gauge("yrdbus_sink_consumer_lag_messages", "Messages behind the end of the partition.",
                     ["topic", "partition"])
DEAD_LETTERED = Counter("yrdbus_sink_dead_letters_total", "Records the sink sent to a dead-letter topic.",
                        ["source_topic"])
REPLAYED = Counter("yrdbus_sink_replayed_batches_total", "Logged batches rebuilt and re-inserted after a restart.")

_DEAD_LETTER_COLUMNS = ["received_at", "topic", "partition", "offset", "source_topic", "source_partition",
                        "source_offset", "origin", "reason", "field", "error", "key", "value"]
_MAX_BACKOFF_S = 30.0


class WriterSchemas:
    """Schema id -> (kind, writer schema JSON), from ``schemas/ids.json`` or a registry."""

    def __init__(self, registry_url: str | None = None):
        self._by_id: dict[int, tuple[str, str]] = {}
        self._registry = None
        if registry_url:
            from confluent_kafka.schema_registry import SchemaRegistryClient

            self._registry = SchemaRegistryClient({"url": registry_url})
        for row in contract.load_ids():
            kind = contract.KIND_OF_NAME.get(row["name"])
            if kind is not None and not registry_url:
                self._by_id[row["id"]] = (kind, contract.read_history(row))

    def get(self, schema_id: int) -> tuple[str, str] | None:
        hit = self._by_id.get(schema_id)
        if hit is not None or self._registry is None:
            return hit
        try:
            schema = self._registry.get_schema(schema_id)
        except Exception as exc:  # unknown id or registry trouble: the record cannot be stored as it is
            log.warning("schema id %s: registry lookup failed: %s", schema_id, exc)
            return None
        s = json.loads(schema.schema_str)
        name = s["name"] if "." in s["name"] else f"{s.get('namespace', '')}.{s['name']}"
        kind = contract.KIND_OF_NAME.get(name)
        if kind is None:
            return None
        hit = self._by_id[schema_id] = (kind, json.dumps(s, sort_keys=True))
        return hit


@dataclass
class Batch:
    """The records of one table taken from a run of offsets of each of some partitions."""
    table: str
    ranges: dict[tuple[str, int], list[int]] = field(default_factory=dict)  # (topic, partition) -> [first, last]
    avro: dict[int, list] = field(default_factory=dict)   # schema id -> messages (Avro events)
    by_header: dict[bytes, list] = field(default_factory=dict)  # Confluent header (magic, id) -> its avro list
    dead: list = field(default_factory=list)              # messages of dlq.* topics
    bad: list = field(default_factory=list)               # (message, error) to send to a dead-letter topic
    excluded: set = field(default_factory=set)            # (topic, partition, offset) found bad after a failed insert
    rows: int = 0
    started: float = field(default_factory=time.monotonic)
    validated: bool = False

    def note(self, topic: str, partition: int, offset: int) -> None:
        r = self.ranges.get((topic, partition))
        if r is None:
            self.ranges[(topic, partition)] = [offset, offset]
        else:
            r[1] = offset

    def token(self, group: str) -> str:
        """Deterministic in the batch's content: the same offsets always give the same token."""
        h = hashlib.sha256(f"{group}\x00{self.table}".encode())
        for (topic, partition), (first, last) in sorted(self.ranges.items()):
            h.update(f"\x00{topic}\x00{partition}\x00{first}\x00{last}".encode())
        for item in sorted(self.excluded):
            h.update(("\x01%s\x00%d\x00%d" % item).encode())
        return h.hexdigest()[:40]


class Store:
    """The inserts the sink makes, on the embedded engine (``chdb://``) or a server (``http(s)://``)."""

    def __init__(self, client, database: str, embedded: bool):
        self.client = client
        self.database = database
        self.embedded = embedded
        self._columns: dict[str, set[str]] = {}
        shm = "/dev/shm"
        self._tmpdir = shm if os.path.isdir(shm) and os.access(shm, os.W_OK) else tempfile.gettempdir()

    def columns(self, table: str) -> set[str]:
        cols = self._columns.get(table)
        if cols is None:
            rows = self.client.query(
                "SELECT name FROM system.columns WHERE database = {db:String} AND table = {t:String}",
                parameters={"db": self.database, "t": table}).result_rows
            cols = {r[0] for r in rows}
            if not cols:
                raise RuntimeError(f"table {self.database}.{table} is not there (missing, detached, or the store "
                                   f"is not migrated)")
            self._columns[table] = cols
        return cols

    @staticmethod
    def _settings(token: str) -> dict:
        return {
            "insert_deduplication_token": token,
            "insert_deduplicate": 1,
            "deduplicate_blocks_in_dependent_materialized_views": 1,
            # One block per insert: a failed insert writes nothing, so a retry under the same token is exact.
            "max_insert_threads": 1,
            "min_insert_block_size_rows": 100_000_000,
            "min_insert_block_size_bytes": 4_000_000_000,
            "max_insert_block_size": 100_000_000,
        }

    def insert_avro(self, table: str, schema_json: str, bodies: list[bytes], token: str) -> int:
        fields = [name for name, _ in T.structure(schema_json) if name in self.columns(table)]
        cols = ", ".join(f"`{f}`" for f in fields)
        data = T.container(schema_json, bodies)
        if not self.embedded:
            self.client.raw_insert(f"{self.database}.{table}", fields, data, fmt="Avro",
                                   settings=self._settings(token))
            return len(bodies)
        fd, path = tempfile.mkstemp(suffix=".avro", dir=self._tmpdir)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            settings = ", ".join(f"{k} = {_literal(v)}" for k, v in self._settings(token).items())
            structure = T.structure_sql(schema_json).replace("\\", "\\\\").replace("'", "\\'")
            self.client.command(
                f"INSERT INTO {self.database}.{table} ({cols}) SELECT {cols} "
                f"FROM file('{path}', 'Avro', '{structure}') SETTINGS {settings}")
        finally:
            os.unlink(path)
        return len(bodies)

    def insert_rows(self, table: str, columns: list[str], rows: list[list], token: str) -> int:
        self.client.insert(f"{self.database}.{table}", rows, column_names=columns, settings=self._settings(token))
        return len(rows)

    def log_batch(self, group: str, batch: Batch, token: str) -> None:
        now = datetime.now(timezone.utc)
        rows = [[group, topic, partition, first, last, token, batch.table, batch.rows, now]
                for (topic, partition), (first, last) in sorted(batch.ranges.items())]
        self.client.insert(f"{self.database}.sink_batches", rows,
                           column_names=["consumer_group", "topic", "partition", "first_offset", "last_offset",
                                         "token", "target", "rows", "written_at"])

    def pending(self, group: str, committed: dict[tuple[str, int], int]) -> dict[str, list[tuple[str, int, int, int]]]:
        """Logged batches touching ``committed``'s partitions at or beyond the committed offset:
        token -> every range of the batch (topic, partition, first, last)."""
        if not committed:
            return {}
        keys = [f"{t}/{p}" for (t, p) in committed]
        vals = [int(c) for c in committed.values()]
        tokens = [r[0] for r in self.client.query(
            f"SELECT DISTINCT token FROM {self.database}.sink_batches WHERE consumer_group = {{g:String}} "
            f"AND last_offset >= transform(concat(topic, '/', toString(partition)), {{k:Array(String)}}, "
            f"{{v:Array(UInt64)}}, toUInt64(18446744073709551615))",
            parameters={"g": group, "k": keys, "v": vals}).result_rows]
        if not tokens:
            return {}
        out: dict[str, list] = {}
        for token, topic, partition, first, last in self.client.query(
                f"SELECT DISTINCT token, topic, partition, first_offset, last_offset FROM {self.database}.sink_batches "
                f"WHERE consumer_group = {{g:String}} AND token IN {{t:Array(String)}} ORDER BY topic, partition",
                parameters={"g": group, "t": tokens}).result_rows:
            out.setdefault(token, []).append((topic, int(partition), int(first), int(last)))
        return out


def _literal(v) -> str:
    if isinstance(v, (int, float)):
        return str(v)
    return "'" + str(v).replace("\\", "\\\\").replace("'", "\\'") + "'"


def _header_int(value: str) -> int | None:
    try:
        return int(value) if value not in ("", None) else None
    except ValueError:
        return None


def dead_letter_row(msg) -> list:
    """A row of ``dead_letters`` from a message of a ``dlq.*`` topic."""
    from schemas.deadletter import read_headers

    h = read_headers(msg.headers())
    ts_type, ts = msg.timestamp()
    received = datetime.fromtimestamp(ts / 1000, timezone.utc) if ts and ts > 0 else datetime.now(timezone.utc)
    source_topic = h.get("source_topic") or msg.topic()[len("dlq."):]
    sp, so = _header_int(h.get("source_partition", "")), _header_int(h.get("source_offset", ""))
    origin = f"{source_topic}/{sp}/{so}" if sp is not None and so is not None else \
        f"{msg.topic()}/{msg.partition()}/{msg.offset()}"
    key, value = msg.key() or b"", msg.value() or b""
    return [received, msg.topic(), msg.partition(), msg.offset(), source_topic, sp, so, origin,
            h.get("reason", "") or "unknown", h.get("field", ""), h.get("error", ""), key, value]


class Sink:
    """Consume, batch per table, insert once, commit after the insert. ``run()`` until ``stop()``."""

    def __init__(self, *, bootstrap: str, client, database: str = "yrdbus", embedded: bool = True,
                 group: str = "yrdbus-sink", prefix: str = "", batch_rows: int = 50_000,
                 batch_age_s: float = 1.0, registry_url: str | None = None, consume_batch: int = 10_000,
                 crash_after_inserts: int | None = None, kafka_config: dict | None = None):
        from yrdbus.kafka_config import kafka_security

        self.bootstrap = bootstrap
        # security options of the sink's principal (docs/security.md); default: the process's settings
        self.kafka_config = kafka_security() if kafka_config is None else dict(kafka_config)
        self.store = Store(client, database, embedded)
        self.database = database
        self.group = group
        self.prefix = prefix
        self.batch_rows = batch_rows
        self.batch_age_s = batch_age_s
        self.consume_batch = consume_batch
        self.schemas = WriterSchemas(registry_url)
        self._registry_url = registry_url
        self._crash_after = crash_after_inserts
        self._inserts = 0
        self._stop = threading.Event()
        self._batches: dict[str, Batch] = {}
        self._routes: dict[str, T.Route | None] = {}   # topic -> where its records go (route_for, once a topic)
        self._backlog: list = []
        self._paused = False
        self._assigned = False
        self._last_record = time.monotonic()
        self._codec = None
        self.consumer = None
        self.producer = None
        self.stats = {"rows": 0, "batches": 0, "dead_lettered": 0, "replayed": 0, "failures": 0}
        self.first_record_at: float | None = None   # monotonic time of the first record, and of the last commit
        self.last_commit_at: float | None = None
        self.last_error: str | None = None

    # ------------------------------------------------------------------ lifecycle
    def stop(self) -> None:
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def _consumer_config(self) -> dict:
        return {
            "bootstrap.servers": self.bootstrap,
            "group.id": self.group,
            # Offsets are committed by hand after the insert, never automatically.
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
            # Large fetches: the sink reads far more than it does per record.
            "fetch.max.bytes": 64 * 1024 * 1024,
            "max.partition.fetch.bytes": 8 * 1024 * 1024,
            "queued.min.messages": 200_000,
            "fetch.wait.max.ms": 100,
            "topic.metadata.refresh.interval.ms": 10_000,
            # An outage of ClickHouse can last; the sink keeps polling while it waits, but be generous.
            "max.poll.interval.ms": 900_000,
            # A sink that died is noticed in 10 s (the default is 45 s), so its restart resumes its partitions
            # at once; heartbeats come from librdkafka's own thread, so a long insert does not count against it.
            "session.timeout.ms": 10_000,
            "statistics.interval.ms": 5_000,
            "stats_cb": self._on_stats,
            **self.kafka_config,
        }

    def _start(self) -> None:
        from confluent_kafka import Consumer, Producer

        self.producer = Producer({"bootstrap.servers": self.bootstrap, **self.kafka_config,
                                  "enable.idempotence": True, "acks": "all",
                                  "linger.ms": 20})
        self.consumer = Consumer(self._consumer_config())
        named, pattern = T.sink_topics(self.prefix)
        self.consumer.subscribe(named + [pattern], on_assign=self._on_assign, on_revoke=self._on_revoke)

    def run(self, *, duration: float | None = None, idle_exit_s: float | None = None) -> dict:
        """Consume until ``stop()``, ``duration`` seconds, or ``idle_exit_s`` seconds without a record."""
        self._start()
        started = time.monotonic()
        self._last_record = time.monotonic()
        try:
            while not self._stop.is_set():
                if duration is not None and time.monotonic() - started >= duration:
                    break
                msgs = self._backlog or self.consumer.consume(num_messages=self.consume_batch, timeout=0.1)
                self._backlog = []
                if msgs:
                    self._last_record = time.monotonic()
                    if self.first_record_at is None:
                        self.first_record_at = self._last_record
                self._add_all(msgs)
                self._flush_due()
                if idle_exit_s is not None and self._assigned and not self._batches \
                        and time.monotonic() - self._last_record >= idle_exit_s:
                    break
            self._flush_all()
        finally:
            try:
                self.consumer.close()
            finally:
                self.producer.flush(10)
        return dict(self.stats)

    # ------------------------------------------------------------------ consuming
    def _add_all(self, msgs: list) -> None:
        """Put consumed messages into their tables' batches; a batch that is full is written at once.

        The sink's hottest loop (a few hundred thousand messages a second): an Avro record whose 5-byte
        header the batch has seen is appended after a few look-ups; a record with a new header, a dead
        letter or a malformed record goes through ``_place``."""
        routes, batches, batch_rows = self._routes, self._batches, self.batch_rows
        for m in msgs:
            err = m.error()
            if err is not None:
                if err.code() != -191:  # _PARTITION_EOF is not an error
                    log.warning("consumer error: %s", err)
                continue
            topic = m.topic()
            route = routes.get(topic, _UNSEEN)
            if route is _UNSEEN:
                route = routes[topic] = T.route_for(topic, self.prefix)
            if route is None:
                continue
            batch = batches.get(route.table)
            if batch is None:
                batch = batches[route.table] = Batch(route.table)
            value = m.value()
            known = batch.by_header.get(value[:5]) if value is not None else None
            if known is None:
                self._place(batch, route, m, topic)
            else:
                batch.note(topic, m.partition(), m.offset())
                known.append(m)
                batch.rows += 1
            if batch.rows >= batch_rows:
                del batches[route.table]
                self._flush(batch)

    def _place(self, batch: Batch, route: T.Route, m, topic: str) -> None:
        """Put one message into its batch: an Avro record, a dead letter, or a record to dead-letter."""
        batch.note(topic, m.partition(), m.offset())
        value = m.value()
        if route.kind is None:
            batch.dead.append(m)
            batch.rows += 1
            return
        if value is None:
            return  # a tombstone of a compacted topic: no event
        if len(value) < 5 or value[0] != 0:
            batch.bad.append((m, UndecodableError(
                f"{len(value)} bytes; not an Avro record in the Confluent framing (magic byte 0, 4-byte id)")))
            return
        sid = int.from_bytes(value[1:5], "big")
        known = self.schemas.get(sid)
        if known is None:
            batch.bad.append((m, UnknownSchemaError(f"schema id {sid} is not a known schema of this bus")))
            return
        if known[0] != route.kind:
            batch.bad.append((m, UndecodableError(f"schema id {sid} is a {known[0]} event; "
                                                  f"{m.topic()} carries {route.kind} events")))
            return
        lst = batch.avro.get(sid)
        if lst is None:
            lst = batch.avro[sid] = []
            batch.by_header[value[:5]] = lst  # the next record with this header skips the checks above
        lst.append(m)
        batch.rows += 1

    def _flush_due(self) -> None:
        now = time.monotonic()
        for table in [t for t, b in self._batches.items() if now - b.started >= self.batch_age_s]:
            self._flush(self._batches.pop(table))

    def _flush_all(self) -> None:
        for table in list(self._batches):
            self._flush(self._batches.pop(table))

    # ------------------------------------------------------------------ writing
    def _write(self, batch: Batch, *, log_batch: bool = True) -> int:
        token = batch.token(self.group)
        written = 0
        if batch.rows and log_batch:
            self.store.log_batch(self.group, batch, token)
        t0 = time.perf_counter()
        for sid, msgs in sorted(batch.avro.items()):
            keep = [m for m in msgs if (m.topic(), m.partition(), m.offset()) not in batch.excluded] \
                if batch.excluded else msgs
            if keep:
                written += self.store.insert_avro(batch.table, self.schemas.get(sid)[1],
                                                  [m.value()[5:] for m in keep], f"{token}-{sid}")
        if batch.dead:
            written += self.store.insert_rows(T.DEAD_LETTERS, _DEAD_LETTER_COLUMNS,
                                              [dead_letter_row(m) for m in batch.dead], f"{token}-d")
        if written:
            INSERT_SECONDS.labels(batch.table).observe(time.perf_counter() - t0)
        return written

    def _flush(self, batch: Batch, *, log_batch: bool = True) -> None:
        attempt = 0
        while True:
            try:
                written = self._write(batch, log_batch=log_batch)
                break
            except Exception as exc:  # the store refused or is unreachable: find out which, then wait or split
                INSERT_FAILURES.labels(batch.table).inc()
                self.stats["failures"] += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                if batch.avro and not batch.validated:
                    batch.validated = True
                    if self._validate(batch):
                        continue  # bad records set aside: insert the rest at once
                if self._stop.is_set() and attempt >= 2:
                    log.error("stopping with an unwritten %s batch (%d rows); it is replayed on the next start: %s",
                              batch.table, batch.rows, self.last_error)
                    return
                attempt += 1
                delay = min(_MAX_BACKOFF_S, 0.25 * 2 ** attempt)
                log.warning("insert into %s failed (attempt %d), retrying in %.1f s: %s",
                            batch.table, attempt, delay, str(exc).splitlines()[0][:300])
                self._pause()
                self._wait(delay)
        self._inserts += 1
        if self._crash_after is not None and self._inserts >= self._crash_after:
            os.kill(os.getpid(), signal.SIGKILL)  # fault injection for tests: die after an insert, before the commit
        self._dead_letter(batch)
        ROWS_WRITTEN.labels(batch.table).inc(written)
        self.stats["rows"] += written
        self.stats["batches"] += 1
        self._commit(batch)
        self.last_commit_at = time.monotonic()
        self._resume()

    def _validate(self, batch: Batch) -> bool:
        """Decode every Avro record of a refused batch in Python; set the undecodable ones aside."""
        from schemas.codec import get_codec

        if self._codec is None:
            self._codec = get_codec(self._registry_url)
        found = False
        for sid, msgs in batch.avro.items():
            for m in msgs:
                try:
                    self._codec.decode(m.value())
                except EventError as exc:
                    batch.excluded.add((m.topic(), m.partition(), m.offset()))
                    batch.bad.append((m, exc))
                    batch.rows -= 1
                    found = True
        return found

    def _dead_letter(self, batch: Batch) -> None:
        if not batch.bad:
            return
        from schemas.deadletter import dead_letter

        for m, error in batch.bad:
            dead_letter(self.producer, m.topic(), m.value() or b"", error.at(f"{m.topic()}[{m.partition()}]@{m.offset()}")
                        if isinstance(error, EventError) else error, partition=m.partition(), offset=m.offset(),
                        key=m.key())
            DEAD_LETTERED.labels(m.topic()).inc()
            self.stats["dead_lettered"] += 1
        # The dead letters must be on the broker before the offsets of their records are committed.
        remaining = self.producer.flush(30)
        if remaining:
            raise RuntimeError(f"{remaining} dead letters not delivered within 30 s; not committing")

    def _commit(self, batch: Batch) -> None:
        from confluent_kafka import TopicPartition

        offsets = [TopicPartition(t, p, last + 1) for (t, p), (_, last) in sorted(batch.ranges.items())]
        if not offsets or self.consumer is None:
            return
        try:
            self.consumer.commit(offsets=offsets, asynchronous=False)
        except Exception as exc:  # e.g. partitions revoked meanwhile: the next owner replays, deduplicated
            log.warning("commit of %s failed: %s", batch.table, exc)

    # ------------------------------------------------------------------ waiting while the store is away
    def _pause(self) -> None:
        if self._paused or self.consumer is None:
            return
        try:
            self.consumer.pause(self.consumer.assignment())
            self._paused = True
        except Exception as exc:
            log.debug("pause: %s", exc)

    def _resume(self) -> None:
        if not self._paused:
            return
        try:
            self.consumer.resume(self.consumer.assignment())
        except Exception as exc:
            log.debug("resume: %s", exc)
        self._paused = False

    def _wait(self, seconds: float) -> None:
        """Sleep while staying in the consumer group; records fetched meanwhile are kept for later."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.consumer is None:
                time.sleep(min(0.2, deadline - time.monotonic()))
                continue
            msgs = self.consumer.consume(num_messages=1000, timeout=min(0.2, max(0.0, deadline - time.monotonic())))
            if msgs:
                self._backlog.extend(msgs)

    # ------------------------------------------------------------------ rebalancing and replay
    def _on_revoke(self, consumer, partitions) -> None:
        revoked = {(tp.topic, tp.partition) for tp in partitions}
        for table in [t for t, b in self._batches.items() if revoked & set(b.ranges)]:
            batch = self._batches.pop(table)
            try:
                self._flush(batch)
            except Exception as exc:  # the next owner replays it from the batch log
                log.warning("revoked with an unwritten %s batch: %s", table, exc)
        self._backlog = [m for m in self._backlog if (m.topic(), m.partition()) not in revoked]

    def _on_assign(self, consumer, partitions) -> None:
        """Before reading a newly assigned partition, re-insert any logged batch that may not be committed."""
        self._last_record = time.monotonic()  # idle time counts from the assignment, not from the start
        self._assigned = True
        try:
            committed = consumer.committed(partitions, timeout=30)
        except Exception as exc:
            log.warning("could not read committed offsets (%s); starting from them as the broker has them", exc)
            return
        start = {(tp.topic, tp.partition): (tp.offset if tp.offset >= 0 else 0) for tp in committed}
        try:
            pending = self.store.pending(self.group, start)
        except Exception as exc:
            log.warning("could not read the batch log (%s); the store may be down; replays wait for the "
                        "next assignment, deduplication still holds for identical batches", exc)
            pending = {}
        seek: dict[tuple[str, int], int] = {}
        for token, ranges in pending.items():
            try:
                batch = self._rebuild(ranges)
            except Exception as exc:
                log.error("cannot replay logged batch %s: %s", token, exc)
                continue
            self._flush(batch, log_batch=False)
            REPLAYED.inc()
            self.stats["replayed"] += 1
            for topic, partition, first, last in ranges:
                if (topic, partition) in start:
                    seek[(topic, partition)] = max(seek.get((topic, partition), 0), last + 1)
        if seek:
            from confluent_kafka import TopicPartition

            for tp in partitions:
                if (tp.topic, tp.partition) in seek:
                    tp.offset = seek[(tp.topic, tp.partition)]
            consumer.assign(partitions)

    def _rebuild(self, ranges: list[tuple[str, int, int, int]]) -> Batch:
        """The batch of exactly these offset ranges, read again from the broker."""
        from confluent_kafka import Consumer, TopicPartition

        reader = Consumer({"bootstrap.servers": self.bootstrap, **self.kafka_config,
                           "group.id": f"{self.group}-replay", "enable.auto.commit": False,
                           "isolation.level": "read_committed", "enable.partition.eof": True})
        try:
            reader.assign([TopicPartition(t, p, first) for t, p, first, _ in ranges])
            todo = {(t, p): last for t, p, _, last in ranges}
            firsts = {(t, p): first for t, p, first, _ in ranges}
            route = T.route_for(ranges[0][0], self.prefix)
            batch = Batch(route.table)
            deadline = time.monotonic() + 60
            while todo and time.monotonic() < deadline:
                for m in reader.consume(num_messages=10_000, timeout=0.5):
                    key = (m.topic(), m.partition())
                    if m.error() is not None:
                        if m.error().code() == -191 and key in todo:  # reached the end before the range's end
                            raise RuntimeError(f"{key[0]}[{key[1]}] ends before offset {todo[key]}")
                        continue
                    if key not in todo or m.offset() < firsts[key]:
                        continue
                    if m.offset() > todo[key]:
                        continue
                    self._place(batch, route, m, key[0])
                    if m.offset() >= todo[key]:
                        del todo[key]
            if todo:
                raise RuntimeError(f"could not read back offsets of {sorted(todo)} within 60 s")
            batch.ranges = {(t, p): [first, last] for t, p, first, last in ranges}
            return batch
        finally:
            reader.close()

    # ------------------------------------------------------------------ metrics
    def _on_stats(self, stats_json: str) -> None:
        try:
            stats = json.loads(stats_json)
        except ValueError:
            return
        for topic, t in stats.get("topics", {}).items():
            for pid, p in t.get("partitions", {}).items():
                lag = p.get("consumer_lag", -1)
                if int(pid) >= 0 and lag is not None and lag >= 0:
                    CONSUMER_LAG.labels(topic, pid).set(lag)
