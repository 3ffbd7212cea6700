"""The escalation stage (streams/escalation.py) without Kafka: records fed to it in any order."""
from __future__ import annotations

import random

import pytest

from streams import derived
from streams.escalation import CLOCK_KEY, KIND, EscalationStage
from streams.ruleset import RuleSet, RuleSetError

MIN = 60_000
T0 = 1_796_000_000_000


def rules(**minutes) -> RuleSet:
    return RuleSet("test-1", {"escalation": {"minutes": minutes or {"CRITICAL": 5, "HIGH": 15}, "keep_days": 7}})


def alert(aid: str, severity: str = "CRITICAL", must=("SH",), inform=("JS",), at: int = T0, status: str = "RAISED",
          kind: str = "CROSS_REGION_HIT") -> dict:
    return {"_kind": "alert", "alert_id": aid, "kind": kind, "severity": severity, "rule_id": "cross_region_hit",
            "must_act": list(must), "inform": list(inform), "summary": f"alert {aid}", "port_code": "PVG",
            "station_id": None, "subject": "tok", "conveyance_id": None, "status": status, "emitted_at": at,
            "occurred_at": T0 - 30 * MIN}


def ack(aid: str, region: str, at: int, outcome: str = "ACKNOWLEDGED") -> dict:
    return {"_kind": "disposition", "alert_id": aid, "region": region, "outcome": outcome, "decided_at": at}


def tick(at: int) -> dict:
    return {"_kind": "tick", "now": at}


class Run:
    """The stage over a dict, its outputs kept."""

    def __init__(self, rs: RuleSet | None = None):
        self.table: dict = {}
        self.stage = EscalationStage(rs or rules(), self.table)
        self.out: list[dict] = []

    def feed(self, *records) -> "Run":
        for rec in records:
            step = self.stage.step(rec)
            self.out += [dict(r, emitted_at=len(self.out)) for kind, r in step.outs]
            for k, v in step.writes.items():
                if v is None:
                    self.table.pop(k, None)
                else:
                    self.table[k] = v
        return self

    def live(self) -> dict[str, dict]:
        last: dict[str, dict] = {}
        for r in self.out:
            last[r["alert_id"]] = r
        return {k: v for k, v in last.items() if derived.is_live(v)}


def test_an_unacknowledged_critical_alert_escalates_once_at_its_time_to_its_region_and_the_command_centre():
    run = Run().feed(alert("a1"), tick(T0 + 5 * MIN - 1))
    assert run.out == []
    run.feed(tick(T0 + 5 * MIN), tick(T0 + 6 * MIN), tick(T0 + 60 * MIN))
    assert len(run.out) == 1
    esc = run.out[0]
    assert esc["kind"] == KIND and esc["severity"] == "CRITICAL" and esc["status"] == "RAISED"
    assert esc["must_act"] == ["SH"] and esc["inform"] == ["JS", "ZJ", "AH"]
    assert esc["occurred_at"] == T0 - 30 * MIN          # the alert's event time; the due time in the details
    assert esc["details"]["due_at"] == str(T0 + 5 * MIN)
    assert esc["details"]["escalates"] == "a1" and esc["details"]["silent_regions"] == "SH"
    assert esc["alert_id"] == Run().feed(alert("a1"), tick(T0 + 9 * MIN)).out[0]["alert_id"]   # same id again


def test_an_acknowledgement_in_time_prevents_it_one_after_the_time_does_not():
    assert Run().feed(alert("a1"), ack("a1", "SH", T0 + 4 * MIN), tick(T0 + 20 * MIN)).out == []
    assert Run().feed(alert("a1"), ack("a1", "SH", T0 + 4 * MIN, "CONFIRMED"), tick(T0 + 20 * MIN)).out == []
    late = Run().feed(alert("a1"), ack("a1", "SH", T0 + 5 * MIN + 1), tick(T0 + 20 * MIN))
    assert [r["kind"] for r in late.out] == [KIND]
    # HIGH has 15 minutes; LOW and MEDIUM are not escalated; an informed region's acknowledgement does not count
    assert Run().feed(alert("h", "HIGH"), tick(T0 + 14 * MIN)).out == []
    assert len(Run().feed(alert("h", "HIGH"), ack("h", "JS", T0), tick(T0 + 15 * MIN)).out) == 1
    assert Run().feed(alert("m", "MEDIUM"), alert("l", "LOW"), tick(T0 + 999 * MIN)).out == []


