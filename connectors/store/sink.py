"""The ClickHouse sink: every event of every kind, every derived output and every dead letter, stored once.

One confluent-kafka consumer reads the source topics, ``alerts.derived``, ``trends``, ``risk.scores`` and
every ``dlq.*`` topic. Records are batched per table and inserted when a batch holds
``sink_batch_rows`` rows or its oldest row has waited ``sink_batch_age_s``. Offsets are committed only
after the batch's insert succeeded, asynchronously: the main loop goes on polling, so it serves the rebalance
a session timeout starts. (A synchronous commit sent as the broker shut down was retried by librdkafka while
it waited for a coordinator; the session timed out meanwhile, and the revoke it handed to the application
was never served by a main loop blocked in that commit: the sink left its group for good.) A commit that
fails is logged; the batch log replays what it covered (below), so it doubles nothing.

**Nothing doubled.** Each batch is a set of offset ranges, one per partition, and a partition feeds one
table, so batches of one partition follow each other without overlap. Before inserting, the sink writes
the ranges to ``sink_batches``; it inserts with ``insert_deduplication_token`` = a hash of the table and
the ranges (the same ClickHouse mechanism the Kafka Connect sink uses for exactly-once, with the state
kept in the store itself). After a crash, a newly assigned partition whose logged range lies at or
beyond the committed offset is read again from exactly those offsets, rebuilt into the same rows and
inserted with the same token: ClickHouse drops it if it had been inserted, and its materialized views
with it (``non_replicated_deduplication_window`` on one node, Keeper on a cluster).

**Event time is checked where the sink reads.** A station's record (clearance, alert, case) whose
``occurred_at`` is before ``YRDBUS_EVENT_TIME_FLOOR`` or more than ``YRDBUS_EVENT_TIME_FUTURE_SKEW_S``
ahead of the clock goes to its dead-letter topic (``future_event_time``, ``event_time_before_floor``)
and is not inserted. The check runs once a batch, on the framed bytes of all its records at once (numpy,
well under a microsecond a record), against the batch's own clock; that clock is logged with the batch
(``sink_batches.written_at``) so that a replay decides every record as the first attempt did.

**Nothing stalls on data.** When an insert fails the sink asks whether the store answers (the target
table is there) and whether the error is about the store (disk, memory, a detached table, the network)
or about the data. Only a store that is away makes it wait: it pauses its partitions and retries with
exponential backoff. A failure about the data is never retried as it is: the batch's records are
decoded in Python once (undecodable ones are dead-lettered), and what the store still refuses is split
in halves, recursively, in the order of the records' offsets, each part inserted under the token of its
place in that split (``<token>-<schema id>.0.1``...). A batch spanning more partitions than one insert
allows is so stored in parts, and a single record the store refuses is dead-lettered with the store's
error (``refused_by_store``) while its neighbours are stored. The split is a function of the batch's
records only, so a replay after a crash in the middle of it builds the same parts under the same tokens,
and ClickHouse drops the parts that were in.

**A group that does not come back.** librdkafka can stay without a group coordinator after a broker outage
(it finds no broker to ask, librdkafka PR #3847): the sink, out of its group, would wait for ever. A sink
that has held no assignment for ``rejoin_s`` (``YRDBUS_SINK_REJOIN_S``, 60 s) while the broker answers its
producer replaces its consumer with a new one, which joins the group from the committed offsets and the
batch log, as a restarted sink does.

**Rebalances.** The rebalance callbacks run inside ``consume()``: they only record what happened
(librdkafka must not be re-entered from them, see shared PITFALLS). A revoke drops the batches of the
revoked partitions (the sink asks for the eager protocol, so a revoke takes every partition: the next
owner reads them again from the committed offsets, or replays what the batch log holds); an assignment
marks the partitions to be checked against the batch log, which the main loop does before it reads them.

**Fast path.** Records are not decoded in Python (about 13-18 us each with fastavro): the sink checks the
framing and the schema id (a dict look-up) and hands ClickHouse the Avro bodies in one container block
(``connectors/store/tables.py``).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import numpy as np
from prometheus_client import Counter, Gauge, Histogram

from connectors.store import tables as T
from schemas import contract
from schemas.errors import EventError, UndecodableError, UnknownSchemaError
from schemas.eventtime import SOURCE_KINDS, EventTimeBounds, OccurredAtReader, _skip_plan

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
NEW_CONSUMERS = Counter("yrdbus_sink_new_consumers_total",
                        "Consumers replaced after the sink was out of its group while the broker answered.")
REPLAYED = Counter("yrdbus_sink_replayed_batches_total", "Logged batches rebuilt and re-inserted after a restart.")
SPLIT_INSERTS = Counter("yrdbus_sink_split_inserts_total",
                        "Inserts of part of a batch the store refused as a whole for its data, by table.", ["table"])

_DEAD_LETTER_COLUMNS = ["received_at", "topic", "partition", "offset", "source_topic", "source_partition",
                        "source_offset", "origin", "reason", "field", "error", "key", "value"]
_MAX_BACKOFF_S = 30.0
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


class StoreRefusedError(EventError):
    """A record ClickHouse refuses for what it is (the store answers, and stores its neighbours)."""
    reason = "refused_by_store"


# --------------------------------------------------------------------------- is it the store or the data?
_CODE = re.compile(r"Code: (\d+)")
_NAME = re.compile(r"\([A-Z][A-Z0-9_]+\)\s*$")
#: ClickHouse error codes that say something about the store, not about the rows: wait for it, never split
_STORE_CODES = frozenset({
    8, 10, 16, 24, 47, 60, 74, 75, 76, 77, 81, 95, 96, 159, 160, 164, 172, 173, 192, 193, 194, 195, 198, 201,
    202, 203, 204, 209, 210, 214, 218, 225, 236, 241, 242, 243, 244, 252, 254, 265, 279, 285, 286, 289, 291,
    294, 319, 364, 373, 384, 394, 410, 425, 439, 458, 473, 481, 497, 516, 586, 641, 662, 677, 692, 724, 725,
    733, 735, 738, 745, 749, 762, 774, 776, 777, 778, 999, 1000, 1016, 1017, 1019, 1020,
})
#: codes of errors from anywhere (a system call, a library): their words say whether it was the store's
_GENERIC_CODES = frozenset({1001, 1002})
_STORE_WORDS = ("no space left", "not enough space", "cannot reserve", "memory limit", "connection refused",
                "timed out", "timeout", "errno")


try:
    from clickhouse_connect.driver.exceptions import DataError as _CLIENT_DATA_ERRORS
except ImportError:  # pragma: no cover
    _CLIENT_DATA_ERRORS = None


def too_many_partitions(exc: BaseException) -> bool:
    """The insert spans more partitions than one insert may (code 252, which also means "too many parts")."""
    return "partitions for single insert block" in str(exc).lower()


def about_the_data(exc: BaseException) -> bool:
    """Whether ClickHouse refused an insert for its rows (True) rather than because of its own state.

    The code ClickHouse opens its message with decides, not the words (a message may quote a record's
    values). An error without a ClickHouse code (a connection, a local file, the client) is about the store,
    except the client's own refusal of a value (``DataError``)."""
    text = str(exc)
    m = _CODE.search(text)
    if m is None:
        return _CLIENT_DATA_ERRORS is not None and isinstance(exc, _CLIENT_DATA_ERRORS)
    code = int(m.group(1))
    if code == 252:   # TOO_MANY_PARTS: too many partitions in one insert (the data), or merges behind (the store)
        return too_many_partitions(exc)
    if code in _STORE_CODES:
        return False
    if code in _GENERIC_CODES:
        low = text.lower()
        return not any(w in low for w in _STORE_WORDS)
    return True


