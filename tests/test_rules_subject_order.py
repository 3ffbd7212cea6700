"""The subject rules give one answer per set of events, whatever order they are read in.

The subject stage itself (streams/subject_stage.py), without Kafka: events are read in an arrival order from one
source partition, each subject's state goes through JSON between steps, the watermark is the largest event time
read so far minus ``[event_time] lateness_minutes``, and a subject's transit deadline is fired once the watermark
passes it, at once when it is learned already due. A traveller with nothing on record but crossings is kept until
the watermark is the allowed delay past them.
The answer of an order is its live alert ids: the last version of each id, unless that version withdraws it.

Every arrival order within the allowed delay (no event read more than ``[event_time] allowed_delay_hours`` of
event time after a later one) must give the live ids of the event-time order.
"""
from __future__ import annotations

import itertools
import json
import random

import pytest

from kit.scripted import HOUR, Script, token
from schemas.codec import get_codec
from schemas.eventtime import EventTimeBounds
from schemas.settings import get_settings
from streams import derived, ruleset
from streams import subject as subject_rules
from streams.decoding import PlainDecoder
from streams.events import for_avro
from streams.subject_stage import SubjectStage

pytestmark = pytest.mark.unit   # no Java, Kafka or ClickHouse: `make unit`

T0 = 1_496_304_000_000  # 2017-06-01T08:00Z
RS = ruleset.default()
CODEC = get_codec()
LATENESS = RS.minutes_ms("event_time", "lateness_minutes")
DELAY = RS.hours_ms("event_time", "allowed_delay_hours")
DEADLINE = 144 * HOUR


@pytest.fixture(scope="module")
def rules():
    return subject_rules.SubjectRules(RS)


class Stage:
    """The subject stage itself (streams/subject_stage.py) on one partition, its table a dict, fed one event at a
    time: what it forwards is dropped, what it sends is kept, what it writes goes to the table."""

    def __init__(self, rules=None):
        self.stage = SubjectStage(RS, PlainDecoder(CODEC, EventTimeBounds.from_settings(get_settings())), None,
                                  1, {}, {})
        self.stage.assigned([0], [])
        self.states = self.stage.subjects     # subject -> its state as the table keeps it (JSON bytes)
        self.versions: list[dict] = []        # every derived alert sent, in order
        self.n = 0

    def read(self, kind: str, rec: dict) -> list:
        raw = CODEC.encode(kind, for_avro(rec))
        outs: list = []
        for s in (rec["subjects"] if kind == "case" else [rec["subject"]]):
            self.n += 1
            step = self.stage.step(0, kind, raw, s.encode(), 1_500_000_000 + self.n / 1000, 0, "src|0", "src")
            assert step.error is None, step.error
            outs += step.outs
            for k, v in step.writes.items():
                if v is None:
                    self.states.pop(k, None)
                else:
                    self.states[k] = json.dumps(v)
            self.stage.flow_table.update(step.flow)
        self.versions += [r for k, r in outs if k == "derived_alert"]
        return outs

    def live(self) -> set[str]:
        last = {}
        for a in self.versions:
            last[a["alert_id"]] = a
        return {i for i, a in last.items() if derived.is_live(a)}


def play(rules, events) -> Stage:
    stage = Stage(rules)
    for kind, _, _, rec in events:
        stage.read(kind, rec)
    return stage


def in_event_time(events) -> list:
    return sorted(events, key=lambda e: (e[3]["occurred_at"], e[3]["event_id"]))


def within_delay(order) -> bool:
    newest = None
    for e in order:
        at = e[3]["occurred_at"]
        if newest is not None and at < newest - DELAY:
            return False
        newest = at if newest is None else max(newest, at)
    return True


def random_orders(events, n: int, seed: int):
    """``n`` random arrival orders within the allowed delay: the next event is drawn among those that leave
    every other unread event still within the delay."""
    rng = random.Random(seed)
    for _ in range(n):
        left, order, newest = list(events), [], None
        while left:
            ok = []
            for i, e in enumerate(left):
                top = e[3]["occurred_at"] if newest is None else max(newest, e[3]["occurred_at"])
                if all(o[3]["occurred_at"] >= top - DELAY for j, o in enumerate(left) if j != i):
                    ok.append(i)
            e = left.pop(rng.choice(ok))
            newest = e[3]["occurred_at"] if newest is None else max(newest, e[3]["occurred_at"])
            order.append(e)
        yield order


