"""Late events within the allowed delay: the regional stage's derived alerts are a function of the events and their
event times, whatever order the regions' streams are read in. A small harness plays the stage (and, for the
flow counts, the subject stage's counters) over one list of events in several read orders."""
from __future__ import annotations

import copy
import json
import math
import random
import zlib

import pytest

from kit.scripted import DAY, HOUR, Script, token
from schemas.reference import ports
from streams import derived, ruleset
from streams.events import plain
from streams.flow import FlowCounter, FlowSurge
from streams.regional import RegionalRules

pytestmark = pytest.mark.unit   # no Java, Kafka or ClickHouse: `make unit`

T0 = 1_496_275_200_000  # 2017-06-01T00:00Z
SPAN_H = 40             # every scenario fits in the allowed delay (48 h), the regional lateness included
PARTITIONS = 2
PAT = ("NGA", "PASSPORT", "A07", "COUNTERFEIT")


@pytest.fixture(scope="module")
def rs():
    return ruleset.default()


# ------------------------------------------------------------------ the stage, played
class Stage:
    """The regional stage as streams/app.py runs it, with the subject stage's flow counters in front of it.

    An event is read from its upstream (a region's alert or case source, a subject partition for the flow
    partials); the regional watermark is the smallest of the largest event times of the upstreams that have
    started and not finished, less the regional lateness (an upstream that has not started yet, or has finished,
    is idle; all idle: the largest). ``on_watermark`` is called whenever that watermark rises, as the stage does.
    With ``check``, every section an event or a watermark changes must be one the stage writes back, and the state
    is read back from its JSON after every step (as a restarted stage reads its changelog)."""

    def __init__(self, rs, remaining: dict, check: bool = False):
        self.rules = RegionalRules(rs)
        self.state = self.rules.new_state()
        self.lateness = rs.minutes_ms("event_time", "global_lateness_minutes")
        self.sub_lateness = rs.minutes_ms("event_time", "lateness_minutes")
        self.counter = FlowCounter(rs, partitions=PARTITIONS)
        self.fstates = {p: FlowCounter.new_state() for p in range(PARTITIONS)}
        self.part_max: dict[int, int] = {}
        self.flow_wm: dict[int, int] = {}
        self.remaining = dict(remaining)      # upstream -> events still to read (0: finished)
        self.maxima: dict[str, int] = {}
        self.last_wm: int | None = None
        self.outs: list = []
        self.check = check

    def read(self, upstream: str, kind: str, rec: dict) -> None:
        if kind == "clearance":
            self._subject(upstream, plain(kind, rec))
        else:
            self._regional(upstream, plain(kind, rec))
        self.remaining[upstream] -= 1
        if kind == "clearance":
            self.remaining[_sub(rec)] -= 1
        self._watermark()

    def _subject(self, upstream: str, ev: dict) -> None:
        p = int(_sub(ev).split("|")[1])
        fstate = self.fstates[p]
        for partial in self.counter.on_clearance(fstate, ev, p, 0):
            self._regional(_sub(ev), partial)
        self.part_max[p] = max(self.part_max.get(p, ev["occurred_at"]), ev["occurred_at"])
        fwm = self.part_max[p] - self.sub_lateness
        if fwm > self.flow_wm.get(p, -(1 << 62)):
            self.flow_wm[p] = fwm
            for partial in self.counter.on_watermark(fstate, fwm, p):
                self._regional(_sub(ev), partial)

    def tick(self) -> None:
        """A tick through every subject partition and the regional stage: late counts go out and are judged."""
        for p in range(PARTITIONS):
            for partial in self.counter.flush(self.fstates[p], p):
                self._regional(f"subjects|{p}", partial)
        before = copy.deepcopy(self.state) if self.check else None
        more, changed = self.rules.on_tick(self.state)
        self.outs += more
        if self.check:
            diff = {sec for sec in self.state if sec != "vessel" and self.state[sec] != before[sec]}
            assert diff <= set(changed), diff - set(changed)
            self.state = json.loads(json.dumps(self.state))

    def _regional(self, upstream: str, ev: dict) -> None:
        before = copy.deepcopy(self.state) if self.check else None
        first_hour = self.state["trend"]["first_hour"]
        self.outs += self.rules.on_event(self.state, ev)
        if ev["_kind"] != "control":
            self.maxima[upstream] = max(self.maxima.get(upstream, ev["occurred_at"]), ev["occurred_at"])
        if self.check:
            touched = set(self.rules.touched(ev))
            if ev["_kind"] != "case" and self.state["trend"]["first_hour"] == first_hour:
                touched.discard("trend")         # as the stage does
            changed = {sec for sec in self.state if sec != "vessel" and self.state[sec] != before[sec]}
            assert changed <= touched, (ev["_kind"], changed - touched)
            self.state = json.loads(json.dumps(self.state))
        self._watermark()

    def _watermark(self) -> None:
        if not self.maxima:
            return
        active = [m for u, m in self.maxima.items() if self.remaining.get(u, 0) > 0]
        wm = (min(active) if active else max(self.maxima.values())) - self.lateness
        if self.last_wm is None or wm > self.last_wm:
            self.last_wm = wm
            before = copy.deepcopy(self.state) if self.check else None
            more, changed = self.rules.on_watermark(self.state, wm)
            self.outs += more
            if self.check:
                diff = {sec for sec in self.state if sec != "vessel" and self.state[sec] != before[sec]}
                # the judged watermarks kept in a section (fraud's "judged", the trend and flow "wm") may go
                # unwritten: what is judged again on them is judged on the restored watermark
                diff = {sec for sec in diff if _without_wm(self.state[sec]) != _without_wm(before[sec])}
                assert diff <= set(changed), diff - set(changed)
                self.state = json.loads(json.dumps(self.state))

    def live(self, rule: str | None = None) -> set[str]:
        last: dict[str, dict] = {}
        for kind, rec in self.outs:
            if kind == "derived_alert" and (rule is None or rec["rule_id"] == rule):
                last[rec["alert_id"]] = rec
        return {i for i, a in last.items() if derived.is_live(a)}

    def signals(self, rule: str) -> dict:
        """Each trend signal's last version: what it says of its window."""
        return {rec["signal_id"]: (rec["observed"], rec["expected"], rec["rising"])
                for kind, rec in self.outs if kind == "trend" and rec["rule_id"] == rule}


