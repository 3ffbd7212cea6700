"""ClickHouse access: analyst roles and region row policies for a server, and the live endpoint's
read-only mode, per-user limits and region scoping on the embedded engine."""
from __future__ import annotations

import uuid
from datetime import datetime, timezone

import clickhouse_connect
import pytest

from conftest import free_port
from connectors.store import Target, migrate
from connectors.store.access import REGION_CONDITIONS, condition, render, table_filters
from connectors.store.queryserver import QueryServer, Users, hash_password
from schemas.reference import REGIONS


def test_analyst_roles_grants_and_row_policies_are_rendered_and_parse_on_the_engine(ch):
    client, db = ch
    for cluster in (None, "yrd"):
        statements = render(db, cluster=cluster)
        for sql in statements:
            formatted = client.query("SELECT formatQuery({q:String})", parameters={"q": sql}).result_rows[0][0]
            assert formatted.split()[0] in ("CREATE", "GRANT")
        text = "\n".join(statements)
        for r in REGIONS:
            assert f"CREATE ROLE IF NOT EXISTS analyst_{r.lower()}" in text
            assert f"ON {db}.clearances" in text and f"USING region = '{r}'" in text
        assert f"GRANT{' ON CLUSTER yrd' if cluster else ''} SELECT ON {db}.* TO analyst" in text
        assert "readonly = 2 CONST" in text and "max_result_rows = 1000000 CONST" in text
        # everyone else keeps every row (a table with policies shows nothing to a user none names)
        assert text.count("USING 1 AS PERMISSIVE TO ALL EXCEPT analyst_sh, analyst_js, analyst_zj, analyst_ah") == \
            len(REGION_CONDITIONS) * (2 if cluster else 1)
        assert not any(w in text for w in ("INSERT", "ALTER", "DROP", "GRANT ALL"))
    with pytest.raises(ValueError):
        render("yrdbus; DROP DATABASE x")


def test_region_conditions_name_real_columns_of_the_schema(ch):
    client, db = ch
    migrate(client, Target(database=db))
    tables = {r[0] for r in client.query(f"SHOW TABLES FROM {db}").result_rows}
    assert set(REGION_CONDITIONS) <= tables
    for table in REGION_CONDITIONS:
        client.query(f"SELECT count() FROM {db}.{table} WHERE {condition(table, ['SH', 'AH'])}")


@pytest.fixture
def endpoint(ch, clickhouse_url):
    client, db = ch
    migrate(client, Target(database=db))
    now = datetime(2017, 6, 5, 8, 0, tzinfo=timezone.utc)
    rows = [[str(uuid.uuid4()), r, "a" * 64, now] for r in REGIONS for _ in range(3)]
    client.insert(f"{db}.clearances", rows, column_names=["event_id", "region", "subject", "occurred_at"])
    client.insert(f"{db}.derived_alerts", [["x1", ["AH"], ["SH"], now, now], ["x2", ["JS"], [], now, now]],
                  column_names=["alert_id", "must_act", "inform", "occurred_at", "emitted_at"])
    users = {"rcc": hash_password("rcc-pw"),
             "sh": {"hash": hash_password("sh-pw"), "regions": ["SH"], "max_result_rows": 5000,
                    "max_execution_time_s": 1}}
    port = free_port()
    server = QueryServer(clickhouse_url[len("chdb://"):], port=port, users=users, max_execution_time=20,
                         database=db).start()
    try:
        yield {name: clickhouse_connect.get_client(host="127.0.0.1", port=port, username=name,
                                                   password=f"{name}-pw", database=db) for name in ("rcc", "sh")}
    finally:
        server.stop()


