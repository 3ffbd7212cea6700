"""Pure rules of the regional stage: fraud spread, broadcast and heightened mode, conveyance
following, trends with systemic escalation, passenger-flow surge; and the watermark."""
from __future__ import annotations

import itertools
import math
import random

import pytest

from kit.scripted import DAY, HOUR, Script, token
from schemas.reference import ports
from streams import derived, ruleset
from streams.event_time import RecordClock, Watermark
from streams.events import plain
from streams.flow import FlowCounter, FlowSurge
from streams.regional import RegionalRules

pytestmark = pytest.mark.unit   # no Java, Kafka or ClickHouse: `make unit`

T0 = 1_496_275_200_000  # 2017-06-01T00:00Z, a Thursday


@pytest.fixture(scope="module")
def rs():
    return ruleset.default()


@pytest.fixture
def rules(rs):
    return RegionalRules(rs)


def feed(rules, events, state=None, watermark=None):
    state = state or rules.new_state()
    outs = []
    for kind, _, _, rec in sorted(events, key=lambda e: e[3]["occurred_at"]):
        outs += rules.on_event(state, plain(kind, rec))
    if watermark is not None:
        outs += rules.on_watermark(state, watermark)[0]
    return [r for k, r in outs if k == "derived_alert"], outs, state


PAT = ("NGA", "PASSPORT", "A07", "COUNTERFEIT")


def test_fraud_pattern_in_a_second_region_becomes_one_regional_warning(rules):
    s = Script()
    s.alert("PVG", T0, "FORGED_DOCUMENT", subject=token(1), pattern=PAT)
    s.alert("SHA", T0 + HOUR, "FORGED_DOCUMENT", subject=token(2), pattern=PAT)   # same region: not yet
    second = s.alert("NKG", T0 + DAY, "FORGED_DOCUMENT", subject=token(3), pattern=PAT)
    s.alert("HGH", T0 + 2 * DAY, "FORGED_DOCUMENT", subject=token(4), pattern=PAT)  # third region: once only
    # judged once the watermark has passed the hit that completes the window
    assert feed(rules, s.events, watermark=T0 + DAY - 1)[0] == []
    alerts, _, state = feed(rules, s.events, watermark=T0 + DAY)
    assert [(a["kind"], a["must_act"], a["pattern"], a["occurred_at"], a["subject"]) for a in alerts] == [
        ("DOCUMENT_FRAUD_SPREAD", ["SH", "JS", "ZJ", "AH"], "NGA/PASSPORT/A07/COUNTERFEIT", second["occurred_at"],
         token(3))]
    assert rules.on_watermark(state, T0 + 3 * DAY)[0] == []


def test_fraud_pattern_hits_further_apart_than_the_window_raise_nothing(rules):
    s = Script()
    s.alert("PVG", T0, "FORGED_DOCUMENT", subject=token(1), pattern=PAT)
    s.alert("NKG", T0 + 4 * DAY + 1, "FORGED_DOCUMENT", subject=token(2), pattern=PAT)
    assert feed(rules, s.events, watermark=T0 + 5 * DAY)[0] == []


def test_fraud_spread_read_out_of_order_warns_once_with_the_alert_of_the_ordered_read(rules, rs):
    s = Script()
    s.alert("PVG", T0, "FORGED_DOCUMENT", subject=token(1), pattern=PAT)
    s.alert("NKG", T0 + DAY, "FORGED_DOCUMENT", subject=token(2), pattern=PAT)
    s.alert("HGH", T0 + 2 * DAY, "FORGED_DOCUMENT", subject=token(3), pattern=PAT)
    ordered, _, _ = feed(rules, s.events, watermark=T0 + 3 * DAY)
    state, outs = rules.new_state(), []
    for kind, _, _, rec in reversed(s.events):    # ZJ's stream read first, SH's last
        outs += rules.on_event(state, plain(kind, rec))
    outs += rules.on_watermark(state, T0 + 3 * DAY)[0]
    alerts = [r for k, r in outs if k == "derived_alert"]
    assert len(alerts) == 1 and alerts[0]["alert_id"] == ordered[0]["alert_id"]
    assert alerts[0]["details"]["regions"] == "SH,JS"


