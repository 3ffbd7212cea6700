"""Pure rules of the subject stage: cross-region hit, port shopping, 144-hour transit, traveller risk.

No Kafka, no asyncio: plain events in, decisions out.
"""
from __future__ import annotations

import copy
import itertools

import pytest

from kit.scripted import HOUR, Script, token
from streams import ruleset, subject
from streams.events import plain

pytestmark = pytest.mark.unit   # no Java, Kafka or ClickHouse: `make unit`

T0 = 1_496_304_000_000  # 2017-06-01T08:00Z


@pytest.fixture(scope="module")
def rules():
    return subject.SubjectRules(ruleset.default())


def run(rules, events, watermark=None):
    """Feed events (Script records) through per-subject states like the stage does; return derived alerts."""
    states: dict[str, dict] = {}
    outs = []
    for kind, _, key, rec in events:
        ev = plain(kind, rec)
        subjects = rec["subjects"] if kind == "case" else [rec.get("subject")]
        for s in subjects:
            if s is None:
                continue
            st = states.setdefault(s, subject.new_state())
            outs += rules.on_event(st, ev, s)
    if watermark is not None:
        for s, st in states.items():
            outs += rules.on_watermark(st, s, watermark)
    return [r for k, r in outs if k == "derived_alert"], [r for k, r in outs if k == "risk"], states


def test_flagged_traveller_seen_in_another_region_raises_alert_for_that_region(rules):
    s = Script()
    t = token("x")
    s.alert("PVG", T0, "WATCHLIST_HIT", "HIGH", subject=t)
    s.clearance("NKG", T0 + 3 * HOUR, t)
    alerts, _, _ = run(rules, s.events)
    assert [(a["kind"], a["must_act"], a["inform"], a["subject"]) for a in alerts] == [
        ("CROSS_REGION_HIT", ["JS"], ["SH"], t)]
    a = alerts[0]
    assert a["rule_id"] == "cross_region_hit" and a["rule_set_version"] == rules.rs.version
    assert a["occurred_at"] == T0 + 3 * HOUR and len(a["evidence"]) == 2 and a["station_id"] == "JS-NKG"


def test_crossing_in_the_flagging_region_raises_nothing(rules):
    s = Script()
    t = token("x")
    s.alert("PVG", T0, "WATCHLIST_HIT", "HIGH", subject=t)
    s.clearance("SHA", T0 + HOUR, t)
    assert run(rules, s.events)[0] == []


def test_subject_seen_in_three_regions_raises_one_alert_per_other_region(rules):
    s = Script()
    t = token("x")
    s.alert("HGH", T0, "FORGED_DOCUMENT", "HIGH", subject=t, source="DOCUMENT_EXAMINATION")
    s.clearance("PVG", T0 + HOUR, t)
    s.clearance("NKG", T0 + 2 * HOUR, t)
    s.clearance("SHA", T0 + 3 * HOUR, t)      # SH again: already told
    alerts, _, _ = run(rules, s.events)
    assert sorted((a["must_act"][0], a["inform"][0]) for a in alerts) == [("JS", "ZJ"), ("SH", "ZJ")]
    assert len({a["alert_id"] for a in alerts}) == 2


def test_crossing_read_before_its_earlier_flag_still_raises_the_hit(rules):
    s = Script()
    t = token("x")
    flag = s.alert("PVG", T0, "WATCHLIST_HIT", "HIGH", subject=t)
    s.clearance("NKG", T0 + HOUR, t)
    in_order, _, _ = run(rules, s.events)
    out_of_order, _, _ = run(rules, list(reversed(s.events)))
    assert [a["alert_id"] for a in in_order] == [a["alert_id"] for a in out_of_order]
    assert flag["event_id"] in out_of_order[0]["evidence"]


def test_crossing_before_the_flag_in_event_time_is_no_hit(rules):
    s = Script()
    t = token("x")
    s.clearance("NKG", T0 - HOUR, t)
    s.alert("PVG", T0, "WATCHLIST_HIT", "HIGH", subject=t)
    assert run(rules, s.events)[0] == []


def test_resolved_flag_no_longer_raises_hits(rules):
    s = Script()
    t = token("x")
    s.alert("PVG", T0, "WATCHLIST_HIT", "HIGH", subject=t)
    s.alert("PVG", T0 + HOUR, "WATCHLIST_HIT", "HIGH", subject=t, status="RESOLVED")
    s.clearance("NKG", T0 + 2 * HOUR, t)
    assert run(rules, s.events)[0] == []


def test_refusal_then_attempt_in_another_region_within_48_hours_is_port_shopping_not_a_hit(rules):
    s = Script()
    t = token("x")
    s.clearance("HGH", T0, t, decision="REFUSED")
    s.alert("HGH", T0 + 60_000, "REFUSAL", "MEDIUM", subject=t, source="OFFICER")
    s.clearance("PVG", T0 + 47 * HOUR, t)
    alerts, _, _ = run(rules, s.events)
    assert [(a["kind"], a["must_act"], a["inform"]) for a in alerts] == [("PORT_SHOPPING", ["SH"], ["ZJ"])]


