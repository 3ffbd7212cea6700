"""The ClickHouse schema: migrations on the real engine, idempotent; TTL; dictionaries; the cluster variant."""
from __future__ import annotations

import re

import clickhouse_connect
import pytest

from conftest import free_port
from connectors.store import Target, load, migrate, render, render_script
from connectors.store.queryserver import QueryServer, hash_password
from connectors.store.schema import table_layout
from schemas import reference


def test_migrate_twice_applies_once_and_records_every_migration(ch):
    client, db = ch
    first = migrate(client, Target(database=db))
    second = migrate(client, Target(database=db))
    versions = [f"{m.version:04d}_{m.name}" for m in load()]
    assert first.applied == versions and second.applied == [] and second.already == versions
    recorded = client.query(f"SELECT version, checksum FROM {db}.schema_migrations ORDER BY version").result_rows
    assert recorded == [(m.version, m.checksum) for m in load()]
    tables = {r[0]: r[1] for r in client.query(
        "SELECT name, engine FROM system.tables WHERE database = {d:String}", parameters={"d": db}).result_rows}
    for name in ("clearances", "alerts", "cases", "derived_alerts", "trends", "risk_scores", "dead_letters",
                 "flow_hourly", "cases_daily", "schema_migrations", "sink_batches"):
        assert tables[name].endswith("MergeTree"), name
    assert tables["cases_current"] == "View" and tables["flow_hourly_mv"] == "MaterializedView"
    assert {tables[d] for d in ("regions", "stations", "ports")} == {"Dictionary"}


def test_event_tables_are_partitioned_by_month_and_sorted_for_the_analysts_questions(ch):
    client, db = ch
    migrate(client, Target(database=db))
    keys = dict(client.query("SELECT name, sorting_key FROM system.tables WHERE database = {d:String}",
                             parameters={"d": db}).result_rows)
    assert keys["clearances"] == "subject, occurred_at"
    assert keys["alerts"] == "region, kind, occurred_at"
    assert keys["flow_hourly"].startswith("region, port_code, hour")
    parts = dict(client.query("SELECT name, partition_key FROM system.tables WHERE database = {d:String}",
                              parameters={"d": db}).result_rows)
    assert parts["clearances"] == "toYYYYMM(occurred_at)"
    types = dict(client.query("SELECT name, type FROM system.columns WHERE database = {d:String} "
                              "AND table = 'clearances'", parameters={"d": db}).result_rows)
    assert types["direction"] == "LowCardinality(String)" and types["occurred_at"] == "DateTime64(3, 'UTC')"


def test_ttl_follows_the_setting_when_migrated_again(ch):
    client, db = ch
    migrate(client, Target(database=db))
    assert "TTL" not in client.query(f"SELECT engine_full FROM system.tables WHERE database = '{db}' "
                                     f"AND name = 'clearances'").result_rows[0][0]
    result = migrate(client, Target(database=db, ttl_days=400))
    assert "clearances" in result.ttl_changed
    engine = client.query(f"SELECT engine_full FROM system.tables WHERE database = '{db}' "
                          f"AND name = 'clearances'").result_rows[0][0]
    assert re.search(r"TTL toDateTime\(occurred_at\) \+ toIntervalDay\(400\)", engine)
    assert migrate(client, Target(database=db, ttl_days=400)).ttl_changed == []


def test_dictionaries_name_regions_stations_and_ports_from_the_reference_data(ch):
    client, db = ch
    migrate(client, Target(database=db))
    for code, port in reference.ports().items():
        got = client.query(f"SELECT dictGet('{db}.ports', ('region', 'station_id', 'kind'), {{c:String}})",
                           parameters={"c": code}).result_rows[0][0]
        got = tuple(got.values()) if isinstance(got, dict) else tuple(got)
        assert got == (port.region, port.station_id, port.kind)
    assert client.query(f"SELECT dictGet('{db}.regions', 'name', 'AH')").result_rows[0][0] == "Anhui"
    assert client.query(f"SELECT dictGet('{db}.stations', 'region', 'SH-PVG')").result_rows[0][0] == "SH"


