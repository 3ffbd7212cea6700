"""A heightened window ended early (or cancelled) by the command centre: a later control event of the same window
(``window_id``). Whichever of the window, its end and the alerts is read first, the alerts that stand are those
of the window as it ended: the announcement with the new end, the broadcasts inside it, none after it, and trends
judged with the usual thresholds where the window no longer lowers them."""
from __future__ import annotations

import itertools

import pytest

from kit.scripted import DAY, HOUR, Script, token
from streams import derived, ruleset
from streams.events import plain
from streams.regional import RegionalRules

pytestmark = pytest.mark.unit   # no Java, Kafka or ClickHouse: `make unit`

T0 = 1_496_275_200_000  # 2017-06-01T00:00Z


@pytest.fixture(scope="module")
def rs():
    return ruleset.default()


def play(rs, events, watermark: int) -> dict[str, dict]:
    """Every event read in the order given, then the watermark: the last version of each alert id."""
    rules = RegionalRules(rs)
    state = rules.new_state()
    outs: list = []
    for kind, _, _, rec in events:
        outs += rules.on_event(state, plain(kind, rec))
    outs += rules.on_watermark(state, watermark)[0]
    last: dict[str, dict] = {}
    for k, a in outs:
        if k == "derived_alert":
            last[a["alert_id"]] = a
    return last


def live(last: dict[str, dict]) -> dict[str, str]:
    return {i: a["kind"] for i, a in last.items() if derived.is_live(a)}


def test_a_window_ended_early_withdraws_the_broadcasts_after_its_new_end_in_every_order(rs):
    s = Script()
    declared = s.control(["SH"], T0 + HOUR, T0 + 10 * HOUR, 0.5, issued=T0)
    before_end = s.alert("PVG", T0 + 2 * HOUR, "SMUGGLING", "HIGH", subject=token(1), source="OFFICER")
    after_end = s.alert("PVG", T0 + 5 * HOUR, "SMUGGLING", "HIGH", subject=token(2), source="OFFICER")
    ended = s.control(["SH"], T0 + HOUR, T0 + 3 * HOUR, 0.5, issued=T0 + 3 * HOUR, window_id=declared["event_id"])
    wm = T0 + 12 * HOUR

    # the declaration alone: both alerts broadcast
    whole = play(rs, [e for e in s.events if e[3] is not ended], wm)
    assert sorted(a["evidence"][0] for a in whole.values() if a["kind"] == "BROADCAST") == sorted(
        [before_end["event_id"], after_end["event_id"]])

    answers = set()
    for order in itertools.permutations(s.events):
        last = play(rs, list(order), wm)
        answers.add(tuple(sorted(live(last).items())))
        (announcement,) = [a for a in last.values() if a["kind"] == "HEIGHTENED_MODE"]
        assert derived.is_live(announcement) and announcement["details"]["ends_at"] == str(T0 + 3 * HOUR)
        assert announcement["details"]["window_id"] == declared["event_id"]
        assert announcement["details"]["changed_by"] == ended["event_id"]
        broadcasts = {a["evidence"][0]: a for a in last.values() if a["kind"] == "BROADCAST"}
        assert derived.is_live(broadcasts[before_end["event_id"]])
        # read before the end: broadcast, then withdrawn with the reason; read after it: never broadcast
        if after_end["event_id"] in broadcasts:
            gone = broadcasts[after_end["event_id"]]
            assert gone["status"] == derived.WITHDRAWN and ended["event_id"] in gone["status_reason"]
    assert len(answers) == 1, answers         # the same alerts stand in all 24 orders


