"""The ClickHouse sink on the real broker and the real engine: nothing lost, nothing doubled."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import clickhouse_connect
import pytest
from confluent_kafka import Producer

from conftest import free_port
from connectors.store import Target, migrate
from connectors.store.sink import Sink
from kit import synthetic
from kit.faults import kit_argv
from schemas import topics
from schemas.codec import get_codec

ROOT = Path(__file__).resolve().parents[1]
YRDBUS = [sys.executable, "-m", "yrdbus.cli"]

#: kind -> (topic without prefix, how many)
PLAN = {
    "clearance": ("border.SH.clearance", 6000),
    "alert": ("border.JS.alert", 400),
    "case": ("border.ZJ.case", 300),
    "derived_alert": (topics.DERIVED_ALERTS, 200),
    "trend": (topics.TRENDS, 60),
    "risk": (topics.RISK_SCORES, 90),
    "disposition": (topics.DISPOSITIONS, 50),
}
TABLES = {"clearance": "clearances", "alert": "alerts", "case": "cases", "derived_alert": "derived_alerts",
          "trend": "trends", "risk": "risk_scores", "disposition": "dispositions"}
#: what identifies one record of each table (a double has the same key; ingested_at differs)
KEYS = {"clearance": "event_id", "alert": "event_id", "case": "event_id", "derived_alert": "alert_id",
        "trend": "signal_id", "risk": "(subject, occurred_at)", "disposition": "disposition_id"}
BAD = [b"not avro at all", b"\x00\x00\x00\x03\xe7garbage", b""]  # no framing; unknown schema id 999; empty


def publish(bootstrap: str, prefix: str, scale: float = 1.0, seed: int = 7, bad: bool = True) -> dict[str, int]:
    topics.apply(bootstrap, prefix=prefix)
    codec = get_codec()
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "enable.idempotence": True})
    sent = {}
    for i, (kind, (topic, n)) in enumerate(PLAN.items()):
        n = max(1, int(n * scale))
        for r in synthetic.records(kind, n, seed=seed + i):
            while True:
                try:
                    producer.produce(prefix + topic, codec.encode(kind, r, validate=False),
                                     key=(r.get("subject") or r.get("alert_id") or r.get("signal_id") or "k").encode())
                    break
                except BufferError:
                    producer.poll(0.1)
        sent[kind] = n
    if bad:
        for b in BAD:
            producer.produce(prefix + "border.SH.clearance", b, key=b"bad")
    assert producer.flush(30) == 0
    return sent


def count_sql(kind: str, db: str | None = None) -> str:
    table = f"{db}.{TABLES[kind]}" if db else TABLES[kind]
    return f"SELECT count(), uniqExact({KEYS[kind]}) FROM {table}"


def subject_events_check(client, db: str | None = None) -> tuple[dict, dict]:
    """Rows of subject_events by kind (no FINAL: a replay must not have written any twice), and what the
    four event tables say there should be: one a clearance, one an alert or derived alert with a subject,
    one a case event per distinct subject of the case."""
    p = f"{db}." if db else ""
    got = dict(client.query(f"SELECT toString(kind), count() FROM {p}subject_events GROUP BY kind").result_rows)
    want = dict(zip(["clearance", "alert", "case", "derived_alert"], client.query(
        f"SELECT (SELECT count() FROM {p}clearances), (SELECT count() FROM {p}alerts WHERE subject IS NOT NULL), "
        f"(SELECT sum(length(arrayDistinct(subjects))) FROM {p}cases), "
        f"(SELECT uniqExact(alert_id) FROM {p}derived_alerts WHERE subject IS NOT NULL)").result_rows[0]))
    return got, {k: v for k, v in want.items() if v}


def test_every_published_event_and_derived_output_lands_once_and_bad_records_are_dead_lettered(kafka, ch, unique):
    client, db = ch
    migrate(client, Target(database=db))
    prefix = f"{unique}."
    sent = publish(kafka.bootstrap, prefix)
    sink = Sink(bootstrap=kafka.bootstrap, client=client, database=db, group=unique, prefix=prefix, batch_rows=2000)
    stats = sink.run(idle_exit_s=4, duration=90)
    for kind, table in TABLES.items():
        n, distinct = client.query(count_sql(kind, db)).result_rows[0]
        assert (n, distinct) == (sent[kind], sent[kind]), (kind, stats, sink.last_error)
    assert stats["dead_lettered"] == len(BAD)
    # The dead letters went to dlq.<topic> with the reason, and from there into the table (read back by the sink)
    sink2 = Sink(bootstrap=kafka.bootstrap, client=client, database=db, group=unique, prefix=prefix)
    sink2.run(idle_exit_s=4, duration=60)
    reasons = client.query(f"SELECT reason, hex(value) FROM {db}.dead_letters FINAL").result_rows
    assert sorted(v for _, v in reasons) == sorted(b.hex().upper() for b in BAD)
    assert sorted(r for r, _ in reasons) == ["undecodable", "undecodable", "unknown_schema_id"]
    # Materialized views saw each clearance and case event once
    assert client.query(f"SELECT sum(crossings) FROM {db}.flow_hourly").result_rows[0][0] == sent["clearance"]
    assert client.query(f"SELECT sum(events) FROM {db}.cases_daily").result_rows[0][0] == sent["case"]
    got, want = subject_events_check(client, db)
    assert got == want and got["clearance"] == sent["clearance"]


def test_sink_waits_while_clickhouse_refuses_inserts_and_catches_up_without_loss(kafka, ch, unique):
    client, db = ch
    migrate(client, Target(database=db))
    prefix = f"{unique}."
    client.command(f"DETACH TABLE {db}.clearances")  # inserts into it fail until it is back
    sent = publish(kafka.bootstrap, prefix, scale=0.5, bad=False)
    sink = Sink(bootstrap=kafka.bootstrap, client=client, database=db, group=unique, prefix=prefix, batch_rows=1000)
    runner = threading.Thread(target=sink.run, kwargs={"duration": 90}, daemon=True)
    runner.start()
    deadline = time.monotonic() + 30
    while sink.stats["failures"] < 3 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert sink.stats["failures"] >= 3, "the sink should have retried the refused insert"
    assert "clearances" in (sink.last_error or "")
    client.command(f"ATTACH TABLE {db}.clearances")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if client.query(f"SELECT count() FROM {db}.clearances").result_rows[0][0] >= sent["clearance"]:
            break
        time.sleep(0.5)
    time.sleep(2)  # anything still to come would double the count
    sink.stop()
    runner.join(30)
    for kind, table in TABLES.items():
        n, distinct = client.query(count_sql(kind, db)).result_rows[0]
        assert (n, distinct) == (sent[kind], sent[kind]), kind


class CutOffSink(Sink):
    """A sink whose first consumer never reaches a group coordinator (its bootstrap is a port nobody listens on)
    while its producer talks to the broker: the state librdkafka was seen to stay in after a broker outage (out of
    the group, "no broker available for coordinator query", for minutes)."""

    def __init__(self, *args, dead_bootstrap: str, **kwargs):
        super().__init__(*args, **kwargs)
        self.dead_bootstrap = dead_bootstrap
        self.consumers = 0

    def _consumer_config(self) -> dict:
        conf = super()._consumer_config()
        self.consumers += 1
        if self.consumers == 1:
            conf["bootstrap.servers"] = self.dead_bootstrap
        return conf


def test_a_sink_out_of_its_group_while_the_broker_answers_joins_again_with_a_new_consumer(kafka, ch, unique):
    client, db = ch
    migrate(client, Target(database=db))
    prefix = f"{unique}."
    sent = publish(kafka.bootstrap, prefix, scale=0.05, bad=False)
    sink = CutOffSink(bootstrap=kafka.bootstrap, client=client, database=db, group=unique, prefix=prefix,
                      batch_rows=200, rejoin_s=3.0, dead_bootstrap=f"127.0.0.1:{free_port()}")
    runner = threading.Thread(target=sink.run, kwargs={"duration": 120}, daemon=True)
    runner.start()
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if all(client.query(count_sql(k, db)).result_rows[0][1] >= n for k, n in sent.items()):
                break
            time.sleep(0.5)
    finally:
        sink.stop()
        runner.join(30)
    assert not runner.is_alive()
    assert sink.stats["new_consumers"] == 1 and sink.consumers == 2, sink.stats   # one replacement, not a loop
    for kind, table in TABLES.items():
        n, distinct = client.query(count_sql(kind, db)).result_rows[0]
        assert (n, distinct) == (sent[kind], sent[kind]), kind


def _start_sink(env: dict, prefix: str, group: str, crash_after_inserts: int | None = None) -> subprocess.Popen:
    """`yrdbus sink`; with ``crash_after_inserts``, under the test kit's harness, which SIGKILLs it after that many
    inserts (each before its offsets are committed)."""
    argv = (kit_argv("sink", "--crash-after-inserts", str(crash_after_inserts), "--") if crash_after_inserts
            else YRDBUS)
    return subprocess.Popen(argv + ["sink", "--prefix", prefix, "--group", group], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _endpoint_count(port: int, timeout: float = 60.0, at_least: int = 1) -> int:
    """Clearances stored so far, asked of the sink process's live query endpoint."""
    deadline = time.monotonic() + timeout
    last = -1
    while time.monotonic() < deadline:
        try:
            c = clickhouse_connect.get_client(host="127.0.0.1", port=port, database="yrdbus")
            last = c.query("SELECT count() FROM clearances").result_rows[0][0]
            if last >= at_least:
                return last
        except Exception:
            pass
        time.sleep(0.3)
    return last


