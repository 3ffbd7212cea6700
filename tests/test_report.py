"""`yrdbus report` tells the truth about what it draws: its default period covers the events stored (alerts
raised before the newest crossings included), ratios get an axis of their own, a simulated run's flow is compared
with a baseline of the same scale, and a handful of counts is drawn as bars, not as a line through them."""
from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import matplotlib.dates as mdates
import pytest
from matplotlib.container import BarContainer
from typer.testing import CliRunner

from yrdbus import report

T0 = datetime(2017, 6, 5, tzinfo=timezone.utc)
PORTS = ["port_code", "region", "crossings_in_period", "expected_in_period", "ratio"]
PORT_ROWS = [["PVG", "SH", 19805, 204914, 0.1], ["NKG", "JS", 3313, 33562, 0.1], ["TXN", "AH", 12, 0, None]]


class Answers:
    """A store for the command's wiring: the ports' rows to a query on the flow baseline, one nationality to any
    other."""

    database = "yrdbus"

    def query(self, sql):
        if "ref_flow_baseline" in sql:
            return SimpleNamespace(column_names=PORTS, result_rows=PORT_ROWS)
        return SimpleNamespace(column_names=["nationality", "cases", "persons"], result_rows=[["VNM", 14, 74]])


def bar_labels(ax) -> list[str]:
    return [c.get_label() for c in ax.containers if isinstance(c, BarContainer)]


def line_labels(ax) -> list[str]:
    return [line.get_label() for line in ax.get_lines()]


# ------------------------------------------------------------------ the period
def test_the_default_period_covers_the_alerts_raised_before_the_crossings(ch):
    """Nothing stored: the day up to now. Alerts two days before the crossings: from the hour of the alerts to the
    hour after the newest crossing, and the alert panel has rows in it (a day up to the newest crossing had none).
    Only --to: the day before it; only --from: up to the newest event; events over more than 31 days: the last
    31; from after to: refused."""
    from connectors.store import Target, migrate

    client, db = ch
    migrate(client, Target(database=db))
    previous = client.database
    client.database = db
    try:
        empty = report.default_period(client, None, None)
        assert empty.end - empty.start == timedelta(days=1) and "no events stored" in empty.reason
        assert abs((empty.end - datetime.now(timezone.utc)).total_seconds()) < 60

        client.insert("derived_alerts", [[f"a-{i}", "CROSS_REGION_HIT", "HIGH", ["JS"], ["SH"],
                                          T0 - timedelta(days=2) + timedelta(hours=10, minutes=15 * i),
                                          T0, "hit", "RAISED"] for i in range(3)],
                      column_names=["alert_id", "kind", "severity", "must_act", "inform", "occurred_at", "emitted_at",
                                    "summary", "status"])
        cols = ["event_id", "region", "station_id", "port_code", "occurred_at", "published_at", "subject", "direction"]
        client.insert("clearances", [[uuid.uuid4(), "SH", "SH-PVG", "PVG", t, t,
                                      "s" * 64, "ENTRY"] for t in ((T0 + timedelta(hours=12, minutes=30),
                                                                                T0 + timedelta(hours=18, minutes=20)))],
                      column_names=cols)
        period = report.default_period(client, None, None)
        assert (period.start, period.end) == (T0 - timedelta(days=2) + timedelta(hours=10), T0 + timedelta(hours=19))
        assert period.reason.startswith("every event stored")
        alerts, = report.main_panels(["Derived alerts by kind"])
        assert report.run_panel(client, alerts, period.start, period.end)[1], "the alerts are in the default period"
        old_default = (T0 + timedelta(hours=19) - timedelta(days=1), T0 + timedelta(hours=19))
        assert not report.run_panel(client, alerts, *old_default)[1]

        assert report.default_period(client, None, T0)[:2] == (T0 - timedelta(days=1), T0)
        assert report.default_period(client, T0, None)[:2] == (T0, T0 + timedelta(hours=19))
        assert report.default_period(client, T0, T0 + timedelta(hours=1)).reason == "as given"

        late = T0 + timedelta(days=60)
        client.insert("trends", [["sig-1", "CASE_COUNT", "SH", late - timedelta(hours=1), late, 6.0, 0.1, 20.0, True,
                                  late]],
                      column_names=["signal_id", "metric", "region", "window_start", "window_end", "observed",
                                    "expected", "score", "rising", "emitted_at"])
        capped = report.default_period(client, None, None)
        assert capped.end == late + timedelta(hours=1) and capped.end - capped.start == timedelta(days=31)
        assert "last 31 days" in capped.reason
        with pytest.raises(report.ReportError, match="is not before --to"):
            report.default_period(client, late + timedelta(hours=2), None)
    finally:
        client.database = previous