def orders(events, seeds=(1, 2, 3, 4)):
    """Every arrival order within the allowed delay, or 50 random ones per seed when there are too many."""
    if len(events) <= 6:
        yield from (list(o) for o in itertools.permutations(events) if within_delay(o))
    else:
        for seed in seeds:
            yield from random_orders(events, 50, seed)


def tick(s: Script, at: int) -> None:
    """Another traveller's crossing: moves the stage's watermark on."""
    s.clearance("PVG", at, token("tick", at))


def transit_entry(s, t, at, port="PVG", origin="GBR"):
    return s.clearance(port, at, t, "ENTRY", nationality="GBR", basis="TRANSIT_144H", origin=origin,
                       lane="TRANSIT_144H")


# ---------------------------------------------------------------------------------------------------- incidents
def flag_then_crossing(s, t):
    s.alert("PVG", T0, "WATCHLIST_HIT", "HIGH", subject=t)
    s.clearance("NKG", T0 + HOUR, t)


def flag_resolved_before_crossing(s, t):
    s.alert("PVG", T0, "WATCHLIST_HIT", "HIGH", subject=t)
    s.alert("PVG", T0 + HOUR, "WATCHLIST_HIT", "HIGH", subject=t, status="RESOLVED")
    s.clearance("NKG", T0 + 2 * HOUR, t)


def flag_dismissed_before_crossing(s, t):
    s.alert("HGH", T0, "IMPOSTOR", "HIGH", subject=t, source="OFFICER")
    s.alert("HGH", T0 + HOUR, "IMPOSTOR", "HIGH", subject=t, source="OFFICER", status="DISMISSED")
    s.clearance("PVG", T0 + 3 * HOUR, t, "EXIT", destination="JPN")


def flag_resolved_after_crossing(s, t):
    s.alert("PVG", T0, "WATCHLIST_HIT", "HIGH", subject=t)
    s.clearance("NKG", T0 + HOUR, t)
    s.alert("PVG", T0 + 2 * HOUR, "WATCHLIST_HIT", "HIGH", subject=t, status="RESOLVED")


def flag_resolved_between_two_crossings(s, t):
    s.alert("PVG", T0, "WATCHLIST_HIT", "HIGH", subject=t)
    s.clearance("NKG", T0 + HOUR, t, "EXIT", destination="JPN")
    s.alert("PVG", T0 + 2 * HOUR, "WATCHLIST_HIT", "HIGH", subject=t, status="RESOLVED")
    s.clearance("NKG", T0 + 30 * HOUR, t)
    s.clearance("HGH", T0 + 31 * HOUR, t)


def flag_and_crossings_in_two_regions(s, t):
    s.alert("HGH", T0, "FORGED_DOCUMENT", "HIGH", subject=t, source="DOCUMENT_EXAMINATION")
    s.clearance("PVG", T0 + HOUR, t, "EXIT", destination="JPN")
    s.clearance("PVG", T0 + 20 * HOUR, t)
    s.clearance("NKG", T0 + 21 * HOUR, t)
    s.clearance("NKG", T0 + 22 * HOUR, t, "EXIT", destination="KOR")


def flag_and_crossings_two_days_apart(s, t):
    """The hit of a later crossing read first is withdrawn for the earlier one's; two days on, the earlier one's
    is final (no longer kept) while the withdrawn one still is: the later crossing must not be hit again."""
    s.alert("PVG", T0, "WATCHLIST_HIT", "HIGH", subject=t)
    s.clearance("NKG", T0 + 10 * HOUR, t, "EXIT", destination="JPN")
    s.clearance("NKG", T0 + 12 * HOUR, t)
    s.clearance("PVG", T0 + 59 * HOUR, t)
    s.clearance("HGH", T0 + 60 * HOUR, t)


def refused_clearance_and_refusal_alert(s, t):
    s.clearance("HGH", T0, t, decision="REFUSED")
    s.alert("HGH", T0 + 60_000, "REFUSAL", "MEDIUM", subject=t, source="OFFICER")
    s.clearance("PVG", T0 + 18 * HOUR, t)


def refusal_then_two_entries(s, t):
    s.clearance("HGH", T0, t, decision="REFUSED")
    s.clearance("PVG", T0 + 5 * HOUR, t)
    s.clearance("PVG", T0 + 6 * HOUR, t)
    s.clearance("NKG", T0 + 7 * HOUR, t)