@pytest.mark.slow
def test_sink_killed_mid_batch_and_restarted_stores_everything_exactly_once(kafka, unique, tmp_path):
    prefix = f"{unique}."
    port = free_port()
    env = dict(os.environ, YRDBUS_VAR_DIR=str(tmp_path / "var"), YRDBUS_CLICKHOUSE_URL=f"chdb://{tmp_path / 'ch'}",
               YRDBUS_KAFKA_BOOTSTRAP=kafka.bootstrap, YRDBUS_QUERY_PORT=str(port), YRDBUS_SINK_BATCH_ROWS="700",
               YRDBUS_SINK_BATCH_AGE_S="0.5", PYTHONPATH=str(ROOT))
    sent = publish(kafka.bootstrap, prefix, scale=1.0, bad=False)

    # 1. The sink dies by SIGKILL right after its third insert, before committing its offsets.
    p = _start_sink(env, prefix, unique, crash_after_inserts=3)
    out, _ = p.communicate(timeout=90)
    assert p.returncode == -signal.SIGKILL, out

    # 2. Restarted, it is killed from outside while it works through the rest.
    p = _start_sink(env, prefix, unique)
    assert _endpoint_count(port, at_least=2100) >= 2100
    p.send_signal(signal.SIGKILL)
    p.wait(30)

    # 3. Restarted again, it finishes; everything is there once.
    p = _start_sink(env, prefix, unique)
    try:
        # (up to the session timeout for the killed member to leave the group, plus the start under load)
        assert _endpoint_count(port, timeout=150, at_least=sent["clearance"]) == sent["clearance"]
        time.sleep(3)  # a double would show up now
        client = clickhouse_connect.get_client(host="127.0.0.1", port=port, database="yrdbus")
        for kind, table in TABLES.items():
            n, distinct = client.query(count_sql(kind)).result_rows[0]
            assert (n, distinct) == (sent[kind], sent[kind]), kind
        assert client.query("SELECT sum(crossings) FROM flow_hourly").result_rows[0][0] == sent["clearance"]
        assert client.query("SELECT sum(events) FROM cases_daily").result_rows[0][0] == sent["case"]
        got, want = subject_events_check(client)
        assert got == want and got["clearance"] == sent["clearance"]

        # While the bus runs, `yrdbus sql` goes through the endpoint and answers what the HTTP client answers.
        sql = "SELECT port_code, direction, count() AS n FROM clearances GROUP BY ALL ORDER BY ALL"
        via_cli = subprocess.run(YRDBUS + ["sql", sql, "--json"], cwd=ROOT, env=env, capture_output=True,
                                 text=True, timeout=60)
        assert via_cli.returncode == 0, via_cli.stderr
        via_http = [list(r) for r in client.query(sql).result_rows]
        assert [[r["port_code"], r["direction"], r["n"]] for r in json.loads(via_cli.stdout)] == via_http
        named = subprocess.run(YRDBUS + ["query", "alert_handling", "--format", "csv"], cwd=ROOT, env=env,
                               capture_output=True, text=True, timeout=60)
        assert named.returncode == 0, named.stderr
        assert named.stdout.splitlines()[0].startswith("region,alerts,")
        assert len(named.stdout.splitlines()) == 5
    finally:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
    assert not (tmp_path / "var" / "run" / "query.json").exists(), "the state file goes with the process"


