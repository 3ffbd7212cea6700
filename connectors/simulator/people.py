"""Travellers, crews and conveyances of the simulated region: who crosses, on what, from where.

Everything is drawn from a seeded ``random.Random``; identities (document
numbers, names, birth dates) are fictitious and exist only long enough to be
turned into tokens by the Pseudonymizer: they never reach an event.
"""
from __future__ import annotations

import bisect
import itertools
import random
import uuid
from dataclasses import dataclass

from schemas.pseudonym import Pseudonymizer

# --------------------------------------------------------------------------- countries
#: Nationalities of foreign travellers through the region (weights: relative, after the leading source
#: markets of inbound foreign visitors to China in 2017: Korea, Japan, the United States ...).
FOREIGN_NATIONALITIES = {
    "KOR": 14, "JPN": 14, "USA": 11, "RUS": 4, "MYS": 4, "SGP": 4, "PHL": 3, "CAN": 3, "AUS": 3,
    "DEU": 4, "GBR": 3, "FRA": 3, "ITA": 2, "THA": 2.5, "IDN": 2, "IND": 2.5, "VNM": 2, "NZL": 1,
    "NLD": 1, "ESP": 1, "BRA": 1, "MEX": 0.5, "UKR": 0.7, "PAK": 0.8, "MNG": 0.5, "ARE": 0.5,
    "TUR": 0.6, "ISR": 0.4, "SWE": 0.5, "CHE": 0.5, "POL": 0.5, "NGA": 0.4, "ZAF": 0.3, "KHM": 0.4,
    "MMR": 0.4, "ARG": 0.3, "CHL": 0.2, "BEL": 0.4, "AUT": 0.3, "DNK": 0.3, "FIN": 0.3, "NOR": 0.2,
}

#: Nationalities eligible for the 144-hour visa-free transit in 2017 (53 countries).
TRANSIT_144H_ELIGIBLE = frozenset({
    "AUT", "BEL", "CZE", "DNK", "EST", "FIN", "FRA", "DEU", "GRC", "HUN", "ISL", "ITA", "LVA", "LTU", "LUX",
    "MLT", "NLD", "POL", "PRT", "SVK", "SVN", "ESP", "SWE", "CHE", "MCO", "RUS", "GBR", "IRL", "CYP", "BGR",
    "ROU", "UKR", "SRB", "HRV", "BIH", "MNE", "MKD", "ALB", "BLR", "NOR", "USA", "CAN", "BRA", "MEX", "ARG",
    "CHL", "AUS", "NZL", "KOR", "JPN", "SGP", "BRN", "ARE", "QAT",
})

#: 15-day visa-free entry in 2017.
VISA_FREE = frozenset({"JPN", "SGP", "BRN"})

#: Where international flights of the region come from and go to (weights, relative).
AIR_ROUTES = {
    "JPN": 22, "KOR": 18, "HKG": 14, "TWN": 10, "THA": 6, "SGP": 4, "USA": 5, "MAC": 2, "MYS": 2.5,
    "DEU": 2, "FRA": 1.5, "GBR": 1.2, "RUS": 1.2, "AUS": 1.5, "CAN": 1, "VNM": 1.5, "PHL": 1.5, "IDN": 1,
    "KHM": 0.7, "ARE": 0.8, "ITA": 0.6, "NLD": 0.5, "NZL": 0.4, "FIN": 0.4, "TUR": 0.3,
}
#: Last or next port country of sea and river vessels.
SEA_ROUTES = {"JPN": 20, "KOR": 20, "SGP": 8, "USA": 6, "AUS": 6, "MYS": 5, "VNM": 5, "HKG": 6, "TWN": 5,
              "DEU": 2, "NLD": 2, "RUS": 3, "IDN": 3, "PHL": 3, "IND": 2, "BRA": 1, "ARE": 1}
CRUISE_ROUTES = {"JPN": 70, "KOR": 30}

