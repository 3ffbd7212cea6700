"""Baseline traffic of the four regions, an hour at a time, and the rules that keep it clean.

Per port and UTC hour, the number of crossings is Poisson around the flow
profile's expectation (``profile.py``), and nothing else moves it: crossings a
scenario places at a port take slots of that draw, and so do the exits of
144-hour transit travellers. The crossings are shared out over the hour's
flights or vessels, each with its passengers and crew.

What baseline traffic guarantees (docs/scenarios.md) is kept here:
flagged travellers (watch-list hit, fraud, impostor, refusal ...) are fresh
identities that never cross again; fraud patterns are drawn from a series pool
of the region's own; cases are Poisson per region, type and method, shaped only
by the day-of-week curve; transit travellers leave within 144 hours toward a
third country from a transit port of SH, JS or ZJ; no COUNTER_TERROR or
PUBLIC_HEALTH alert above MEDIUM; and inside a heightened-security window no
baseline alert of the window's regions is above MEDIUM (so the only alert the
window broadcasts is the scripted one).
"""
from __future__ import annotations

import heapq
import random
import zlib
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from schemas import reference
from connectors.simulator import people, records
from connectors.simulator.people import People, Traveller, Weighted
from connectors.simulator.profile import FlowProfile
from connectors.simulator.records import DAY, HOUR, MINUTE, SECOND

TRANSIT_REGIONS = ("SH", "JS", "ZJ")
#: Of the passengers arriving at a 144-hour transit port, the share on a 144-hour transit stay.
TRANSIT_SHARE = 0.004

#: Conveyance loads and crew shares by kind of port (cruise terminal apart: thousands on one ship).
LOAD = {"AIR": 170, "SEA": 24, "RIVER": 16, "CRUISE": 2400}
CREW_SHARE = {"AIR": 0.07, "SEA": 0.65, "RIVER": 0.85, "CRUISE": 0.04}
CRUISE_PORTS = frozenset({"CNSHA-WSK"})

#: Alerts raised at checkpoints: (kind, per day over the whole region, source, severities, decision, who).
#: who: "any", "foreign_entry", "foreign_exit", "entry". About 30 a day for 156,000 crossings.
ALERTS = [
    ("WATCHLIST_HIT", 6.0, "WATCHLIST", {"HIGH": .4, "MEDIUM": .45, "LOW": .15}, "REFERRED", "any"),
    ("REFUSAL", 8.0, "OFFICER", {"MEDIUM": .6, "LOW": .4}, "REFUSED", "foreign_entry"),
    ("FORGED_DOCUMENT", 1.5, "DOCUMENT_EXAMINATION", {"MEDIUM": .7, "HIGH": .3}, "DETAINED", "any"),
    ("IMPOSTOR", 0.6, "E_GATE", {"MEDIUM": .6, "HIGH": .4}, "DETAINED", "any"),
    ("OVERSTAY", 5.0, "OFFICER", {"LOW": .7, "MEDIUM": .3}, "CLEARED", "foreign_exit"),
    ("SMUGGLING", 1.0, "OFFICER", {"LOW": .2, "MEDIUM": .6, "HIGH": .2}, "DETAINED", "any"),
    ("ILLEGAL_ENTRY_ATTEMPT", 0.5, "OFFICER", {"MEDIUM": .6, "HIGH": .4}, "DETAINED", "entry"),
    ("COUNTER_TERROR", 0.2, "WATCHLIST", {"LOW": .5, "MEDIUM": .5}, "REFERRED", "any"),
    ("PUBLIC_HEALTH", 3.0, "OFFICER", {"LOW": .8, "MEDIUM": .2}, "REFERRED", "entry"),
    ("OTHER", 4.0, "OFFICER", {"LOW": .9, "MEDIUM": .1}, "CLEARED", "any"),
]
ALERT_PER_CROSSING = sum(a[1] for a in ALERTS) / 156_000
VESSEL_RISK_PER_VESSEL = 0.004
FRAUD_METHODS = {"COUNTERFEIT": 4, "ALTERED": 3, "STOLEN_BLANK": 1, "FRAUDULENTLY_OBTAINED": 1}
FRAUD_METHOD = Weighted(FRAUD_METHODS)
#: Document series of fraud patterns: each region draws from letters of its own, so a baseline pattern never
#: appears in two regions; Y and Z are left for scripted incidents.
SERIES_LETTERS = {"SH": "ABCDEF", "JS": "GHJKL", "ZJ": "MNPQR", "AH": "STUVW"}
ALERT_TEXT = {
    "WATCHLIST_HIT": "watch-list match at document check", "REFUSAL": "entry refused: purpose of visit not shown",
    "FORGED_DOCUMENT": "document examination: forged document", "IMPOSTOR": "face does not match the document",
    "OVERSTAY": "stay exceeded the permitted period", "SMUGGLING": "undeclared goods concealed in baggage",
    "ILLEGAL_ENTRY_ATTEMPT": "attempted entry avoiding the checkpoint", "COUNTER_TERROR": "counter-terror check: referred",
    "PUBLIC_HEALTH": "fever screening: referred to quarantine", "OTHER": "officer's note",
    "VESSEL_RISK": "vessel risk model: irregular crew list",
}
#: Case lifecycle: which case types lead to detention.
DETAINING = frozenset({"ILLEGAL_ENTRY", "ILLEGAL_EXIT", "ILLEGAL_STAY", "ILLEGAL_EMPLOYMENT", "DOCUMENT_FRAUD",
                       "PEOPLE_SMUGGLING", "STOWAWAY"})


