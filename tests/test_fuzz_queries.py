"""Fuzzing the live query endpoint: statements and settings an attacker would try, with effect oracles.

Statements are built from keywords and fragments of every attack the endpoint must refuse (writes,
``INTO OUTFILE``, file-reading formats and settings, table functions, system tables, region escapes,
comments, quotes) and from random text; settings are drawn from the allow-list and beyond, in the URL and in
``SETTINGS``, with hostile values. Whatever comes back, the oracles hold (tests/hostile_store.py):

- no file appears in the sandbox the statements aim at;
- the secret file's text is in no answer and no error;
- the region-scoped analyst's answers show no marker of another region's rows;
- the canary table is unchanged;
- every answer is a result or a 4xx with ClickHouse's ``Code: N`` text.

``make test`` runs a few hundred statements; ``make fuzz`` runs ``YRDBUS_FUZZ_EXAMPLES`` through the
engine's own path (``Engine.execute``, the checks and the run without HTTP) and
``YRDBUS_FUZZ_E2E_EXAMPLES`` over HTTP. Last, an event with ``'); DROP TABLE ...`` in every text field
goes through Kafka and the sink and is read back verbatim: text reaches ClickHouse as data, never as SQL.
"""
from __future__ import annotations

import uuid

import pytest
from confluent_kafka import Producer
from hypothesis import given
from hypothesis import strategies as st

import hostile_store
from conftest import free_port
from connectors.store import Target, migrate
from connectors.store.query_policy import ALLOWED_SETTINGS, QueryRefused
from connectors.store.queryserver import UserLimits
from connectors.store.sink import Sink
from fuzzing import E2E_EXAMPLES, SQL, fuzz
from schemas import topics
from schemas.codec import get_codec
from schemas.examples import example

KEYWORDS = ["SELECT", "WITH 1 AS a SELECT", "SHOW TABLES", "SHOW DATABASES", "SHOW PROCESSLIST", "DESCRIBE",
            "DESC", "EXISTS", "EXPLAIN", "EXPLAIN AST", "EXPLAIN ESTIMATE", "INSERT INTO", "DROP TABLE",
            "ALTER TABLE", "CREATE TABLE", "TRUNCATE", "RENAME TABLE", "OPTIMIZE TABLE", "SYSTEM", "KILL QUERY",
            "SET", "GRANT", "ATTACH", "DETACH", "BACKUP", "select", "/* x */ DROP", "-- c\nINSERT", "(SELECT"]
FRAGMENTS = ["1", "*", "count()", "conveyance_id", "FROM {db}.clearances", "FROM clearances", "FROM {db}.canary",
             "FROM {db}.subject_events", "FROM {db}.derived_alerts", "FROM {db}.cases_current", "FROM system.one",
             "FROM system.processes", "FROM system.tables", "WHERE 1", "WHERE region = 'JS'", ";",
             "; DROP TABLE {db}.canary", "UNION ALL SELECT 1", "UNION ALL SELECT conveyance_id FROM {db}.clearances",
             "SETTINGS readonly = 0", "SETTINGS max_execution_time=1e9", "SETTINGS max_execution_time/**/=0",
             "SETTINGS additional_table_filters = {{}}", "SETTINGS format_template_resultset = '{secret}'",
             "SETTINGS format_schema = '{secret}:M'", "SETTINGS output_format_schema = '{out}'",
             "SETTINGS max_threads = 1", "SETTINGS `format_template_row` = '{secret}'",
             "FROM file('{secret}', 'LineAsString')", "file('{secret}')", "FROM url('file://{secret}', 'LineAsString')",
             "FROM numbers(10)", "FROM merge('{db}', '.*')", "FROM view(SELECT conveyance_id FROM {db}.clearances)",
             "FROM remote('127.0.0.1', {db}.clearances)", "FORMAT JSON", "FORMAT TabSeparated", "FORMAT Template",
             "FORMAT CapnProto", "FORMAT `Template`", "INTO OUTFILE '{out}'", "INTO OUTFILE '{out}' APPEND",
             "(SELECT conveyance_id FROM {db}.clearances)", "'", "\"", "`", "/*", "*/", "--", "\\", "{{x:String}}",
             "\x00", "canary", "formatRow('Template', 1)", "joinGet('{db}.canary', 'n', 1)"] + SQL