#: Airline of a route: Chinese carriers fly every route; the other end's carriers fly theirs.
CHINESE_AIRLINES = {"MU": 40, "FM": 10, "HO": 8, "CA": 8, "CZ": 6, "9C": 5, "MF": 3, "ZH": 2}
FOREIGN_AIRLINES = {
    "JPN": ["JL", "NH", "MM"], "KOR": ["KE", "OZ", "7C"], "HKG": ["CX", "KA", "HX"], "TWN": ["CI", "BR"],
    "THA": ["TG", "FD"], "SGP": ["SQ", "TR"], "USA": ["UA", "DL", "AA"], "MAC": ["NX"], "MYS": ["MH", "AK"],
    "DEU": ["LH"], "FRA": ["AF"], "GBR": ["BA", "VS"], "RUS": ["SU"], "AUS": ["QF"], "CAN": ["AC"],
    "VNM": ["VN"], "PHL": ["PR", "5J"], "IDN": ["GA"], "KHM": ["K6"], "ARE": ["EK"], "ITA": ["AZ"],
    "NLD": ["KL"], "NZL": ["NZ"], "FIN": ["AY"], "TUR": ["TK"],
}
AIRLINE_COUNTRY = {a: c for c, al in FOREIGN_AIRLINES.items() for a in al} | {a: "CHN" for a in CHINESE_AIRLINES}
SEAFARER_NATIONALITIES = {"PHL": 30, "CHN": 25, "IND": 8, "IDN": 7, "UKR": 6, "RUS": 6, "MMR": 6, "VNM": 5,
                          "KOR": 3, "GRC": 2, "HRV": 1, "TUR": 1}
#: Nationalities of people in illegal entry/exit cases.
CASE_NATIONALITIES = {"VNM": 18, "MMR": 10, "NGA": 8, "PAK": 6, "PHL": 6, "IDN": 5, "KOR": 4, "USA": 3,
                      "RUS": 4, "UKR": 3, "IND": 4, "CHN": 12, "LAO": 3, "KHM": 3, "BGD": 3, "AFG": 1,
                      "MNG": 2, "GBR": 1, "CAN": 1, "JPN": 2}

SURNAMES_CN = ["WANG", "LI", "ZHANG", "LIU", "CHEN", "YANG", "HUANG", "ZHAO", "WU", "ZHOU", "XU", "SUN", "MA",
               "ZHU", "HU", "GUO", "HE", "LIN", "GAO", "LUO", "ZHENG", "LIANG", "XIE", "SONG", "TANG", "XU", "HAN"]
GIVEN_CN = ["WEI", "FANG", "NA", "MIN", "JING", "LEI", "QIANG", "JUN", "YAN", "JIE", "TAO", "MING", "CHAO",
            "XIULAN", "XIA", "PING", "GANG", "HUI", "YING", "HAO", "YU", "XIN", "LING", "BO", "KAI", "LAN"]
SURNAMES_X = ["SMITH", "KIM", "TANAKA", "MULLER", "SATO", "PARK", "NGUYEN", "GARCIA", "IVANOV", "LEE", "BROWN",
              "MARTIN", "ROSSI", "SUZUKI", "CHOI", "SANTOS", "WILSON", "SILVA", "TAN", "KUMAR", "JOHNSON",
              "PETROV", "SCHMIDT", "DUBOIS", "WONG", "ANDERSEN", "NOVAK", "KOWALSKI", "YAMAMOTO", "REYES"]
GIVEN_X = ["JOHN", "MIN-JUN", "YUKI", "ANNA", "DAVID", "SOO-AH", "HIROSHI", "MARIA", "JAMES", "OLGA", "PETER",
           "EMMA", "LUCA", "SOPHIE", "THOMAS", "MEI", "ALEX", "SARAH", "IVAN", "LAURA", "DANIEL", "HANA",
           "MICHAEL", "NINA", "PAUL", "ELENA", "KENJI", "JI-WOO", "OMAR", "ISABEL"]