def _without_wm(section: dict) -> dict:
    return {k: v for k, v in section.items() if k not in ("wm", "judged")} if "due" in section else \
        {k: v for k, v in section.items() if k != "wm"}


def _sub(rec: dict) -> str:
    """The subject partition a clearance is counted in (by its subject, as the stations key it)."""
    return f"subjects|{zlib.crc32(rec['subject'].encode()) % PARTITIONS}"


def _upstream(kind: str, rec: dict) -> str:
    return "control" if kind == "control" else f"{rec['region']}|{kind}"


def remaining_of(events) -> dict:
    counts: dict[str, int] = {}
    for kind, _, _, rec in events:
        for up in (_upstream(kind, rec), *((_sub(rec),) if kind == "clearance" else ())):
            counts[up] = counts.get(up, 0) + 1
    return counts


def play(rs, events, check: bool = False, tick_every: int = 37) -> Stage:
    """The events read in the order given, with a tick every ``tick_every`` of them and one at the end."""
    st = Stage(rs, remaining_of(events), check=check)
    for n, (kind, _, _, rec) in enumerate(events):
        st.read(_upstream(kind, rec), kind, rec)
        if n % tick_every == tick_every - 1:
            st.tick()
    st.tick()
    json.loads(json.dumps(st.state))      # the state goes to a changelog as JSON
    return st


# ------------------------------------------------------------------ read orders
def in_event_time(events):
    return sorted(events, key=lambda e: (e[3].get("occurred_at") or e[3]["starts_at"]))


