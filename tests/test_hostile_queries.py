"""An analyst as an attacker: the live query endpoint reads nothing and writes nothing outside the store,
region limits hold whatever the client sends, and no user can starve the others.

Every oracle checks an effect: a file in the sandbox (or a file changed), the secret file's text in an
answer or an error, a marker of another region's rows in an answer, the canary table changed, a ping that
waits. The same oracles run on generated statements in tests/test_fuzz_queries.py.
"""
from __future__ import annotations

import threading

import clickhouse_connect
import httpx2
import pytest

import hostile_store
from conftest import free_port
from schemas.reference import REGIONS


@pytest.fixture(scope="module")
def stage(clickhouse_url, tmp_path_factory):
    from connectors.store import client as store

    client = store.get_client(clickhouse_url)
    s = hostile_store.build(client, clickhouse_url, tmp_path_factory.mktemp("hostile"), free_port())
    try:
        yield s
    finally:
        hostile_store.teardown(s)


def refused(r: httpx2.Response, *codes: int) -> None:
    assert 400 <= r.status_code < 500, (r.status_code, r.text[:300])
    assert r.text.startswith("Code: ") and r.headers.get("X-ClickHouse-Exception-Code"), r.text[:300]
    if codes:
        assert int(r.headers["X-ClickHouse-Exception-Code"]) in codes, r.text[:300]


# --------------------------------------------------------------------------- writing files
WRITES = [
    "SELECT 'x' INTO OUTFILE '{p}' APPEND FORMAT TSVRaw",
    "SELECT 'x' INTO OUTFILE '{p}'",
    "select 'x' /* hidden */ into   outfile '{p}' truncate",
    "SELECT 'x' INTO OUTFILE '{p}' COMPRESSION 'gzip' LEVEL 3",
    "SELECT 'x' INTO OUTFILE '{p}' AND STDOUT",
    "EXPLAIN SELECT 1 INTO OUTFILE '{p}'",
    "EXPLAIN AST SELECT 1 INTO OUTFILE '{p}'",
    "SHOW TABLES INTO OUTFILE '{p}'",
    "SHOW DATABASES INTO OUTFILE '{p}'",
    "DESCRIBE TABLE system.one INTO OUTFILE '{p}'",
    "EXISTS TABLE system.one INTO OUTFILE '{p}'",
    "WITH 1 AS a SELECT a INTO OUTFILE '{p}'",
    "(SELECT 1) INTO OUTFILE '{p}'",
    "SELECT 1 UNION ALL SELECT 2 INTO OUTFILE '{p}'",
    "SELECT 1 SETTINGS output_format_schema = '{p}' FORMAT CapnProto",
    "SELECT 1 FORMAT JSON SETTINGS output_format_schema = '{p}'",
]


@pytest.mark.parametrize("template", WRITES)
def test_no_statement_writes_a_file_on_the_host(stage, template):
    target = hostile_store.in_sandbox(stage)
    r = stage.post(template.format(p=target))
    refused(r)
    assert stage.sandbox_files() == [], r.text