class Weighted:
    """A weighted choice over fixed items: one random() and a bisect per draw."""

    __slots__ = ("items", "cum", "total")

    def __init__(self, weights: dict):
        self.items = list(weights)
        self.cum = list(itertools.accumulate(weights.values()))
        self.total = self.cum[-1]

    def pick(self, rng: random.Random):
        return self.items[bisect.bisect(self.cum, rng.random() * self.total)]

    def pick_except(self, rng: random.Random, *excluded):
        for _ in range(50):
            x = self.pick(rng)
            if x not in excluded:
                return x
        return next(i for i in self.items if i not in excluded)


FOREIGN = Weighted(FOREIGN_NATIONALITIES)
TRANSIT_NATIONALITIES = Weighted({c: w for c, w in FOREIGN_NATIONALITIES.items() if c in TRANSIT_144H_ELIGIBLE})
AIR = Weighted(AIR_ROUTES)
SEA = Weighted(SEA_ROUTES)
CRUISE = Weighted(CRUISE_ROUTES)
CN_AIRLINES = Weighted(CHINESE_AIRLINES)
SEAFARERS = Weighted(SEAFARER_NATIONALITIES)
CASE_NATS = Weighted(CASE_NATIONALITIES)


def new_uuid(rng: random.Random) -> str:
    """A version-4 UUID drawn from the seeded generator: same seed, same ids."""
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


@dataclass
class Traveller:
    subject: str
    name_token: str | None
    nationality: str
    document_type: str
    document_country: str
    entry_basis: str
    lane: str


class People:
    """Makes travellers (fresh identities, tokens from the Pseudonymizer) from a seeded generator."""

    def __init__(self, rng: random.Random, pseudonymizer: Pseudonymizer, foreign_share: float):
        self.rng = rng
        self.p = pseudonymizer
        self.foreign_share = foreign_share

    # ------------------------------------------------------------------ identities
    def _document_number(self, country: str) -> str:
        r = self.rng
        if country == "CHN":
            return f"E{r.randrange(10 ** 8):08d}"
        return f"{chr(65 + r.randrange(26))}{chr(65 + r.randrange(26))}{r.randrange(10 ** 7):07d}"

    def _name(self, chinese: bool) -> str:
        r = self.rng
        if chinese:
            return f"{SURNAMES_CN[r.randrange(len(SURNAMES_CN))]} {GIVEN_CN[r.randrange(len(GIVEN_CN))]}"
        return f"{SURNAMES_X[r.randrange(len(SURNAMES_X))]} {GIVEN_X[r.randrange(len(GIVEN_X))]}"

    def _birth_date(self) -> str:
        r = self.rng
        return f"{1940 + r.randrange(72)}-{1 + r.randrange(12):02d}-{1 + r.randrange(28):02d}"

    def identity(self, nationality: str, document_country: str, document_type: str = "PASSPORT"):
        """(subject, name_token) of a fresh, fictitious person."""
        number = self._document_number(document_country)
        subject = self.p.subject(document_country, number)
        name_token = self.p.name(self._name(nationality == "CHN"), self._birth_date())
        return subject, name_token

    def token(self, country: str) -> str:
        """The subject token of a fresh person whose name is not captured (people in case events)."""
        return self.p.subject(country, self._document_number(country))

    # ------------------------------------------------------------------ travellers
    def passenger(self, direction: str, transit_port: bool) -> Traveller:
        """A passenger: ~77 % Chinese citizens (some resident in Hong Kong, Macao or Taiwan), the rest foreign."""
        r = self.rng
        if r.random() >= self.foreign_share:
            u = r.random()
            if u < 0.906:
                doc, lane = "PASSPORT", ("E_GATE" if r.random() < 0.62 else
                                         "CHILDREN" if r.random() < 0.05 else "MANUAL")
            elif u < 0.978:
                doc, lane = "HK_MACAO_PERMIT", "E_GATE" if r.random() < 0.5 else "MANUAL"
            else:
                doc, lane = "TAIWAN_PERMIT", "MANUAL"
            subject, name_token = self.identity("CHN", "CHN", doc)
            return Traveller(subject, name_token, "CHN", doc, "CHN", "CITIZEN", lane)
        nat = FOREIGN.pick(r)
        u = r.random()
        doc = "DIPLOMATIC_PASSPORT" if u < 0.004 else "TRAVEL_DOCUMENT" if u < 0.0045 else "PASSPORT"
        if doc == "DIPLOMATIC_PASSPORT":
            basis, lane = "VISA", "DIPLOMATIC"
        else:
            u = r.random()
            if nat in VISA_FREE and u < 0.7:
                basis = "VISA_FREE"
            elif u < 0.12:
                basis = "RESIDENCE_PERMIT"
            elif u < 0.13:
                basis = "TRANSIT_24H"
            elif u < 0.135:
                basis = "PORT_VISA"
            else:
                basis = "VISA"
            lane = "PRIORITY" if r.random() < 0.04 else "E_GATE" if basis == "RESIDENCE_PERMIT" else "MANUAL"
        subject, name_token = self.identity(nat, nat, doc)
        return Traveller(subject, name_token, nat, doc, nat, basis, lane)

    def transit_passenger(self) -> Traveller:
        nat = TRANSIT_NATIONALITIES.pick(self.rng)
        subject, name_token = self.identity(nat, nat)
        return Traveller(subject, name_token, nat, "PASSPORT", nat, "TRANSIT_144H", "TRANSIT_144H")

    def crew(self, nationality: str, air: bool) -> Traveller:
        doc = "CREW_CERTIFICATE" if air else "SEAFARER_BOOK"
        country = nationality
        subject, name_token = self.identity(nationality, country, doc)
        return Traveller(subject, name_token, nationality, doc, country, "CREW", "CREW")