def test_fraud_spread_hit_behind_the_judged_watermark_is_judged_at_once(rules):
    s = Script()
    s.alert("PVG", T0, "FORGED_DOCUMENT", subject=token(1), pattern=PAT)
    late = s.alert("NKG", T0 + HOUR, "FORGED_DOCUMENT", subject=token(2), pattern=PAT)
    state = rules.new_state()
    rules.on_event(state, plain("alert", s.events[0][3]))
    rules.on_watermark(state, T0 + DAY)                          # judged: one region only
    outs = rules.on_event(state, plain("alert", late))           # a late hit: no later watermark needed
    assert [(r["kind"], r["occurred_at"]) for k, r in outs if k == "derived_alert"] == [
        ("DOCUMENT_FRAUD_SPREAD", late["occurred_at"])]


def test_high_counter_terror_alert_is_broadcast_to_every_other_region_once(rules):
    s = Script()
    ct = s.alert("NKG", T0, "COUNTER_TERROR", "HIGH", subject=token(1), source="OFFICER")
    s.events.append(s.events[-1])    # the same event read twice
    s.alert("NKG", T0, "COUNTER_TERROR", "MEDIUM", subject=token(2), source="OFFICER")
    alerts, _, _ = feed(rules, s.events)
    assert [(a["kind"], a["must_act"], a["inform"], a["evidence"]) for a in alerts] == [
        ("BROADCAST", ["SH", "ZJ", "AH"], ["JS"], [ct["event_id"]])]


def test_high_smuggling_alert_is_not_broadcast_outside_a_heightened_window(rules):
    s = Script()
    s.alert("PVG", T0, "SMUGGLING", "HIGH", subject=token(1), source="OFFICER")
    assert feed(rules, s.events)[0] == []


def test_heightened_mode_announces_itself_and_broadcasts_high_alerts_inside_its_window(rules):
    s = Script()
    s.control(["SH"], T0 + HOUR, T0 + 10 * HOUR, 0.5, issued=T0)
    inside = s.alert("CNSHA-WSK", T0 + 2 * HOUR, "SMUGGLING", "HIGH", subject=token(1), source="OFFICER")
    s.alert("NKG", T0 + 2 * HOUR, "SMUGGLING", "HIGH", subject=token(2), source="OFFICER")      # other region
    s.alert("PVG", T0 + 10 * HOUR, "SMUGGLING", "HIGH", subject=token(3), source="OFFICER")     # end is exclusive
    s.alert("PVG", T0 + 3 * HOUR, "SMUGGLING", "MEDIUM", subject=token(4), source="OFFICER")
    alerts, _, _ = feed(rules, s.events)
    assert [(a["kind"], a["must_act"], a["inform"], a["occurred_at"]) for a in alerts] == [
        ("HEIGHTENED_MODE", ["SH"], ["JS", "ZJ", "AH"], T0 + HOUR),
        ("BROADCAST", ["JS", "ZJ", "AH"], ["SH"], inside["occurred_at"])]


def test_alert_read_before_its_heightened_window_is_still_broadcast(rules):
    s = Script()
    s.alert("CNSHA-WSK", T0 + 2 * HOUR, "SMUGGLING", "HIGH", subject=token(1), source="OFFICER")
    alerts, _, state = feed(rules, s.events)
    assert alerts == []
    s2 = Script(8)
    s2.control(["SH"], T0 + HOUR, T0 + 10 * HOUR)
    alerts, _, _ = feed(rules, s2.events, state=state)
    assert [a["kind"] for a in alerts] == ["HEIGHTENED_MODE", "BROADCAST"]


def test_diverted_flight_sends_the_pending_alert_to_the_landing_station(rules):
    s = Script()
    pax, conv = token("pax"), "MU512/2017-06-02"
    pending = s.alert("PVG", T0, "WATCHLIST_HIT", subject=pax, conveyance=conv, conveyance_type="FLIGHT")
    s.clearance("HGH", T0 + 2 * HOUR, token("other"), conveyance=conv, scheduled_port="PVG")
    s.clearance("HGH", T0 + 2 * HOUR + 1, pax, conveyance=conv, scheduled_port="PVG")
    alerts, _, _ = feed(rules, s.events)
    assert [(a["kind"], a["must_act"], a["inform"], a["station_id"], a["subject"], a["conveyance_id"])
            for a in alerts] == [("CONVEYANCE_DIVERTED", ["ZJ"], ["SH"], "ZJ-HGH", pax, conv)]
    assert pending["event_id"] in alerts[0]["evidence"]


