"""Grafana dashboards and the report: valid dashboard models, provisioning that names what the panels use,
the ClickHouse plugin's macros expanded as the plugin does, and every ClickHouse panel query run on the real
engine against a simulated day stored by the real sink; `yrdbus report` renders the main panels from that SQL."""
from __future__ import annotations

import ipaddress
import json
import math
import os
import re
import secrets
import subprocess
import uuid
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from kit.faults import free_port
from observability_day import seed
from connectors.store import client as store
from connectors.store.queryserver import QueryServer, hash_password
from schemas.settings import Settings
from yrdbus import report

ROOT = Path(__file__).resolve().parent.parent
PROVISIONING = ROOT / "dashboards" / "provisioning"
BOARDS = report.dashboards()
PANEL_TYPES = {"timeseries", "barchart", "piechart", "table", "stat", "bargauge", "gauge", "text", "row"}
CLICKHOUSE_PANELS = [(uid, p["title"]) for uid, m in BOARDS.items() for p in report.panels(m)
                     if report.clickhouse_targets(p)]


def datasources() -> dict[str, dict]:
    doc = yaml.safe_load((PROVISIONING / "datasources" / "yrdbus.yml").read_text())
    return {d["uid"]: d for d in doc["datasources"]}


# ------------------------------------------------------------------ the files
def test_the_six_dashboards_are_there():
    assert {m["title"] for m in BOARDS.values()} == {
        "yrdbus: risk analysis centre", "yrdbus: ports and flow", "yrdbus: cases", "yrdbus: 144-hour transit",
        "yrdbus: command centre feedback", "yrdbus: pipeline health"}


@pytest.mark.parametrize("uid", sorted(BOARDS))
def test_every_dashboard_file_is_a_grafana_dashboard_model(uid):
    m = BOARDS[uid]
    sources = datasources()
    assert isinstance(m["schemaVersion"], int) and m["schemaVersion"] >= 36
    assert m["title"] and m["uid"] == uid and len(uid) <= 40
    assert set(m["time"]) == {"from", "to"} and m["timezone"] == "utc"
    assert isinstance(m["templating"]["list"], list) and isinstance(m["annotations"]["list"], list)
    assert ("event-time" in m["tags"]) != ("wall-clock" in m["tags"])   # the test below picks the period by it
    ids = [p["id"] for p in report.panels(m)]
    assert ids and len(ids) == len(set(ids)) and all(isinstance(i, int) for i in ids)
    for p in report.panels(m):
        where = f"{uid} panel {p['id']} {p.get('title')!r}"
        assert p["type"] in PANEL_TYPES, where
        g = p["gridPos"]
        assert all(isinstance(g[k], int) for k in ("x", "y", "w", "h")) and g["x"] + g["w"] <= 24 and g["h"] > 0, where
        ds = p["datasource"]
        assert ds["uid"] in sources and ds["type"] == sources[ds["uid"]]["type"], where
        assert p["targets"], where
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs)), where
        for t in p["targets"]:
            assert t["datasource"]["uid"] in sources, where
            if t["datasource"]["type"] == report.CLICKHOUSE_TYPE:
                assert t["editorType"] == "sql" and t["rawSql"].strip(), where
                # the plugin's formats: 0 time series, 1 table (src/data/utils.ts, mapQueryTypeToGrafanaFormat)
                assert (t["queryType"], t["format"]) in {("timeseries", 0), ("table", 1)}, where
                assert (t["format"] == 0) == (p["type"] == "timeseries"), where
                assert "--" not in t["rawSql"] and "/*" not in t["rawSql"], where   # no comments for macros to hide in
            else:
                assert t["expr"].strip(), where


def grafana_expand(text: str, env: dict[str, str]) -> str:
    """Grafana's expansion of ``$VAR`` and ``${VAR}`` in provisioning files (empty when unset)."""
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: env.get(m.group(1) or m.group(2), ""), text)