# ------------------------------------------------------------------ ratios on their own axis
@pytest.mark.unit
def test_a_ratio_column_is_drawn_on_a_second_axis_of_its_own():
    fig = report.figure(PORTS, PORT_ROWS, {"type": "barchart", "title": "Ports"})
    assert len(fig.axes) == 2
    counts, ratios = fig.axes
    assert bar_labels(counts) == ["crossings_in_period", "expected_in_period"]
    assert bar_labels(ratios) == ["ratio"] and ratios.get_xlabel() == "ratio"
    assert counts.get_xlabel() == "crossings_in_period, expected_in_period"


@pytest.mark.unit
def test_small_fractions_beside_large_counts_are_a_ratio_and_small_whole_counts_are_not():
    names = ["kind", "crossings", "share_of_region_x"]
    rows = [["a", 12000, 0.42], ["b", 800, 1.7], ["c", 90, 0.05]]
    counts, fractions = report.figure(names, rows, {"type": "barchart", "title": "t"}).axes
    assert bar_labels(counts) == ["crossings"] and bar_labels(fractions) == ["share_of_region_x"]
    # cases by region: 30 in one, 2 in another are both counts, on one axis
    rows = [["STOWAWAY", 30, 0, 2], ["FRAUD", 1, 0, 0]]
    fig = report.figure(["case_type", "SH", "JS", "AH"], rows, {"type": "barchart", "title": "t"})
    assert len(fig.axes) == 1 and bar_labels(fig.axes[0]) == ["SH", "JS", "AH"]


@pytest.mark.unit
def test_a_ratio_over_time_is_a_line_on_a_second_axis():
    rows = [[T0 + timedelta(hours=h), 2000 + h, 2100.0 + h, round((2000 + h) / (2100 + h), 2)] for h in range(48)]
    fig = report.figure(["time", "crossings", "baseline", "ratio"], rows, {"type": "timeseries", "title": "t"},
                        period=(T0, T0 + timedelta(days=2)), interval_s=3600)
    assert len(fig.axes) == 2
    assert line_labels(fig.axes[0]) == ["baseline", "crossings"] and line_labels(fig.axes[1]) == ["ratio"]
    assert fig.axes[1].get_ylabel() == "ratio"


# ------------------------------------------------------------------ a simulated run's volume
@pytest.mark.unit
def test_the_baseline_is_scaled_and_the_ratio_recomputed_from_it():
    scaled = report.scale_baseline(PORTS, PORT_ROWS, 0.1)
    assert scaled == [["PVG", "SH", 19805, 20491.4, 0.97], ["NKG", "JS", 3313, 3356.2, 0.99],
                      ["TXN", "AH", 12, 0.0, None]]
    assert PORT_ROWS[0] == ["PVG", "SH", 19805, 204914, 0.1], "the query's rows are left as they were"
    rows = [[T0, 980, 9800.0], [T0 + timedelta(hours=1), 990, None]]
    assert report.scale_baseline(["time", "crossings", "baseline"], rows, 0.1) == [[T0, 980, 980.0],
                                                                                 [T0 + timedelta(hours=1), 990, None]]
    assert report.scale_baseline(PORTS, PORT_ROWS, 1.0) is PORT_ROWS
    other = [["x", 5, 0.5]]
    assert report.scale_baseline(["kind", "alerts", "ratio"], other, 0.1) is other, "no baseline column: unchanged"


