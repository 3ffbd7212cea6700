"""Scoring derived alerts against ground truth (docs/scenarios.md), without a broker."""
from __future__ import annotations

import json

import pytest

from streams.evaluate import TruthError, load_truth, score

pytestmark = pytest.mark.unit   # no Java, Kafka or ClickHouse: `make unit`

ROW = {"scenario_id": "a-1", "scenario": "cross_region_hit", "incident_kind": "x",
       "expected_alert_kind": "CROSS_REGION_HIT", "must_notify": ["JS", "SH"], "subjects": ["tok"],
       "conveyance_id": None, "pattern": None, "port_code": None,
       "window_start": "2017-06-01T10:00:00.000Z", "window_end": "2017-06-01T16:00:00.000Z"}
IN_WINDOW = 1_496_311_200_000 + 3_600_000   # 2017-06-01T11:00Z


def alert(**kw):
    a = {"alert_id": "A", "kind": "CROSS_REGION_HIT", "occurred_at": IN_WINDOW, "must_act": ["JS"], "inform": ["SH"],
         "subject": "tok", "conveyance_id": None, "pattern": None, "port_code": None,
         "emitted_at": IN_WINDOW + 5000, "details": {"evidence_published_at": str(IN_WINDOW + 1000)}}
    a.update(kw)
    return a


@pytest.fixture
def truth(tmp_path):
    def write(*rows):
        p = tmp_path / "t.jsonl"
        p.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return load_truth(p)
    return write


def test_matching_alert_detects_the_scenario_and_reports_its_delay(truth):
    r = score(truth(ROW), [alert()])
    assert (r["precision"], r["recall"], r["false_alerts"]) == (1.0, 1.0, [])
    assert r["scenarios"][0]["detected"] and r["scenarios"][0]["delay_s"] == 4.0


@pytest.mark.parametrize("change", [
    {"kind": "PORT_SHOPPING"}, {"subject": "other"}, {"inform": []},
    {"occurred_at": IN_WINDOW + 6 * 3_600_000}])
def test_alert_that_differs_in_kind_subject_regions_or_time_is_a_false_alert(truth, change):
    r = score(truth(ROW), [alert(**change)])
    assert r["recall"] == 0.0 and r["precision"] == 0.0 and len(r["false_alerts"]) == 1


def test_window_bounds_are_inclusive(truth):
    r = score(truth(ROW), [alert(occurred_at=1_496_311_200_000)])
    assert r["recall"] == 1.0


def test_scenario_needs_every_row_and_the_same_alert_twice_counts_once(truth):
    row2 = {**ROW, "expected_alert_kind": "CONVEYANCE_DIVERTED", "conveyance_id": "MU1"}
    r = score(truth(ROW, row2), [alert(), alert()])
    assert r["recall"] == 0.0 and r["alerts"] == 1 and r["precision"] == 1.0
    r = score(truth(ROW, row2), [alert(), alert(alert_id="B", kind="CONVEYANCE_DIVERTED", conveyance_id="MU1")])
    assert r["recall"] == 1.0


def test_optional_row_matched_is_no_false_alert_and_missing_does_not_cost_the_scenario(truth):
    surge = {**ROW, "expected_alert_kind": "FLOW_SURGE_SUPPORT", "subjects": [], "must_notify": ["ZJ"],
             "port_code": "HGH", "optional": True}
    rows = truth(ROW, surge)
    r = score(rows, [alert()])
    assert (r["recall"], r["precision"]) == (1.0, 1.0)
    assert [row.get("optional", False) for row in r["scenarios"][0]["rows"]] == [False, True]
    extra = alert(alert_id="B", kind="FLOW_SURGE_SUPPORT", subject=None, port_code="HGH", must_act=["JS"],
                  inform=["ZJ"])
    r = score(rows, [alert(), extra])
    assert (r["recall"], r["precision"], r["false_alerts"]) == (1.0, 1.0, [])
    # at another port it matches nothing: a false alert
    r = score(rows, [alert(), {**extra, "port_code": "NGB"}])
    assert r["precision"] == 0.5 and [f["port_code"] for f in r["false_alerts"]] == ["NGB"]
    # a scenario of optional rows only asks for nothing
    r = score(truth(ROW, {**surge, "scenario_id": "h-1"}), [])
    assert [s["detected"] for s in r["scenarios"]] == [False, True] and r["recall"] == 0.5