def test_provisioning_points_the_data_sources_at_the_bus_and_the_provider_at_the_dashboards():
    text = (PROVISIONING / "datasources" / "yrdbus.yml").read_text()
    for where, value in (("host", yaml.safe_load(text)["datasources"][0]["jsonData"]["host"]),
                         ("port", yaml.safe_load(text)["datasources"][0]["jsonData"]["port"]),
                         ("url", yaml.safe_load(text)["datasources"][1]["url"])):
        assert "${YRDBUS_" in str(value), f"{where} {value!r} is written into the file, not read from the environment"
    for env, host, port, prom_port in ((Settings(_env_file=None), "127.0.0.1", 8124, 9090),
                                       (Settings(_env_file=None, query_host="10.1.2.3", query_port=18124,
                                                 prometheus_port=19090), "10.1.2.3", 18124, 19090)):
        values = {"YRDBUS_QUERY_HOST": env.query_host, "YRDBUS_QUERY_PORT": str(env.query_port),
                  "YRDBUS_PROMETHEUS_PORT": str(env.prometheus_port)}
        sources = {d["uid"]: d for d in yaml.safe_load(grafana_expand(text, values))["datasources"]}
        ch = sources["yrdbus-clickhouse"]
        assert ch["type"] == report.CLICKHOUSE_TYPE and ch["jsonData"]["protocol"] == "http"
        assert (ch["jsonData"]["host"], ch["jsonData"]["port"]) == (host, port)
        assert ch["jsonData"]["defaultDatabase"] == "yrdbus"
        prom = sources["yrdbus-prometheus"]
        assert prom["type"] == "prometheus" and prom["url"] == f"http://127.0.0.1:{prom_port}"
    providers = yaml.safe_load((PROVISIONING / "dashboards" / "yrdbus.yml").read_text())["providers"]
    assert [p["type"] for p in providers] == ["file"] and providers[0]["options"]["path"] == "${YRDBUS_DASHBOARDS}"


EVENT_TIME_BOARDS = sorted(uid for uid, m in BOARDS.items() if "event-time" in m["tags"])


@pytest.mark.parametrize("uid", EVENT_TIME_BOARDS)
def test_every_event_time_dashboard_has_a_region_variable_that_every_panel_query_uses(uid):
    m = BOARDS[uid]
    variables = {v["name"]: v for v in m["templating"]["list"]}
    region = variables["region"]
    assert region["type"] == "custom" and region["multi"] and region["includeAll"]
    assert [o.strip() for o in region["query"].split(",")] == list(report.VARIABLES["region"])
    assert region["current"]["value"] == ["$__all"]
    for p in report.panels(m):
        for t in report.clickhouse_targets(p):
            assert "${region:singlequote}" in t["rawSql"], f"{uid} {p['title']!r} does not filter by region"


def test_template_variables_are_replaced_as_grafana_replaces_them():
    sql = "WHERE region IN (${region:singlequote}) AND x = '$region' AND y = '${region}'"
    assert report.interpolate_variables(sql) == (
        "WHERE region IN ('SH','JS','ZJ','AH') AND x = 'SH,JS,ZJ,AH' AND y = 'SH,JS,ZJ,AH'")
    assert report.interpolate_variables(sql, {"region": ["JS"]}) == "WHERE region IN ('JS') AND x = 'JS' AND y = 'JS'"
    assert report.interpolate_variables("${region:singlequote}", {"region": ["a'b"]}) == "'a\\'b'"
    with pytest.raises(report.ReportError, match=r"\$port: not a variable"):
        report.interpolate_variables("x = $port")
    with pytest.raises(report.ReportError, match="format 'json'"):
        report.interpolate_variables("${region:json}")


# ------------------------------------------------------------------ the plugin's macros
# Expected strings are those of the plugin's own tests (grafana/clickhouse-datasource, pkg/macros/macros_test.go).
FROM = datetime(2014, 11, 12, 11, 45, 26, 371000, tzinfo=timezone.utc)
TO = datetime(2015, 11, 12, 11, 45, 26, 371000, tzinfo=timezone.utc)