# ---------------------------------------------------------------------- withdrawn derived alerts
def _alert_versions():
    """A raised derived alert and the version that withdraws it (a minute later), as the stream layer sends them."""
    from datetime import datetime, timedelta, timezone
    import random

    from streams import derived

    raised = dict(synthetic.derived_alert(random.Random(3), datetime(2017, 6, 5, 8, tzinfo=timezone.utc)),
                  status=derived.RAISED, status_reason=None)
    gone = dict(derived.withdrawn(raised, "flag resolved before the crossing (read late)"),
                emitted_at=raised["emitted_at"] + timedelta(minutes=1))
    return raised, gone


def _store_insert(client, db: str, record: dict, version: int = 2) -> None:
    """Insert one record the way the sink does: its writer schema's fields that are columns, Avro through the engine."""
    from connectors.store.sink import Store
    from schemas import contract

    row = next(r for r in contract.load_ids() if r["name"] == "yrd.border.DerivedAlert" and r["version"] == version)
    schema_json = contract.read_history(row)
    body = get_codec().encode("derived_alert", record, validate=False)[5:] if version == 2 else _v1_body(schema_json, record)
    Store(client, db, embedded=True).insert_avro("derived_alerts", schema_json, [body], token=os.urandom(8).hex())


def _v1_body(schema_json: str, record: dict) -> bytes:
    import io

    from fastavro import parse_schema, schemaless_writer

    buf = io.BytesIO()
    schemaless_writer(buf, parse_schema(json.loads(schema_json)), record)
    return buf.getvalue()