def test_diverted_flight_alert_id_does_not_depend_on_which_clearance_is_read_first(rules):
    pax, conv = token("pax"), "MU512/2017-06-02"
    ids = []
    for first, second in ((token("other"), pax), (pax, token("other"))):
        s = Script()
        s.alert("PVG", T0, "WATCHLIST_HIT", subject=pax, conveyance=conv, conveyance_type="FLIGHT")
        # each passenger's clearance keeps its own event id whichever is read first
        for at, subject in ((T0 + 2 * HOUR, first), (T0 + 2 * HOUR + 1, second)):
            s.clearance("HGH", at, subject, conveyance=conv, scheduled_port="PVG")["event_id"] = subject[:36]
        alerts, _, _ = feed(rules, s.events)
        assert [a["kind"] for a in alerts] == ["CONVEYANCE_DIVERTED"]
        ids.append(alerts[0]["alert_id"])
    assert ids[0] == ids[1]


def test_pending_alert_read_after_the_diversion_is_still_sent_on(rules):
    s = Script()
    pax, conv = token("pax"), "MU512/2017-06-02"
    s.clearance("HGH", T0, pax, conveyance=conv, scheduled_port="PVG")
    _, _, state = feed(rules, s.events)
    s2 = Script(9)
    s2.alert("PVG", T0 - HOUR, "WATCHLIST_HIT", subject=pax)
    alerts, _, _ = feed(rules, s2.events, state=state)
    assert [(a["kind"], a["must_act"], a["station_id"]) for a in alerts] == [("CONVEYANCE_DIVERTED", ["ZJ"], "ZJ-HGH")]


def _live(outs) -> set[str]:
    last = {}
    for kind, rec in outs:
        if kind == "derived_alert":
            last[rec["alert_id"]] = rec
    return {i for i, a in last.items() if derived.is_live(a)}


def _read_in(rules, events, order):
    state, outs = rules.new_state(), []
    for i in order:
        kind, _, _, rec = events[i]
        outs += rules.on_event(state, plain(kind, rec))
    return outs


@pytest.mark.parametrize("resolved_at, sent_on", [(HOUR, False), (3 * HOUR, True)])
def test_a_pending_alert_is_sent_on_by_event_time_whichever_of_its_resolution_and_the_diversion_is_read_first(
        rules, resolved_at, sent_on):
    """A watchlist hit resolved before its flight lands elsewhere sends nothing on, one resolved after it does,
    in every read order of the hit, its resolution and the two clearances: a resolution read after the diversion
    it precedes withdraws what was sent on, with the reason."""
    s = Script()
    pax, conv = token("pax"), "MU512/2017-06-02"
    hit = s.alert("PVG", T0, "WATCHLIST_HIT", subject=pax, conveyance=conv, conveyance_type="FLIGHT")
    s.alert("PVG", T0 + resolved_at, "WATCHLIST_HIT", subject=pax, status="RESOLVED")["event_id"] = "resolution"
    s.clearance("HGH", T0 + 2 * HOUR, token("other"), conveyance=conv, scheduled_port="PVG")
    s.clearance("HGH", T0 + 2 * HOUR + 1, pax, conveyance=conv, scheduled_port="PVG")
    answers = []
    for order in itertools.permutations(range(4)):
        outs = _read_in(rules, s.events, order)
        answers.append(_live(outs))
        if not sent_on and any(a["kind"] == "CONVEYANCE_DIVERTED" for k, a in outs if k == "derived_alert"):
            last = [a for k, a in outs if k == "derived_alert"][-1]
            assert last["status"] == derived.WITHDRAWN and hit["event_id"] in last["status_reason"]
    assert all(a == answers[0] for a in answers)
    assert len(answers[0]) == (1 if sent_on else 0)


def test_landing_at_another_port_of_the_same_region_is_no_diversion(rules):
    s = Script()
    pax, conv = token("pax"), "MU512/2017-06-02"
    s.alert("PVG", T0, "WATCHLIST_HIT", subject=pax, conveyance=conv)
    s.clearance("SHA", T0 + HOUR, pax, conveyance=conv, scheduled_port="PVG")
    assert feed(rules, s.events)[0] == []