def refusals_joined_into_one_episode(s, t):
    s.clearance("HGH", T0, t, decision="REFUSED")
    s.clearance("PVG", T0 + 10 * HOUR, t)
    s.alert("HGH", T0 + 40 * HOUR, "REFUSAL", "MEDIUM", subject=t, source="OFFICER")
    s.clearance("HGH", T0 + 80 * HOUR, t, decision="REFUSED")
    s.clearance("PVG", T0 + 85 * HOUR, t)


def transit_exit_before_the_deadline(s, t):
    transit_entry(s, t, T0, origin="KOR")
    s.clearance("NKG", T0 + 120 * HOUR, t)                  # a domestic train: no crossing of consequence
    s.clearance("PVG", T0 + 143 * HOUR, t, "EXIT", destination="KOR")
    tick(s, T0 + 146 * HOUR)


def transit_exit_after_the_deadline(s, t):
    transit_entry(s, t, T0, origin="KOR")
    s.clearance("NKG", T0 + 120 * HOUR, t)
    tick(s, T0 + 145 * HOUR)
    s.clearance("PVG", T0 + 150 * HOUR, t, "EXIT", destination="USA")


def transit_exit_elsewhere(s, t):
    transit_entry(s, t, T0, port="SHA")
    s.clearance("HFE", T0 + 130 * HOUR, t, "EXIT", destination="JPN")
    tick(s, T0 + 146 * HOUR)


def transit_crossing_elsewhere_after_the_exit(s, t):
    transit_entry(s, t, T0, origin="KOR")
    s.clearance("PVG", T0 + 20 * HOUR, t, "EXIT", destination="JPN")
    s.clearance("HFE", T0 + 30 * HOUR, t)
    s.clearance("PVG", T0 + 40 * HOUR, t, "EXIT", destination="KOR")


def transit_two_crossings_elsewhere(s, t):
    transit_entry(s, t, T0, port="NKG")
    s.clearance("HFE", T0 + 110 * HOUR, t)
    s.clearance("HFE", T0 + 100 * HOUR, t, "EXIT", destination="JPN")
    tick(s, T0 + 150 * HOUR)


INCIDENTS = [flag_then_crossing, flag_resolved_before_crossing, flag_dismissed_before_crossing,
             flag_resolved_after_crossing, flag_resolved_between_two_crossings, flag_and_crossings_in_two_regions,
             flag_and_crossings_two_days_apart,
             refused_clearance_and_refusal_alert, refusal_then_two_entries, refusals_joined_into_one_episode,
             transit_exit_before_the_deadline, transit_exit_after_the_deadline, transit_exit_elsewhere,
             transit_crossing_elsewhere_after_the_exit, transit_two_crossings_elsewhere]

#: what the event-time order gives, by alert kind: the story each incident tells
EXPECTED = {
    "flag_then_crossing": ["CROSS_REGION_HIT"],
    "flag_resolved_before_crossing": [],
    "flag_dismissed_before_crossing": [],
    "flag_resolved_after_crossing": ["CROSS_REGION_HIT"],
    "flag_resolved_between_two_crossings": ["CROSS_REGION_HIT"],
    "flag_and_crossings_in_two_regions": ["CROSS_REGION_HIT", "CROSS_REGION_HIT"],
    "flag_and_crossings_two_days_apart": ["CROSS_REGION_HIT", "CROSS_REGION_HIT"],
    "refused_clearance_and_refusal_alert": ["PORT_SHOPPING"],
    "refusal_then_two_entries": ["PORT_SHOPPING", "PORT_SHOPPING"],
    "refusals_joined_into_one_episode": ["PORT_SHOPPING"],
    "transit_exit_before_the_deadline": ["TRANSIT_EXIT_TO_ORIGIN"],
    "transit_exit_after_the_deadline": ["TRANSIT_OVERSTAY"],
    "transit_exit_elsewhere": ["TRANSIT_OUT_OF_AREA"],
    "transit_crossing_elsewhere_after_the_exit": [],
    "transit_two_crossings_elsewhere": ["TRANSIT_OUT_OF_AREA"],
}


def script(incident) -> tuple[Script, str]:
    s = Script()
    t = token(incident.__name__)
    incident(s, t)
    return s, t