def test_only_the_silent_regions_are_named_and_escalations_or_alerts_without_must_act_are_not_escalated():
    run = Run().feed(alert("a1", must=("SH", "JS"), inform=()), ack("a1", "JS", T0 + MIN), tick(T0 + 5 * MIN))
    assert [(r["must_act"], r["inform"]) for r in run.out] == [(["SH"], ["JS", "ZJ", "AH"])]
    assert Run().feed(alert("e", kind=KIND), alert("i", must=()), tick(T0 + 99 * MIN)).out == []


def test_an_acknowledgement_in_time_read_after_the_escalation_withdraws_it_and_so_does_the_alerts_withdrawal():
    run = Run().feed(alert("a1"), tick(T0 + 6 * MIN), ack("a1", "SH", T0 + 2 * MIN))
    assert [(r["kind"], r["status"]) for r in run.out] == [(KIND, "RAISED"), (KIND, "WITHDRAWN")]
    assert run.out[0]["alert_id"] == run.out[1]["alert_id"] and "in time" in run.out[1]["status_reason"]
    assert run.live() == {}
    gone = Run().feed(alert("a1"), tick(T0 + 6 * MIN), alert("a1", at=T0 + 6 * MIN, status="WITHDRAWN"))
    assert [r["status"] for r in gone.out] == ["RAISED", "WITHDRAWN"]
    assert Run().feed(alert("a1"), alert("a1", at=T0 + MIN, status="WITHDRAWN"), tick(T0 + 9 * MIN)).out == []
    # the withdrawal read first still withdraws the older raised version
    assert Run().feed(alert("a1", at=T0 + MIN, status="WITHDRAWN"), alert("a1"), tick(T0 + 9 * MIN)).out == []


def test_the_time_counts_from_the_first_emission_and_entries_go_after_keep_days():
    run = Run().feed(alert("a1", at=T0), alert("a1", at=T0 + 3 * MIN), tick(T0 + 5 * MIN))
    assert [r["details"]["due_at"] for r in run.out] == [str(T0 + 5 * MIN)]
    run.feed(tick(T0 + 5 * MIN + 8 * 1440 * MIN))
    assert set(run.table) == {CLOCK_KEY}


def test_any_order_of_alerts_and_dispositions_with_ticks_anywhere_leaves_the_same_live_escalations():
    rng = random.Random(2026)
    records = []
    for i in range(30):
        sev = rng.choice(["CRITICAL", "HIGH", "MEDIUM"])
        must = rng.sample(["SH", "JS", "ZJ", "AH"], rng.randint(1, 2))
        at = T0 + rng.randint(0, 60) * MIN
        records.append(alert(f"a{i}", sev, must, (), at))
        for region in must:
            if rng.random() < 0.6:
                records.append(ack(f"a{i}", region, at + rng.randint(0, 25) * MIN))
        if rng.random() < 0.2:
            records.append(alert(f"a{i}", sev, must, (), at + rng.randint(1, 30) * MIN, status="WITHDRAWN"))
    end = T0 + 200 * MIN
    # in event-time order (each record when it happened, ticks every minute), then any order with ticks anywhere
    timed = sorted(records, key=lambda r: (r.get("emitted_at") or r.get("decided_at"), r["_kind"] != "alert"))
    reference = Run()
    for r in timed:
        reference.feed(tick(r.get("emitted_at") or r.get("decided_at")), r)
    expected = set(reference.feed(tick(end)).live())
    assert expected, "the draw escalates something"
    for _ in range(40):
        shuffled = records[:]
        rng.shuffle(shuffled)
        run = Run()
        for r in shuffled:
            if rng.random() < 0.3:
                run.feed(tick(T0 + rng.randint(0, 200) * MIN))
            run.feed(r)
        assert set(run.feed(tick(end)).live()) == expected


def test_a_rule_set_with_a_bad_escalation_section_is_refused_with_the_key_named():
    with pytest.raises(RuleSetError, match="URGENT"):
        EscalationStage(rules(URGENT=5), {})
    with pytest.raises(RuleSetError, match="CRITICAL must be a number of minutes above 0"):
        EscalationStage(rules(CRITICAL=0), {})
