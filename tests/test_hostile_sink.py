"""The ClickHouse sink against hostile and awkward data, on the real broker and the real engine (issue #20).

* forged event times are dead-lettered where the sink reads, with their bytes; the rest is stored;
* a valid archive spanning more months than one insert may touch is stored in parts, and a crash in the
  middle of those parts is replayed exactly once;
* a record ClickHouse refuses for what it is goes to the dead-letter topic, its neighbours to the table;
* SIGTERM to ``yrdbus sink`` while the store is away ends it within 10 s, cleanly, and the next start
  stores the unwritten batch once.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import clickhouse_connect
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from conftest import free_port
from connectors.store import Target, migrate
from connectors.store.sink import Sink, WriterSchemas, about_the_data, occurred_at_ms
from kit import synthetic
from kit.faults import kit_argv
from schemas import topics
from schemas.codec import get_codec
from schemas.eventtime import OccurredAtReader, _skip_plan

ROOT = Path(__file__).resolve().parents[1]
UTC = timezone.utc


def wait_for(check, timeout: float, what: str, every: float = 0.3):
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


def produce_all(bootstrap: str, topic: str, values: list[tuple[bytes, bytes]]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 10, "enable.idempotence": True})
    for key, value in values:
        producer.produce(topic, value, key=key)
    assert producer.flush(30) == 0


def encode(records: list[dict], kind: str = "clearance") -> list[tuple[bytes, bytes]]:
    codec = get_codec()
    return [(r["subject"].encode(), codec.encode(kind, r, validate=False)) for r in records]


class Running:
    """A Sink running on a thread, stopped (and joined) by the test."""

    def __init__(self, sink: Sink):
        self.sink = sink
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.sink.run(duration=120)
        except BaseException as exc:  # shown by stop()
            self.error = exc

    def stop(self) -> None:
        self.sink.stop()
        self.thread.join(15)
        assert not self.thread.is_alive(), "the sink did not stop within 15 s"
        assert self.error is None, repr(self.error)


def one(client, sql: str):
    return client.query(sql).result_rows[0][0]


# =========================================================================== pure parts (no broker)
def test_the_sink_tells_a_refusal_of_the_data_from_a_store_that_is_away():
    data = [
        "Code: 252. DB::Exception: Too many partitions for single INSERT block (more than 100). (TOO_MANY_PARTS)",
        "Code: 376. DB::Exception: Cannot parse uuid not-a-uuid: (at row 1): While executing AvroRowInputFormat. "
        "(CANNOT_PARSE_UUID)",
        "Code: 27. DB::Exception: Cannot parse input. (CANNOT_PARSE_INPUT_ASSERTION_FAILED)",
        # a record's words quoted in the message do not make it the store's trouble
        "Code: 376. DB::Exception: Cannot parse uuid No space left on device, timed out, memory limit: (at row 1). "
        "(CANNOT_PARSE_UUID)",
    ]
    store = [
        "Code: 252. DB::Exception: Too many parts (3001) in table. Merges are processing significantly slower "
        "than inserts. (TOO_MANY_PARTS)",
        "Code: 60. DB::Exception: Unknown table expression identifier 'y.clearances'. (UNKNOWN_TABLE)",
        "Code: 243. DB::Exception: Cannot reserve 1.00 MiB, not enough space. (NOT_ENOUGH_SPACE)",
        "Code: 75. DB::Exception: Cannot write to file /x/data.bin, errno: 28, strerror: No space left on device. "
        "(CANNOT_WRITE_TO_FILE_DESCRIPTOR)",
        "Code: 241. DB::Exception: Memory limit (total) exceeded. (MEMORY_LIMIT_EXCEEDED)",
        "HTTPConnectionPool(host='ch', port=8123): Max retries exceeded (Connection refused)",
        "table yrdbus.clearances is not there (missing, detached, or the store is not migrated)",
    ]
    assert [about_the_data(RuntimeError(m)) for m in data] == [True] * len(data)
    assert [about_the_data(RuntimeError(m)) for m in store] == [False] * len(store)


def test_occurred_at_read_in_bulk_agrees_with_the_exact_reader_or_hands_the_record_over():
    schemas = WriterSchemas()
    exact = OccurredAtReader(schemas.get)
    recs = synthetic.records("clearance", 400, seed=21)
    for i, year in enumerate((1000, 1969, 1970, 2000, 2039, 2400, 9999)):
        recs[i * 11]["occurred_at"] = datetime(year, 3, 1, tzinfo=UTC)
    recs[5]["station_id"] = "S" * 300                   # a length over one varint byte
    values = [v for _, v in encode(recs)]
    values += [v[:n] for v in values[:20] for n in (5, 8, 40, 47, 52)]   # records that end early
    ms, slow = occurred_at_ms(values, _skip_plan(schemas.get(1)[1]))
    for i, v in enumerate(values):
        if slow[i]:
            continue
        assert int(ms[i]) == exact.read(v), i
    assert slow[0] and slow[5] and slow[55] and slow[66]   # year 1000, the long string, years 2400 and 9999
    bodies = [v[5:] for v in values]                        # the same read from the bodies alone
    ms_b, slow_b = occurred_at_ms(bodies, _skip_plan(schemas.get(1)[1]), header=0, joined=b"".join(bodies))
    assert (slow_b == slow).all() and (ms_b[~slow] == ms[~slow]).all()
    assert (~slow[:400]).sum() >= 395


# =========================================================================== (a) forged event times
def test_forged_event_times_are_dead_lettered_with_their_bytes_and_the_valid_records_stored(kafka, ch, unique):
    client, db = ch
    migrate(client, Target(database=db))
    prefix = f"{unique}."
    topics.apply(kafka.bootstrap, prefix=prefix)
    now = datetime.now(UTC)
    valid = synthetic.records("clearance", 300, seed=31)
    valid += synthetic.records("clearance", 3, seed=32, start=now - timedelta(minutes=1),
                               span=timedelta(minutes=3))   # up to 2 minutes ahead: within the skew
    forged = {}
    for i, (at, reason) in enumerate([(datetime(1000, 1, 1, tzinfo=UTC), "event_time_before_floor"),
                                      (datetime(1999, 12, 31, 23, 59, tzinfo=UTC), "event_time_before_floor"),
                                      (datetime(2400, 1, 1, tzinfo=UTC), "future_event_time"),
                                      (datetime(9999, 12, 31, 23, 59, 59, 999000, tzinfo=UTC), "future_event_time"),
                                      (now + timedelta(hours=1), "future_event_time")]):
        r = synthetic.records("clearance", 1, seed=40 + i)[0]
        r["occurred_at"] = at
        forged[r["event_id"]] = (r, reason)
    msgs = encode(valid)
    bad = encode([r for r, _ in forged.values()])
    for i, m in enumerate(bad):      # interleaved with the valid ones
        msgs.insert(40 + 50 * i, m)
    produce_all(kafka.bootstrap, prefix + "border.SH.clearance", msgs)

    running = Running(Sink(bootstrap=kafka.bootstrap, client=client, database=db, group=unique, prefix=prefix,
                           batch_rows=5000, batch_age_s=0.3))
    try:
        wait_for(lambda: one(client, f"SELECT count() FROM {db}.clearances") >= len(valid)
                 and one(client, f"SELECT count() FROM {db}.dead_letters FINAL") >= len(forged), 60,
                 "the valid clearances stored and the forged ones dead-lettered")
    finally:
        running.stop()
    stored = {str(r[0]) for r in client.query(f"SELECT event_id FROM {db}.clearances").result_rows}
    assert stored == {r["event_id"] for r in valid}
    assert one(client, f"SELECT count() FROM {db}.clearances") == len(valid)
    dead = client.query(f"SELECT reason, field, error, hex(value), source_topic FROM {db}.dead_letters FINAL").result_rows
    by_value = {v: (reason, field, error, topic) for reason, field, error, v, topic in dead}
    assert len(dead) == len(forged)
    for (key, value), (event_id, (r, reason)) in zip(bad, forged.items()):
        assert value.hex().upper() in by_value, f"{event_id} ({r['occurred_at']}) is not dead-lettered as it was"
        got_reason, field, error, topic = by_value[value.hex().upper()]
        assert (got_reason, field, topic) == (reason, "occurred_at", prefix + "border.SH.clearance"), error
    assert running.sink.stats["dead_lettered"] == len(forged)


# =========================================================================== (b) an archive of 150 months
def archive_and_later() -> tuple[list[dict], list[dict]]:
    archive = []
    for i in range(150):   # one a month, January 2005 to June 2017
        at = datetime(2005 + i // 12, 1 + i % 12, 15, 12, tzinfo=UTC)
        archive += synthetic.records("clearance", 1, seed=1000 + i, start=at)
    later = synthetic.records("clearance", 300, seed=77, start=datetime(2024, 3, 1, tzinfo=UTC))
    return archive, later


def test_an_archive_spanning_150_months_is_stored_in_parts_without_a_stall(kafka, ch, unique):
    client, db = ch
    migrate(client, Target(database=db))
    prefix = f"{unique}."
    topics.apply(kafka.bootstrap, prefix=prefix)
    archive, later = archive_and_later()
    produce_all(kafka.bootstrap, prefix + "border.SH.clearance", encode(archive))
    running = Running(Sink(bootstrap=kafka.bootstrap, client=client, database=db, group=unique, prefix=prefix))
    try:
        wait_for(lambda: one(client, f"SELECT count() FROM {db}.clearances") >= len(archive), 60,
                 "the archive stored")
        produce_all(kafka.bootstrap, prefix + "border.JS.clearance", encode(later))   # and the sink goes on
        wait_for(lambda: one(client, f"SELECT count() FROM {db}.clearances") >= len(archive) + len(later), 60,
                 "the later clearances stored")
    finally:
        running.stop()
    n, distinct, months = client.query(
        f"SELECT count(), uniqExact(event_id), uniqExact(toYYYYMM(occurred_at)) FROM {db}.clearances").result_rows[0]
    assert (n, distinct) == (len(archive) + len(later),) * 2
    assert months == 151
    assert one(client, f"SELECT sum(crossings) FROM {db}.flow_hourly") == n   # the view saw each once
    assert one(client, f"SELECT count() FROM {db}.dead_letters") == 0
    stats = running.sink.stats
    assert stats["dead_lettered"] == 0 and stats["refused_rows"] == 0, stats
    assert stats["split_inserts"] >= 2, stats   # the archive's batch was refused as a whole and split


class Crash(BaseException):
    """Stands for the process dying (not an Exception: nothing in the sink catches it)."""


def test_a_crash_between_the_parts_of_a_split_batch_is_replayed_exactly_once(kafka, ch, unique, monkeypatch):
    client, db = ch
    migrate(client, Target(database=db))
    prefix = f"{unique}."
    topics.apply(kafka.bootstrap, prefix=prefix)
    archive, later = archive_and_later()
    produce_all(kafka.bootstrap, prefix + "border.SH.clearance", encode(archive + later[:100]))
    total = len(archive) + 100

    crashing = Sink(bootstrap=kafka.bootstrap, client=client, database=db, group=unique, prefix=prefix)
    real = crashing.store.insert_avro

    def insert_then_die(table, schema_json, bodies, token, **kw):
        written = real(table, schema_json, bodies, token, **kw)
        if "." in token:   # the first part of a split is in: the process dies before the next one
            raise Crash(token)
        return written

    monkeypatch.setattr(crashing.store, "insert_avro", insert_then_die)
    running = Running(crashing)
    running.thread.join(60)
    if running.thread.is_alive():
        running.stop()
        pytest.fail(f"the sink did not reach the split: {crashing.stats} {crashing.last_error}")
    assert isinstance(running.error, Crash), repr(running.error)
    partial = one(client, f"SELECT count() FROM {db}.clearances")
    assert 0 < partial < total

    again = Sink(bootstrap=kafka.bootstrap, client=client, database=db, group=unique, prefix=prefix)
    stats = again.run(duration=90, idle_exit_s=3)
    n, distinct = client.query(f"SELECT count(), uniqExact(event_id) FROM {db}.clearances").result_rows[0]
    assert (n, distinct) == (total, total), stats
    assert one(client, f"SELECT sum(crossings) FROM {db}.flow_hourly") == total
    assert stats["replayed"] >= 1 and stats["dead_lettered"] == 0, stats


# =========================================================================== (c) a record the store refuses
def test_a_record_clickhouse_refuses_is_dead_lettered_and_its_neighbours_stored(kafka, ch, unique):
    client, db = ch
    migrate(client, Target(database=db))
    prefix = f"{unique}."
    topics.apply(kafka.bootstrap, prefix=prefix)
    valid = synthetic.records("clearance", 400, seed=51)
    refused = synthetic.records("clearance", 1, seed=52)[0]
    refused["event_id"] = "not-a-uuid"   # the schema's string; decodes in Python; ClickHouse's UUID refuses it
    msgs = encode(valid)
    (_, refused_bytes), = encode([refused])
    msgs.insert(123, (b"r", refused_bytes))
    produce_all(kafka.bootstrap, prefix + "border.SH.clearance", msgs)
    running = Running(Sink(bootstrap=kafka.bootstrap, client=client, database=db, group=unique, prefix=prefix,
                           batch_age_s=0.3))
    try:
        wait_for(lambda: one(client, f"SELECT count() FROM {db}.clearances") >= len(valid)
                 and one(client, f"SELECT count() FROM {db}.dead_letters") >= 1, 60,
                 "the neighbours stored and the refused record dead-lettered")
    finally:
        running.stop()
    assert one(client, f"SELECT uniqExact(event_id) FROM {db}.clearances") == len(valid)
    assert one(client, f"SELECT count() FROM {db}.clearances") == len(valid)
    (reason, error, value, source_topic), = client.query(
        f"SELECT reason, error, value, source_topic FROM {db}.dead_letters FINAL").result_rows
    assert (reason, source_topic) == ("refused_by_store", prefix + "border.SH.clearance")
    assert one(client, f"SELECT hex(value) FROM {db}.dead_letters FINAL") == refused_bytes.hex().upper()
    assert "CANNOT_PARSE_UUID" in error and "not-a-uuid" in error, error
    assert running.sink.stats["refused_rows"] == 1, running.sink.stats


# =========================================================================== (d) SIGTERM while the store is away
def _committed_everything(bootstrap: str, group: str, topic: str) -> bool:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        parts = [TopicPartition(topic, p) for p in c.list_topics(topic, timeout=10).topics[topic].partitions]
        committed = c.committed(parts, timeout=10)
        ends = [c.get_watermark_offsets(tp, timeout=10)[1] for tp in parts]
        return all(tp.offset == end or (end == 0 and tp.offset < 0) for tp, end in zip(committed, ends))
    finally:
        c.close()


def test_sigterm_while_the_store_is_away_exits_cleanly_in_10s_and_the_next_start_stores_the_batch_once(
        kafka, unique, tmp_path):
    prefix, group, port = f"{unique}.", unique, free_port()
    topic = prefix + "border.SH.clearance"
    env = dict(os.environ, YRDBUS_VAR_DIR=str(tmp_path / "var"), YRDBUS_CLICKHOUSE_URL=f"chdb://{tmp_path / 'ch'}",
               YRDBUS_KAFKA_BOOTSTRAP=kafka.bootstrap, YRDBUS_QUERY_PORT=str(port), YRDBUS_SINK_BATCH_ROWS="500",
               YRDBUS_SINK_BATCH_AGE_S="0.3", PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    topics.apply(kafka.bootstrap, prefix=prefix)
    first, second = (synthetic.records("clearance", 300, seed=s) for s in (61, 62))
    produce_all(kafka.bootstrap, topic, encode(first))
    logfile = tmp_path / "sink-1.log"

    def endpoint(sql: str):
        try:
            return clickhouse_connect.get_client(host="127.0.0.1", port=port, database="yrdbus").query(sql).result_rows
        except Exception:
            return None

    # the sink, with SIGUSR1 taking every table it writes away under it (kit.faults)
    with logfile.open("w") as out:
        p = subprocess.Popen(kit_argv("sink", "--", "sink", "--prefix", prefix, "--group", group), cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: (endpoint("SELECT count() FROM clearances") or [[0]])[0][0] >= len(first), 90,
                 "the first clearances stored")
        p.send_signal(signal.SIGUSR1)
        wait_for(lambda: "store away" in logfile.read_text(), 30, "the store to go away")
        produce_all(kafka.bootstrap, topic, encode(second))
        wait_for(lambda: logfile.read_text().count("failed (attempt") >= 3, 60, "the sink to retry its insert")
        p.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        try:
            rc = p.wait(30)
        except subprocess.TimeoutExpired:
            rc = None
        took = time.monotonic() - t0
        text = logfile.read_text()
        assert rc == 0 and took <= 10, f"exit status {rc} after {took:.1f} s:\n{text[-3000:]}"
        assert "Assertion" not in text and "Traceback" not in text, text[-3000:]
        assert "unwritten clearances batch" in text, text[-3000:]
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(10)

    # the next start (the tables are back with the engine) stores what was left, once
    with (tmp_path / "sink-2.log").open("w") as out:
        p = subprocess.Popen([sys.executable, "-m", "yrdbus.cli", "sink", "--prefix", prefix, "--group", group],
                             cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        want = len(first) + len(second)
        wait_for(lambda: (endpoint("SELECT count() FROM clearances") or [[0]])[0][0] >= want, 90,
                 "the unwritten batch stored")
        wait_for(lambda: _committed_everything(kafka.bootstrap, group, topic), 30, "the offsets committed")
        assert endpoint("SELECT count(), uniqExact(event_id) FROM clearances") == [(want, want)]
        assert endpoint("SELECT sum(crossings) FROM flow_hourly") == [(want,)]
        p.send_signal(signal.SIGTERM)
        assert p.wait(30) == 0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(10)
    assert "Assertion" not in (tmp_path / "sink-2.log").read_text()