def test_region_scoped_analyst_sees_only_their_regions_rows(endpoint):
    rcc, sh = endpoint["rcc"], endpoint["sh"]
    assert sorted(r[0] for r in rcc.query("SELECT DISTINCT region FROM clearances").result_rows) == sorted(REGIONS)
    assert [r[0] for r in sh.query("SELECT DISTINCT region FROM clearances").result_rows] == ["SH"]
    assert sh.query("SELECT count() FROM clearances").result_rows[0][0] == 3
    # derived alerts: those SH must act on or is informed of
    assert [r[0] for r in sh.query("SELECT alert_id FROM derived_alerts").result_rows] == ["x1"]
    # through a subquery and a join the filter holds too
    assert sh.query("SELECT count() FROM (SELECT * FROM clearances) AS c "
                    "JOIN clearances AS d USING event_id").result_rows[0][0] == 3
    # and it cannot be lifted, read around, or hidden behind a comment
    for bad in ("SELECT count() FROM clearances SETTINGS additional_table_filters = {}",
                "SELECT count() FROM clearances SETTINGS additional_table_filters/**/= {}",
                "SELECT count() FROM merge(currentDatabase(), '^clearances$')",
                "SELECT count() FROM view(SELECT * FROM clearances)"):
        with pytest.raises(Exception, match=r"Code: (164|497)"):
            sh.query(bad)
    with pytest.raises(Exception, match="Code: 164"):
        sh.query("SELECT 1", settings={"additional_table_filters": "{}"})


def test_per_user_limits_hold_and_cannot_be_raised(endpoint):
    rcc, sh = endpoint["rcc"], endpoint["sh"]
    assert len(rcc.query("SELECT number FROM numbers(6000)").result_rows) == 6000
    with pytest.raises(Exception, match="Code: 396"):            # TOO_MANY_ROWS_OR_BYTES: 5,000 rows at most
        sh.query("SELECT number FROM numbers(6000)")
    for bad in ("SELECT number FROM numbers(6000) SETTINGS max_result_rows = 0",
                "SELECT number FROM numbers(6000) SETTINGS result_overflow_mode = 'break'"):
        with pytest.raises(Exception, match="Code: 164"):
            sh.query(bad)
    with pytest.raises(Exception, match="Code: 159"):            # TIMEOUT_EXCEEDED: 1 s for this user
        sh.query("SELECT count() FROM numbers_mt(100000000000) WHERE cityHash64(number) = 1")


def test_functions_that_reach_outside_the_store_are_refused_wherever_they_stand(endpoint):
    rcc = endpoint["rcc"]
    for bad in ("SELECT file('/etc/hostname')",
                "SELECT length(file('/etc/passwd')) AS n",
                "DESCRIBE file('/etc/passwd', 'CSVWithNames')",
                "DESC url('http://127.0.0.1:1/', 'CSV')",
                "SELECT * FROM remote('127.0.0.1:9000', system.one)",
                "WITH (SELECT file('/etc/hostname')) AS f SELECT f"):
        with pytest.raises(Exception, match="Code: 497") as exc:
            rcc.query(bad)
        assert "outside the store" in str(exc.value)
    for bad in ("DROP TABLE clearances", "INSERT INTO clearances (region) VALUES ('SH')",
                "ALTER TABLE clearances DELETE WHERE 1", "TRUNCATE TABLE clearances",
                "CREATE TABLE x (a UInt8) ENGINE = Memory"):
        with pytest.raises(Exception, match="Code: 164"):
            rcc.query(bad)
    assert rcc.query("SELECT count() FROM clearances").result_rows[0][0] == 3 * len(REGIONS)


def test_query_users_with_bad_limits_are_refused_at_start():
    for bad in ({"hash": "x", "regions": ["XX"]}, {"hash": "x", "max_result_rows": -1},
                {"hash": "x", "max_execution_time_s": "fast"}, {"regions": ["SH"]}, {"hash": "x", "role": "admin"}):
        with pytest.raises(ValueError, match="YRDBUS_QUERY_USERS"):
            Users({"u": bad})
    assert table_filters("yrdbus", ["SH"])["yrdbus.clearances"] == "region = 'SH'"