def test_cluster_variant_is_generated_parses_on_the_engine_and_names_every_table(ch):
    client, _ = ch
    layout = table_layout(load())
    statements = [sql for _, sql in render(Target(database="yrdbus", cluster="yrd"))]
    for sql in statements:  # ClickHouse's own parser accepts every statement
        client.query("SELECT formatQuery({q:String})", parameters={"q": sql})
    text = "\n".join(statements)
    for table, kind in layout.items():
        if kind == "sharded":
            assert re.search(rf"CREATE TABLE IF NOT EXISTS yrdbus\.{table}_local ON CLUSTER yrd\n", text), table
            assert re.search(rf"ENGINE = Replicated\w*MergeTree\('/clickhouse/tables/{{shard}}/yrdbus/{table}_local', "
                             rf"'{{replica}}'", text), table
            assert re.search(rf"CREATE TABLE IF NOT EXISTS yrdbus\.{table} ON CLUSTER yrd AS yrdbus\.{table}_local\n"
                             rf"ENGINE = Distributed\(yrd, yrdbus, {table}_local, .+\)", text), table
        else:
            assert f"'/clickhouse/tables/all/yrdbus/{table}'" in text, table
    assert "FROM yrdbus.clearances_local" in text  # materialized views read the shard's own rows
    # a backfilled view's copy of the rows already stored reads and writes the whole (Distributed) tables, once
    copies = [s for s in statements if s.startswith("INSERT INTO yrdbus.subject_events\n")]
    assert len(copies) == 4 and all("_local" not in s for s in copies)
    assert any(re.search(r"FROM yrdbus\.clearances$", s, re.MULTILINE) for s in copies)
    assert not re.search(r"ENGINE = (?!Replicated|Distributed)\w*MergeTree", text)
    assert all("ON CLUSTER yrd" in s for s in statements if s.startswith("CREATE"))
    assert "{{" not in render_script(Target(database="yrdbus", cluster="yrd"))


def test_live_endpoint_answers_clickhouse_connect_like_the_store_and_refuses_writes(ch, clickhouse_url):
    client, db = ch
    migrate(client, Target(database=db))
    port = free_port()
    server = QueryServer(clickhouse_url[len("chdb://"):], port=port,
                         users={"analyst": hash_password("s3cret")}, max_execution_time=2, database=db).start()
    try:
        http = clickhouse_connect.get_client(host="127.0.0.1", port=port, username="analyst", password="s3cret",
                                             database=db)
        sql = "SELECT code, region, kind, share_of_region FROM ref_ports FINAL WHERE region = {r:String} ORDER BY code"
        direct = client.query(sql.replace("ref_ports", f"{db}.ref_ports"), parameters={"r": "ZJ"}).result_rows
        assert http.query(sql, parameters={"r": "ZJ"}).result_rows == direct and direct
        for bad in ("DROP TABLE ref_ports", f"INSERT INTO ref_ports (code) VALUES ('X')",
                    "SELECT * FROM file('/etc/passwd', 'LineAsString')",
                    "SELECT 1 SETTINGS max_execution_time = 1000"):
            with pytest.raises(Exception, match=r"Code: (164|497)"):
                http.query(bad)
        with pytest.raises(Exception, match="Code: 159"):  # TIMEOUT_EXCEEDED after the endpoint's 2 s
            http.query("SELECT count() FROM numbers(100000000000) WHERE cityHash64(number) = 1")
        with pytest.raises(Exception, match="Code: 516"):
            clickhouse_connect.get_client(host="127.0.0.1", port=port, username="analyst", password="wrong")
        assert client.query(f"SELECT count() FROM {db}.ref_ports").result_rows[0][0] == len(reference.ports())
    finally:
        server.stop()