def test_port_shopping_is_one_alert_with_one_id_whatever_order_its_events_are_read_in(rules):
    """The station's REFUSED clearance and its officer's REFUSAL alert come on two topics and are read in either
    order, before or after the entry elsewhere: every order gives the same single alert."""
    s = Script()
    t = token("x")
    s.clearance("HGH", T0, t, decision="REFUSED")
    s.alert("HGH", T0 + 60_000, "REFUSAL", "MEDIUM", subject=t, source="OFFICER")
    s.clearance("PVG", T0 + 18 * HOUR, t)
    ids = set()
    for order in itertools.permutations(s.events):
        alerts = [a for a in run(rules, list(order))[0] if a["kind"] == "PORT_SHOPPING"]
        assert len(alerts) == 1, [e[3]["event_id"] for e in order]
        ids.add(alerts[0]["alert_id"])
    assert len(ids) == 1


def test_a_refusal_beyond_the_window_of_the_one_alerted_on_is_a_new_episode(rules):
    s = Script()
    t = token("x")
    s.clearance("HGH", T0, t, decision="REFUSED")
    s.clearance("PVG", T0 + 5 * HOUR, t)
    s.clearance("PVG", T0 + 6 * HOUR, t)                 # the same episode: no second alert
    s.clearance("HGH", T0 + 60 * HOUR, t, decision="REFUSED")
    s.clearance("PVG", T0 + 61 * HOUR, t)
    alerts = run(rules, s.events)[0]
    assert [a["occurred_at"] for a in alerts if a["kind"] == "PORT_SHOPPING"] == [T0 + 5 * HOUR, T0 + 61 * HOUR]


@pytest.mark.parametrize("after, expected", [(48 * HOUR, 1), (48 * HOUR + 1, 0)])
def test_port_shopping_window_is_inclusive_at_exactly_48_hours(rules, after, expected):
    s = Script()
    t = token("x")
    s.clearance("HGH", T0, t, decision="REFUSED")
    s.clearance("NKG", T0 + after, t)
    assert len(run(rules, s.events)[0]) == expected


def test_exit_attempt_elsewhere_is_not_port_shopping(rules):
    s = Script()
    t = token("x")
    s.clearance("HGH", T0, t, decision="REFUSED")
    s.clearance("NKG", T0 + HOUR, t, "EXIT")
    assert run(rules, s.events)[0] == []


def transit_entry(s, t, at, port="PVG", origin="GBR"):
    return s.clearance(port, at, t, "ENTRY", nationality="GBR", basis="TRANSIT_144H", origin=origin,
                       lane="TRANSIT_144H")


def test_transit_overstay_fires_when_the_watermark_passes_the_deadline(rules):
    s = Script()
    t = token("x")
    transit_entry(s, t, T0)
    deadline = T0 + 144 * HOUR
    assert run(rules, s.events, watermark=deadline)[0] == []          # at the deadline: still in time
    alerts, _, _ = run(rules, s.events, watermark=deadline + 1)
    assert [(a["kind"], a["must_act"], a["inform"], a["occurred_at"]) for a in alerts] == [
        ("TRANSIT_OVERSTAY", ["SH"], ["JS", "ZJ"], deadline)]


def test_exit_exactly_at_the_deadline_is_in_time(rules):
    s = Script()
    t = token("x")
    transit_entry(s, t, T0)
    s.clearance("NKG", T0 + 144 * HOUR, t, "EXIT", destination="USA")
    assert run(rules, s.events, watermark=T0 + 200 * HOUR)[0] == []


def test_late_exit_after_the_deadline_gives_the_same_overstay_as_the_watermark(rules):
    s = Script()
    t = token("x")
    transit_entry(s, t, T0)
    by_watermark, _, _ = run(rules, s.events, watermark=T0 + 145 * HOUR)
    s.clearance("NKG", T0 + 150 * HOUR, t, "EXIT", destination="USA")
    by_exit, _, states = run(rules, s.events)
    assert [a["alert_id"] for a in by_exit] == [a["alert_id"] for a in by_watermark]
    assert subject.next_deadline(states[t]) is None


def test_exit_toward_the_country_of_origin(rules):
    s = Script()
    t = token("x")
    transit_entry(s, t, T0, port="NKG", origin="KOR")
    s.clearance("PVG", T0 + 40 * HOUR, t, "EXIT", destination="KOR")
    alerts, _, _ = run(rules, s.events, watermark=T0 + 300 * HOUR)
    assert [(a["kind"], a["must_act"], a["inform"]) for a in alerts] == [("TRANSIT_EXIT_TO_ORIGIN", ["SH"], ["JS"])]


def test_exit_toward_a_third_country_raises_nothing(rules):
    s = Script()
    t = token("x")
    transit_entry(s, t, T0, origin="KOR")
    s.clearance("PVG", T0 + 40 * HOUR, t, "EXIT", destination="USA")
    assert run(rules, s.events, watermark=T0 + 300 * HOUR)[0] == []