def kinds(stage: Stage) -> list[str]:
    last = {a["alert_id"]: a for a in stage.versions}
    return sorted(last[i]["kind"] for i in stage.live())


@pytest.mark.parametrize("incident", INCIDENTS, ids=lambda f: f.__name__)
def test_the_event_time_order_tells_the_incidents_story(rules, incident):
    s, _ = script(incident)
    assert kinds(play(rules, in_event_time(s.events))) == EXPECTED[incident.__name__]


@pytest.mark.parametrize("incident", INCIDENTS, ids=lambda f: f.__name__)
def test_every_arrival_order_within_the_allowed_delay_gives_the_live_alerts_of_event_time_order(rules, incident):
    s, _ = script(incident)
    want = play(rules, in_event_time(s.events)).live()
    n = 0
    for order in orders(s.events):
        got = play(rules, order)
        assert got.live() == want, [(e[3]["occurred_at"] - T0) / HOUR for e in order]
        n += 1
    assert n >= 2


def many_subjects() -> Script:
    s = Script()
    for incident in INCIDENTS:
        incident(s, token(incident.__name__))
    return s


def test_many_subjects_read_together_in_random_orders_give_the_live_alerts_of_event_time_order(rules):
    """Every incident's subject in one stage: each event read up to the allowed delay late, among the others'.
    The stage here keeps a plain traveller's crossings as long as the rules do (see the next test)."""
    s = many_subjects()
    want = play(rules, in_event_time(s.events)).live()
    assert len(want) == sum(len(k) for k in EXPECTED.values())
    for seed in (11, 12, 13):
        for order in random_orders(s.events, 20, seed):
            stage = Stage(rules)
            for kind, _, _, rec in order:
                stage.read(kind, rec)
            assert stage.live() == want


def test_a_plain_travellers_crossing_read_hours_before_its_flag_still_counts_in_the_stage(rules):
    s = many_subjects()
    want = play(rules, in_event_time(s.events)).live()
    for seed in (11, 12, 13):
        for order in random_orders(s.events, 20, seed):
            assert play(rules, order).live() == want


def test_a_hit_read_before_the_resolution_that_ended_its_flag_is_withdrawn_naming_the_resolution(rules):
    """The issue's first example: a flag raised and RESOLVED before the traveller crossed elsewhere, the crossing
    read before the RESOLVED record. The hit's risk factor goes with it."""
    s, _ = script(flag_resolved_before_crossing)
    flag, resolved, crossing = s.events
    stage = Stage(rules)
    stage.read(flag[0], flag[3])
    stage.read(crossing[0], crossing[3])
    outs = stage.read(resolved[0], resolved[3])
    assert [r["factors"] for k, r in outs if k == "risk"][-1] == [
        {"name": "watchlist_hit", "weight": 60.0, "evidence": flag[3]["event_id"]}]
    hit, gone = stage.versions
    assert hit["kind"] == "CROSS_REGION_HIT" and derived.is_live(hit)
    assert gone["alert_id"] == hit["alert_id"] and gone["status"] == derived.WITHDRAWN
    assert (gone["must_act"], gone["inform"]) == (hit["must_act"], hit["inform"])
    assert resolved[3]["event_id"] in gone["status_reason"] and "RESOLVED" in gone["status_reason"]
    assert {k: v for k, v in gone.items() if k not in ("status", "status_reason")} == \
        {k: v for k, v in hit.items() if k not in ("status", "status_reason")}
    assert stage.live() == set()


def test_an_overstay_fired_on_the_watermark_is_withdrawn_by_an_exit_before_the_deadline_uploaded_late(rules):
    s, t = script(transit_exit_before_the_deadline)
    entry, _, exit_, clock = s.events
    stage = play(rules, [entry, clock, exit_])
    overstay, gone, to_origin = stage.versions
    assert overstay["kind"] == "TRANSIT_OVERSTAY" and overstay["occurred_at"] == T0 + DEADLINE
    assert gone["alert_id"] == overstay["alert_id"] and gone["status"] == derived.WITHDRAWN
    assert exit_[3]["event_id"] in gone["status_reason"]
    assert to_origin["kind"] == "TRANSIT_EXIT_TO_ORIGIN"
    assert stage.live() == play(rules, [entry, exit_, clock]).live() == {to_origin["alert_id"]}
    assert subject_rules.next_deadline(json.loads(stage.states[t])) is None