def region_delayed(events, region):
    """Every other region's streams first (in event time), then the whole of ``region``'s."""
    ordered = in_event_time(events)
    return [e for e in ordered if e[1] != region] + [e for e in ordered if e[1] == region]


def interleaved(events, seed):
    """Each upstream's own stream in event time, the upstreams read in random runs (one may run hours ahead)."""
    rnd = random.Random(seed)
    streams: dict[str, list] = {}
    for e in in_event_time(events):
        streams.setdefault(_upstream(e[0], e[3]) if e[0] != "clearance" else e[1], []).append(e)
    out = []
    while streams:
        up = rnd.choice(sorted(streams))
        n = rnd.choice([1, 3, 20, 200])
        out += streams[up][:n]
        del streams[up][:n]
        if not streams[up]:
            del streams[up]
    return out


# ------------------------------------------------------------------ scenarios
def _poisson(rng, lam):
    if lam > 50:
        return max(0, round(rng.gauss(lam, math.sqrt(lam))))
    k, p, limit = 0, 1.0, math.exp(-lam)
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1


def trend_scenario(rs, seed=1):
    """Cases at the profile's rates in the four regions, then stowaways found on vessels in Zhejiang (from 20 h)
    and Shanghai (from 22 h): a trend in each and one escalation, in event-time order; and a heightened mode in
    Anhui (read before its window)."""
    s = Script(seed)
    rng = random.Random(seed)
    seaport = {"SH": "CNSHA-YSN", "JS": "CNLYG", "ZJ": "CNNGB", "AH": "CNWHI"}
    s.control(["AH"], T0, T0 + 6 * HOUR, 0.8, issued=T0)
    for hour in range(SPAN_H):
        at = T0 + hour * HOUR
        for region, rates in rs.flow_profile["cases_per_day"].items():
            for key, per_day in rates.items():
                case_type, method = key.split("/")
                for _ in range(_poisson(rng, per_day / 24)):
                    s.case(seaport[region], at + rng.randrange(HOUR), case_type, method, [token(rng.random())],
                           [rng.choice(["VNM", "MMR", "NGA", "PAK"])])
    for i in range(8):
        s.case("CNNGB", T0 + 20 * HOUR + i * HOUR, "STOWAWAY", "STOWAWAY_ON_VESSEL", [token("zj", i)], ["VNM"])
        s.case("CNSHA-YSN", T0 + 22 * HOUR + i * HOUR, "STOWAWAY", "STOWAWAY_ON_VESSEL", [token("sh", i)], ["MMR"])
    return s.events


def fraud_scenario(seed=3):
    """One forged-passport pattern in Shanghai (10 h), Jiangsu (20 h) and Zhejiang (30 h): in event-time order
    Jiangsu's hit completes the spread (with Shanghai's); read without Shanghai, Zhejiang's would."""
    s = Script(seed)
    s.alert("PVG", T0 + 10 * HOUR, "FORGED_DOCUMENT", subject=token(1), pattern=PAT)
    s.alert("NKG", T0 + 20 * HOUR, "FORGED_DOCUMENT", subject=token(2), pattern=PAT)
    s.alert("HGH", T0 + 30 * HOUR, "FORGED_DOCUMENT", subject=token(3), pattern=PAT)
    for h in range(0, SPAN_H, 2):    # other alerts move every region's watermark along
        for port in ("PVG", "NKG", "HGH", "HFE"):
            s.alert(port, T0 + h * HOUR + 7, "SMUGGLING", "LOW", subject=token(port, h), source="OFFICER")
    return s.events