def baseline_cases(script, rs, days, seed=1):
    """Stationary Poisson cases at the profile's rates (day-of-week shaped), as the simulator draws them."""
    rng = random.Random(seed)
    prof = rs.flow_profile
    seaport = {"SH": "CNSHA-YSN", "JS": "CNLYG", "ZJ": "CNNGB", "AH": "CNWHI"}
    for hour in range(days * 24):
        at = T0 + hour * HOUR
        dow = prof["day_of_week"][((at // DAY) + 3) % 7]
        for region, rates in prof.get("cases_per_day", {}).items():
            for key, per_day in rates.items():
                case_type, method = key.split("/")
                for _ in range(_poisson(rng, per_day * dow / 24)):
                    script.case(seaport[region], at + rng.randrange(HOUR), case_type, method, [token(rng.random())],
                                [rng.choice(["VNM", "MMR", "NGA", "PAK"])])


def _poisson(rng, lam):
    k, p, limit = 0, 1.0, math.exp(-lam)
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1


def test_a_week_of_stationary_case_baseline_raises_no_trend(rules, rs):
    s = Script()
    baseline_cases(s, rs, 7)
    alerts, outs, _ = feed(rules, s.events, watermark=T0 + 7 * DAY)
    assert alerts == []
    assert any(k == "trend" for k, _ in outs)


def test_stowaway_surge_in_two_regions_rises_in_each_and_escalates_once(rules, rs):
    s = Script()
    baseline_cases(s, rs, 4)
    for i in range(8):
        s.case("CNNGB", T0 + 3 * DAY + i * HOUR, "STOWAWAY", "STOWAWAY_ON_VESSEL", [token("zj", i)], ["VNM"])
        s.case("CNSHA-YSN", T0 + 3 * DAY + 2 * HOUR + i * HOUR, "STOWAWAY", "STOWAWAY_ON_VESSEL", [token("sh", i)],
               ["MMR"])
    alerts, _, _ = feed(rules, s.events, watermark=T0 + 4 * DAY)
    got = [(a["kind"], a["must_act"], a["inform"], a["pattern"]) for a in alerts]
    assert got == [
        ("TREND_RISING", ["ZJ"], ["SH", "JS", "AH"], "STOWAWAY"),
        ("TREND_RISING", ["SH"], ["JS", "ZJ"], "STOWAWAY"),
        ("SYSTEMIC_ESCALATION", ["SH", "JS", "ZJ", "AH"], [], "STOWAWAY"),
    ]


def test_heightened_mode_lowers_the_trend_threshold(rules, rs):
    def surge(script):
        baseline_cases(script, rs, 3)
        for i in range(3):
            script.case("CNNGB", T0 + 2 * DAY + i * HOUR, "STOWAWAY", "STOWAWAY_ON_VESSEL", [token(i)], ["VNM"])
    plain_s = Script()
    surge(plain_s)
    assert feed(rules, plain_s.events, watermark=T0 + 3 * DAY)[0] == []
    hm = Script()
    surge(hm)
    hm.control(["ZJ"], T0 + 2 * DAY, T0 + 3 * DAY, 0.5, issued=T0 + 2 * DAY)
    kinds = [a["kind"] for a in feed(RegionalRules(rs), hm.events, watermark=T0 + 3 * DAY)[0]]
    assert kinds == ["HEIGHTENED_MODE", "TREND_RISING"]


def flow_week(rs, days, surge_port=None, surge_from=None, surge_factor=4.0, scale=0.02, seed=2):
    """Hourly partial counts for every port drawn around the profile's expectation (x scale)."""
    rng = random.Random(seed)
    fs = FlowSurge(rs)
    events = []
    for hour in range(T0 // HOUR, T0 // HOUR + days * 24):
        for code in ports():
            lam = fs.expected(code, hour) * scale
            if surge_port == code and hour * HOUR >= surge_from:
                lam *= surge_factor
            n = _poisson(rng, lam) if lam < 50 else max(0, round(rng.gauss(lam, math.sqrt(lam))))
            events.append({"_kind": "flow_partial", "port": code, "hour": hour, "partition": 0, "count": n,
                           "occurred_at": (hour + 1) * HOUR - 1})
    return events


def run_flow(rules, events, until):
    state = rules.new_state()
    outs = []
    wm = Watermark(rules.rs.minutes_ms("event_time", "global_lateness_minutes"))
    for ev in events:
        rules.on_event(state, ev)
        wm.observe(0, ev["occurred_at"])
        outs += rules.on_watermark(state, wm.current())[0]
    outs += rules.on_watermark(state, until)[0]
    return [r for k, r in outs if k == "derived_alert"]


def test_a_week_of_passenger_flow_at_its_hour_of_week_level_raises_no_surge(rules, rs):
    assert run_flow(rules, flow_week(rs, 7), T0 + 8 * DAY) == []


def test_expo_week_flow_at_one_port_asks_the_neighbours_for_support(rules, rs):
    alerts = run_flow(rules, flow_week(rs, 4, "CNSHA-WSK", T0 + 2 * DAY), T0 + 5 * DAY)
    assert alerts, "no surge raised"
    a = alerts[0]
    assert (a["kind"], a["port_code"], a["must_act"], a["inform"]) == ("FLOW_SURGE_SUPPORT", "CNSHA-WSK",
                                                                        ["JS", "ZJ"], ["SH"])
    assert T0 + 2 * DAY <= a["occurred_at"] <= T0 + 2 * DAY + 4 * HOUR
    assert {x["port_code"] for x in alerts} == {"CNSHA-WSK"}


def test_flow_partials_resent_for_a_partition_replace_rather_than_add(rules, rs):
    state = rules.new_state()
    ev = {"_kind": "flow_partial", "port": "PVG", "hour": 10, "partition": 1, "count": 5, "occurred_at": 0}
    rules.on_event(state, ev)
    rules.on_event(state, {**ev, "count": 7})
    rules.on_event(state, {**ev, "partition": 2, "count": 3})
    assert sum(state["flow"]["partials"]["PVG|10"].values()) == 10


def test_flow_counter_sends_an_hour_once_the_watermark_passes_it_and_resends_late_totals(rs):
    fc = FlowCounter(rs)
    st = fc.new_state()
    ev = {"port_code": "PVG", "occurred_at": 10 * HOUR + 5}
    assert fc.on_clearance(st, ev, 0, 0) == []
    assert [p for p in fc.on_watermark(st, 11 * HOUR - 1, 0) if not p.get("progress")] == []
    sent = fc.on_watermark(st, 11 * HOUR, 0)
    assert [(p["port"], p["hour"], p["count"]) for p in sent if not p.get("progress")] == [("PVG", 10, 1)]
    assert [p["hour"] for p in sent if p.get("progress")] == [10]
    # a late clearance: the hour's new total at the next flush (the stage's tick) or completed hour
    assert fc.on_clearance(st, ev, 0, 11 * HOUR) == []
    assert [(p["hour"], p["count"]) for p in fc.flush(st, 0)] == [(10, 2)]
    fc.on_clearance(st, ev, 0, 11 * HOUR)
    sent = fc.on_watermark(st, 12 * HOUR, 0)
    assert [(p["hour"], p["count"]) for p in sent] == [(10, 3), (11, 0)] and sent[-1]["progress"]


def test_flow_hour_waits_for_the_slowest_source_and_not_for_a_silent_one(rs):
    clock = [0.0]
    fc = FlowCounter(rs, clock=lambda: clock[0])
    lateness = rs.minutes_ms("event_time", "lateness_minutes")
    st = fc.new_state()
    fc.on_clearance(st, {"port_code": "PVG", "occurred_at": 10 * HOUR + 5}, 0, 0, source="SH|0")
    fc.on_clearance(st, {"port_code": "PVG", "occurred_at": 15 * HOUR}, 0, 0, source="SH|1")  # read ahead
    # the stage's watermark is past hour 10, but source SH|0 has only reached 10:00: not yet complete
    assert [p for p in fc.on_watermark(st, 14 * HOUR, 0) if not p.get("progress")] == []
    fc.on_clearance(st, {"port_code": "PVG", "occurred_at": 10 * HOUR + 9}, 0, 0, source="SH|0")  # still counted
    fc.on_clearance(st, {"port_code": "PVG", "occurred_at": 11 * HOUR + lateness}, 0, 0, source="SH|0")
    sent = fc.on_watermark(st, 14 * HOUR, 0)
    assert [(p["port"], p["hour"], p["count"]) for p in sent if not p.get("progress")] == [("PVG", 10, 2)]
    assert [p["hour"] for p in sent if p.get("progress")] == [10]
    # SH|0 falls silent (wall clock) while SH|1 goes on: it no longer holds the hours back
    clock[0] = float(rs["event_time"]["flow_idle_seconds"]) + 1
    fc.on_clearance(st, {"port_code": "PVG", "occurred_at": 15 * HOUR + 1}, 0, 0, source="SH|1")
    sent = fc.on_watermark(st, 14 * HOUR, 0)
    assert [(p["hour"], p["count"]) for p in sent if not p.get("progress")] == [(11, 1)]
    assert [p["hour"] for p in sent if p.get("progress")] == [13]


def test_flow_source_the_worker_still_has_records_of_is_not_idle(rs):
    clock = [0.0]
    fc = FlowCounter(rs, clock=lambda: clock[0])
    idle = float(rs["event_time"]["flow_idle_seconds"])
    st = fc.new_state()
    fc.on_clearance(st, {"port_code": "PVG", "occurred_at": 10 * HOUR + 5}, 0, 0, source="SH|0")
    fc.on_clearance(st, {"port_code": "PVG", "occurred_at": 15 * HOUR}, 0, 0, source="SH|1")
    clock[0] = idle - 1
    fc.touch(0, ["SH|0"])                 # the re-key step has not reached the rest of SH|0 yet
    clock[0] = idle + 1                   # silent for longer than idle, but touched 2 s ago: holds hour 10 back
    fc.on_clearance(st, {"port_code": "PVG", "occurred_at": 15 * HOUR + 1}, 0, 0, source="SH|1")
    assert [p for p in fc.on_watermark(st, 14 * HOUR, 0) if not p.get("progress")] == []
    clock[0] = 2 * idle                   # no longer touched: idle
    fc.on_clearance(st, {"port_code": "PVG", "occurred_at": 15 * HOUR + 2}, 0, 0, source="SH|1")
    assert [(p["hour"], p["count"]) for p in fc.on_watermark(st, 14 * HOUR, 0) if not p.get("progress")] == [
        (10, 1)]


def test_watermark_is_the_slowest_partition_minus_lateness():
    clock = [0.0]
    wm = Watermark(lateness_ms=100, idle_ms=5_000, clock=lambda: clock[0])
    wm.observe(1, 2_000)
    wm.observe(0, 10_000)
    assert wm.current() == 1_900                               # partition 0 ran ahead: 1 holds it back
    assert wm.observe(0, 1_000) is True and wm.late == 1        # older than the watermark: late
    assert wm.observe(1, 1_950) is False
    clock[0] = 10.0                                            # partition 1 idle for 10 s, 0 just spoke
    wm.observe(0, 11_000)
    assert wm.current() == 10_900


def _watermark_from_scratch(wm: Watermark, now: float) -> int:
    """The definition, worked out from the partitions' maxima and last events (what current() keeps)."""
    if not wm._max:
        return -(1 << 62)
    active = [m for p, m in wm._max.items() if (now - wm._seen_at[p]) * 1000 < wm.idle_ms]
    return (min(active) if active else max(wm._max.values())) - wm.lateness_ms


@pytest.mark.parametrize("seed", range(20))
def test_the_watermark_kept_between_events_is_the_one_worked_out_from_scratch(seed):
    """current() keeps its answer while nothing it depends on changes: after any mix of events, time passing,
    partitions expected, touched, restored and forgotten, it equals the definition."""
    rnd = random.Random(seed)
    clock = [0.0]
    wm = Watermark(lateness_ms=100, idle_ms=3_000, clock=lambda: clock[0])
    parts = [f"p{i}" for i in range(6)]
    for _ in range(3000):
        op = rnd.random()
        if op < 0.55:
            late = rnd.random() < 0.2
            wm.observe(rnd.choice(parts), rnd.randrange(0, 5_000) if late else int(clock[0] * 1000) + rnd.randrange(
                0, 20_000))
        elif op < 0.75:
            clock[0] += rnd.choice([0.0, 0.1, 0.5, 1.0, 2.9, 3.0, 3.1, 7.0])
        elif op < 0.82:
            wm.touch(rnd.sample(parts, rnd.randrange(1, 3)))
        elif op < 0.87:
            wm.expect(rnd.sample(parts + ["q1", "q2"], 2))
        elif op < 0.92:
            wm.restore({rnd.choice(parts): rnd.randrange(0, 40_000)})
        elif op < 0.95:
            wm.forget(rnd.choice(parts + ["q1", "q2"]))
        assert wm.current() == _watermark_from_scratch(wm, clock[0])


def test_an_expected_partition_holds_the_watermark_back_until_it_speaks_or_goes_idle():
    clock = [0.0]
    wm = Watermark(lateness_ms=100, idle_ms=5_000, clock=lambda: clock[0])
    wm.expect(["a", "b"])
    wm.observe("a", 10_000)
    assert wm.current() < 0                                    # b has not been read from yet
    wm.observe("b", 2_000)
    assert wm.current() == 1_900
    wm.expect(["c"])
    clock[0] = 6.0                                             # c never spoke; a and b speak again
    wm.observe("a", 10_500)
    wm.observe("b", 3_000)
    assert wm.current() == 2_900


def test_a_partition_with_records_still_to_read_is_not_idle():
    clock = [0.0]
    wm = Watermark(lateness_ms=100, idle_ms=5_000, clock=lambda: clock[0])
    wm.expect(["a", "b"])
    wm.observe("a", 10_000)
    wm.observe("b", 2_000)
    clock[0] = 4.0
    wm.touch(["b", "c"])        # b's reader has a backlog; c, never expected, too: both hold the watermark back
    clock[0] = 8.0
    wm.observe("a", 11_000)
    assert wm.current() < 0                                    # c has given nothing yet
    wm.observe("c", 5_000)
    assert wm.current() == 1_900                               # b, silent 8 s but touched at 4 s, still counts
    clock[0] = 9.5                                             # b silent and untouched for 5.5 s: idle
    wm.observe("a", 11_000)
    wm.observe("c", 5_000)
    assert wm.current() == 4_900


def test_the_record_clock_leaves_out_gaps_no_worker_was_writing_in():
    clock = RecordClock(max_step_s=5.0)
    wm = Watermark(lateness_ms=100, idle_ms=10_000, clock=clock)
    clock.advance(1_000.0)
    wm.observe("a", 50_000)
    wm.observe("b", 2_000)
    for t in (1_002.0, 1_004.0, 1_003.0):        # ticks every 2 s; a partition read behind: an older one
        clock.advance(t)
        wm.observe("a", 60_000)
    assert clock() == 4.0 and wm.current() == 1_900               # b silent 4 s: still holds it back
    clock.advance(1_064.0)                        # a minute with no record: the workers were down
    assert clock() == 9.0
    wm.observe("a", 70_000)
    assert wm.current() == 1_900                  # b was not silent while nobody wrote: not idle
    clock.advance(1_066.0)
    wm.observe("a", 71_000)
    assert clock() == 11.0 and wm.current() == 70_900                # now b is


def test_watermark_kept_with_the_state_comes_back_after_a_restart():
    clock = [0.0]
    before = Watermark(lateness_ms=100, idle_ms=5_000, clock=lambda: clock[0])
    before.expect(["a", "b", "c"])
    before.observe("a", 10_000)
    before.observe("b", 20_000)
    kept = before.maxima()
    assert kept == {"a": 10_000, "b": 20_000}                  # c never spoke: nothing kept of it
    # the restarted stream reads nothing of a and b again (their offsets were committed)
    after = Watermark(lateness_ms=100, idle_ms=5_000, clock=lambda: clock[0])
    after.expect(["a", "b", "c"])
    after.restore(kept)
    assert after.peak("b") == 20_000 and after.current() < 0   # c still holds it back
    clock[0] = 6.0                                             # until everything has been silent for idle_ms
    assert after.current() == 19_900                            # not -inf: what was processed before counts
    after.observe("a", 5_000)                                  # an older time does not lower a kept maximum
    assert after.peak("a") == 10_000


def test_rule_set_without_a_version_is_refused():
    with pytest.raises(ruleset.RuleSetError, match="version"):
        ruleset.from_dict({"transit": {}})


def test_flow_hour_is_judged_only_once_every_partition_has_sent_it(rules):
    state = rules.new_state()
    hour = T0 // HOUR
    for part in (0, 1):
        rules.on_event(state, {"_kind": "flow_partial", "port": "PVG", "hour": hour, "partition": part, "count": 9,
                               "occurred_at": (hour + 1) * HOUR - 1})
    rules.on_event(state, {"_kind": "flow_partial", "port": "", "hour": hour, "partition": 0, "count": 0,
                           "progress": True, "partitions": 2, "occurred_at": (hour + 1) * HOUR - 1})
    rules.on_watermark(state, (hour + 3) * HOUR)
    assert state["flow"]["judged"] is None               # partition 1 has not reported at all yet
    rules.on_event(state, {"_kind": "flow_partial", "port": "", "hour": hour - 1, "partition": 1, "count": 0,
                           "progress": True, "partitions": 2, "occurred_at": hour * HOUR - 1})
    rules.on_watermark(state, (hour + 3) * HOUR + 1)
    assert state["flow"]["judged"] is None               # partition 1 has not sent the hour yet
    rules.on_event(state, {"_kind": "flow_partial", "port": "", "hour": hour, "partition": 1, "count": 0,
                           "progress": True, "partitions": 2, "occurred_at": (hour + 1) * HOUR - 1})
    rules.on_watermark(state, (hour + 3) * HOUR + 2)
    assert state["flow"]["judged"] == hour and state["flow"]["history"]["PVG"][str(hour)][0] == 18


def test_an_event_changes_no_section_of_the_state_but_those_the_stage_writes_back_for_it(rules):
    """The regional stage writes back to its changelog only the sections ``touched`` names for an event (and
    the vessels ``VesselRisk`` marks): a section changed but not named would be lost at a restart. A clearance of
    a vessel's crew, or of a flight that landed where it was scheduled, does not name the conveyance section."""
    import copy

    from kit.scripted import background, incidents

    s = Script()
    incidents(s, T0)
    background(s, T0, 48)
    for crew in range(20):
        s.clearance("CNSHA-WSK", T0 + crew * HOUR, token(f"crew{crew}"), conveyance="VSL-1",
                    conveyance_type="VESSEL", basis="CREW", lane="CREW")
    state, diversions, crews = rules.new_state(), 0, 0
    for kind, _, _, rec in sorted(s.events, key=lambda e: e[3]["occurred_at"]):
        ev = plain(kind, rec)
        before = copy.deepcopy(state)
        rules.on_event(state, ev)
        changed = {sec for sec in state if sec != "vessel" and state[sec] != before[sec]}
        assert changed <= set(rules.touched(ev)), (kind, rec)
        if kind == "clearance" and "conveyance" in changed:
            diversions += 1
        if kind == "clearance" and rec["conveyance_type"] == "VESSEL":
            crews += 1
            assert "conveyance" not in rules.touched(ev), rec
    assert diversions and crews >= 20     # both paths were taken (incident f's diverted flight, the crew)


def test_the_watermark_is_settled_only_once_silence_can_move_it_no_further():
    """A stage's ticks go on until ``settled``: a slower partition still active holds it back; once that one is
    idle on the clock the watermark is at the fastest partition's, and it is settled."""
    clock = [0.0]
    wm = Watermark(lateness_ms=100, idle_ms=5_000, clock=lambda: clock[0])
    assert wm.settled()
    wm.observe("a", 1_000)
    wm.observe("b", 4_000)
    assert not wm.settled() and wm.current() == 900
    clock[0] = 4.9
    assert not wm.settled()
    clock[0] = 5.1
    assert wm.settled() and wm.current() == 3_900
    wm.observe("a", 2_000)      # speaks again: active and behind, so not settled until it goes quiet again
    assert not wm.settled()
    clock[0] = 10.2
    assert wm.settled()
    wm.expect(["c"])            # expected and not heard from: holds the stage back until idle
    assert not wm.settled()