def passenger_foreign_share(foreign_share: float) -> float:
    """The share of foreign nationals among passengers that makes ``foreign_share`` of all crossings foreign.

    Crews count as crossings too, and most seafarers and the crews of foreign airlines are foreign: the
    passengers' share is lowered by what the crews already bring, weighted by each port's volume.
    """
    regions = reference.regions()
    air_routes = people.AIR_ROUTES
    local = sum(w for c, w in air_routes.items() if c in ("HKG", "MAC", "TWN"))
    foreign_airline = (1 - 0.6) * (1 - local / sum(air_routes.values()))      # see people.flight()
    seafarers = 1 - people.SEAFARER_NATIONALITIES["CHN"] / sum(people.SEAFARER_NATIONALITIES.values())
    crew = crew_foreign = 0.0
    for p in reference.ports().values():
        volume = regions[p.region]["share_of_crossings"] * p.share_of_region
        kind = "CRUISE" if p.code in CRUISE_PORTS else p.kind
        crew += volume * CREW_SHARE[kind]
        crew_foreign += volume * CREW_SHARE[kind] * (foreign_airline if kind == "AIR" else seafarers)
    return max(0.0, (foreign_share - crew_foreign) / (1 - crew))


def sub_seed(seed: int, name: str) -> int:
    return (seed * 1_000_003 + zlib.crc32(name.encode())) & 0xFFFF_FFFF


@dataclass
class TransitExit:
    traveller: Traveller
    origin: str
    entered_at: int


@dataclass
class Window:
    regions: frozenset
    starts: int
    ends: int


class Events:
    """Timed events of one hour: (occurred_at ms, sequence, kind, record), sortable."""

    def __init__(self, counter):
        self.items: list = []
        self._counter = counter

    def add(self, t: int, kind: str, record: dict) -> None:
        self.items.append((t, next(self._counter), kind, record))


