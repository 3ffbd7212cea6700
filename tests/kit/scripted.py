"""Scripted incidents a–j of docs/scenarios.md as source events, with their ground-truth rows.

A small, deterministic stand-in for the simulator's scenarios, for the stream
layer's own tests and benchmarks: each incident's events follow the
contract (Avro field names, subject tokens instead of identities), and the
truth rows follow the format ``yrdbus evaluate`` reads.
"""
from __future__ import annotations

import hashlib
import random
import uuid
from datetime import datetime, timezone

from schemas.reference import ports as reference_ports
from streams.events import iso

HOUR = 3_600_000
DAY = 24 * HOUR


def token(*parts) -> str:
    return hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()


def _dt(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc)


class Script:
    """Events in (topic kind, region, key, record) form, times as epoch millis until encoded."""

    def __init__(self, seed: int = 7):
        self.rng = random.Random(seed)
        self.events: list[tuple[str, str, str, dict]] = []
        self.truth: list[dict] = []
        self.ports = reference_ports()

    def _id(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def _common(self, port: str, at: int) -> dict:
        p = self.ports[port]
        return {"event_id": self._id(), "region": p.region, "station_id": p.station_id, "port_code": port,
                "occurred_at": at, "published_at": at + 1000}

    def clearance(self, port: str, at: int, subject: str, direction: str = "ENTRY", *, nationality: str = "USA",
                  basis: str = "VISA", decision: str = "CLEARED", conveyance: str | None = None,
                  conveyance_type: str = "FLIGHT", scheduled_port: str | None = None, origin: str | None = "JPN",
                  destination: str | None = None, lane: str = "MANUAL") -> dict:
        rec = {**self._common(port, at), "subject": subject, "name_token": None, "direction": direction,
               "document_type": "PASSPORT", "document_country": nationality, "nationality": nationality,
               "conveyance_type": conveyance_type, "conveyance_id": conveyance or f"MU{self.rng.randint(100, 999)}",
               "scheduled_port": scheduled_port, "lane": lane, "entry_basis": basis, "decision": decision,
               "origin_country": origin if direction == "ENTRY" else None,
               "destination_country": destination if direction == "EXIT" else None}
        self.events.append(("clearance", rec["region"], subject, rec))
        return rec

    def alert(self, port: str, at: int, kind: str, severity: str = "HIGH", *, subject: str | None = None,
              source: str = "WATCHLIST", conveyance: str | None = None, conveyance_type: str | None = None,
              pattern: tuple | None = None, status: str = "RAISED") -> dict:
        rec = {**self._common(port, at), "subject": subject, "kind": kind, "severity": severity, "source": source,
               "status": status, "nationality": None, "document_type": None, "document_country": None,
               "document_series": None, "fraud_method": None, "conveyance_type": conveyance_type,
               "conveyance_id": conveyance, "description": ""}
        if pattern:
            rec["document_country"], rec["document_type"], rec["document_series"], rec["fraud_method"] = pattern
        self.events.append(("alert", rec["region"], subject or conveyance or rec["event_id"], rec))
        return rec

    def case(self, port: str, at: int, case_type: str, method: str, subjects: list[str], nationalities: list[str],
             *, stage: str = "OPENED", conveyance: str | None = None) -> dict:
        rec = {**self._common(port, at), "case_id": f"{self.ports[port].region}-{self.rng.randint(0, 10**9):09d}",
               "stage": stage, "case_type": case_type, "method": method, "subjects": subjects,
               "nationalities": nationalities, "persons": len(subjects),
               "conveyance_type": "VESSEL" if conveyance else None, "conveyance_id": conveyance,
               "transferred_to": None, "description": ""}
        self.events.append(("case", rec["region"], rec["case_id"], rec))
        return rec

    def control(self, regions: list[str], starts: int, ends: int, mult: float = 0.5, issued: int | None = None,
                reason: str = "China International Import Expo", window_id: str | None = None) -> dict:
        """A heightened window; with ``window_id``, a newer version of that window (e.g. ended early)."""
        rec = {"event_id": self._id(), "kind": "HEIGHTENED_MODE", "regions": regions, "starts_at": starts,
               "ends_at": ends, "threshold_multiplier": mult, "reason": reason,
               "occurred_at": issued if issued is not None else starts, "issued_by": "regional command centre",
               "window_id": window_id}
        self.events.append(("control", "", rec["event_id"], rec))
        return rec

    def expect(self, scenario_id: str, scenario: str, kind: str, must_notify: list[str], start: int, end: int,
               **ids) -> None:
        self.truth.append({"scenario_id": scenario_id, "scenario": scenario, "incident_kind": scenario,
                           "expected_alert_kind": kind, "must_notify": must_notify,
                           "subjects": ids.get("subjects"), "conveyance_id": ids.get("conveyance_id"),
                           "pattern": ids.get("pattern"), "port_code": ids.get("port_code"),
                           "window_start": iso(start), "window_end": iso(end)})

    def encoded(self, codec, prefix: str = "") -> list[tuple[str, bytes, bytes]]:
        """(topic, key, value) of every event, in event-time order."""
        from schemas import topics

        out = []
        for kind, region, key, rec in sorted(self.events, key=lambda e: (e[3]["occurred_at"], e[3]["event_id"])):
            rec = {k: (_dt(v) if k in ("occurred_at", "published_at", "starts_at", "ends_at") else v)
                   for k, v in rec.items()}
            topic = prefix + (topics.CONTROL if kind == "control" else topics.source(region, kind))
            out.append((topic, key.encode(), codec.encode(kind, rec)))
        return out


def incidents(script: Script, t0: int) -> None:
    """Incidents a–j (flow surge excluded: it needs hours of traffic, see ``flow_traffic``), from ``t0``."""
    s = script
    # a: watch-list hit in SH, the subject crosses in JS hours later
    a = token("a")
    s.alert("PVG", t0 + 1 * HOUR, "WATCHLIST_HIT", "HIGH", subject=a)
    s.clearance("NKG", t0 + 4 * HOUR, a, "ENTRY")
    s.expect("a-1", "cross_region_hit", "CROSS_REGION_HIT", ["JS", "SH"], t0 + 4 * HOUR, t0 + 4 * HOUR, subjects=[a])
    # b: refused in ZJ, attempts entry in SH within 48 h
    b = token("b")
    s.clearance("HGH", t0 + 2 * HOUR, b, "ENTRY", decision="REFUSED")
    s.alert("HGH", t0 + 2 * HOUR + 60_000, "REFUSAL", "MEDIUM", subject=b, source="OFFICER")
    s.clearance("PVG", t0 + 20 * HOUR, b, "ENTRY")
    s.expect("b-1", "port_shopping", "PORT_SHOPPING", ["SH", "ZJ"], t0 + 2 * HOUR, t0 + 50 * HOUR, subjects=[b])
    # c: one fraud pattern in SH, JS, ZJ within 4 days
    pat = ("NGA", "PASSPORT", "A07", "COUNTERFEIT")
    c1, c2, c3 = token("c1"), token("c2"), token("c3")
    s.alert("PVG", t0 + 3 * HOUR, "FORGED_DOCUMENT", "HIGH", subject=c1, source="DOCUMENT_EXAMINATION", pattern=pat)
    s.alert("NKG", t0 + 30 * HOUR, "FORGED_DOCUMENT", "HIGH", subject=c2, source="DOCUMENT_EXAMINATION", pattern=pat)
    s.alert("HGH", t0 + 50 * HOUR, "FORGED_DOCUMENT", "HIGH", subject=c3, source="DOCUMENT_EXAMINATION", pattern=pat)
    s.expect("c-1", "fraud_spread", "DOCUMENT_FRAUD_SPREAD", ["SH", "JS", "ZJ", "AH"], t0 + 30 * HOUR,
             t0 + 30 * HOUR, subjects=[c1, c2, c3], pattern="/".join(pat))
    # e: 144-hour transit entry at PVG 138 h before t0, no exit
    e = token("e")
    s.clearance("PVG", t0 - 138 * HOUR, e, "ENTRY", nationality="GBR", basis="TRANSIT_144H", origin="GBR",
                lane="TRANSIT_144H")
    s.expect("e-1", "transit_overstay", "TRANSIT_OVERSTAY", ["SH", "JS", "ZJ"], t0 + 6 * HOUR, t0 + 6 * HOUR,
             subjects=[e])
    # f: transit entry from KOR, exit within 144 h toward KOR
    f = token("f")
    s.clearance("NKG", t0 + 1 * HOUR, f, "ENTRY", nationality="USA", basis="TRANSIT_144H", origin="KOR")
    s.clearance("PVG", t0 + 40 * HOUR, f, "EXIT", nationality="USA", basis="TRANSIT_144H", destination="KOR")
    s.expect("f-1", "transit_exit_to_origin", "TRANSIT_EXIT_TO_ORIGIN", ["SH", "JS"], t0 + 40 * HOUR,
             t0 + 40 * HOUR, subjects=[f])
    # g: transit entry in SH, then a crossing at Hefei (AH)
    g = token("g")
    s.clearance("SHA", t0 + 5 * HOUR, g, "ENTRY", nationality="DEU", basis="TRANSIT_144H", origin="DEU")
    s.clearance("HFE", t0 + 30 * HOUR, g, "EXIT", nationality="DEU", basis="TRANSIT_144H", destination="JPN")
    s.expect("g-1", "transit_out_of_area", "TRANSIT_OUT_OF_AREA", ["AH", "SH"], t0 + 30 * HOUR, t0 + 30 * HOUR,
             subjects=[g])
    # h: pending watch-list hit from SH for a passenger of MU512 to PVG; the flight lands at HGH
    h, conv = token("h"), "MU512/2017-06-02"
    s.alert("PVG", t0 + 10 * HOUR, "WATCHLIST_HIT", "HIGH", subject=h, source="WATCHLIST", conveyance=conv,
            conveyance_type="FLIGHT")
    for i in range(3):
        s.clearance("HGH", t0 + 12 * HOUR + i * 60_000, token("h-pax", i), "ENTRY", conveyance=conv,
                    scheduled_port="PVG")
    s.clearance("HGH", t0 + 12 * HOUR + 5 * 60_000, h, "ENTRY", conveyance=conv, scheduled_port="PVG")
    s.expect("h-1", "diverted_flight", "CONVEYANCE_DIVERTED", ["ZJ", "SH"], t0 + 12 * HOUR, t0 + 13 * HOUR,
             subjects=[h], conveyance_id=conv)
    s.expect("h-1", "diverted_flight", "CROSS_REGION_HIT", ["ZJ", "SH"], t0 + 12 * HOUR, t0 + 13 * HOUR,
             subjects=[h])
    # j: heightened mode for SH, then a HIGH smuggling alert at an SH station inside the window
    start, end = t0 + 60 * HOUR, t0 + 72 * HOUR
    s.control(["SH"], start, end, 0.5, issued=t0 + 59 * HOUR)
    s.alert("CNSHA-WSK", t0 + 61 * HOUR, "SMUGGLING", "HIGH", subject=token("j"), source="OFFICER")
    s.expect("j-1", "heightened_mode", "HEIGHTENED_MODE", ["SH", "JS", "ZJ", "AH"], start, start)
    s.expect("j-1", "heightened_mode", "BROADCAST", ["SH", "JS", "ZJ", "AH"], t0 + 61 * HOUR, t0 + 61 * HOUR,
             subjects=[token("j")])
    # d: stowaway cases at ZJ and SH seaports, far above their baseline within a day
    for i in range(8):
        s.case("CNNGB", t0 + 64 * HOUR + i * HOUR, "STOWAWAY", "STOWAWAY_ON_VESSEL", [token("d-zj", i)], ["VNM"],
               conveyance=f"IMO93{i:05d}/V1")
    for i in range(8):
        s.case("CNSHA-YSN", t0 + 66 * HOUR + i * HOUR, "STOWAWAY", "STOWAWAY_ON_VESSEL", [token("d-sh", i)], ["MMR"],
               conveyance=f"IMO94{i:05d}/V1")
    s.expect("d-1", "case_surge", "TREND_RISING", ["ZJ", "SH", "JS", "AH"], t0 + 64 * HOUR, t0 + 80 * HOUR,
             pattern="STOWAWAY")
    s.expect("d-1", "case_surge", "TREND_RISING", ["SH", "JS", "ZJ"], t0 + 66 * HOUR, t0 + 80 * HOUR,
             pattern="STOWAWAY")
    s.expect("d-1", "case_surge", "SYSTEMIC_ESCALATION", ["SH", "JS", "ZJ", "AH"], t0 + 66 * HOUR, t0 + 80 * HOUR,
             pattern="STOWAWAY")


def background(script: Script, t0: int, hours: int, per_hour: int = 20) -> None:
    """Plain traffic that raises nothing: cleared round trips and a few low-severity alerts, to move time on."""
    s = script
    codes = ["PVG", "SHA", "NKG", "HGH", "NGB", "HFE", "CNNGB", "CNSHA-WSK"]
    for hh in range(hours):
        for i in range(per_hour):
            at = t0 + hh * HOUR + s.rng.randrange(HOUR)
            s.clearance(s.rng.choice(codes), at, token("bg", hh, i), s.rng.choice(["ENTRY", "EXIT"]),
                        destination="JPN")
        if hh % 6 == 0:
            s.alert(s.rng.choice(codes), t0 + hh * HOUR + 1, "OTHER", "LOW", subject=token("bg-a", hh),
                    source="OFFICER")
