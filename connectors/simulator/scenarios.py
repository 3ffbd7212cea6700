"""The scripted incidents a-j of docs/scenarios.md, hidden in the baseline, and the ground truth of each.

Each incident is planned before the traffic runs: its events go into the
baseline's queue of later events, the crossings it places at a port take slots
of that port's hourly draw (so the flow stays what the profile says), and its
rows of ground truth say which derived alerts it must raise, for whom, when.

All incidents are timed inside the simulated span: at fixed fractions of a
frame of ``min(span, 48 h)`` from the start (so that "within 48 hours" and
"within 4 days" hold for any span). Only the 144-hour transit entry of (e) lies
before the start (138 hours before it when the frame is 30 hours), published
first, so that its deadline falls inside the span.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field

from schemas import reference
from connectors.simulator import people, records
from connectors.simulator.people import People, Traveller
from connectors.simulator.records import HOUR, MINUTE, SECOND
from connectors.simulator.traffic import Baseline, Window, sub_seed
from connectors.simulator.truth import TruthRow

#: letter -> name, in the order of docs/scenarios.md
SCENARIOS = {
    "a": "cross_region_hit", "b": "port_shopping", "c": "fraud_spread", "d": "case_surge",
    "e": "transit_overstay", "f": "transit_exit_to_origin", "g": "transit_out_of_area",
    "h": "diverted_flight", "i": "flow_surge", "j": "heightened_mode",
}
LETTER = {name: letter for letter, name in SCENARIOS.items()}
#: regions whose traffic each incident needs
NEEDS = {"a": {"SH", "JS"}, "b": {"ZJ", "SH"}, "c": {"SH", "JS", "ZJ"}, "d": {"ZJ", "SH"}, "e": {"SH"},
         "f": {"SH", "JS"}, "g": {"SH", "AH"}, "h": {"SH", "ZJ"}, "i": {"ZJ"}, "j": {"SH"}}
ALL_REGIONS = list(reference.REGIONS)
MAX_FRAME = 48 * HOUR
TRANSIT_HOURS = 144


class UnknownScenario(ValueError):
    pass


def resolve(names: list[str]) -> list[str]:
    """Letters of the scenarios named (by letter or name, or ``all``), in a-j order."""
    out = set()
    for n in names:
        n = n.strip().lower()
        if n == "all":
            out.update(SCENARIOS)
        elif n in SCENARIOS:
            out.add(n)
        elif n in LETTER:
            out.add(LETTER[n])
        else:
            raise UnknownScenario(f"unknown scenario {n!r}; expected all, a-j or one of {', '.join(SCENARIOS.values())}")
    return sorted(out)


@dataclass
class Incident:
    letter: str
    name: str
    rows: list[TruthRow] = field(default_factory=list)
    events: int = 0
    complete_at: int = 0      # event time the simulation must reach for every piece of evidence to be out

    @property
    def scenario_id(self) -> str:
        return f"{self.letter}-1"

    def summary(self, complete: bool) -> dict:
        return {"scenario_id": self.scenario_id, "scenario": self.name, "rows": len(self.rows),
                "expected": sorted({r.expected_alert_kind for r in self.rows}), "events": self.events,
                "complete": complete}


class Planner:
    """Plans the chosen incidents into a baseline."""

    def __init__(self, seed: int, start: int, span: int, baseline: Baseline, pseudonymizer):
        self.seed = seed
        self.start = start
        self.frame = min(span, MAX_FRAME)
        self.base = baseline
        self.pseudonymizer = pseudonymizer
        self.ports = reference.ports()

    def at(self, fraction: float) -> int:
        """The event time at ``fraction`` of the frame, on a whole second."""
        return self.start + int(self.frame * fraction) // SECOND * SECOND

    def margin(self, hours: float) -> int:
        """A window margin of ``hours`` that still fits short frames."""
        return min(int(hours * HOUR), int(self.frame * 0.06))

    def plan(self, letters: list[str]) -> list[Incident]:
        out = []
        for letter in letters:
            inc = Incident(letter, SCENARIOS[letter])
            rng = random.Random(sub_seed(self.seed, "scenario/" + letter))
            self._rng, self._who, self._inc = rng, People(rng, self.pseudonymizer, 0.226), inc
            getattr(self, "_" + letter)(inc)
            out.append(inc)
        return out

    # ------------------------------------------------------------------ helpers
    def _emit(self, t: int, kind: str, record: dict, reserve: str | None = None) -> None:
        """Queue one scripted event; a crossing at a port takes a slot of that port's hourly draw."""
        self.base.schedule(t, kind, record)
        self._inc.events += 1
        self._inc.complete_at = max(self._inc.complete_at, t + 1)
        if reserve and t >= self.base.first_hour:
            self.base.reserved[(reserve, self.base.hour_index(t))] += 1

    def _uuid(self) -> str:
        return people.new_uuid(self._rng)

    def _pub(self, t: int) -> int:
        return t + 500 + self._rng.randrange(2500)

    def _flight(self, direction: str, t: int, country: str | None = None) -> people.Conveyance:
        c = people.flight(self._rng, direction, records.at(t).strftime("%Y-%m-%d"), self.base.conveyances)
        if country:
            c.country = country
        return c

    def _cross(self, t: int, port_code: str, trav: Traveller, conv: people.Conveyance, decision="CLEARED",
               scheduled_port: str | None = None) -> None:
        port = self.ports[port_code]
        entry = conv.direction == "ENTRY"
        self._emit(t, "clearance", records.clearance(
            self._uuid(), t, self._pub(t), port, trav, conv.direction, conv.conveyance_type, conv.conveyance_id,
            decision=decision, origin_country=conv.country if entry else None,
            destination_country=None if entry else conv.country, scheduled_port=scheduled_port), reserve=port_code)

    def _alert(self, t: int, port_code: str, kind: str, severity: str, source: str, trav: Traveller | None,
               conv: people.Conveyance | None, description: str, **extra) -> None:
        self._emit(t, "alert", records.alert(
            self._uuid(), t, self._pub(t), self.ports[port_code], kind, severity, source, traveller=trav,
            conveyance_type=conv.conveyance_type if conv else None, conveyance_id=conv.conveyance_id if conv else None,
            description=description, **extra))

    def _row(self, inc: Incident, kind: str, incident_kind: str, notify, start: int, end: int, **ids) -> None:
        inc.rows.append(TruthRow(inc.scenario_id, inc.name, incident_kind, kind, list(notify), start, end, **ids))

    def _foreigner(self, eligible_transit: bool = False) -> Traveller:
        if eligible_transit:
            return self._who.transit_passenger()
        nat = people.FOREIGN.pick(self._rng)
        subject, name_token = self._who.identity(nat, nat)
        return Traveller(subject, name_token, nat, "PASSPORT", nat, "VISA", "MANUAL")

    # ------------------------------------------------------------------ a-j
    def _a(self, inc: Incident) -> None:
        """A watch-listed traveller cleared (under watch) at Pudong, SH; hours later leaves from Nanjing, JS."""
        s = self._foreigner()
        t1, t2 = self.at(0.05), self.at(0.25)
        conv = self._flight("ENTRY", t1)
        self._alert(t1, "PVG", "WATCHLIST_HIT", "HIGH", "WATCHLIST", s, conv,
                    "watch-list match (watch and report): cleared under watch")
        self._cross(t1 + 2 * MINUTE, "PVG", s, conv, decision="CLEARED")
        self._cross(t2, "NKG", s, self._flight("EXIT", t2))
        self._row(inc, "CROSS_REGION_HIT", "watchlisted traveller seen in another region", ["JS", "SH"],
                  t2, t2 + self.margin(1), subjects=[s.subject])

    def _b(self, inc: Incident) -> None:
        """Refused entry at Hangzhou, ZJ; hours later tries again at Pudong, SH."""
        s = self._foreigner()
        t1, t2 = self.at(0.15), self.at(0.30)
        conv = self._flight("ENTRY", t1)
        self._alert(t1, "HGH", "REFUSAL", "MEDIUM", "OFFICER", s, conv, "entry refused: purpose of visit not shown")
        self._cross(t1 + 3 * MINUTE, "HGH", s, conv, decision="REFUSED")
        self._cross(t2, "PVG", s, self._flight("ENTRY", t2), decision="REFERRED")
        self._row(inc, "PORT_SHOPPING", "refused in one region, attempts entry in another within 48 hours",
                  ["SH", "ZJ"], t2, t2 + self.margin(1), subjects=[s.subject])

    def _c(self, inc: Incident) -> None:
        """One forged-passport pattern at Pudong (SH), Nanjing (JS), Hangzhou (ZJ) within the frame."""
        country = ["VNM", "IDN", "PHL", "MYS", "THA", "KHM"][self._rng.randrange(6)]
        series = f"Z{self._rng.randrange(10)}"
        method = "COUNTERFEIT"
        hits = [(self.at(0.10), "PVG"), (self.at(0.35), "NKG"), (self.at(0.55), "HGH")]
        for t, port in hits:
            subject, name_token = self._who.identity(country, country)
            trav = Traveller(subject, name_token, country, "PASSPORT", country, "VISA", "MANUAL")
            conv = self._flight("ENTRY", t)
            self._alert(t, port, "FORGED_DOCUMENT", "MEDIUM", "DOCUMENT_EXAMINATION", trav, conv,
                        "document examination: counterfeit passport", document_series=series, fraud_method=method)
            self._cross(t + 4 * MINUTE, port, trav, conv, decision="DETAINED")
        second = hits[1][0]
        self._row(inc, "DOCUMENT_FRAUD_SPREAD", "one forged-document pattern in three regions within days",
                  ALL_REGIONS, second, second + self.margin(1), pattern=f"{country}/PASSPORT/{series}/{method}")

    def _d(self, inc: Incident) -> None:
        """Stowaways found on vessels at Ningbo-Zhoushan (ZJ), then at Yangshan and Waigaoqiao (SH)."""
        nat = ["MMR", "VNM", "PHL", "BGD"][self._rng.randrange(4)]
        margin = self.margin(2)
        # late in the frame: a trend detector judges against the history it has seen, so give it some
        for region, ports, a, b in (("ZJ", ["CNNGB"], 0.38, 0.52), ("SH", ["CNSHA-YSN", "CNSHA-WGQ"], 0.60, 0.74)):
            n = 6
            times = [self.at(a + (b - a) * k / (n - 1)) + self._rng.randrange(10 * MINUTE) for k in range(n)]
            times[-1] = min(times[-1], self.at(b))
            for k, t in enumerate(times):
                port = self.ports[ports[k % len(ports)]]
                persons = 1 + self._rng.randrange(3)
                vessel = people.vessel(self._rng, "ENTRY", False, self.base.conveyances).conveyance_id
                self.base.open_case(self._rng, self._who, port, t, "STOWAWAY", "STOWAWAY_ON_VESSEL", [nat] * persons,
                                    vessel, lambda tt, kind, rec: self._emit(tt, kind, rec),
                                    description="stowaways found in a container on arrival")
            first, last = times[0], max(times)
            notify = [region] + reference.neighbours(region)
            self._row(inc, "TREND_RISING", f"stowaway cases rising at {region}'s seaports", notify, first, last + margin)
            if region == "SH":
                self._row(inc, "SYSTEMIC_ESCALATION", "the stowaway trend rising in a second region", ALL_REGIONS,
                          first, last + margin)
        # the case events of days later are not evidence: the incident is complete once the surge is out
        inc.complete_at = self.at(0.74) + 1

    def _e(self, inc: Incident) -> None:
        """A 144-hour transit entry at Pudong before the start; no exit by the deadline, inside the span."""
        deadline = self.at(0.2)
        entered = deadline - TRANSIT_HOURS * HOUR
        s = self._foreigner(eligible_transit=True)
        conv = self._flight("ENTRY", entered)
        self._cross(entered, "PVG", s, conv)
        self._row(inc, "TRANSIT_OVERSTAY", "144-hour transit stay overrun", ["SH", "JS", "ZJ"],
                  deadline, deadline + self.margin(1), subjects=[s.subject])
        inc.complete_at = deadline + self.margin(1)

    def _f(self, inc: Incident) -> None:
        """A transit traveller who came from country X leaves from Nanjing (JS) for X."""
        s = self._foreigner(eligible_transit=True)
        t1, t2 = self.at(0.08), self.at(0.40)
        conv = self._flight("ENTRY", t1)
        self._cross(t1, "PVG", s, conv)
        self._cross(t2, "NKG", s, self._flight("EXIT", t2, country=conv.country))
        self._row(inc, "TRANSIT_EXIT_TO_ORIGIN", "transit traveller leaving toward the country they came from",
                  ["JS", "SH"], t2, t2 + self.margin(1), subjects=[s.subject])

    def _g(self, inc: Incident) -> None:
        """A transit traveller who entered at Pudong (SH) leaves from Hefei (AH), outside the permitted area."""
        s = self._foreigner(eligible_transit=True)
        t1, t2 = self.at(0.12), self.at(0.50)
        conv = self._flight("ENTRY", t1)
        self._cross(t1, "PVG", s, conv)
        onward = people.AIR.pick_except(self._rng, conv.country)
        self._cross(t2, "HFE", s, self._flight("EXIT", t2, country=onward))
        self._row(inc, "TRANSIT_OUT_OF_AREA", "transit traveller at a port outside the permitted area",
                  ["AH", "SH"], t2, t2 + self.margin(1), subjects=[s.subject])

    def _h(self, inc: Incident) -> None:
        """A flight scheduled to Pudong lands at Hangzhou; SH's advance check flagged one of its passengers."""
        landed = self.at(0.45)
        conv = people.flight(self._rng, "ENTRY", f"{records.at(landed):%Y-%m-%d}", self.base.conveyances)
        conv.country = "JPN"
        flagged = self._foreigner()
        self._alert(landed - 2 * HOUR, "PVG", "WATCHLIST_HIT", "HIGH", "WATCHLIST", flagged, conv,
                    "advance passenger information: watch-list match, pending arrival at PVG")
        passengers = [self._who.passenger("ENTRY", False) for _ in range(140 + self._rng.randrange(40))]
        crew = [self._who.crew(conv.crew_nationality or "CHN", air=True) for _ in range(12)]
        everyone = crew + passengers
        everyone.insert(len(crew) + self._rng.randrange(len(passengers)), flagged)
        times = sorted(landed + 5 * MINUTE + self._rng.randrange(35 * MINUTE) for _ in everyone)
        flagged_at = None
        for t, trav in zip(times, everyone):
            self._cross(t, "HGH", trav, conv, scheduled_port="PVG")
            if trav is flagged:
                flagged_at = t
        self._row(inc, "CONVEYANCE_DIVERTED", "flight scheduled to PVG landed at HGH with a flagged passenger",
                  ["SH", "ZJ"], times[0], times[-1] + self.margin(1), conveyance_id=conv.conveyance_id)
        self._row(inc, "CROSS_REGION_HIT", "watch-listed passenger of the diverted flight cleared in ZJ",
                  ["SH", "ZJ"], flagged_at, flagged_at + self.margin(1), subjects=[flagged.subject])
        # a wide-body's passengers at an airport that did not expect them can be a surge of its hourly flow
        # (two hours over its hour-of-week level, whether it is depends on the night's traffic around them)
        self._row(inc, "FLOW_SURGE_SUPPORT", "the diverted flight's passengers surge HGH's hourly flow", ["ZJ"],
                  times[0] // HOUR * HOUR, (times[-1] // HOUR + 2) * HOUR + self.margin(1), port_code="HGH",
                  optional=True)

    def _i(self, inc: Incident) -> None:
        """An expo week at Ningbo airport (ZJ): four times the usual flow for several hours."""
        port = self.ports["NGB"]
        # after some hours of ordinary traffic, so that a detector has seen the port's usual level first
        first = (self.at(0.30) - self.base.first_hour) // HOUR * HOUR + self.base.first_hour + HOUR
        hours = max(2, round(self.frame * 0.2 / HOUR))
        for k in range(hours):
            self.base.surge[(port.code, self.base.hour_index(first + k * HOUR))] = 3.0
        end = first + hours * HOUR
        notify = [port.region] + reference.neighbours(port.region)
        self._row(inc, "FLOW_SURGE_SUPPORT", "passenger-flow surge at one port (expo week)", notify,
                  first, end + self.margin(1), port_code=port.code)
        inc.complete_at = end   # its crossings are drawn with each hour's traffic (Baseline.surge_events)

    def _j(self, inc: Incident) -> None:
        """A heightened-security window for SH (the Import Expo), and a HIGH smuggling alert inside it."""
        starts, ends = self.at(0.78), self.at(0.95)
        issued = starts - 30 * MINUTE
        self._emit(issued, "control", records.control(
            self._uuid(), issued, starts, ends, ["SH"], 0.5, "China International Import Expo: security period",
            "YRD joint command centre"))
        self.base.heightened.append(Window(frozenset({"SH"}), starts, ends))
        t = self.at(0.85)
        s = self._foreigner()
        conv = self._flight("ENTRY", t)
        self._alert(t, "PVG", "SMUGGLING", "HIGH", "OFFICER", s, conv, "weapons parts concealed in baggage")
        self._cross(t + 6 * MINUTE, "PVG", s, conv, decision="DETAINED")
        self._row(inc, "HEIGHTENED_MODE", "heightened-security window for a major event", ALL_REGIONS,
                  issued, starts + self.margin(1))
        self._row(inc, "BROADCAST", "HIGH alert inside the heightened window", ALL_REGIONS, t, t + self.margin(1),
                  subjects=[s.subject])
