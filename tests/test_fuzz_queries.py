"""Fuzzing the live query endpoint's refusal of what is not a read, and SQL in event fields.

The refusal target runs ``check_read_only`` on statements built from SQL fragments (writes, DDL,
settings, comments, quotes, table functions) and on random text: it refuses with ``QueryRefused``
or lets a read through, nothing else. The end-to-end check sends such statements to the endpoint
over HTTP: every answer is a result or a 4xx with ClickHouse's message, and the store is unchanged.
Last, an event with ``'); DROP TABLE ...`` in every text field goes through Kafka and the sink and is
read back verbatim: text reaches ClickHouse as data, never as SQL.
"""
from __future__ import annotations

import uuid

import clickhouse_connect
import pytest
from confluent_kafka import Producer
from hypothesis import given
from hypothesis import strategies as st

from conftest import free_port
from connectors.clickhouse import Target, migrate
from connectors.queryserver import ALLOWED_STATEMENTS, QueryRefused, QueryServer, check_read_only, statement_kind
from connectors.sink import Sink
from fuzzing import E2E_EXAMPLES, SQL, fuzz
from schemas.codec import get_codec
from schemas.examples import example
from yrdbus import topics

KEYWORDS = ["SELECT", "WITH", "SHOW", "DESCRIBE", "DESC", "EXISTS", "EXPLAIN", "INSERT INTO", "DROP TABLE",
            "ALTER TABLE", "CREATE TABLE", "TRUNCATE", "RENAME TABLE", "OPTIMIZE TABLE", "SYSTEM", "KILL QUERY",
            "SET", "GRANT", "ATTACH", "DETACH", "BACKUP", "select", "/* x */ DROP", "-- c\nINSERT", "(SELECT"]
FRAGMENTS = ["1", "*", "count()", "FROM clearances", "FROM canary", "FROM system.one", "WHERE 1", ";",
             "; DROP TABLE canary", "UNION ALL SELECT 1", "SETTINGS readonly = 0", "SETTINGS max_execution_time=1e9",
             "SETTINGS max_execution_time/**/=1e9", "SETTINGS additional_table_filters = {}",
             "FROM file('/etc/passwd', 'LineAsString')", "file('/etc/hostname')", "FROM url('http://127.0.0.1:1/')",
             "FROM numbers(10)", "FROM merge(currentDatabase(), '.*')", "FORMAT JSON", "FORMAT TabSeparated",
             "'", "\"", "`", "/*", "*/", "--", "\\", "{x:String}", "INTO OUTFILE '/tmp/x'", "\x00", "canary"] + SQL


@st.composite
def statements(draw) -> str:
    parts = [draw(st.sampled_from(KEYWORDS))]
    parts += draw(st.lists(st.sampled_from(FRAGMENTS) | st.text(max_size=12), max_size=6))
    return draw(st.sampled_from([" ", "\n", "/**/", "\t"])).join(parts)


@fuzz()
@given(statements() | st.text(max_size=200))
def test_fuzz_read_only_check_refuses_or_lets_a_read_through(sql):
    try:
        check_read_only(sql)
    except QueryRefused as exc:
        assert str(exc) and exc.code == 164 and exc.status == 403
    else:
        assert statement_kind(sql) in ALLOWED_STATEMENTS


@pytest.fixture(scope="module")
def live_endpoint(clickhouse_url, tmp_path_factory):
    import clickhouse_connect as cc

    from yrdbus import store

    client = store.get_client(clickhouse_url)
    db = f"fuzz_{uuid.uuid4().hex[:8]}"
    client.command(f"CREATE DATABASE {db}")
    client.command(f"CREATE TABLE {db}.canary (n UInt32) ENGINE = MergeTree ORDER BY n")
    client.insert(f"{db}.canary", [[i] for i in range(10)], column_names=["n"])
    port = free_port()
    server = QueryServer(clickhouse_url[len("chdb://"):], port=port, max_execution_time=5).start()
    try:
        yield client, db, cc.get_client(host="127.0.0.1", port=port, database=db), port
    finally:
        server.stop()
        client.command(f"DROP DATABASE IF EXISTS {db} SYNC")


@fuzz(E2E_EXAMPLES)
@given(statements())
def test_fuzz_endpoint_answers_a_result_or_a_4xx_and_never_writes(live_endpoint, sql):
    import httpx2

    client, db, _, port = live_endpoint
    r = httpx2.post(f"http://127.0.0.1:{port}/?database={db}", content=sql.encode("utf-8", "surrogatepass"),
                    timeout=30)
    assert r.status_code < 500, (sql, r.status_code, r.text[:300])
    if r.status_code >= 400:
        assert r.text.startswith("Code: ") and r.headers.get("X-ClickHouse-Exception-Code"), r.text[:300]
    else:
        assert statement_kind(sql) in ALLOWED_STATEMENTS, sql
    assert client.query(f"SELECT count(), sum(n) FROM {db}.canary").result_rows[0] == (10, 45)
    assert [t[0] for t in client.query(f"SHOW TABLES FROM {db}").result_rows] == ["canary"]


# =========================================================================== SQL in event fields
TEXT_FIELDS = {"clearance": ["conveyance_id"], "alert": ["conveyance_id", "description", "document_series"],
               "case": ["conveyance_id", "description", "case_id"]}
PAYLOAD = "'); DROP TABLE {db}.clearances; -- \\' \" ` {{x:String}} \u202e"


def test_sql_in_every_text_field_reaches_clickhouse_as_data_through_the_sink(kafka, ch, unique):
    client, db = ch
    migrate(client, Target(database=db))
    prefix = f"{unique}."
    topics.apply(kafka.bootstrap, prefix=prefix)
    codec = get_codec()
    payload = PAYLOAD.format(db=db)
    sent = {}
    producer = Producer({"bootstrap.servers": kafka.bootstrap, "enable.idempotence": True})
    for kind, fields in TEXT_FIELDS.items():
        record = example(kind)
        for f in fields:
            record[f] = payload
        sent[kind] = record
        producer.produce(f"{prefix}border.SH.{kind}", codec.encode(kind, record), key=b"k")
    # and raw bytes that are not an event at all: they go to the dead letters, stored as they are
    producer.produce(f"{prefix}border.SH.clearance", payload.encode(), key=b"bad")
    assert producer.flush(30) == 0
    sink = Sink(bootstrap=kafka.bootstrap, client=client, database=db, group=unique, prefix=prefix, batch_rows=100)
    sink.run(idle_exit_s=4, duration=90)
    tables = {"clearance": "clearances", "alert": "alerts", "case": "cases"}
    for kind, fields in TEXT_FIELDS.items():
        row = client.query(f"SELECT {', '.join(fields)} FROM {db}.{tables[kind]} WHERE event_id = {{e:String}}",
                           parameters={"e": sent[kind]["event_id"]}).result_rows
        assert row == [tuple(payload for _ in fields)], (kind, row, sink.last_error)
    dead = client.query(f"SELECT value FROM {db}.dead_letters WHERE key = 'bad'").result_rows
    assert dead and dead[0][0] == payload
    assert "clearances" in {t[0] for t in client.query(f"SHOW TABLES FROM {db}").result_rows}