def _first_line(exc: BaseException, limit: int = 500) -> str:
    """The first line of an error, and ClickHouse's name for it (which it puts at the end)."""
    text = str(exc).strip()
    line = (text.splitlines()[0] if text else type(exc).__name__)[:limit]
    name = _NAME.search(text)
    return line if name is None or name.group(0).strip() in line else f"{line} {name.group(0).strip()}"


# --------------------------------------------------------------------------- occurred_at of many records at once
_SIX = np.arange(6, dtype=np.int64)
_SHIFTS = 7 * _SIX
_CONTINUED = np.array([0x80, 0x80, 0x80, 0x80, 0x80, 0], dtype=np.uint8)


def occurred_at_ms(values: list[bytes], plan: list[str], *, header: int = 5,
                   joined: bytes | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``occurred_at`` (epoch ms) of Avro records, all at once, and a mask of those to read one by one.

    ``values`` are framed records (``header=5``) or their bodies (``header=0``); ``joined`` is
    ``b"".join(values)`` when the caller has it.

    ``plan`` is the skip plan of their schema (``schemas.eventtime``: the fields before ``occurred_at``,
    each a length-prefixed string or a varint). The common layout (one-byte lengths, an event time
    between 1970 and 2039, a six-byte varint) is read with array operations; any other record (a long
    string, a time outside those years, a record that ends early) is flagged to be read by
    ``OccurredAtReader``, which is exact.
    """
    n = len(values)
    buf = np.frombuffer(b"".join(values) if joined is None else joined, dtype=np.uint8)
    top = len(buf) - 1
    ends = np.cumsum(np.fromiter(map(len, values), dtype=np.int64, count=n))
    pos = np.empty(n, dtype=np.int64)
    pos[0] = 0
    pos[1:] = ends[:-1]
    pos += header
    slow = np.zeros(n, dtype=bool)
    if top < 0:
        return np.zeros(n, dtype=np.int64), ~slow
    for step in plan:
        np.minimum(pos, top, out=pos)
        b = buf[pos]
        slow |= b >= 0x80
        if step == "bytes":
            slow |= (b & 1).astype(bool)          # a negative length
            pos += 1 + (b >> 1)
        else:
            pos += 1
    idx = pos[:, None] + _SIX
    slow |= idx[:, 5] >= ends
    np.minimum(idx, top, out=idx)
    raw = buf[idx]
    slow |= ((raw & 0x80) != _CONTINUED).any(axis=1)
    z = ((raw & 0x7F).astype(np.int64) << _SHIFTS).sum(axis=1)
    return (z >> 1) ^ -(z & 1), slow


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


def _offset_key(m) -> tuple[str, int, int]:
    return m.topic(), m.partition(), m.offset()


@dataclass
class Batch:
    """The records of one table taken from a run of offsets of each of some partitions."""
    table: str
    ranges: dict[tuple[str, int], list[int]] = field(default_factory=dict)  # (topic, partition) -> [first, last]
    avro: dict[int, list] = field(default_factory=dict)   # schema id -> messages (Avro events)
    by_header: dict[bytes, list] = field(default_factory=dict)  # Confluent header (magic, id) -> its avro list
    dead: list = field(default_factory=list)              # messages of dlq.* topics
    bad: list = field(default_factory=list)               # (message, error) to send to a dead-letter topic
    excluded: dict = field(default_factory=dict)          # schema id -> {(topic, partition, offset)} undecodable
    rows: int = 0
    started: float = field(default_factory=time.monotonic)
    validated: set = field(default_factory=set)           # schema ids whose records were decoded in Python
    #: the clock (epoch ms) the event-time bounds are checked against: set at the first flush, logged with
    #: the batch, and taken from the log when the batch is replayed, so that both decide alike
    clock_ms: int | None = None
    checked: bool = False                                 # event time checked
    logged: bool = False                                  # ranges written to sink_batches
    done: dict = field(default_factory=dict)              # token -> None (stored) or the store's refusal
    written: int = 0                                      # rows inserted
    abandoned: bool = False                               # a partition of it was revoked: never commit it
    sent: bool = False                                    # its dead letters are produced (awaiting delivery)
    settled: set = field(default_factory=set)             # tokens of single records refused and set aside
    prepared: dict = field(default_factory=dict)          # schema id -> (bodies, joined) of its whole avro list

    def note(self, topic: str, partition: int, offset: int) -> None:
        r = self.ranges.get((topic, partition))
        if r is None:
            self.ranges[(topic, partition)] = [offset, offset]
        else:
            r[1] = offset

    def token(self, group: str, excluded=()) -> str:
        """Deterministic in the batch's content: the same offsets (and the same records set aside as
        undecodable) always give the same token."""
        h = hashlib.sha256(f"{group}\x00{self.table}".encode())
        for (topic, partition), (first, last) in sorted(self.ranges.items()):
            h.update(f"\x00{topic}\x00{partition}\x00{first}\x00{last}".encode())
        for item in sorted(excluded):
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

    def answers(self, table: str) -> bool:
        """Whether the store answers a trivial query and has ``table``: after a failed insert, True means
        the failure was about the rows."""
        try:
            rows = self.client.query(
                "SELECT count() FROM system.tables WHERE database = {db:String} AND name = {t:String}",
                parameters={"db": self.database, "t": table}).result_rows
        except Exception as exc:
            log.debug("store probe: %s", exc)
            return False
        return bool(rows) and rows[0][0] == 1

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

    def insert_avro(self, table: str, schema_json: str, bodies: list[bytes], token: str,
                    joined: bytes | None = None) -> int:
        fields = [name for name, _ in T.structure(schema_json) if name in self.columns(table)]
        cols = ", ".join(f"`{f}`" for f in fields)
        data = T.container(schema_json, bodies, joined)
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
        """The batch's ranges; ``written_at`` is the batch's clock (the event-time check's, see Batch)."""
        at = _EPOCH + timedelta(milliseconds=batch.clock_ms) if batch.clock_ms is not None \
            else datetime.now(timezone.utc)
        rows = [[group, topic, partition, first, last, token, batch.table, batch.rows, at]
                for (topic, partition), (first, last) in sorted(batch.ranges.items())]
        self.client.insert(f"{self.database}.sink_batches", rows,
                           column_names=["consumer_group", "topic", "partition", "first_offset", "last_offset",
                                         "token", "target", "rows", "written_at"])

    def pending(self, group: str, committed: dict[tuple[str, int], int]
                ) -> dict[str, tuple[list[tuple[str, int, int, int]], int]]:
        """Logged batches touching ``committed``'s partitions at or beyond the committed offset:
        token -> (every range of the batch (topic, partition, first, last), its clock in epoch ms)."""
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
        out: dict[str, tuple[list, int]] = {}
        for token, topic, partition, first, last, at in self.client.query(
                f"SELECT token, topic, partition, first_offset, last_offset, toUnixTimestamp64Milli(min(written_at)) "
                f"FROM {self.database}.sink_batches WHERE consumer_group = {{g:String}} "
                f"AND token IN {{t:Array(String)}} GROUP BY ALL ORDER BY topic, partition",
                parameters={"g": group, "t": tokens}).result_rows:
            ranges, clock = out.get(token, ([], int(at)))
            ranges.append((topic, int(partition), int(first), int(last)))
            out[token] = (ranges, min(clock, int(at)))
        return out


def _close_quietly(consumer) -> None:
    try:
        consumer.close()
    except Exception as exc:  # noqa: BLE001 - a consumer already replaced
        log.debug("closing a replaced consumer: %s", exc)


def _literal(v) -> str:
    if isinstance(v, (int, float)):
        return str(v)
    return "'" + str(v).replace("\\", "\\\\").replace("'", "\\'") + "'"


def _header_int(value: str, limit: int) -> int | None:
    """A partition or an offset named in a header, when it is one (headers are the producer's)."""
    try:
        v = int(value) if value not in ("", None) else None
    except ValueError:
        return None
    return v if v is not None and 0 <= v < limit else None


def dead_letter_row(msg) -> list:
    """A row of ``dead_letters`` from a message of a ``dlq.*`` topic."""
    from schemas.deadletter import read_headers

    h = read_headers(msg.headers())
    ts_type, ts = msg.timestamp()
    try:   # the timestamp is the producer's: any 64-bit number
        received = datetime.fromtimestamp(ts / 1000, timezone.utc) if ts and ts > 0 else None
    except (OverflowError, OSError, ValueError):
        received = None
    received = received or datetime.now(timezone.utc)
    source_topic = h.get("source_topic") or msg.topic()[len("dlq."):]
    sp = _header_int(h.get("source_partition", ""), 1 << 31)
    so = _header_int(h.get("source_offset", ""), 1 << 63)
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
                 kafka_config: dict | None = None,
                 event_time: EventTimeBounds | None = None, rejoin_s: float = 60.0):
        from schemas.kafka_config import kafka_security

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
        if event_time is None:
            from schemas.settings import get_settings

            event_time = EventTimeBounds.from_settings(get_settings())
        self.event_time = event_time
        self._occurred_at = OccurredAtReader(self.schemas.get)
        self._plans: dict[int, list | None] = {}         # schema id -> skip plan to occurred_at (None: none)
        self._registry_url = registry_url
        self._stop = threading.Event()
        self._batches: dict[str, Batch] = {}
        self._ready: list[Batch] = []                   # full batches, to write in this order
        self._in_flight: list[Batch] = []               # batches being written (a wait may see a revoke)
        self._routes: dict[str, T.Route | None] = {}   # topic -> where its records go (route_for, once a topic)
        self._backlog: list = []
        self._unchecked: set[tuple[str, int]] = set()   # assigned, not yet checked against the batch log
        self._assign_gen = 0
        self._skip: dict[tuple[str, int], int] = {}     # partition -> offset below which records were replayed
        self._paused = False
        self._assigned = False
        self.rejoin_s = rejoin_s                         # out of the group this long, the broker up: a new consumer
        self._out_since: float | None = time.monotonic()  # since when the consumer holds no assignment (None: holds)
        self._probed_at = 0.0
        self._last_record = time.monotonic()
        self._codec = None
        self.consumer = None
        self.producer = None
        self.stats = {"rows": 0, "batches": 0, "dead_lettered": 0, "replayed": 0, "failures": 0,
                      "split_inserts": 0, "refused_rows": 0, "commit_failures": 0, "new_consumers": 0}
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
            "on_commit": self._on_commit,
            **self.kafka_config,
            # The eager protocol: a revoke takes every partition, so dropping the revoked partitions' batches
            # (_on_revoke) never leaves a partition of ours behind its fetch position.
            "partition.assignment.strategy": "range,roundrobin",
        }

    def _start(self) -> None:
        from confluent_kafka import Consumer, Producer

        self.producer = Producer({"bootstrap.servers": self.bootstrap, **self.kafka_config,
                                  "enable.idempotence": True, "acks": "all",
                                  "linger.ms": 20})
        self._subscribe()

    def _subscribe(self) -> None:
        from confluent_kafka import Consumer

        self.consumer = Consumer(self._consumer_config())
        self._out_since = time.monotonic()
        named, pattern = T.sink_topics(self.prefix)
        self.consumer.subscribe(named + [pattern], on_assign=self._on_assign, on_revoke=self._on_revoke)

    def _rejoin_if_stuck(self) -> None:
        """Out of the group for ``rejoin_s`` while the broker answers: close the consumer (in a thread of its own,
        as its close may wait on the group it cannot reach) and subscribe a new one."""
        now = time.monotonic()
        if self._out_since is None or not self.rejoin_s or now - self._out_since < self.rejoin_s \
                or now - self._probed_at < 5.0:
            return
        self._probed_at = now
        try:
            self.producer.list_topics(timeout=5)
        except Exception as exc:  # noqa: BLE001 - the broker is away: waiting for it is right
            log.info("out of the consumer group for %.0f s; the broker does not answer either: %s",
                     now - self._out_since, _first_line(exc, 200))
            return
        log.error("out of the consumer group for %.0f s while the broker answers: a new consumer joins it (the "
                  "old one's close goes on in the background)", now - self._out_since)
        old = self.consumer
        self._drop(None)        # the new consumer reads them again, or replays them from the batch log
        self._paused = False
        threading.Thread(target=_close_quietly, args=(old,), name="yrdbus-sink-old-consumer", daemon=True).start()
        self.stats["new_consumers"] += 1
        NEW_CONSUMERS.inc()
        self._subscribe()

    def run(self, *, duration: float | None = None, idle_exit_s: float | None = None) -> dict:
        """Consume until ``stop()``, ``duration`` seconds, or ``idle_exit_s`` seconds without a record."""
        self._start()
        started = time.monotonic()
        self._last_record = time.monotonic()
        try:
            while not self._stop.is_set():
                if duration is not None and time.monotonic() - started >= duration:
                    break
                if self._out_since is not None:
                    self._rejoin_if_stuck()
                if self._unchecked:
                    self._check_assigned()   # replays what the batch log holds for them, before reading them
                    continue
                msgs = self._backlog or self.consumer.consume(num_messages=self.consume_batch, timeout=0.1)
                self._backlog = []
                if self._unchecked:          # assigned during this consume(): check them first
                    self._backlog = msgs
                    continue
                if msgs:
                    self._last_record = time.monotonic()
                    if self.first_record_at is None:
                        self.first_record_at = self._last_record
                if self._skip:
                    msgs = self._skip_replayed(msgs)
                self._add_all(msgs)
                self._flush_ready()
                self._flush_due()
                if idle_exit_s is not None and self._assigned and not self._batches and not self._ready \
                        and not self._unchecked and time.monotonic() - self._last_record >= idle_exit_s:
                    break
            self._flush_all()
        finally:
            try:
                self.consumer.close()   # its revoke only records (nothing is written from a callback)
            finally:
                self.producer.flush(5)
        return dict(self.stats)

    # ------------------------------------------------------------------ consuming
    def _add_all(self, msgs: list) -> None:
        """Put consumed messages into their tables' batches; a batch that is full is set ready to write.

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
                self._ready.append(batch)

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

    def _skip_replayed(self, msgs: list) -> list:
        """Leave out records a replay has just written (the fetch began at the committed offset)."""
        skip, out = self._skip, []
        for m in msgs:
            key = (m.topic(), m.partition())
            below = skip.get(key)
            if below is not None and m.error() is None:
                if m.offset() < below:
                    continue
                del skip[key]
            out.append(m)
        return out

    def _flush_ready(self) -> None:
        while self._ready and not self._stop.is_set():
            if not self._flush(self._ready.pop(0)):
                return

    def _flush_due(self) -> None:
        now = time.monotonic()
        for table in [t for t, b in self._batches.items() if now - b.started >= self.batch_age_s]:
            if self._stop.is_set():
                return
            batch = self._batches.pop(table, None)
            if batch is not None and not self._flush(batch):
                return

    def _flush_all(self) -> None:
        """Write what is left. Stopping, a batch that cannot be written ends it: a later batch of its
        partitions must not be committed past it (it is replayed, or read again, on the next start)."""
        batches = self._ready + list(self._batches.values())
        self._ready, self._batches = [], {}
        for batch in batches:
            if not self._flush(batch) and self._stop.is_set():
                return

    # ------------------------------------------------------------------ event time
    def _check_event_time(self, batch: Batch) -> None:
        """Set aside, for the dead-letter topic, the records of station kinds whose occurred_at is outside the
        contract's bounds, against the batch's clock."""
        batch.checked = True
        bounds = self.event_time
        lo, hi = bounds.floor_ms, batch.clock_ms + bounds.skew_ms
        at_clock = None
        for sid, msgs in batch.avro.items():
            if not msgs or self.schemas.get(sid)[0] not in SOURCE_KINDS:
                continue
            plan = self._plans.get(sid, _UNSEEN)
            if plan is _UNSEEN:
                plan = self._plans[sid] = _skip_plan(self.schemas.get(sid)[1])
            # the bodies (and their concatenation) are the insert's too: read once, used twice
            bodies = [m.value()[5:] for m in msgs]
            joined = b"".join(bodies)
            if plan is not None:
                ms, slow = occurred_at_ms(bodies, plan, header=0, joined=joined)
                suspects = np.flatnonzero(slow | (ms < lo) | (ms > hi)).tolist()
            else:
                ms, slow, suspects = None, None, range(len(msgs))
            drop = set()
            for i in suspects:
                try:
                    v = self._occurred_at.read(msgs[i].value()) if ms is None or slow[i] else int(ms[i])
                    if lo <= v <= hi:
                        continue
                    if at_clock is None:
                        at_clock = EventTimeBounds(bounds.floor, timedelta(milliseconds=bounds.skew_ms),
                                                   clock=lambda: batch.clock_ms / 1000.0)
                    at_clock.check(v)
                    continue   # (not reached: outside the bounds, check raises)
                except EventError as exc:
                    batch.bad.append((msgs[i], exc))
                    drop.add(i)
            if drop:
                msgs[:] = [m for i, m in enumerate(msgs) if i not in drop]
                bodies, joined = [b for i, b in enumerate(bodies) if i not in drop], None
                batch.rows -= len(drop)
            batch.prepared[sid] = (bodies, joined)

    # ------------------------------------------------------------------ writing
    def _write(self, batch: Batch, *, log_batch: bool = True) -> None:
        """Insert every record of the batch that the store takes; raise when the store is away."""
        if batch.rows and log_batch and not batch.logged:
            self.store.log_batch(self.group, batch, batch.token(self.group))
            batch.logged = True
        t0 = time.perf_counter()
        for sid in sorted(batch.avro):
            self._insert_avro(batch, sid)
        if batch.dead:
            self._insert_parts(batch, f"{batch.token(self.group)}-d", batch.dead, self._dead_rows_inserter(),
                               dead=True)
        if batch.written:
            INSERT_SECONDS.labels(batch.table).observe(time.perf_counter() - t0)

    def _dead_rows_inserter(self):
        return lambda part, token: self.store.insert_rows(T.DEAD_LETTERS, _DEAD_LETTER_COLUMNS,
                                                          [dead_letter_row(m) for m in part], token)

    def _insert_avro(self, batch: Batch, sid: int) -> None:
        schema_json = self.schemas.get(sid)[1]
        table = batch.table

        prepared = batch.prepared.get(sid)

        def insert(part: list, token: str) -> int:
            if prepared is not None and part is batch.avro[sid]:   # the whole list, as the event-time check left it
                return self.store.insert_avro(table, schema_json, prepared[0], token, joined=prepared[1])
            return self.store.insert_avro(table, schema_json, [m.value()[5:] for m in part], token)

        excluded = batch.excluded.get(sid, ())
        keep = [m for m in batch.avro[sid] if _offset_key(m) not in excluded] if excluded else batch.avro[sid]
        if not keep:
            return
        token = f"{batch.token(self.group, excluded)}-{sid}"
        refusal = self._try_insert(batch, token, keep, insert)
        if refusal is None:
            return
        if sid not in batch.validated and not too_many_partitions(refusal):
            batch.validated.add(sid)
            if self._validate(batch, sid):   # undecodable records set aside: a new set of rows, a new token
                return self._insert_avro(batch, sid)
        batch.validated.add(sid)
        self._split(batch, token, sorted(keep, key=_offset_key), insert, refusal)

    def _insert_parts(self, batch: Batch, token: str, items: list, insert, *, dead: bool = False) -> None:
        refusal = self._try_insert(batch, token, items, insert)
        if refusal is not None:
            self._split(batch, token, sorted(items, key=_offset_key), insert, refusal, dead=dead)

    def _try_insert(self, batch: Batch, token: str, items: list, insert) -> BaseException | None:
        """Insert ``items`` under ``token``. None: stored (now, or earlier in this batch's writing); else the
        store's refusal of these rows for what they are. Raises when the store is away."""
        if token in batch.done:
            return batch.done[token]
        try:
            insert(items, token)
            result = None
            batch.written += len(items)
        except Exception as exc:
            if not about_the_data(exc) or not self.store.answers(batch.table):
                raise   # the store is away: the caller waits and writes the batch again
            INSERT_FAILURES.labels(batch.table).inc()
            self.stats["failures"] += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            first = not any(v is not None for v in batch.done.values())
            (log.warning if first else log.debug)(
                "the store refuses %d rows of %s for their data (splitting them): %s", len(items), batch.table,
                _first_line(exc, 300))
            result = exc
        batch.done[token] = result
        return result

    def _split(self, batch: Batch, token: str, items: list, insert, refusal: BaseException, *,
               dead: bool = False) -> None:
        """``items`` (in offset order) were refused as a whole under ``token``: insert each half under
        ``token.0`` / ``token.1``, recursively; a single record refused is dead-lettered."""
        if len(items) == 1:
            if token in batch.settled:   # (written again after the store was away: already set aside)
                return
            batch.settled.add(token)
            m = items[0]
            self.stats["refused_rows"] += 1
            if dead:   # already a dead letter: it stays on its dlq topic (sending it on would loop)
                log.error("the store refuses the dead letter %s[%d]@%d; it stays on its topic: %s", m.topic(),
                          m.partition(), m.offset(), _first_line(refusal))
            else:
                batch.bad.append((m, StoreRefusedError(f"ClickHouse refuses the record: {_first_line(refusal)}")))
            return
        mid = len(items) // 2
        for suffix, half in ((".0", items[:mid]), (".1", items[mid:])):
            SPLIT_INSERTS.labels(batch.table).inc()
            self.stats["split_inserts"] += 1
            sub = self._try_insert(batch, token + suffix, half, insert)
            if sub is not None:
                self._split(batch, token + suffix, half, insert, sub, dead=dead)

    def _flush(self, batch: Batch, *, log_batch: bool = True) -> bool:
        """Write a batch, dead-letter what it sets aside, commit. False when it was left unwritten: stopping
        with the store away, or its partitions revoked (replayed from the batch log, or read again)."""
        self._in_flight.append(batch)
        try:
            return self._flush_once(batch, log_batch)
        finally:
            self._in_flight.remove(batch)

    def _flush_once(self, batch: Batch, log_batch: bool) -> bool:
        if batch.clock_ms is None:
            batch.clock_ms = int(time.time() * 1000)
        if not batch.checked:
            self._check_event_time(batch)
        attempt = 0
        while True:
            if batch.abandoned:
                log.info("%s batch dropped: its partitions were revoked", batch.table)
                return False
            try:
                self._write(batch, log_batch=log_batch)
                break
            except Exception as exc:  # the store is away (a refusal of the data is handled by _write)
                INSERT_FAILURES.labels(batch.table).inc()
                self.stats["failures"] += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                if self._stop.is_set():
                    log.error("stopping with an unwritten %s batch (%d rows), left for the next start (replayed "
                              "from the batch log, or read again): %s", batch.table, batch.rows, _first_line(exc, 300))
                    return False
                attempt += 1
                delay = min(_MAX_BACKOFF_S, 0.25 * 2 ** attempt)
                log.warning("insert into %s failed (attempt %d), retrying in %.1f s: %s",
                            batch.table, attempt, delay, _first_line(exc, 300))
                self._pause()
                self._wait(delay, batch)
        if not self._dead_letter(batch):
            return False
        ROWS_WRITTEN.labels(batch.table).inc(batch.written)
        self.stats["rows"] += batch.written
        self.stats["batches"] += 1
        self._commit(batch)
        self.last_commit_at = time.monotonic()
        self._resume()
        return True

    def _validate(self, batch: Batch, sid: int) -> bool:
        """Decode the records of a refused schema id in Python; set the undecodable ones aside."""
        from schemas.codec import get_codec

        if self._codec is None:
            self._codec = get_codec(self._registry_url)
        excluded = batch.excluded.setdefault(sid, set())
        found = False
        for m in batch.avro[sid]:
            try:
                self._codec.decode(m.value())
            except EventError as exc:
                excluded.add(_offset_key(m))
                batch.bad.append((m, exc))
                batch.rows -= 1
                found = True
        return found

    def _dead_letter(self, batch: Batch) -> bool:
        """Send the batch's dead letters and wait for the broker to have them (before the commit).
        False when stopping before they are delivered (the batch is then not committed)."""
        if not batch.bad:
            return True
        failed: list = []
        if not batch.sent:
            self._produce_dead(batch.bad, failed)
            batch.sent = True
        attempt = 0
        while True:
            remaining = self.producer.flush(1.0)
            if not remaining and not failed:
                return True
            if not remaining and failed:   # delivery failed: produce those again
                again, failed[:] = list(failed), []
                self._produce_dead(again, failed, count=False)
                continue
            if self._stop.is_set():
                log.error("stopping with %d dead letters of %s undelivered; the batch is not committed",
                          remaining, batch.table)
                return False
            attempt += 1
            if attempt % 10 == 0:
                log.warning("%d dead letters of %s not delivered yet; not committing", remaining, batch.table)

    def _produce_dead(self, items: list, failed: list, *, count: bool = True) -> None:
        from schemas.deadletter import dead_letter

        for m, error in items:
            def delivered(err, msg, item=(m, error)):
                if err is not None:
                    log.warning("dead letter of %s[%d]@%d not delivered: %s", item[0].topic(), item[0].partition(),
                                item[0].offset(), err)
                    failed.append(item)
            dead_letter(self.producer, m.topic(), m.value() or b"",
                        error.at(f"{m.topic()}[{m.partition()}]@{m.offset()}") if isinstance(error, EventError)
                        else error, partition=m.partition(), offset=m.offset(), key=m.key(), on_delivery=delivered)
            if count:
                DEAD_LETTERED.labels(m.topic()).inc()
                self.stats["dead_lettered"] += 1

    def _commit(self, batch: Batch) -> None:
        from confluent_kafka import TopicPartition

        offsets = [TopicPartition(t, p, last + 1) for (t, p), (_, last) in sorted(batch.ranges.items())]
        if not offsets or self.consumer is None:
            return
        try:
            self.consumer.commit(offsets=offsets, asynchronous=True)   # its outcome: _on_commit
        except Exception as exc:  # e.g. partitions revoked meanwhile: the next owner replays, deduplicated
            self.stats["commit_failures"] += 1
            log.warning("commit of %s failed: %s", batch.table, exc)

    def _on_commit(self, err, partitions) -> None:
        """A commit's outcome (inside consume()). A failed one is replayed from the batch log by whoever reads the
        partitions next, deduplicated, so it is only said."""
        if err is None:
            failed = [tp for tp in partitions or [] if tp.error is not None]
            if not failed:
                return
            err = failed[0].error
        self.stats["commit_failures"] += 1
        log.warning("offset commit failed (%d partition(s)): %s", len(partitions or []), err)

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

    def _wait(self, seconds: float, batch: Batch | None = None) -> None:
        """Sleep while staying in the consumer group; records fetched meanwhile are kept for later. Returns
        early when stopping or when ``batch`` is dropped by a revoke. Called from the main loop only."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not self._stop.is_set() \
                and not (batch is not None and batch.abandoned):
            if self.consumer is None:
                time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
                continue
            msgs = self.consumer.consume(num_messages=1000, timeout=min(0.2, max(0.0, deadline - time.monotonic())))
            if msgs:
                self._backlog.extend(msgs)

    # ------------------------------------------------------------------ rebalancing and replay
    def _on_revoke(self, consumer, partitions) -> None:
        """Runs inside consume(): only records. The revoked partitions' batches are dropped, written or not
        (a logged batch is replayed by the next owner, an unlogged one was not inserted), and so are the
        records read from them and not yet batched."""
        if consumer is not self.consumer:
            return                    # the consumer a new one replaced, closing in the background
        self._out_since = time.monotonic()
        self._drop({(tp.topic, tp.partition) for tp in partitions})

    def _drop(self, revoked: set[tuple[str, int]] | None) -> None:
        """Drop the batches of the ``revoked`` partitions (None: of every partition), written or not, and the
        records read from them and not yet batched."""
        for batch in [*self._batches.values(), *self._ready, *self._in_flight]:
            if revoked is None or revoked & batch.ranges.keys():
                batch.abandoned = True
        self._batches = {t: b for t, b in self._batches.items() if not b.abandoned}
        self._ready = [b for b in self._ready if not b.abandoned]
        if revoked is None:
            self._backlog, self._unchecked, self._skip = [], set(), {}
            return
        self._backlog = [m for m in self._backlog if (m.topic(), m.partition()) not in revoked]
        self._unchecked -= revoked
        for key in revoked:
            self._skip.pop(key, None)

    def _on_assign(self, consumer, partitions) -> None:
        """Runs inside consume(): only records. The main loop checks these partitions against the batch log
        (``_check_assigned``) before it reads them."""
        if consumer is not self.consumer:
            return
        self._out_since = None
        self._last_record = time.monotonic()  # idle time counts from the assignment, not from the start
        self._assigned = True
        self._unchecked |= {(tp.topic, tp.partition) for tp in partitions}
        self._assign_gen += 1

    def _check_assigned(self) -> None:
        """Before reading newly assigned partitions, re-insert any logged batch of theirs that may not be
        committed, and skip what it held. Waits (staying in the group) while the broker or the store cannot
        say; returns when done, stopping, or when the partitions went elsewhere."""
        from confluent_kafka import TopicPartition

        attempt = 0
        while self._unchecked and not self._stop.is_set():
            gen, parts = self._assign_gen, sorted(self._unchecked)
            try:
                committed = self.consumer.committed([TopicPartition(t, p) for t, p in parts], timeout=5)
                start = {(tp.topic, tp.partition): (tp.offset if tp.offset >= 0 else 0) for tp in committed}
                pending = self.store.pending(self.group, start)
            except Exception as exc:
                attempt += 1
                delay = min(_MAX_BACKOFF_S, 0.25 * 2 ** attempt)
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("could not read the committed offsets or the batch log (attempt %d), retrying in "
                            "%.1f s: %s", attempt, delay, _first_line(exc, 300))
                self._pause()
                self._wait(delay)
                continue
            # one replay per logged batch (a batch logged under two tokens is one set of ranges), in offset order
            batches: dict[tuple, int] = {}
            for ranges, clock in pending.values():
                key = tuple(sorted(ranges))
                batches[key] = min(clock, batches.get(key, clock))
            for ranges, clock in sorted(batches.items()):
                if self._stop.is_set() or self._assign_gen != gen:
                    break
                try:
                    batch = self._rebuild(list(ranges), clock)
                except Exception as exc:
                    log.error("cannot replay logged batch %s: %s", ranges, exc)
                    continue
                if not self._flush(batch, log_batch=False):
                    break
                REPLAYED.inc()
                self.stats["replayed"] += 1
                for topic, partition, first, last in ranges:
                    if (topic, partition) in start:
                        self._skip[(topic, partition)] = max(self._skip.get((topic, partition), 0), last + 1)
            else:
                if self._assign_gen == gen:
                    self._unchecked.difference_update(parts)
                    self._resume()

    def _rebuild(self, ranges: list[tuple[str, int, int, int]], clock_ms: int | None = None) -> Batch:
        """The batch of exactly these offset ranges, read again from the broker, with its logged clock."""
        from confluent_kafka import Consumer, TopicPartition

        reader = Consumer({"bootstrap.servers": self.bootstrap, **self.kafka_config,
                           "group.id": f"{self.group}-replay", "enable.auto.commit": False,
                           "isolation.level": "read_committed", "enable.partition.eof": True})
        try:
            reader.assign([TopicPartition(t, p, first) for t, p, first, _ in ranges])
            todo = {(t, p): last for t, p, _, last in ranges}
            firsts = {(t, p): first for t, p, first, _ in ranges}
            route = T.route_for(ranges[0][0], self.prefix)
            batch = Batch(route.table, clock_ms=clock_ms)
            deadline = time.monotonic() + 60
            while todo and time.monotonic() < deadline and not self._stop.is_set():
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