def test_an_existing_file_is_not_appended_to(stage, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("before\n")
    for sql in (f"SELECT 'x' INTO OUTFILE '{victim}' APPEND", f"SELECT 'x' INTO OUTFILE '{victim}' TRUNCATE"):
        refused(stage.post(sql))
    assert victim.read_text() == "before\n"


# --------------------------------------------------------------------------- reading files
READS = [
    ("SELECT 1 FORMAT Template SETTINGS format_template_resultset = '{f}'", None),
    ("SELECT 1 SETTINGS format_template_resultset = '{f}', format_template_row = '{f}' FORMAT Template", None),
    ("SELECT 1 FORMAT Template", {"format_template_resultset": "{f}"}),
    ("SELECT 1 FORMAT Template", {"format_template_row": "{f}"}),
    ("SELECT 1", {"default_format": "Template", "format_template_resultset": "{f}"}),
    ("SELECT 1 FORMAT CapnProto SETTINGS format_schema = '{f}:Message'", None),
    ("SELECT 1 FORMAT Protobuf SETTINGS format_schema = '{f}:Message'", None),
    ("SELECT 1 FORMAT CustomSeparated SETTINGS format_custom_result_before_delimiter = 'x'", None),
    ("SELECT file('{f}')", None),
    ("SELECT * FROM file('{f}', 'LineAsString')", None),
    ("DESCRIBE file('{f}', 'LineAsString')", None),
    ("SELECT * FROM url('file://{f}', 'LineAsString')", None),
    ("SELECT formatRow('Template', 1) SETTINGS format_template_row = '{f}'", None),
    ("SELECT * FROM format(LineAsString, '{f}')", None),
    ("SELECT * FROM executable('cat {f}', 'LineAsString', 'x String')", None),
    ("WITH (SELECT file('{f}')) AS s SELECT s", None),
    ("SELECT * FROM (SELECT 1 SETTINGS format_template_resultset = '{f}') FORMAT Template", None),
    ("SELECT 1 SETTINGS `format_template_resultset` = '{f}' FORMAT `Template`", None),
    ("SELECT 1 FORMAT Template SETTINGS format_template_resultset = '{f}'", {"database": "system"}),
]


@pytest.mark.parametrize("template,params", READS)
def test_no_statement_or_setting_reads_a_file_of_the_host(stage, template, params):
    f = str(stage.secret_file)
    bound = {k: v.format(f=f) for k, v in (params or {}).items()}
    r = stage.post(template.format(f=f), params=bound)
    refused(r)
    assert stage.secret not in r.text


def test_the_gateway_tokens_file_is_as_safe_as_any_other(stage, tmp_path):
    tokens = tmp_path / "gateway.toml"
    tokens.write_text(f'[tokens.rcc]\nhash = "{stage.secret}"\n')
    for sql in (f"SELECT 1 FORMAT Template SETTINGS format_template_resultset = '{tokens}'",
                f"SELECT * FROM file('{tokens}', 'LineAsString')"):
        r = stage.post(sql, user="sh")
        refused(r)
        assert stage.secret not in r.text


# --------------------------------------------------------------------------- escaping a region
ESCAPES = [
    "SELECT conveyance_id FROM {db}.clearances",
    "SELECT conveyance_id FROM clearances",
    "SELECT detail FROM {db}.subject_events",
    "SELECT * FROM {db}.subject_events FINAL",
    "SELECT description FROM {db}.alerts",
    "SELECT case_id FROM {db}.cases",
    "SELECT case_id FROM {db}.cases_current",
    "SELECT summary FROM {db}.derived_alerts",
    "SELECT rule_id FROM {db}.trends",
    "SELECT subject FROM {db}.risk_scores",
    "SELECT value, origin FROM {db}.dead_letters",
    "SELECT conveyance_id FROM {db}.clearances AS a JOIN {db}.alerts AS b USING region",
    "SELECT x FROM system.one ARRAY JOIN ['MARK'] AS x WHERE 1 IN (SELECT 1 FROM {db}.clearances)",
    "SELECT (SELECT groupArray(conveyance_id) FROM {db}.clearances)",
    "WITH c AS (SELECT * FROM {db}.clearances) SELECT conveyance_id FROM c",
    "SELECT * FROM (SELECT conveyance_id FROM {db}.clearances UNION ALL SELECT summary FROM {db}.derived_alerts)",
    "SELECT conveyance_id FROM merge('{db}', '^clearances$')",
    "SELECT * FROM view(SELECT conveyance_id FROM {db}.clearances)",
    "SELECT conveyance_id FROM {db}.clearances SETTINGS additional_table_filters = {{}}",
    "SELECT conveyance_id FROM {db}.clearances SETTINGS additional_result_filter = '1'",
    "SELECT conveyance_id FROM remote('127.0.0.1', {db}.clearances)",
    "SELECT * FROM {db}.flow_hourly_mv",
    "SELECT * FROM {db}.sink_batches",
    "SELECT query FROM system.processes",
    "SELECT query FROM system.query_log",
    "SELECT * FROM system.parts",
    "SELECT create_table_query FROM system.tables WHERE database = '{db}'",
    "SHOW PROCESSLIST",
    "SELECT throwIf(count() > 0, 'JS rows exist') FROM {db}.clearances WHERE region = 'JS'",
]


@pytest.mark.parametrize("template", ESCAPES)
@pytest.mark.parametrize("database", [None, "default", "{db}", "system"])
def test_a_region_analyst_sees_no_row_of_another_region_whatever_they_send(stage, template, database):
    params = {"database": database.format(db=stage.db)} if database else {}
    r = stage.post(template.format(db=stage.db), user="sh", params=params)
    assert r.status_code < 500, r.text[:300]
    assert stage.foreign_markers(r.text) == [], (template, database, r.text[:500])
    assert "JS rows exist" not in r.text


def test_the_region_analyst_still_sees_their_own_rows_everywhere(stage):
    for table, column in (("clearances", "conveyance_id"), ("subject_events", "detail"), ("alerts", "description"),
                          ("cases_current", "case_id"), ("derived_alerts", "summary"), ("dead_letters", "value")):
        for database in (None, "default", stage.db):
            r = stage.post(f"SELECT {column} FROM {stage.db}.{table}", user="sh",
                           params={"database": database} if database else {})
            assert r.status_code == 200, r.text[:300]
            assert stage.marker("SH") in r.text, (table, database, r.text[:300])
            assert stage.foreign_markers(r.text) == []


def test_the_centre_reads_every_region_but_nothing_outside(stage):
    r = stage.post(f"SELECT groupUniqArray(conveyance_id) FROM {stage.db}.clearances")
    assert r.status_code == 200 and all(stage.marker(x) in r.text for x in REGIONS), r.text[:300]
    for sql in ("SELECT query FROM system.processes", "SHOW PROCESSLIST", "SELECT * FROM system.query_log",
                "SELECT * FROM view(SELECT query FROM system.processes)",
                "SELECT count() FROM merge('system', '^processes$')",
                "SELECT query FROM processes"):
        refused(stage.post(sql, params={"database": "system"}), 164, 497, 60)  # 60: no such table in this engine


def test_a_region_analyst_using_clickhouse_connect_gets_their_region_only(stage):
    sh = clickhouse_connect.get_client(host="127.0.0.1", port=stage.port, username="sh",
                                       password=hostile_store.USERS["sh"], database="default")
    rows = sh.query(f"SELECT DISTINCT region FROM {stage.db}.clearances").result_rows
    assert rows == [("SH",)]
    with pytest.raises(Exception, match="Code: (164|497)"):
        sh.query("SELECT 1", settings={"additional_table_filters": "{}"})


# --------------------------------------------------------------------------- writes, kinds, syntax
@pytest.mark.parametrize("sql", ["INSERT INTO {db}.canary VALUES (99)", "/* c */ insert into {db}.canary SELECT 1",
                                 "ALTER TABLE {db}.canary DELETE WHERE 1", "DROP TABLE {db}.canary",
                                 "TRUNCATE TABLE {db}.canary", "OPTIMIZE TABLE {db}.canary FINAL",
                                 "CREATE TABLE {db}.x (a UInt8) ENGINE = Memory", "SYSTEM FLUSH LOGS",
                                 "KILL QUERY WHERE 1", "SET readonly = 0", "GRANT ALL ON *.* TO sh",
                                 "RENAME TABLE {db}.canary TO {db}.c2", "DETACH TABLE {db}.canary",
                                 "BACKUP TABLE {db}.canary TO File('x')", "SELECT 1; DROP TABLE {db}.canary"])
def test_writes_are_refused_and_change_nothing(stage, sql):
    before = stage.canary()
    r = stage.post(sql.format(db=stage.db))
    refused(r, 164, 62, 497)
    assert stage.canary() == before == (10, 45)


def test_a_typo_is_a_syntax_error_as_clickhouse_reports_it(stage):
    r = stage.post("SELEC 1")
    refused(r, 62)
    assert r.status_code == 400 and "Syntax error" in r.text and "formatQuery" not in r.text


@pytest.mark.parametrize("sql", ["DESCRIBE ' '", "DESCRIBE TABLE ' '", "SELECT * FROM ' '"])
def test_a_blank_table_name_is_an_unknown_table_not_a_server_error(stage, sql):
    """Found by the endpoint's fuzz test: ``DESCRIBE ' '`` made the policy fail with a 500."""
    r = stage.post(sql)
    assert 400 <= r.status_code < 500, (r.status_code, r.text)
    assert "Code:" in r.text


def test_an_insert_is_told_that_writes_are_not_allowed(stage):
    r = stage.post(f"INSERT INTO {stage.db}.canary (n) VALUES (1)")
    refused(r, 164)
    assert "writes are not allowed" in r.text


# --------------------------------------------------------------------------- resources
def test_a_query_that_would_take_all_memory_is_stopped_by_the_memory_limit(stage):
    # 10 GB of 10 kB strings: the limit (500 MB) is reached in some 50,000 rows, far inside the time limit even on
    # a loaded machine (8-byte numbers took 62 million rows, and beside the whole suite once ran into the 10 s
    # time limit first)
    r = stage.post("SELECT length(groupArray(repeat(toString(number), 2000))) FROM numbers(1000000)")
    refused(r, 241)
    assert stage.post("SELECT 1").text == "1\n"


def test_a_result_larger_than_the_limit_is_refused_not_buffered(stage):
    r = stage.post("SELECT repeat(toString(number % 10), 1000) FROM numbers(1000000)")
    refused(r, 396)


def test_one_user_cannot_run_more_than_their_share_and_ping_answers_meanwhile(stage):
    # three slow queries of a user allowed two at a time: whatever the order they arrive in, two run for
    # seconds and one is refused at once; while the two run, /ping and another user's query answer
    slow = "SELECT count() FROM numbers_mt(100000000000) WHERE cityHash64(number) = 1 SETTINGS max_execution_time = 8"
    answers: list = []
    refused_one = threading.Event()

    def ask():
        r = stage.post(slow, user="sh", timeout=60)
        answers.append(r)
        if r.status_code == 429:
            refused_one.set()

    threads = [threading.Thread(target=ask) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        assert refused_one.wait(30), [(a.status_code, a.text[:200]) for a in answers]
        ping = httpx2.get(f"http://127.0.0.1:{stage.port}/ping", timeout=5)
        assert ping.text == "Ok.\n"
        assert stage.post("SELECT 42", user="rcc", timeout=10).text == "42\n"
    finally:
        for t in threads:
            t.join(60)
    codes = sorted(a.status_code for a in answers)
    assert codes == [400, 400, 429], [(a.status_code, a.text[:200]) for a in answers]
    busy = next(a for a in answers if a.status_code == 429)
    assert busy.headers["X-ClickHouse-Exception-Code"] == "202"
    assert all("TIMEOUT_EXCEEDED" in a.text for a in answers if a.status_code == 400)


def test_settings_the_endpoint_fixes_cannot_be_raised(stage):
    for sql, params in (("SELECT 1 SETTINGS max_execution_time = 0", None),
                        ("SELECT 1 SETTINGS max_execution_time = 100000", None),
                        ("SELECT 1", {"max_execution_time": "100000"}),
                        ("SELECT 1 SETTINGS max_memory_usage = 0", None),
                        ("SELECT 1", {"max_memory_usage": "0"}),
                        ("SELECT 1 SETTINGS readonly = 0", None),
                        ("SELECT 1 SETTINGS max_result_bytes = 0", None),
                        ("SELECT 1 SETTINGS max_threads = 100000", None),
                        ("SELECT * FROM (SELECT 1 SETTINGS max_execution_time = 100000) SETTINGS max_execution_time = 1",
                         None)):
        refused(stage.post(sql, params=params), 164)
    assert stage.post("SELECT 1 SETTINGS max_execution_time = 3, max_threads = 1").text == "1\n"


def test_a_requests_filters_and_settings_do_not_outlive_it(stage):
    # the handles are pooled: after a region user's request (filters set) or one with its own settings, the
    # next request on the same handle sees the endpoint's own settings, whoever sends it
    every = f"SELECT count(DISTINCT region) FROM {stage.db}.clearances"
    for _ in range(20):   # more requests than handles, alternated
        assert stage.post(every, user="sh").text == "1\n"
        assert stage.post(every, user="rcc").text == "4\n"
        assert stage.post("SELECT getSetting('max_threads')", params={"max_threads": "1"}).text == "1\n"
        assert stage.post("SELECT getSetting('max_threads') > 0, getSetting('max_result_rows')",
                          user="rcc").text.split() == [
            "1", "0"]
    shown = stage.post("SELECT name, value FROM system.settings WHERE name = 'additional_table_filters'",
                       user="rcc")
    assert stage.marker("SH") not in shown.text and "region" not in shown.text, shown.text