@pytest.mark.parametrize("sql, interval_s, expected", [
    ("$__fromTime", 0, "toDateTime(1415792726)"),
    ("$__toTime", 0, "toDateTime(1447328726)"),
    ("$__fromTime_ms", 0, "fromUnixTimestamp64Milli(1415792726371)"),
    ("$__toTime_ms", 0, "fromUnixTimestamp64Milli(1447328726371)"),
    ("$__timeFilter(col)", 0, "col >= toDateTime(1415792726) AND col <= toDateTime(1447328726)"),
    ("$__timeFilter( col )", 0, "col >= toDateTime(1415792726) AND col <= toDateTime(1447328726)"),
    ("$__timeFilter_ms(col)", 0,
     "col >= fromUnixTimestamp64Milli(1415792726371) AND col <= fromUnixTimestamp64Milli(1447328726371)"),
    ("$__dateFilter(col)", 0, "col >= toDate('2014-11-12') AND col <= toDate('2015-11-12')"),
    ("$__dateTimeFilter(dateCol, timeCol)", 0,
     "(dateCol >= toDate('2014-11-12') AND dateCol <= toDate('2015-11-12')) AND "
     "(timeCol >= toDateTime(1415792726) AND timeCol <= toDateTime(1447328726))"),
    ("$__dt(d, t)", 0, "(d >= toDate('2014-11-12') AND d <= toDate('2015-11-12')) AND "
                       "(t >= toDateTime(1415792726) AND t <= toDateTime(1447328726))"),
    ("$__timeInterval(col)", 20, "toStartOfInterval(toDateTime(col), INTERVAL 20 second)"),
    ("$__timeInterval(col)", 0, "toStartOfInterval(toDateTime(col), INTERVAL 1 second)"),
    ("$__timeInterval_ms(col)", 0.02, "toStartOfInterval(toDateTime64(col, 3), INTERVAL 20 millisecond)"),
    ("$__interval_s", 60, "60"),
    ("$__interval_s", 0, "1"),
    ("SELECT $__timeInterval(t) AS time FROM x WHERE $__timeFilter(t) AND $__timeFilter_ms(u)", 300,
     "SELECT toStartOfInterval(toDateTime(t), INTERVAL 300 second) AS time FROM x WHERE "
     "t >= toDateTime(1415792726) AND t <= toDateTime(1447328726) AND "
     "u >= fromUnixTimestamp64Milli(1415792726371) AND u <= fromUnixTimestamp64Milli(1447328726371)"),
    ("$__notAMacro(x) and $__interval_seconds", 60, "$__notAMacro(x) and $__interval_seconds"),
])
def test_macros_expand_as_the_clickhouse_plugin_expands_them(sql, interval_s, expected):
    assert report.expand_macros(sql, FROM, TO, interval_s) == expected


def test_a_macro_with_the_wrong_number_of_arguments_is_refused_by_name():
    with pytest.raises(report.ReportError, match=r"\$__timeFilter: expected 1 argument"):
        report.expand_macros("$__timeFilter(a, b)", FROM, TO, 60)


# ------------------------------------------------------------------ the queries on a simulated day
@pytest.fixture(scope="module")
def day(kafka, clickhouse_url):
    client = store.get_client(clickhouse_url)
    db = f"t_dashboards_{datetime.now().strftime('%H%M%S%f')}"
    client.command(f"CREATE DATABASE {db}")
    seeded = seed(client, db, kafka.bootstrap, prefix=f"{db}.")
    yield client, seeded
    client.command(f"DROP DATABASE IF EXISTS {db} SYNC")


def period(uid: str, seeded) -> tuple[datetime, datetime]:
    if "wall-clock" in BOARDS[uid]["tags"]:
        return seeded.seeded_from - timedelta(minutes=5), seeded.seeded_to + timedelta(minutes=5)
    return (seeded.first_event.replace(minute=0, second=0, microsecond=0),
            seeded.last_event.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1))


def test_the_seeded_day_has_every_kind_of_record_the_panels_read(day):
    client, seeded = day
    counts = {t: client.query(f"SELECT count() FROM {seeded.database}.{t}").result_rows[0][0]
              for t in ("clearances", "alerts", "cases", "derived_alerts", "trends", "risk_scores", "dead_letters",
                        "flow_hourly", "cases_daily", "sink_batches", "dispositions")}
    assert all(n > 0 for n in counts.values()), counts
    kinds = {r[0] for r in client.query(f"SELECT DISTINCT kind FROM {seeded.database}.derived_alerts").result_rows}
    assert {"CROSS_REGION_HIT", "SYSTEMIC_ESCALATION", "FLOW_SURGE_SUPPORT", "TRANSIT_OUT_OF_AREA", "ESCALATION"} <= kinds