def test_truth_row_without_a_window_is_refused_with_its_line_and_field(tmp_path):
    p = tmp_path / "t.jsonl"
    bad = dict(ROW)
    del bad["window_end"]
    p.write_text(json.dumps(ROW) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(TruthError, match=r"line 2, field `window_end`"):
        load_truth(p)


def withdrawn(a: dict, reason: str = "flag resolved before the crossing", later_ms: int = 60_000) -> dict:
    return {**a, "status": "WITHDRAWN", "status_reason": reason, "emitted_at": a["emitted_at"] + later_ms}


def test_a_withdrawn_alert_is_no_true_alert_and_does_not_detect_its_scenario(truth):
    r = score(truth(ROW), [alert(status="RAISED", status_reason=None), withdrawn(alert())])
    assert (r["recall"], r["alerts"], r["matched_alerts"], r["false_alerts"]) == (0.0, 0, 0, [])
    assert r["withdrawn"] == 1 and r["withdrawn_alerts"][0]["reason"] == "flag resolved before the crossing"
    assert not r["scenarios"][0]["detected"]


def test_a_withdrawn_alert_is_no_false_alert(truth):
    r = score(truth(ROW), [alert(), alert(alert_id="B", subject="other"), withdrawn(alert(alert_id="B", subject="other"))])
    assert (r["precision"], r["recall"], r["false_alerts"], r["withdrawn"]) == (1.0, 1.0, [], 1)


def test_the_last_version_of_an_alert_by_emitted_at_decides_whatever_the_read_order(truth):
    raised, gone = alert(), withdrawn(alert())
    for order in ([raised, gone], [gone, raised]):
        r = score(truth(ROW), order)
        assert (r["recall"], r["alerts"], r["withdrawn"]) == (0.0, 0, 1), order
    # raised again after the withdrawal (a later version): it stands, and the delay is the first emission's
    again = {**alert(), "emitted_at": gone["emitted_at"] + 60_000}
    r = score(truth(ROW), [raised, gone, again])
    assert (r["recall"], r["precision"], r["withdrawn"]) == (1.0, 1.0, 0)
    assert r["scenarios"][0]["delay_s"] == 4.0


def test_an_alert_without_status_is_a_raised_one(truth):
    r = score(truth(ROW), [alert(status=None)])
    assert (r["recall"], r["precision"], r["withdrawn"]) == (1.0, 1.0, 0)


def test_yrdbus_evaluate_lists_a_withdrawn_alert_apart_with_its_reason(tmp_path):
    from typer.testing import CliRunner

    from yrdbus.cli import app

    (tmp_path / "t.jsonl").write_text(json.dumps(ROW) + "\n")
    gone = withdrawn(alert(summary="Traveller flagged in SH seen in JS"))
    (tmp_path / "a.jsonl").write_text(json.dumps(alert()) + "\n" + json.dumps(gone) + "\n")
    args = ["evaluate", "--truth", str(tmp_path / "t.jsonl"), "--alerts", str(tmp_path / "a.jsonl")]
    out = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert out.exit_code == 0, out.output
    assert "0 derived alerts (1 more withdrawn)" in out.output
    assert "withdrawn CROSS_REGION_HIT" in out.output and "flag resolved before the crossing" in out.output
    assert "recall 0.000" in out.output
    result = json.loads(CliRunner().invoke(app, [*args, "--json"]).output)
    assert (result["alerts"], result["withdrawn"]) == (0, 1)