def test_a_later_crossing_read_first_gives_way_to_the_earlier_one(rules):
    """One hit per flag and region: the first crossing's, also when a later crossing in that region was read
    first (its hit is withdrawn, naming the earlier crossing)."""
    s, _ = script(flag_and_crossings_in_two_regions)
    flag, first, second, js, _ = s.events
    stage = play(rules, [flag, second, js, first])
    by_id = {}
    for a in stage.versions:
        by_id.setdefault(a["alert_id"], []).append(a)
    gone = [v[-1] for v in by_id.values() if not derived.is_live(v[-1])]
    assert len(gone) == 1
    assert second[3]["event_id"] in gone[0]["evidence"] and first[3]["event_id"] in gone[0]["status_reason"]
    assert stage.live() == play(rules, in_event_time(s.events)).live()


@pytest.mark.parametrize("incident", INCIDENTS, ids=lambda f: f.__name__)
def test_reading_every_event_twice_sends_nothing_more(rules, incident):
    """Idempotent on replay: the second reading of an event sends no alert and withdraws nothing twice."""
    s, _ = script(incident)
    for order in itertools.islice(orders(s.events), 0, None, 7):
        stage = Stage(rules)
        for kind, _, _, rec in order:
            stage.read(kind, rec)
            assert [o for o in stage.read(kind, rec) if o[0] == "derived_alert"] == []
        assert stage.live() == play(rules, order).live()
        seen: dict[str, str] = {}
        for a in stage.versions:
            assert seen.get(a["alert_id"]) != a["status"], a       # no version repeats the one before it
            seen[a["alert_id"]] = a["status"]


@pytest.mark.parametrize("incident", INCIDENTS, ids=lambda f: f.__name__)
def test_what_a_subject_remembers_to_withdraw_is_forgotten_in_event_time(rules, incident):
    """The alerts kept to be withdrawn are bounded: once event time is far past them, nothing of them is kept."""
    s, t = script(incident)
    stage = play(rules, in_event_time(s.events))
    state = json.loads(stage.states[t])
    if EXPECTED[incident.__name__]:
        assert subject_rules.is_durable(state)
    end = max(e[3]["occurred_at"] for e in s.events)
    far = end + RS.days_ms("transit", "keep_days") + RS.days_ms("cross_region_hit", "active_days") + DEADLINE
    rules.on_watermark(state, t, far)
    assert "raised" not in state and not (state["crossings"] or state["stays"] or state["refusals"])
    assert subject_rules.is_durable({**subject_rules.new_state(), "raised": {"x": {}}})


def test_flow_hours_a_silent_source_held_back_go_out_at_a_tick_once_it_is_idle_with_no_record_after_it():
    """The last records of a backlog: a sparse clearance source holds a partition's flow hours back; once it has
    been silent for ``flow_idle_seconds`` the hours go out at the next tick, though no record raises the largest
    event time again (the end of the input)."""
    clock = [0.0]
    stage = SubjectStage(RS, PlainDecoder(CODEC, EventTimeBounds.from_settings(get_settings())), None, 1, {}, {})
    stage.counter = type(stage.counter)(RS, 1, clock=lambda: clock[0])
    stage.assigned([0], [])
    s = Script(5)
    n = [0]

    def read(at, src):
        n[0] += 1
        rec = s.clearance("PVG", at, token("flow", n[0]), "ENTRY")
        step = stage.step(0, "clearance", CODEC.encode("clearance", for_avro(rec)), rec["subject"].encode(),
                          1_500_000_000 + n[0] / 1000, (0, src), src, "border.SH.clearance", n[0])
        assert step.error is None, step.error
        return step

    def progress(step) -> list[int]:
        return [p["hour"] for p in (json.loads(raw) for raw, _ in step.forward) if p.get("progress")]

    read(T0 + 5 * 60_000, "b|0")                                    # sparse: one clearance, hour 0
    sent = [h for i in range(1, 60) for h in progress(read(T0 + i * 6 * 60_000, "a|0"))]   # hours 0-5
    assert sent == []                                               # held back by b|0 at hour 0
    clock[0] = float(RS["event_time"]["flow_idle_seconds"]) + 1     # b|0 silent for longer than the idle time
    assert stage.wants_ticks([])
    hours = progress(stage.tick(0, [], 1_500_000_100))
    assert hours and hours[-1] == (T0 + 59 * 6 * 60_000 - LATENESS) // HOUR - 1