@pytest.mark.parametrize("order", ["raised_first", "withdrawn_first"])
def test_a_withdrawn_version_stored_by_the_sink_replaces_the_raised_alert_whatever_the_insert_order(ch, order):
    client, db = ch
    migrate(client, Target(database=db))
    raised, gone = _alert_versions()
    for record in ((raised, gone) if order == "raised_first" else (gone, raised)):
        _store_insert(client, db, record)
    aid = raised["alert_id"]
    assert client.query(f"SELECT count() FROM {db}.derived_alerts WHERE alert_id = %(a)s",
                        parameters={"a": aid}).result_rows == [(2,)]  # both versions stored
    assert client.query(f"SELECT status, status_reason FROM {db}.derived_alerts FINAL WHERE alert_id = %(a)s",
                        parameters={"a": aid}).result_rows == [("WITHDRAWN", gone["status_reason"])]
    assert client.query(f"SELECT argMax(status, emitted_at) FROM {db}.derived_alerts WHERE alert_id = %(a)s",
                        parameters={"a": aid}).result_rows == [("WITHDRAWN",)]
    # the subject's history shows it withdrawn, with the reason
    detail = client.query(f"SELECT detail FROM {db}.subject_events FINAL WHERE id = %(a)s",
                          parameters={"a": aid}).result_rows
    assert detail == [(f"WITHDRAWN ({gone['status_reason']}): {raised['summary']}",)]


def test_a_v1_derived_alert_is_stored_as_raised(ch):
    client, db = ch
    migrate(client, Target(database=db))
    raised, _ = _alert_versions()
    v1 = {k: v for k, v in raised.items() if k not in ("status", "status_reason")}
    _store_insert(client, db, v1, version=1)
    assert client.query(f"SELECT status, status_reason FROM {db}.derived_alerts FINAL").result_rows == [("RAISED", None)]


def test_the_sink_stores_a_v2_derived_alert_in_a_store_not_yet_migrated_to_alert_status(ch):
    from connectors.store import load, render

    client, db = ch
    for mig, sql in render(Target(database=db), [m for m in load() if m.version < 7]):
        client.command(sql)
    _, gone = _alert_versions()
    _store_insert(client, db, gone)
    assert client.query(f"SELECT alert_id FROM {db}.derived_alerts").result_rows == [(gone["alert_id"],)]