@pytest.mark.unit
def test_report_baseline_scale_scales_the_flow_panels_and_says_so_on_the_chart(tmp_path, monkeypatch):
    from schemas.settings import get_settings
    from yrdbus.cli import app

    drawn = {}

    def draw(names, rows, panel, path, width=1000, **how):
        drawn[panel["title"]] = (rows, how.get("note"))
        path.write_bytes(b"")

    monkeypatch.setattr(report, "draw", draw)
    monkeypatch.setattr("yrdbus.cli_store.query_client", lambda user, password: (Answers(), "test"))
    monkeypatch.setenv("YRDBUS_VAR_DIR", str(tmp_path / "var"))
    get_settings.cache_clear()
    args = ["report", "--from", "2017-06-05T00:00Z", "--to", "2017-06-06T00:00Z", "--json", "--panel", "Ports",
            "--panel", "Nationalities", "--lang", "en"]
    try:
        chinese = CliRunner().invoke(app, args[:-2] + ["--out", str(tmp_path / "zh"), "--baseline-scale", "0.1"])
        assert chinese.exit_code == 0, chinese.output
        assert drawn["Ports: crossings against their baseline"][1] == "基线 × 0.1：模拟流量"     # the default language
        scaled = CliRunner().invoke(app, args + ["--out", str(tmp_path / "a"), "--baseline-scale", "0.1"])
        assert scaled.exit_code == 0, scaled.output
        assert drawn["Ports: crossings against their baseline"] == (report.scale_baseline(PORTS, PORT_ROWS, 0.1),
                                                                     "baseline x 0.1: simulated volume")
        assert drawn["Nationalities of opened cases"][1] is None, "a panel without a baseline: no note"
        summary = json.loads((tmp_path / "a" / "report.json").read_text())
        assert summary["baseline_scale"] == 0.1 and summary["period"] == "as given"
        assert [p.get("baseline_scale") for p in summary["panels"]] == [0.1, None]

        # no --baseline-scale: the scale the last `yrdbus run` recorded in the var folder, said on stderr; an
        # older marker without one (or none): 1, nothing scaled
        (tmp_path / "var" / "run").mkdir(parents=True)
        marker = tmp_path / "var" / "run" / "simulated.json"
        marker.write_text('{"seed": 7, "scale": 0.1}\n')
        recorded = CliRunner().invoke(app, args + ["--out", str(tmp_path / "b")])
        assert recorded.exit_code == 0, recorded.output
        assert drawn["Ports: crossings against their baseline"][1] == "baseline x 0.1: simulated volume"
        assert "the flow baseline x 0.1" in recorded.stderr
        marker.write_text('{"seed": 7}\n')
        plain = CliRunner().invoke(app, args + ["--out", str(tmp_path / "c")])
    finally:
        get_settings.cache_clear()
    assert plain.exit_code == 0, plain.output
    assert drawn["Ports: crossings against their baseline"] == (PORT_ROWS, None)
    assert not plain.stderr.strip() and json.loads(plain.stdout.splitlines()[-1])["baseline_scale"] == 1.0


# ------------------------------------------------------------------ sparse counts
@pytest.mark.unit
def test_a_sparse_series_is_drawn_as_bars_at_its_times_and_a_dense_one_as_a_line():
    panel = {"type": "timeseries", "title": "Derived alerts by kind",
             "targets": [{"datasource": {"type": report.CLICKHOUSE_TYPE},
                          "rawSql": "SELECT $__timeInterval(occurred_at) AS time, kind, count() AS alerts ..."}]}
    few = [[T0 + timedelta(hours=h), "CROSS_REGION_HIT", 1] for h in (3, 9, 17)]
    hourly = [[T0 + timedelta(hours=h), "TREND_RISING", 2] for h in range(48)]
    gappy = [[T0 + timedelta(hours=h), "BROADCAST", 1] for h in range(50) if h not in (20, 21)]
    rows = sorted(few + hourly + gappy, key=lambda r: r[0])
    fig = report.figure(["time", "kind", "alerts"], rows, panel, period=(T0, T0 + timedelta(days=2, hours=2)),
                        interval_s=3600)
    ax, = fig.axes
    assert line_labels(ax) == ["TREND_RISING"]
    assert bar_labels(ax) == ["BROADCAST", "CROSS_REGION_HIT"]
    bars = next(c for c in ax.containers if c.get_label() == "CROSS_REGION_HIT")
    assert [b.get_height() for b in bars] == [1, 1, 1]
    # each in the hour it counts (beside BROADCAST's bar where both have one)
    hours = [mdates.date2num(r[0]) for r in few]
    assert all(h <= b.get_x() and b.get_x() + b.get_width() <= h + 1 / 24 + 1e-9 for h, b in zip(hours, bars))
    assert not report.sparse([r[0] for r in hourly], 3600) and report.sparse([r[0] for r in gappy], 3600)
    assert report.sparse([r[0] for r in hourly[:39]], 3600), "fewer than 40 points"