def test_transit_traveller_at_a_port_outside_the_permitted_area(rules):
    s = Script()
    t = token("x")
    transit_entry(s, t, T0, port="SHA")
    s.clearance("HFE", T0 + 30 * HOUR, t, "EXIT", destination="JPN")
    alerts, _, _ = run(rules, s.events, watermark=T0 + 300 * HOUR)
    assert [(a["kind"], a["must_act"], a["inform"]) for a in alerts] == [("TRANSIT_OUT_OF_AREA", ["AH"], ["SH"])]


@pytest.mark.parametrize("later", [
    ("PVG", 40, "KOR"),     # an exit toward the country of origin
    ("HFE", 30, "JPN"),     # an exit outside the permitted area
    ("NKG", 150, "USA"),    # an exit after the deadline
])
def test_a_transit_stays_alerts_are_the_same_when_its_exit_arrives_before_its_entry(rules, later):
    """The re-key step merges the regions' topics in its own order: an exit read from one region's topic can
    reach the subject stage before the entry read from another's."""
    port, hours, dest = later
    s = Script()
    t = token("x")
    transit_entry(s, t, T0, port="NKG", origin="KOR")
    s.clearance(port, T0 + hours * HOUR, t, "EXIT", destination=dest)
    in_order, _, _ = run(rules, s.events)
    reversed_, _, states = run(rules, list(reversed(s.events)))
    assert len(in_order) == 1
    assert [a["alert_id"] for a in reversed_] == [a["alert_id"] for a in in_order]
    assert subject.next_deadline(states[t]) is None      # the stay is closed: no overstay to come


def test_replaying_the_same_events_gives_identical_alerts(rules):
    s = Script(3)
    for i in range(5):
        t = token("r", i)
        s.alert("PVG", T0 + i, "WATCHLIST_HIT", "HIGH", subject=t)
        s.clearance("HGH", T0 + HOUR + i, t)
        transit_entry(s, token("rt", i), T0 + i)
    first, risk1, _ = run(rules, copy.deepcopy(s.events), watermark=T0 + 200 * HOUR)
    second, risk2, _ = run(rules, copy.deepcopy(s.events), watermark=T0 + 200 * HOUR)
    assert first == second and risk1 == risk2 and len(first) == 10


def test_reprocessing_an_event_into_existing_state_makes_no_second_alert(rules):
    s = Script()
    t = token("x")
    s.alert("PVG", T0, "WATCHLIST_HIT", "HIGH", subject=t)
    s.clearance("NKG", T0 + HOUR, t)
    alerts, _, states = run(rules, s.events)
    again = rules.on_event(states[t], plain("clearance", s.events[-1][3]), t)
    assert len(alerts) == 1 and [o for o in again if o[0] == "derived_alert"] == []


def test_risk_score_names_its_factors(rules):
    s = Script()
    t = token("x")
    s.alert("PVG", T0, "WATCHLIST_HIT", "HIGH", subject=t)
    s.clearance("NKG", T0 + HOUR, t)
    _, risks, _ = run(rules, s.events)
    last = risks[-1]
    assert last["subject_kind"] == "TRAVELLER" and last["subject"] == t
    assert {f["name"] for f in last["factors"]} == {"watchlist_hit", "cross_region_hit"}
    assert last["score"] == 90.0 and last["level"] == "CRITICAL"


def test_plain_traveller_state_is_not_durable(rules):
    s = Script()
    t = token("x")
    s.clearance("PVG", T0, t)
    _, risks, states = run(rules, s.events)
    assert risks == [] and not subject.is_durable(states[t])


@pytest.mark.parametrize("order", [(0, 1, 2), (1, 0, 2), (1, 2, 0)])
def test_a_flag_resolved_before_the_crossing_raises_no_hit_whichever_of_flag_and_resolution_is_read_first(rules,
                                                                                                       order):
    """A flag is active at t when raised at or before t and not resolved at or before t, whichever record is
    read first: the resolution read before the flag it ends leaves no flag to match. (The orders with the
    crossing read before the resolution raise the hit and then withdraw it: tests/test_rules_subject_order.py.)"""
    s = Script()
    t = token("x")
    s.alert("PVG", T0, "WATCHLIST_HIT", "HIGH", subject=t)
    s.alert("PVG", T0 + HOUR, "WATCHLIST_HIT", "HIGH", subject=t, status="RESOLVED")
    s.clearance("NKG", T0 + 2 * HOUR, t)
    assert run(rules, [s.events[i] for i in order])[0] == []


@pytest.mark.parametrize("order", [(0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0)])
def test_a_crossing_while_the_flag_was_active_is_a_hit_whenever_the_resolution_is_read(rules, order):
    s = Script()
    t = token("x")
    s.alert("PVG", T0, "WATCHLIST_HIT", "HIGH", subject=t)
    s.clearance("NKG", T0 + HOUR, t)
    s.alert("PVG", T0 + 2 * HOUR, "WATCHLIST_HIT", "HIGH", subject=t, status="RESOLVED")
    in_order = [a["alert_id"] for a in run(rules, s.events)[0]]
    assert len(in_order) == 1
    assert [a["alert_id"] for a in run(rules, [s.events[i] for i in order])[0]] == in_order