@dataclass
class Conveyance:
    conveyance_type: str       # FLIGHT | VESSEL
    conveyance_id: str
    direction: str             # ENTRY | EXIT
    country: str               # where it came from (ENTRY) or goes to (EXIT)
    crew_nationality: str | None   # None: mixed (a ship's crew)


def flight(rng: random.Random, direction: str, day: str, used: set | None = None) -> Conveyance:
    """A flight of ``day``; ``used`` (the ids already given) keeps one flight number to one flight a day."""
    country = AIR.pick(rng)
    if rng.random() < 0.6 or country not in FOREIGN_AIRLINES:
        airline = CN_AIRLINES.pick(rng)
    else:
        options = FOREIGN_AIRLINES[country]
        airline = options[rng.randrange(len(options))]
    crew = AIRLINE_COUNTRY[airline]
    while True:
        conveyance_id = f"{airline}{rng.randrange(100, 9000)}/{day}"
        if used is None or conveyance_id not in used:
            break
    if used is not None:
        used.add(conveyance_id)
    return Conveyance("FLIGHT", conveyance_id, direction, country, "CHN" if crew in ("HKG", "MAC", "TWN") else crew)


def vessel(rng: random.Random, direction: str, cruise: bool, used: set | None = None) -> Conveyance:
    """A vessel's call: IMO number and voyage; ``used`` keeps each call to one port."""
    country = (CRUISE if cruise else SEA).pick(rng)
    while True:
        imo = 9_000_000 + rng.randrange(1_000_000)
        voyage = f"{rng.randrange(1, 60):02d}{'E' if direction == 'ENTRY' else 'W'}"
        conveyance_id = f"IMO{imo}/{voyage}"
        if used is None or conveyance_id not in used:
            break
    if used is not None:
        used.add(conveyance_id)
    return Conveyance("VESSEL", conveyance_id, direction, country, None)