@pytest.mark.parametrize("uid, title", CLICKHOUSE_PANELS, ids=[f"{u}:{t}" for u, t in CLICKHOUSE_PANELS])
def test_every_clickhouse_panel_query_returns_rows_on_a_simulated_day(day, uid, title):
    client, seeded = day
    panel = next(p for p in report.panels(BOARDS[uid]) if p["title"] == title)
    start, end = period(uid, seeded)
    previous = client.database
    client.database = seeded.database
    try:
        # the interval Grafana gives a 1,000-pixel panel for the period, and an hour
        for interval in (report.grafana_interval(start, end, 1000), 3600):
            for target in report.clickhouse_targets(panel):
                sql = report.expand_macros(target["rawSql"], start, end, interval)
                assert "$__" not in sql
                result = client.query(sql)
                assert result.result_rows, f"{uid} {title!r} returned no rows for {start} .. {end}:\n{sql}"
                if target["format"] == 0:   # a time series: its first column is the time
                    assert all(isinstance(r[0], datetime) for r in result.result_rows)
    finally:
        client.database = previous


# ------------------------------------------------------------------ Grafana's own driver on the live endpoint
GO_DRIVER = ROOT / "tests" / "clients" / "clickhouse_go"
#: clickhouse-go versions: the one the Grafana ClickHouse data source v4 pinned, and a current one (go.mod files)
DRIVER_VERSIONS = {"2.43.0": "go.mod", "2.51.0": "go.v2.51.0.mod"}
#: every type a query can return in Native format, three rows, for the driver to decode
TYPES_SQL = """SELECT number AS n, toUInt8(number) AS u8, toInt64(-number) AS i64, toInt128(number) AS i128,
 number / 3 AS f, toFloat32(1.5) AS f32, 1 / (number - 1) AS inf, toString(number) AS s, toFixedString('ab', 2) AS fs,
 toDate('2026-01-02') + number AS d, toDate32('1960-01-02') AS d32, toDateTime('2026-01-02 03:04:05', 'UTC') AS dt,
 toDateTime64('2026-01-02 03:04:05.123', 3, 'UTC') AS dt64, toDecimal64(1.25, 2) AS dec, toDecimal128(-7.5, 4) AS dec128,
 range(number) AS arr, ['a', 'b'] AS sarr, map('k', number) AS m, tuple(number, 'a') AS tup,
 CAST((1, 'q') AS Tuple(x UInt8, y String)) AS named, CAST(NULL AS Nullable(String)) AS nul, toNullable(number) AS nn,
 toLowCardinality(toString(number % 2)) AS lc, toLowCardinality(toNullable('z')) AS lcn,
 toUUID('61f0c404-5cb3-11e7-907b-a6006ad3dba0') AS uu, toIPv4('1.2.3.4') AS ip4, toIPv6('2001:db8::1') AS ip6,
 CAST('b' AS Enum8('a' = 1, 'b' = 2)) AS e8, [[1], [2, 3]] AS nested, [NULL, 'x'] AS an, number % 2 = 0 AS b,
 [map('x', [1, 2])] AS deep FROM numbers(3)"""