def test_the_announcement_has_the_same_id_whichever_version_is_read_first(rs):
    s = Script()
    declared = s.control(["JS", "ZJ"], T0, T0 + DAY, 0.6, issued=T0)
    s.control(["JS", "ZJ"], T0, T0 + 6 * HOUR, 0.6, issued=T0 + 5 * HOUR, window_id=declared["event_id"])
    in_order = play(rs, s.events, T0 + HOUR)
    reversed_ = play(rs, s.events[::-1], T0 + HOUR)
    assert in_order == reversed_ and len(in_order) == 1
    (a,) = in_order.values()
    assert a["must_act"] == ["JS", "ZJ"] and a["details"]["ends_at"] == str(T0 + 6 * HOUR)
    # an older version read after the newer one changes nothing, and neither does the same version twice
    rules = RegionalRules(rs)
    state = rules.new_state()
    rules.on_event(state, plain("control", s.events[1][3]))
    assert rules.on_event(state, plain("control", s.events[0][3])) == []
    assert rules.on_event(state, plain("control", s.events[1][3])) == []


def test_a_window_cancelled_before_it_began_withdraws_its_announcement_and_broadcasts_nothing(rs):
    s = Script()
    declared = s.control(["SH"], T0 + 5 * HOUR, T0 + 9 * HOUR, 0.5, issued=T0)
    s.alert("PVG", T0 + 6 * HOUR, "SMUGGLING", "CRITICAL", subject=token(1), source="OFFICER")
    s.control(["SH"], T0 + 5 * HOUR, T0 + 5 * HOUR, 0.5, issued=T0 + HOUR, window_id=declared["event_id"])
    for order in (s.events, s.events[::-1], [s.events[1], s.events[0], s.events[2]]):
        last = play(rs, order, T0 + 12 * HOUR)
        assert live(last) == {}, order
        (announcement,) = [a for a in last.values() if a["kind"] == "HEIGHTENED_MODE"]
        assert announcement["status"] == derived.WITHDRAWN and "before it began" in announcement["status_reason"]


def test_a_trend_the_window_made_is_withdrawn_when_the_window_ends_before_it(rs):
    """Three stowaways in Zhejiang are a trend only inside a heightened window (multiplier 0.5; the case of
    tests/test_rules_regional_late.py). Ended before them, the window makes no trend: read after the hours were
    judged, the end withdraws the trend; read before them, none is raised."""
    s = Script()
    for hour in range(0, 48, 12):    # the profile's rate: the detector's history starts at T0
        s.case("CNNGB", T0 + hour * HOUR, "ILLEGAL_STAY", "VISA_OVERSTAY", [token("bg", hour)], ["VNM"])
    for i in range(3):
        s.case("CNNGB", T0 + 2 * DAY + i * HOUR, "STOWAWAY", "STOWAWAY_ON_VESSEL", [token(i)], ["VNM"])
    declared = s.control(["ZJ"], T0 + 2 * DAY - HOUR, T0 + 3 * DAY, 0.5, issued=T0 + 2 * DAY - HOUR)
    ended = s.control(["ZJ"], T0 + 2 * DAY - HOUR, T0 + 2 * DAY, 0.5, issued=T0 + 2 * DAY,
                      window_id=declared["event_id"])
    rules = RegionalRules(rs)
    by_time = sorted((e for e in s.events if e[3] is not ended), key=lambda e: e[3]["occurred_at"])

    # the window as declared: a trend, once the watermark has passed the stowaways' hours
    state, outs = rules.new_state(), []
    for kind, _, _, rec in by_time:
        outs += rules.on_event(state, plain(kind, rec))
    outs += rules.on_watermark(state, T0 + 3 * DAY)[0]
    trend = [a for k, a in outs if k == "derived_alert" and a["kind"] == "TREND_RISING"]
    assert len(trend) == 1
    # the end read after the hours were judged: the trend is withdrawn, with the same id
    more = rules.on_event(state, plain("control", ended))
    gone = [a for k, a in more if k == "derived_alert" and a["kind"] == "TREND_RISING"]
    assert [(a["alert_id"], a["status"]) for a in gone] == [(trend[0]["alert_id"], derived.WITHDRAWN)]

    # the end read first, or anywhere before the watermark: no trend at all; the same alerts stand
    early = play(rs, [s.events[-1], *by_time], T0 + 3 * DAY)
    assert not [a for a in early.values() if a["kind"] == "TREND_RISING"]
    late = {a["alert_id"]: a for k, a in outs + more if k == "derived_alert"}
    assert live(early) == live(late)
