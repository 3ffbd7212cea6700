"""Grafana dashboards and the report: valid dashboard models, provisioning that names what the panels use,
the ClickHouse plugin's macros expanded as the plugin does, and every ClickHouse panel query run on the real
engine against a simulated day stored by the real sink; `yrdbus report` renders the main panels from that SQL."""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from observability_day import seed
from connectors.store import client as store
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
def test_the_five_dashboards_are_there():
    assert {m["title"] for m in BOARDS.values()} == {
        "yrdbus: risk analysis centre", "yrdbus: ports and flow", "yrdbus: cases", "yrdbus: 144-hour transit",
        "yrdbus: pipeline health"}


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


def test_provisioning_points_the_data_sources_at_the_bus_and_the_provider_at_the_dashboards():
    defaults = Settings(_env_file=None)
    sources = datasources()
    ch = sources["yrdbus-clickhouse"]
    assert ch["type"] == report.CLICKHOUSE_TYPE
    assert ch["jsonData"]["protocol"] == "http" and ch["jsonData"]["port"] == defaults.query_port
    assert ch["jsonData"]["defaultDatabase"] == "yrdbus"
    prom = sources["yrdbus-prometheus"]
    assert prom["type"] == "prometheus" and prom["url"].endswith(f":{defaults.prometheus_port}")
    providers = yaml.safe_load((PROVISIONING / "dashboards" / "yrdbus.yml").read_text())["providers"]
    assert [p["type"] for p in providers] == ["file"] and providers[0]["options"]["path"] == "${YRDBUS_DASHBOARDS}"


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
                        "flow_hourly", "cases_daily", "sink_batches")}
    assert all(n > 0 for n in counts.values()), counts
    kinds = {r[0] for r in client.query(f"SELECT DISTINCT kind FROM {seeded.database}.derived_alerts").result_rows}
    assert {"CROSS_REGION_HIT", "SYSTEMIC_ESCALATION", "FLOW_SURGE_SUPPORT", "TRANSIT_OUT_OF_AREA"} <= kinds


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