HOSTILE_SETTINGS = sorted(ALLOWED_SETTINGS)[:40] + [
    "readonly", "max_execution_time", "max_memory_usage", "additional_table_filters", "format_template_resultset",
    "format_template_row", "format_schema", "output_format_schema", "default_format", "database", "query",
    "param_x", "allow_introspection_functions", "max_result_rows", "user_files_path", "log_queries",
    "http_native_compression_disable_checksumming_on_decompress", "x-y", "a b", ""]
VALUES = ["0", "1", "1e9", "-1", "'{secret}'", "{secret}", "{out}", "Template", "{{}}", "default", "system", "''", "\\"]


@st.composite
def statements(draw) -> str:
    parts = [draw(st.sampled_from(KEYWORDS))]
    parts += draw(st.lists(st.sampled_from(FRAGMENTS) | st.text(max_size=12), max_size=6))
    return draw(st.sampled_from([" ", "\n", "/**/", "\t"])).join(parts)


@st.composite
def url_settings(draw) -> dict:
    names = draw(st.lists(st.sampled_from(HOSTILE_SETTINGS), max_size=3))
    return {n: draw(st.sampled_from(VALUES)) for n in names}


@pytest.fixture(scope="module")
def stage(clickhouse_url, tmp_path_factory):
    from connectors.store import client as store

    client = store.get_client(clickhouse_url)
    s = hostile_store.build(client, clickhouse_url, tmp_path_factory.mktemp("fuzzq"), free_port(),
                            max_execution_time=5)
    try:
        yield s
    finally:
        hostile_store.teardown(s)


def fill(stage, text: str) -> str:
    out = hostile_store.in_sandbox(stage, f"f{uuid.uuid4().hex[:6]}")
    return (text.replace("{db}", stage.db).replace("{secret}", str(stage.secret_file)).replace("{out}", out)
            .replace("{{", "{").replace("}}", "}"))


def check_effects(stage, text: str, user: str) -> None:
    assert stage.secret not in text, text[:300]
    if user == "sh":
        assert stage.foreign_markers(text) == [], text[:500]
    assert stage.sandbox_files() == []


@fuzz()
@given(statements() | st.text(max_size=200), url_settings(), st.sampled_from(["sh", "rcc"]),
       st.sampled_from([None, "default", "system", "{db}"]))
def test_fuzz_engine_path_reads_writes_and_escapes_nothing(stage, sql, settings, user, database):
    engine = stage.server.engine
    limits = stage.server.users.limits.get(user) or UserLimits()
    sql = fill(stage, sql)
    settings = {fill(stage, k): fill(stage, v) for k, v in settings.items()}
    try:
        from connectors.store.query_policy import check_setting

        for k in settings:
            check_setting(k, where="URL parameter")
        body, _, _ = engine.execute(sql, {}, "TabSeparated", fill(stage, database or "default"), dict(settings),
                                    limits, 5)
        text = body.decode("utf-8", "replace")
    except QueryRefused as exc:
        text = str(exc)
    except Exception as exc:  # the engine's own error: it must not carry what it must not show either
        text = str(exc)
    check_effects(stage, text, user)
    assert stage.canary() == (10, 45)


@fuzz(E2E_EXAMPLES)
@given(statements(), url_settings(), st.sampled_from(["sh", "rcc"]),
       st.sampled_from([None, "default", "system", "{db}"]))
def test_fuzz_endpoint_answers_a_result_or_a_4xx_and_never_writes_reads_or_escapes(stage, sql, settings, user,
                                                                                     database):
    params = {fill(stage, k): fill(stage, v) for k, v in settings.items()}
    if database:
        params["database"] = fill(stage, database)
    r = stage.post(fill(stage, sql), user=user, params=params, timeout=30)
    assert r.status_code < 500, (sql, r.status_code, r.text[:300])
    if r.status_code >= 400:
        assert r.text.startswith("Code: ") and r.headers.get("X-ClickHouse-Exception-Code"), r.text[:300]
    check_effects(stage, r.text, user)
    assert stage.canary() == (10, 45)


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