class Baseline:
    """The baseline traffic model. ``hour(h0)`` returns that hour's events; ``later`` keeps what comes after."""

    def __init__(self, seed: int, regions: list[str], profile: FlowProfile, pseudonymizer, counter,
                 scale: float = 1.0, first_hour: int = 0):
        self.seed = seed
        self.profile = profile
        self.scale = scale
        self.first_hour = first_hour
        self.counter = counter
        self.regions = [r for r in reference.REGIONS if r in regions]
        self.ports = [p for p in reference.ports().values() if p.region in self.regions]
        self.rng = {p.code: random.Random(sub_seed(seed, "port/" + p.code)) for p in self.ports}
        self.np = {p.code: np.random.default_rng(sub_seed(seed, "poisson/" + p.code)) for p in self.ports}
        share = passenger_foreign_share(profile.foreign_share)
        self.people = {p.code: People(self.rng[p.code], pseudonymizer, share) for p in self.ports}
        self.case_rng = {r: random.Random(sub_seed(seed, "cases/" + r)) for r in self.regions}
        self.case_np = {r: np.random.default_rng(sub_seed(seed, "case-poisson/" + r)) for r in self.regions}
        self.case_people = {r: People(self.case_rng[r], pseudonymizer, profile.foreign_share) for r in self.regions}
        self.case_seq = {r: 1000 + self.case_rng[r].randrange(4000) for r in self.regions}
        self.transit_exit_ports = [p for p in self.ports if p.transit_144h and p.region in TRANSIT_REGIONS]
        # set by the scenario plan
        self.reserved: dict[tuple[str, int], int] = defaultdict(int)
        self.surge: dict[tuple[str, int], float] = {}
        self.heightened: list[Window] = []
        # state
        self.exits: dict[tuple[str, int], list[TransitExit]] = defaultdict(list)
        self.later: list = []       # heap of (t, seq, kind, record) due after the current hour
        self.surge_events = 0       # crossings drawn on top of the profile for a flow-surge incident
        # Conveyance ids given so far: a flight number is one flight a day, a vessel's voyage one call, so no
        # baseline conveyance is seen at two ports (that would look like a diversion). Kept for the run: a
        # few thousand a day.
        self.conveyances: set[str] = set()
        self.alert_kinds = self._alert_tables()
        self.severities = {a[0]: Weighted(a[3]) for a in ALERTS}

    # ------------------------------------------------------------------ tables
    @staticmethod
    def _alert_tables() -> dict:
        def table(pred):
            return Weighted({a[0]: a[1] for a in ALERTS if pred(a[5])})
        tables = {}
        for direction in ("ENTRY", "EXIT"):
            for foreign in (False, True):
                tables[(direction, foreign)] = table(
                    lambda who, d=direction, f=foreign: who == "any" or (who == "entry" and d == "ENTRY")
                    or (who == "foreign_entry" and f and d == "ENTRY") or (who == "foreign_exit" and f and d == "EXIT"))
        return tables

    def hour_index(self, t: int) -> int:
        return (t - self.first_hour) // HOUR

    def capped(self, region: str, t: int) -> bool:
        return any(region in w.regions and w.starts <= t < w.ends for w in self.heightened)

    # ------------------------------------------------------------------ an hour
    def hour(self, h0: int, not_before: int | None = None) -> list:
        """Every event of the UTC hour starting at ``h0`` (epoch ms), sorted by event time.

        ``not_before`` drops the hour's own traffic before that time (a start inside an hour); queued events
        (scripted ones, later stages of cases) are kept whatever their time.
        """
        out = Events(self.counter)
        hidx = self.hour_index(h0)
        for port in self.ports:
            self._port_hour(port, h0, hidx, out)
        for region in self.regions:
            self._cases(region, h0, out)
        end = h0 + HOUR
        items = out.items
        if not_before is not None and not_before > h0:
            items = [e for e in items if e[0] >= not_before]
        while self.later and self.later[0][0] < end:
            items.append(heapq.heappop(self.later))
        items.sort(key=lambda e: (e[0], e[1]))
        return items

    def schedule(self, t: int, kind: str, record: dict) -> None:
        heapq.heappush(self.later, (t, next(self.counter), kind, record))

    def _port_hour(self, port: reference.Port, h0: int, hidx: int, out: Events) -> None:
        key = (port.code, hidx)
        n = int(self.np[port.code].poisson(self.profile.expected(port, h0) * self.scale))
        n = max(0, n - self.reserved.pop(key, 0))
        due = self.exits.pop(key, [])
        if len(due) > n:   # more transit travellers leaving than this hour's slots: the rest take the next hour
            self.exits[(port.code, hidx + 1)].extend(due[n:])
            due = due[:n]
        self._conveyances(port, h0, n - len(due), due, out, alerts=True)
        extra = self.surge.get(key)
        if extra:
            m = int(self.np[port.code].poisson(self.profile.expected(port, h0) * self.scale * extra))
            self.surge_events += m
            self._conveyances(port, h0, m, [], out, alerts=False)

    def _conveyances(self, port: reference.Port, h0: int, fresh: int, due: list[TransitExit], out: Events,
                     alerts: bool) -> None:
        total = fresh + len(due)
        if total <= 0:
            return
        rng = self.rng[port.code]
        kind = "CRUISE" if port.code in CRUISE_PORTS else port.kind
        k = max(1, round(total / LOAD[kind]))
        sizes = self.np[port.code].multinomial(fresh, [1.0 / k] * k) if fresh else [0] * k
        day = records.at(h0).strftime("%Y-%m-%d")
        convs = []
        for _ in range(k):
            direction = "ENTRY" if rng.random() < 0.5 else "EXIT"
            convs.append(people.flight(rng, direction, day, self.conveyances) if kind == "AIR"
                         else people.vessel(rng, direction, kind == "CRUISE", self.conveyances))
        # transit travellers leave on a conveyance toward a third country (never the one they came from)
        leaving: dict[int, list[TransitExit]] = defaultdict(list)
        for ex in due:
            options = [i for i, c in enumerate(convs) if c.direction == "EXIT" and c.country != ex.origin]
            if not options:
                c = (people.flight(rng, "EXIT", day, self.conveyances) if kind == "AIR"
                     else people.vessel(rng, "EXIT", kind == "CRUISE", self.conveyances))
                if c.country == ex.origin:
                    c.country = people.AIR.pick_except(rng, ex.origin)
                convs.append(c)
                sizes = list(sizes) + [0]
                options = [len(convs) - 1]
            leaving[options[rng.randrange(len(options))]].append(ex)
        for i, conv in enumerate(convs):
            self._conveyance(port, h0, conv, int(sizes[i]), leaving.get(i, ()), out, alerts, kind)

    def _conveyance(self, port, h0, conv, size, leaving, out: Events, alerts: bool, kind: str) -> None:
        rng = self.rng[port.code]
        who = self.people[port.code]
        arrive = int(rng.random() * 50 * MINUTE)
        spread = min(40 * MINUTE, HOUR - arrive - 1)
        air = conv.conveyance_type == "FLIGHT"
        crew_n = round(size * CREW_SHARE[kind]) if size >= 10 or not air else 0
        entry = conv.direction == "ENTRY"
        transit_port = entry and port.transit_144h and port.region in TRANSIT_REGIONS and bool(self.transit_exit_ports)
        origin = conv.country if entry else None
        destination = None if entry else conv.country
        for j in range(size):
            t = h0 + arrive + int(rng.random() * spread)
            if j < crew_n:
                nat = conv.crew_nationality or people.SEAFARERS.pick(rng)
                trav = who.crew(nat, air)
            elif transit_port and rng.random() < TRANSIT_SHARE:
                trav = who.transit_passenger()
                self._emit_clearance(out, rng, port, t, trav, conv, origin, destination)
                self._plan_transit_exit(rng, port, trav, conv.country, t)
                continue
            else:
                trav = who.passenger(conv.direction, transit_port)
            if alerts and rng.random() < ALERT_PER_CROSSING:
                self._flagged(out, rng, port, h0, t, trav, conv, origin, destination)
            else:
                self._emit_clearance(out, rng, port, t, trav, conv, origin, destination)
        for ex in leaving:
            t = h0 + arrive + int(rng.random() * spread)
            self._emit_clearance(out, rng, port, t, ex.traveller, conv, None, conv.country)
        if alerts and not air and kind != "CRUISE" and rng.random() < VESSEL_RISK_PER_VESSEL:
            t = h0 + arrive
            sev = "HIGH" if rng.random() < 0.1 else "MEDIUM" if rng.random() < 0.4 else "LOW"
            if sev == "HIGH" and self.capped(port.region, t):
                sev = "MEDIUM"
            out.add(t, "alert", records.alert(people.new_uuid(rng), t, t + self._delay(rng), port, "VESSEL_RISK",
                                              sev, "RISK_MODEL", conveyance_type="VESSEL",
                                              conveyance_id=conv.conveyance_id, description=ALERT_TEXT["VESSEL_RISK"]))

    @staticmethod
    def _delay(rng: random.Random) -> int:
        """The station's publishing delay: under a second to a few seconds."""
        return 200 + int(rng.random() * 2800)

    def _emit_clearance(self, out, rng, port, t, trav, conv, origin, destination, decision="CLEARED") -> None:
        out.add(t, "clearance", records.clearance(
            people.new_uuid(rng), t, t + self._delay(rng), port, trav, conv.direction, conv.conveyance_type,
            conv.conveyance_id, decision=decision, origin_country=origin, destination_country=destination))

    def _plan_transit_exit(self, rng, entry_port, trav: Traveller, origin: str, entered: int) -> None:
        """A baseline transit traveller leaves 12 to 120 hours later from a transit port of SH/JS/ZJ."""
        ports = self.transit_exit_ports
        port = entry_port if rng.random() < 0.5 else ports[rng.randrange(len(ports))]
        leave = entered + 12 * HOUR + int(rng.random() * 108 * HOUR)
        self.exits[(port.code, self.hour_index(leave))].append(TransitExit(trav, origin, entered))

    def _flagged(self, out, rng, port, h0, t, trav, conv, origin, destination) -> None:
        """A traveller an alert is raised for: the alert, then the checkpoint's decision. Never seen again."""
        foreign = trav.nationality != "CHN"
        kind = self.alert_kinds[(conv.direction, foreign)].pick(rng)
        spec = next(a for a in ALERTS if a[0] == kind)
        severity = self.severities[kind].pick(rng)
        if severity in ("HIGH", "CRITICAL") and self.capped(port.region, t):
            severity = "MEDIUM"
        series = method = None
        if kind in ("FORGED_DOCUMENT", "IMPOSTOR"):
            letters = SERIES_LETTERS[port.region]
            series = f"{letters[rng.randrange(len(letters))]}{rng.randrange(10)}"
            method = "IMPOSTOR" if kind == "IMPOSTOR" else FRAUD_METHOD.pick(rng)
        decided = min(t + 5 * SECOND + int(rng.random() * 5 * MINUTE), h0 + HOUR - 1)
        out.add(t, "alert", records.alert(
            people.new_uuid(rng), t, t + self._delay(rng), port, kind, severity, spec[2], traveller=trav,
            conveyance_type=conv.conveyance_type, conveyance_id=conv.conveyance_id, document_series=series,
            fraud_method=method, description=ALERT_TEXT[kind]))
        self._emit_clearance(out, rng, port, decided, trav, conv, origin, destination, decision=spec[4])

    # ------------------------------------------------------------------ cases
    def next_case_id(self, region: str, t: int) -> str:
        self.case_seq[region] += 1
        return f"{region}-{records.at(t).year}-{self.case_seq[region]:06d}"

    def _cases(self, region: str, h0: int, out: Events) -> None:
        rng = self.case_rng[region]
        gen = self.case_np[region]
        for (case_type, method), lam in self.profile.cases_expected(region, h0).items():
            n = int(gen.poisson(lam * self.scale))
            for _ in range(n):
                t = h0 + int(rng.random() * HOUR)
                seaport = case_type == "STOWAWAY" or method == "STOWAWAY_ON_VESSEL"
                ports = [p for p in reference.ports_of(region) if (p.kind != "AIR") == seaport] \
                    or reference.ports_of(region)
                port = Weighted({p: p.share_of_region for p in ports}).pick(rng)
                persons = 1 if rng.random() < 0.75 else 2 + rng.randrange(3 if case_type != "PEOPLE_SMUGGLING" else 7)
                nat = people.CASE_NATS.pick(rng)
                nats = [nat if rng.random() < 0.8 else people.CASE_NATS.pick(rng) for _ in range(persons)]
                conveyance = None
                if seaport or (case_type == "PEOPLE_SMUGGLING" and port.kind != "AIR"):
                    conveyance = people.vessel(rng, "ENTRY", False, self.conveyances).conveyance_id
                self.open_case(rng, self.case_people[region], port, t, case_type, method, nats, conveyance,
                               lambda tt, kind, rec: out.add(tt, kind, rec) if tt < h0 + HOUR
                               else self.schedule(tt, kind, rec))

    def open_case(self, rng, who: People, port, t: int, case_type: str, method: str, nationalities: list[str],
                  conveyance_id: str | None, emit, case_id: str | None = None, description: str = "") -> str:
        """A case and its lifecycle: OPENED now; DETAINED, UPDATED, TRANSFERRED, REPATRIATED, CLOSED over days."""
        case_id = case_id or self.next_case_id(port.region, t)
        subjects = [who.token(n if n in reference.countries() else "CHN") for n in nationalities]
        stages = [("OPENED", t, None)]
        if case_type in DETAINING and rng.random() < 0.8:
            stages.append(("DETAINED", t + 30 * MINUTE + int(rng.random() * 8 * HOUR), None))
        if rng.random() < 0.6:
            stages.append(("UPDATED", t + HOUR + int(rng.random() * 11 * HOUR), None))
        if rng.random() < 0.05:
            others = reference.neighbours(port.region)
            stages.append(("TRANSFERRED", t + 6 * HOUR + int(rng.random() * 42 * HOUR),
                           others[rng.randrange(len(others))]))
        if any(n != "CHN" for n in nationalities) and rng.random() < 0.7:
            stages.append(("REPATRIATED", t + 3 * DAY + int(rng.random() * 12 * DAY), None))
        last = max(s[1] for s in stages)
        stages.append(("CLOSED", last + DAY + int(rng.random() * 9 * DAY), None))
        conv_type = "VESSEL" if conveyance_id else None
        for stage, ts, to in sorted(stages, key=lambda s: s[1]):
            emit(ts, "case", records.case(
                people.new_uuid(rng), ts, ts + self._delay(rng), port, case_id, stage, case_type, method, subjects,
                nationalities, conveyance_type=conv_type, conveyance_id=conveyance_id, transferred_to=to,
                description=description or f"{case_type.lower().replace('_', ' ')}: {stage.lower()}"))
        return case_id