def flow_scenario(rs, seed=2, scale=0.01, surge_port="CNSHA-WSK", surge_from=24, regions=None):
    """Clearances at every port around the profile's expectation (x scale, x ``regions[region]``), four times that at
    one port from ``surge_from`` h: a surge there, in event-time order."""
    rng = random.Random(seed)
    s = Script(seed)
    fs = FlowSurge(rs)
    for hour in range(SPAN_H):
        for code in sorted(ports()):
            lam = fs.expected(code, T0 // HOUR + hour) * scale * (4 if code == surge_port and hour >= surge_from else 1)
            lam *= (regions or {}).get(ports()[code].region, 1)
            for _ in range(_poisson(rng, lam)):
                at = T0 + hour * HOUR + rng.randrange(HOUR)
                subject = token(code, at, rng.random())
                s.events.append(("clearance", ports()[code].region, subject,
                                 {"event_id": subject[:32], "region": ports()[code].region, "port_code": code,
                                  "subject": subject, "occurred_at": at}))
    return s.events


# ------------------------------------------------------------------ the orders agree
@pytest.fixture(scope="module")
def trends(rs):
    events = trend_scenario(rs)
    return events, play(rs, in_event_time(events))


@pytest.fixture(scope="module")
def fraud():
    events = fraud_scenario()
    return events, play(ruleset.default(), in_event_time(events))


@pytest.fixture(scope="module")
def flow(rs):
    events = flow_scenario(rs)
    return events, play(rs, in_event_time(events))


def test_the_scenarios_raise_their_alerts_in_event_time_order(trends, fraud, flow):
    kinds = lambda st: sorted(a["kind"] for k, a in st.outs if k == "derived_alert")  # noqa: E731
    assert kinds(trends[1]) == ["HEIGHTENED_MODE", "SYSTEMIC_ESCALATION", "TREND_RISING", "TREND_RISING"]
    assert [a["must_act"] for k, a in trends[1].outs if k == "derived_alert" and a["kind"] == "TREND_RISING"] == [
        ["ZJ"], ["SH"]]
    assert kinds(fraud[1]) == ["DOCUMENT_FRAUD_SPREAD"]
    assert [a["details"]["regions"] for k, a in fraud[1].outs if k == "derived_alert"] == ["SH,JS"]
    surges = [a for k, a in flow[1].outs if k == "derived_alert"]
    assert [(a["kind"], a["port_code"]) for a in surges] == [("FLOW_SURGE_SUPPORT", "CNSHA-WSK")]


@pytest.mark.parametrize("region", ["SH", "ZJ"])
def test_trends_and_escalation_of_a_region_read_a_day_late_are_those_of_event_time_order(rs, trends, region):
    events, ordered = trends
    late = play(rs, region_delayed(events, region), check=True)
    assert late.live() == ordered.live()
    assert late.signals("trend") == ordered.signals("trend")


# seeds whose interleavings each gave another set of alerts before windows were judged again (40 seeds pass)
@pytest.mark.parametrize("seed", [0, 2, 4, 6])
def test_trends_and_escalation_read_in_any_interleaving_are_those_of_event_time_order(rs, trends, seed):
    events, ordered = trends
    got = play(rs, interleaved(events, seed))
    assert got.live() == ordered.live()
    assert got.signals("trend") == ordered.signals("trend")


def test_fraud_spread_with_the_first_region_read_late_withdraws_the_warning_it_disproves(rs, fraud):
    events, ordered = fraud
    late = play(rs, region_delayed(events, "SH"), check=True)
    assert late.live() == ordered.live()
    versions = [(a["details"]["regions"], a["status"]) for k, a in late.outs if k == "derived_alert"
                and a["kind"] == "DOCUMENT_FRAUD_SPREAD"]
    # Jiangsu and Zhejiang complete it first; Shanghai's earlier hit, read late, moves it to Jiangsu's hit
    assert versions == [("JS,ZJ", "RAISED"), ("JS,ZJ", "WITHDRAWN"), ("SH,JS", "RAISED")]


@pytest.mark.parametrize("seed", [0, 6, 9, 10, 11, 12])
def test_fraud_spread_read_in_any_interleaving_is_that_of_event_time_order(rs, fraud, seed):
    events, ordered = fraud
    assert play(rs, interleaved(events, seed)).live() == ordered.live()


def test_a_surge_at_a_port_whose_region_uploads_a_day_late_is_raised_with_its_in_order_id(rs, flow):
    events, ordered = flow
    late = play(rs, region_delayed(events, "SH"))
    assert late.live() == ordered.live() and late.live()
    assert late.signals("flow_surge") == ordered.signals("flow_surge")


@pytest.mark.parametrize("seed", range(3))
def test_flow_surges_read_in_any_interleaving_are_those_of_event_time_order(rs, flow, seed):
    events, ordered = flow
    got = play(rs, interleaved(events, seed))
    assert got.live() == ordered.live()
    assert got.signals("flow_surge") == ordered.signals("flow_surge")


# ------------------------------------------------------------------ later than the allowed delay
def test_events_later_than_the_allowed_delay_judge_nothing_again_and_are_counted(rs):
    rules = RegionalRules(rs)
    state = rules.new_state()
    delay = rs.allowed_delay_ms()
    s = Script()
    s.alert("NKG", T0 + 3 * DAY, "FORGED_DOCUMENT", subject=token(2), pattern=PAT)
    for h in range(6):
        s.case("CNNGB", T0 + 3 * DAY + h * HOUR, "STOWAWAY", "STOWAWAY_ON_VESSEL", [token("zj", h)], ["VNM"])
    for kind, _, _, rec in s.events:
        rules.on_event(state, plain(kind, rec))
    wm = T0 + 3 * DAY + 10 * HOUR
    rules.on_watermark(state, wm)
    rules.on_event(state, {"_kind": "flow_partial", "port": "PVG", "hour": (T0 + 3 * DAY) // HOUR, "partition": 0,
                           "count": 5, "occurred_at": T0 + 3 * DAY + HOUR - 1})
    rules.on_watermark(state, wm + HOUR)
    assert state["flow"]["judged"] is not None
    # a hit, cases and a flow count older than watermark - allowed delay: each would change a judged window
    too_old = wm + HOUR - delay - HOUR
    s2 = Script(9)
    s2.alert("PVG", too_old, "FORGED_DOCUMENT", subject=token(1), pattern=PAT)
    for h in range(8):
        s2.case("CNNGB", too_old - h * 60_000, "STOWAWAY", "STOWAWAY_ON_VESSEL", [token("late", h)], ["VNM"])
    outs = []
    for kind, _, _, rec in s2.events:
        outs += rules.on_event(state, plain(kind, rec))
    hour = too_old // HOUR
    outs += rules.on_event(state, {"_kind": "flow_partial", "port": "PVG", "hour": hour, "partition": 0,
                                   "count": 500, "occurred_at": (hour + 1) * HOUR - 1})
    assert outs == []                                      # nothing judged again, no signal, no alert
    assert rules.beyond_delay(state) == {"fraud": 1, "trend": 8, "flow": 1}
    # the same hit within the allowed delay completes the spread at once
    s3 = Script(11)
    s3.alert("PVG", wm + HOUR - delay + HOUR, "FORGED_DOCUMENT", subject=token(3), pattern=PAT)
    outs = rules.on_event(state, plain("alert", s3.events[0][3]))
    assert [a["kind"] for k, a in outs if k == "derived_alert"] == ["DOCUMENT_FRAUD_SPREAD"]


def test_a_case_read_again_long_after_it_was_counted_is_not_counted_twice(rs):
    """A re-key step or a stage reading a partition again from its last commit forwards cases the stage has
    counted, however far its watermark has moved since: each case counts once in every window and baseline that
    still holds its hour (a second count would raise every later window's expected rate)."""
    rules = RegionalRules(rs)
    state = rules.new_state()
    events = in_event_time(trend_scenario(rs))
    cases = [rec for kind, _, _, rec in events if kind == "case"]
    for kind, _, _, rec in events:
        rules.on_event(state, plain(kind, rec))
    for hours in (30, 100, 300):
        rules.on_watermark(state, T0 + hours * HOUR)
        counted = copy.deepcopy(state["trend"]["buckets"])
        assert counted, "the baselines still hold the cases' hours"
        for rec in cases[:20]:
            rules.on_event(state, plain("case", rec))
        assert state["trend"]["buckets"] == counted, hours


def test_a_clearance_later_than_the_counts_kept_sends_no_partial_and_is_counted(rs):
    fc = FlowCounter(rs)
    st = fc.new_state()
    fc.on_clearance(st, {"port_code": "PVG", "occurred_at": 100 * HOUR + 5}, 0, 0)
    fc.on_watermark(st, 200 * HOUR, 0)
    late = 200 * HOUR - rs.allowed_delay_ms() - rs.minutes_ms("event_time", "lateness_minutes") - 2 * HOUR
    assert fc.on_clearance(st, {"port_code": "PVG", "occurred_at": late}, 0, 0) == []
    assert st["beyond_delay"] == 1
    # within the counts kept: the hour's full count at the next flush (a tick), without the watermark moving; one
    # partial for the clearances read in between
    assert fc.on_clearance(st, {"port_code": "PVG", "occurred_at": 190 * HOUR}, 0, 0) == []
    assert fc.on_clearance(st, {"port_code": "PVG", "occurred_at": 190 * HOUR + 1}, 0, 0) == []
    assert [(p["hour"], p["count"]) for p in fc.flush(st, 0)] == [(190, 2)]
    assert fc.flush(st, 0) == []
    fc.on_clearance(st, {"port_code": "PVG", "occurred_at": 191 * HOUR}, 0, 0)
    assert [(p["hour"], p["count"]) for p in fc.flush(st, 0)] == [(191, 1)]


def test_late_state_is_kept_for_the_allowed_delay_and_pruned_after_it(rs, trends, flow):
    delay_h = rs.allowed_delay_ms() // HOUR
    for _, st in (trends, flow):
        state = copy.deepcopy(st.state)
        judged = max(state["trend"]["judged"] or 0, state["flow"]["judged"] or 0)
        st.rules.on_watermark(state, (judged + 30 * 24) * HOUR)
        if st is flow[1]:
            # flow hours are judged on the partitions' progress: let them report a month on
            for p in range(PARTITIONS):
                st.rules.on_event(state, {"_kind": "flow_partial", "port": "", "hour": judged + 30 * 24,
                                          "partition": p, "count": 0, "progress": True, "partitions": PARTITIONS,
                                          "occurred_at": 0})
            st.rules.on_watermark(state, (judged + 30 * 24 + 1) * HOUR)
        assert state["flow"]["snaps"] == {} or max(map(int, state["flow"]["snaps"])) - min(
            map(int, state["flow"]["snaps"])) <= delay_h + 1
        assert state["flow"]["raised"] == {} and state["flow"]["partials"] == {}
        assert state["trend"]["rising"] == {} and state["trend"]["raised"] == {}
        assert all(not ids for ids in state["trend"]["ids"].values())
        assert state["fraud"]["hits"] == {}


def test_a_heightened_mode_read_after_the_hours_it_covers_judges_them_again_with_its_thresholds(rs):
    """Three stowaways in Zhejiang are no trend, but are one inside a heightened window (multiplier 0.5): read
    after the hours were judged, the window raises the trend at once, with the id of the ordered read."""
    def script():
        s = Script()
        for hour in range(0, 48, 12):    # the profile's rate: the detector's history starts at T0
            s.case("CNNGB", T0 + hour * HOUR, "ILLEGAL_STAY", "VISA_OVERSTAY", [token("bg", hour)], ["VNM"])
        for i in range(3):
            s.case("CNNGB", T0 + 2 * DAY + i * HOUR, "STOWAWAY", "STOWAWAY_ON_VESSEL", [token(i)], ["VNM"])
        s.control(["ZJ"], T0 + 2 * DAY, T0 + 3 * DAY, 0.5, issued=T0 + 2 * DAY)
        return s.events
    rules = RegionalRules(rs)
    ordered = rules.new_state()
    first = []
    for kind, _, _, rec in sorted(script(), key=lambda e: e[3]["occurred_at"]):
        first += rules.on_event(ordered, plain(kind, rec))
    first += rules.on_watermark(ordered, T0 + 3 * DAY)[0]
    trend = [a["alert_id"] for k, a in first if k == "derived_alert" and a["kind"] == "TREND_RISING"]
    assert len(trend) == 1
    late = rules.new_state()
    events = script()
    for kind, _, _, rec in events[:-1]:
        rules.on_event(late, plain(kind, rec))
    outs = rules.on_watermark(late, T0 + 3 * DAY)[0]
    assert [a for k, a in outs if k == "derived_alert"] == []
    outs = rules.on_event(late, plain("control", events[-1][3]))
    assert [a["alert_id"] for k, a in outs if k == "derived_alert" and a["kind"] == "TREND_RISING"] == trend


def test_a_case_read_late_within_the_allowed_delay_is_judged_with_a_heightened_window_ended_long_before(rs):
    """A short heightened window (6 h) that ended more than a day before the watermark still sets the thresholds
    of the hours it covered: a stowaway case read 35 h late (within the 48 h allowed delay) completes the trend
    the window's multiplier makes of two cases, with the id of the ordered read."""
    def script():
        s = Script()
        for hour in range(0, 48, 12):
            s.case("CNNGB", T0 + hour * HOUR, "ILLEGAL_STAY", "VISA_OVERSTAY", [token("bg", hour)], ["VNM"])
        s.control(["ZJ"], T0 + 2 * DAY, T0 + 2 * DAY + 6 * HOUR, 0.5, issued=T0 + 2 * DAY)
        for i in range(2):
            s.case("CNNGB", T0 + 2 * DAY + i * HOUR, "STOWAWAY", "STOWAWAY_ON_VESSEL", [token(i)], ["VNM"])
        # later traffic that moves the watermark on, past the window's end by more than a day
        for hour in range(2 * 24 + 8, 3 * 24 + 20, 6):
            s.case("CNSHA-WGQ", T0 + hour * HOUR, "ILLEGAL_STAY", "VISA_OVERSTAY", [token("later", hour)], ["VNM"])
        return s.events

    rules = RegionalRules(rs)
    events = script()
    ordered = play(rs, in_event_time(events))
    trend = {i for i in ordered.live("trend")}
    assert len(trend) == 1
    late = rules.new_state()
    outs: list = []
    stowaways = [e for e in events if e[3].get("case_type") == "STOWAWAY"]
    for kind, _, _, rec in in_event_time([e for e in events if e is not stowaways[-1]]):
        outs += rules.on_event(late, plain(kind, rec))
        if kind != "control":
            outs += rules.on_watermark(late, rec["occurred_at"] - rs.minutes_ms("event_time",
                                                                                "global_lateness_minutes"))[0]
    wm = late["trend"]["wm"]
    at = stowaways[-1][3]["occurred_at"]
    assert wm - (T0 + 2 * DAY + 6 * HOUR) > DAY and wm - at < rs.allowed_delay_ms()
    assert [a for k, a in outs if k == "derived_alert" and a["kind"] == "TREND_RISING"] == []
    outs = rules.on_event(late, plain("case", stowaways[-1][3]))
    assert {a["alert_id"] for k, a in outs if k == "derived_alert" and a["kind"] == "TREND_RISING"} == trend


@pytest.mark.parametrize("value, message", [(-1, "expected a number >= 0"), ("48", "expected a number >= 0"),
                                            (1, "shorter than global_lateness_minutes")])
def test_an_allowed_delay_that_is_not_a_duration_past_the_lateness_is_refused(rs, value, message):
    data = {"version": "t", **rs.sections, "event_time": {**rs["event_time"], "allowed_delay_hours": value}}
    with pytest.raises(ruleset.RuleSetError, match=message):
        ruleset.from_dict(data)
    assert rs.allowed_delay_ms() == 48 * HOUR


def test_an_episode_under_way_in_a_state_kept_before_the_upgrade_raises_no_second_alert(rs):
    """A trend state of the previous release (episodes and escalations, no rising windows nor alerts kept) goes on
    with its episodes: a rising window within the cooldown of one raises nothing."""
    rules = RegionalRules(rs)
    state = rules.new_state()
    for i in range(10):
        rules.on_event(state, plain("case", Script(i).case("CNNGB", T0 + 20 * HOUR + i * HOUR, "STOWAWAY",
                                                            "STOWAWAY_ON_VESSEL", [token("zj", i)], ["VNM"])))
    outs = rules.on_watermark(state, T0 + 24 * HOUR)[0]
    [first] = [a for k, a in outs if k == "derived_alert"]
    kept = {k: v for k, v in state["trend"].items() if k not in ("rising", "raised", "wm", "beyond_delay")}
    end = first["occurred_at"] + 1
    for old, raises in (({**kept, "episodes": {"ZJ|STOWAWAY": {"since": end, "last": end, "alert_id": first[
            "alert_id"]}}, "systemic": {}}, False), ({**kept, "episodes": {}, "systemic": {}}, True)):
        again = {**copy.deepcopy(state), "trend": copy.deepcopy(old)}
        outs = rules.on_watermark(again, T0 + 32 * HOUR)[0]
        assert [a["kind"] for k, a in outs if k == "derived_alert"] == (["TREND_RISING"] if raises else [])


def test_cases_of_a_second_source_read_late_move_an_episode_earlier_and_withdraw_its_first_alert(rs):
    """Zhejiang's stowaways come from two sources; the one read a day late fills the hours between the other's
    cases, so the episode's first rising window is earlier: its alert (another id, named by that window) is
    raised and the one of the later window withdrawn, and the escalation named by it with it."""
    s = Script()
    for i in range(8):
        s.case("CNSHA-YSN", T0 + (22 + i) * HOUR, "STOWAWAY", "STOWAWAY_ON_VESSEL", [token("sh", i)], ["MMR"])
    for h in range(20, 31):
        s.case("CNNGB" if h % 2 == 0 else "NGB", T0 + h * HOUR, "STOWAWAY", "STOWAWAY_ON_VESSEL", [token("zj", h)],
               ["VNM"])
    late = [e for e in s.events if e[3]["port_code"] == "NGB"]

    def run(order):
        rules, outs = RegionalRules(rs), []
        state = rules.new_state()
        for kind, _, _, rec in order:
            outs += rules.on_event(state, plain(kind, rec))
            outs += rules.on_watermark(state, rec["occurred_at"] - 2 * HOUR)[0]
        outs += rules.on_watermark(state, T0 + 40 * HOUR)[0]
        last = {a["alert_id"]: a for k, a in outs if k == "derived_alert"}
        return outs, {i for i, a in last.items() if derived.is_live(a)}

    _, ordered = run(in_event_time(s.events))
    outs, got = run([e for e in in_event_time(s.events) if e not in late] + late)
    assert got == ordered and len(ordered) == 3
    versions = [(a["kind"], a["must_act"], a["status"]) for k, a in outs if k == "derived_alert"]
    assert ("TREND_RISING", ["ZJ"], "WITHDRAWN") in versions
    assert ("SYSTEMIC_ESCALATION", ["SH", "JS", "ZJ", "AH"], "WITHDRAWN") in versions


def test_a_surge_judged_before_a_busy_region_was_read_is_withdrawn_when_its_traffic_raises_the_scale(rs):
    """Shanghai's and Jiangsu's ports run at three times the profile (the source's level, which the scale learns),
    Hangzhou at four times: in event-time order no surge. Read before Shanghai's traffic, the scale is Zhejiang's
    and Anhui's level and Hangzhou surges; Shanghai's clearances, read late, withdraw it."""
    events = flow_scenario(rs, scale=0.008, surge_port="HGH", surge_from=20, regions={"SH": 3, "JS": 3})
    ordered = play(rs, in_event_time(events))
    assert ordered.live() == set()
    late = play(rs, region_delayed(events, "SH"))
    versions = [(a["kind"], a["port_code"], a["status"]) for k, a in late.outs if k == "derived_alert"]
    assert ("FLOW_SURGE_SUPPORT", "HGH", "WITHDRAWN") in versions
    assert late.live() == set()