def json_value(v):
    """A value as clickhouse-connect returns it, in the form tests/clients/clickhouse_go prints the driver's."""
    if v is None or isinstance(v, (bool, str)):
        return v
    if isinstance(v, bytes):    # FixedString
        return v.decode()
    if isinstance(v, float):
        return v if math.isfinite(v) else {math.inf: "+Inf", -math.inf: "-Inf"}.get(v, "NaN")
    if isinstance(v, int):
        return v if -(1 << 63) <= v < (1 << 64) else str(v)
    if isinstance(v, Decimal):
        return float(v)
    if isinstance(v, datetime):
        v = v.astimezone(timezone.utc) if v.tzinfo else v
        text = v.strftime("%Y-%m-%dT%H:%M:%S")
        return text + (f".{v.microsecond:06d}".rstrip("0") if v.microsecond else "") + "Z"
    if isinstance(v, date):
        return f"{v.isoformat()}T00:00:00Z"
    if isinstance(v, (uuid.UUID, ipaddress.IPv4Address, ipaddress.IPv6Address)):
        return str(v)
    if isinstance(v, dict):
        return {str(json_value(k)): json_value(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [json_value(x) for x in v]
    raise TypeError(f"no JSON form for {type(v).__name__} {v!r}")


def driver_value(v, column_type: str):
    """What the Go program printed, with decimals and big integers as numbers (shopspring prints 1.2 where Python
    has 1.20)."""
    if column_type.startswith("Decimal") and isinstance(v, str):
        return float(v)
    if re.fullmatch(r"U?Int(128|256)", column_type):     # big.Int, printed as text
        return int(v)
    return v


def canonical(v):
    """Whole floats as integers (Go's JSON writes 0.0 as 0), others to 12 significant digits: a sum of floats
    read by several threads may differ in its last bits from one run of the same query to the next."""
    if isinstance(v, float):
        v = float(f"{v:.12g}")
        return int(v) if v.is_integer() else v
    if isinstance(v, list):
        return [canonical(x) for x in v]
    if isinstance(v, dict):
        return {k: canonical(x) for k, x in v.items()}
    return v


@pytest.fixture(scope="module")
def go_drivers(tmp_path_factory) -> dict[str, Path]:
    """tests/clients/clickhouse_go built with each driver version (modules from the Go module proxy, checked
    against the committed go.sum files)."""
    out = tmp_path_factory.mktemp("go")
    built = {}
    for version, modfile in DRIVER_VERSIONS.items():
        binary = out / f"clickhouse_go-{version}"
        run = subprocess.run(["go", "build", f"-modfile={modfile}", "-o", str(binary), "."], cwd=GO_DRIVER,
                             env={**os.environ, "GOFLAGS": "-mod=readonly -buildvcs=false", "GOTOOLCHAIN": "local"},
                             capture_output=True, text=True,
                             timeout=900)
        assert run.returncode == 0, f"go build with clickhouse-go {version}:\n{run.stderr}"
        built[version] = binary
    return built


@pytest.fixture(scope="module")
def live_endpoint(day, clickhouse_url):
    """The query endpoint over the simulated day's database, with a password user as Grafana would have."""
    _, seeded = day
    password = secrets.token_urlsafe(12)
    port = free_port()
    server = QueryServer(clickhouse_url[len("chdb://"):], port=port, users={"grafana": hash_password(password)},
                         database=seeded.database).start()
    yield {"addr": f"127.0.0.1:{port}", "user": "grafana", "password": password, "database": seeded.database}
    server.stop()


def run_go_driver(binary: Path, endpoint: dict, queries: list[dict]) -> dict:
    argv = [str(binary), "-addr", endpoint["addr"], "-user", endpoint["user"], "-password", endpoint["password"],
            "-database", endpoint["database"]]
    run = subprocess.run(argv, input=json.dumps(queries), capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


@pytest.mark.parametrize("version", DRIVER_VERSIONS)
def test_grafanas_go_driver_runs_every_panel_query_on_the_live_endpoint(day, go_drivers, live_endpoint, version):
    """clickhouse-go, opened with the Grafana data source's HTTP options, connects to the live endpoint (its
    server hello, ping and version), decodes every type in Native format at its protocol revision, and runs every
    ClickHouse panel query of dashboards/ with the macros expanded: each answer the rows clickhouse-connect reads
    from the store directly."""
    client, seeded = day
    queries, expected = [], {}
    previous = client.database
    client.database = seeded.database
    try:
        for uid, title in CLICKHOUSE_PANELS:
            panel = next(p for p in report.panels(BOARDS[uid]) if p["title"] == title)
            start, end = period(uid, seeded)
            for target in report.clickhouse_targets(panel):
                sql = report.expand_macros(target["rawSql"], start, end, report.grafana_interval(start, end, 1000))
                name = f"{uid}: {title} ({target['refId']})"
                queries.append({"name": name, "sql": sql})
                expected[name] = client.query(sql).result_rows
        queries.append({"name": "types", "sql": TYPES_SQL})
        expected["types"] = client.query(TYPES_SQL).result_rows
        queries.append({"name": "blocks", "sql": "SELECT number, toString(number) FROM numbers(150000)"})
        expected["blocks"] = client.query("SELECT number, toString(number) FROM numbers(150000)").result_rows
    finally:
        client.database = previous
    answer = run_go_driver(go_drivers[version], live_endpoint, queries + [{"name": "typo", "sql": "SELEC 1"}])
    assert answer["driver"] == f"clickhouse-go {version}"
    assert answer["ping"] == "ok"
    assert answer["server"]["revision"] > 54460 and answer["server"]["timezone"]
    results = {r["name"]: r for r in answer["results"]}
    assert re.search(r"(?i)code: 62\b.*SYNTAX_ERROR", results.pop("typo")["error"], re.S)
    assert len(queries) - 2 >= 27
    for name, rows in expected.items():
        got = results[name]
        assert not got.get("error"), f"{name}: {got['error']}"
        types = [c["type"] for c in got["columns"]]
        decoded = [canonical([driver_value(v, t) for v, t in zip(row, types)]) for row in got["rows"]]
        want = [canonical(json_value(list(row))) for row in rows]
        assert rows and sorted(map(json.dumps, decoded)) == sorted(map(json.dumps, want)), name


#: what names the region of a row in a panel's answer: a column of that name, or one holding the alert's regions
REGION_COLUMNS = ("region", "must_act", "support_from", "inform", "region_pair")


@pytest.mark.parametrize("region", ["SH", "AH"])
def test_the_region_variable_narrows_every_panel_to_the_chosen_region(day, region):
    """Each panel of the event-time dashboards with one region chosen: every row that names its regions names
    the chosen one, and the answer has no more rows than the answer for all regions."""
    client, seeded = day
    previous = client.database
    client.database = seeded.database
    narrowed = queries = 0
    try:
        for uid in EVENT_TIME_BOARDS:
            start, end = period(uid, seeded)
            for p in report.panels(BOARDS[uid]):
                for t in report.clickhouse_targets(p):
                    every = client.query(report.expand_macros(t["rawSql"], start, end, 3600))
                    one = client.query(report.expand_macros(t["rawSql"], start, end, 3600, {"region": [region]}))
                    where = f"{uid} {p['title']!r} ({region})"
                    assert len(one.result_rows) <= len(every.result_rows), where
                    narrowed += one.result_rows != every.result_rows
                    queries += 1
                    cols = [i for i, c in enumerate(one.column_names) if c in REGION_COLUMNS]
                    for row in one.result_rows:
                        if cols:
                            assert any(region in str(row[i]) for i in cols), (where, row)
    finally:
        client.database = previous
    assert narrowed >= queries / 2 and queries >= 24, (narrowed, queries)   # most answers change with the region


ALERT_PANELS = [(uid, title) for uid, title in CLICKHOUSE_PANELS
                if any("derived_alerts" in t["rawSql"]
                       for t in report.clickhouse_targets(next(p for p in report.panels(BOARDS[uid]) if p["title"] == title)))]


def test_the_panels_on_derived_alerts_count_and_list_only_alerts_that_were_not_withdrawn(ch):
    """One alert of every kind, raised: every panel on derived alerts shows something; then the version withdrawing
    each is stored (same id, later emitted_at): they show nothing."""
    from connectors.store import Target, migrate
    from schemas import contract

    client, db = ch
    migrate(client, Target(database=db))
    kinds = json.loads((contract.AVSC_DIR / "yrd.border.DerivedAlertKind.avsc").read_text())["symbols"]
    at = datetime(2017, 6, 5, 10, tzinfo=timezone.utc)
    cols = ["alert_id", "kind", "severity", "rule_id", "rule_set_version", "must_act", "inform", "station_id",
            "port_code", "subject", "pattern", "evidence", "occurred_at", "emitted_at", "summary", "details",
            "status", "status_reason"]

    def versions(status, emitted, reason=None):
        return [[f"a-{k}", k, "HIGH", "r", "1", ["JS"], ["SH"], "JS-NKG", "NKG", "s" * 64, "p", ["e"], at,
                 at + timedelta(minutes=emitted), f"{k} summary", {}, status, reason] for k in kinds]

    client.insert(f"{db}.derived_alerts", versions("RAISED", 1), column_names=cols)
    client.insert(f"{db}.dispositions", [[uuid.uuid5(uuid.NAMESPACE_URL, k), f"a-{k}", "ACKNOWLEDGED", "JS", "js-duty",
                                          at + timedelta(minutes=3)] for k in kinds],
                  column_names=["disposition_id", "alert_id", "outcome", "region", "officer", "decided_at"])
    assert len(ALERT_PANELS) >= 6, ALERT_PANELS
    start, end = at - timedelta(hours=1), at + timedelta(hours=1)

    def shown() -> dict[str, int]:
        out = {}
        previous = client.database
        client.database = db
        try:
            for uid, title in ALERT_PANELS:
                panel = next(p for p in report.panels(BOARDS[uid]) if p["title"] == title)
                out[f"{uid}: {title}"] = sum(
                    len(client.query(report.expand_macros(t["rawSql"], start, end, 3600)).result_rows)
                    for t in report.clickhouse_targets(panel))
        finally:
            client.database = previous
        return out

    raised = shown()
    assert all(n > 0 for n in raised.values()), raised
    client.insert(f"{db}.derived_alerts", versions("WITHDRAWN", 2, "disproved by events read later"),
                  column_names=cols)
    assert shown() == {k: 0 for k in raised}


def words_beijing(t: datetime) -> str:
    from yrdbus.words import Words

    return Words.beijing(t)


def test_report_renders_the_main_panels_to_png_from_the_dashboards_sql(day, clickhouse_url, tmp_path, monkeypatch):
    client, seeded = day
    from yrdbus.cli import app

    monkeypatch.setenv("YRDBUS_CLICKHOUSE_URL", clickhouse_url)
    monkeypatch.setenv("YRDBUS_VAR_DIR", str(tmp_path / "var"))    # no running bus: the store directly
    from schemas.settings import get_settings
    get_settings.cache_clear()
    start, end = period("yrdbus-risk", seeded)
    out = tmp_path / "report"
    previous = client.database       # the command sets the shared in-process client's database
    try:
        result = CliRunner().invoke(app, ["report", "--out", str(out), "--database", seeded.database,
                                          "--from", start.isoformat(), "--to", end.isoformat(), "--json"])
    finally:
        get_settings.cache_clear()
        client.database = previous
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert [(p["dashboard"], p["title"]) for p in summary["panels"]] == report.MAIN_PANELS
    client.database = seeded.database
    try:
        for p in summary["panels"]:
            png = Path(p["file"])
            assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
            panel = next(x for x in report.panels(BOARDS[p["dashboard"]]) if x["title"] == p["title"])
            sql = report.expand_macros(report.clickhouse_targets(panel)[0]["rawSql"], start, end,
                                       report.grafana_interval(start, end, 1000))
            assert p["rows"] == len(client.query(sql).result_rows) > 0
    finally:
        client.database = previous
    assert (out / "index.html").is_file() and json.loads((out / "report.json").read_text())["panels"]
    # in Chinese by default: the titles, the page, the period in Beijing time; English one switch away
    assert summary["lang"] == "zh-CN" and {p["shown_title"] for p in summary["panels"]} >= {"跨区域告警（按区域对）",
                                                                                           "过境超期停留"}
    page = (out / "index.html").read_text(encoding="utf-8")
    assert "<html lang='zh-CN'>" in page and "yrdbus 报告" in page and "北京时间" in page
    assert words_beijing(start) in page
    try:
        english = CliRunner().invoke(app, ["report", "--out", str(tmp_path / "en"), "--database", seeded.database,
                                           "--from", start.isoformat(), "--to", end.isoformat(), "--json",
                                           "--panel", "Rising patterns", "--lang", "en"])
    finally:
        get_settings.cache_clear()
        client.database = previous
    assert english.exit_code == 0, english.output
    assert [p["shown_title"] for p in json.loads(english.stdout.strip().splitlines()[-1])["panels"]] == [
        "Rising patterns"]
    assert "Beijing time" in (tmp_path / "en" / "index.html").read_text(encoding="utf-8")

    # one region, as the dashboards' region variable; a region the bus does not have is refused by name
    panel = next(x for x in report.panels(BOARDS["yrdbus-risk"]) if x["title"] == "Rising patterns")
    sql = report.clickhouse_targets(panel)[0]["rawSql"]
    client.database = seeded.database
    try:
        every = client.query(report.expand_macros(sql, start, end, 60)).result_rows
        region = every[-1][0]                 # a region with rising patterns in the period
        only = client.query(report.expand_macros(sql, start, end, 60, {"region": [region]})).result_rows
    finally:
        client.database = previous
    assert only and len(only) < len(every) and all(r[0] == region for r in only)
    args = ["report", "--database", seeded.database, "--from", start.isoformat(), "--to", end.isoformat(), "--json",
            "--panel", "Rising patterns"]
    try:
        one = CliRunner().invoke(app, args + ["--out", str(tmp_path / "one"), "--region", region.lower()])
        bad = CliRunner().invoke(app, args + ["--out", str(tmp_path / "xx"), "--region", "XX"])
    finally:
        get_settings.cache_clear()
        client.database = previous
    assert one.exit_code == 0, one.output
    assert [p["rows"] for p in json.loads(one.stdout.strip().splitlines()[-1])["panels"]] == [len(only)]
    assert bad.exit_code != 0 and "--region XX: not a region of the bus" in bad.output
