"""Synthetic events of every kind for the store's tests and benchmarks: valid, varied, reproducible.

Not the traffic simulator (``yrdbus simulate``): these are plain records in bulk, spread over a time span,
for measuring and checking the sink and the queries. Tokens are random hex, not made from any identity.
"""
from __future__ import annotations

import random
import uuid
from datetime import datetime, timedelta, timezone

from schemas import reference

NATIONALITIES = ("CHN", "CHN", "CHN", "HKG", "TWN", "USA", "JPN", "KOR", "DEU", "GBR", "VNM", "RUS", "FRA", "AUS")


def _token(rng: random.Random) -> str:
    return "%064x" % rng.getrandbits(256)


def _port(rng: random.Random, region: str | None = None):
    ports = [p for p in reference.ports().values() if region is None or p.region == region]
    return rng.choice(ports)


def _ms(dt: datetime) -> datetime:
    return dt.replace(microsecond=dt.microsecond // 1000 * 1000)


def clearance(rng: random.Random, at: datetime, subject: str | None = None, region: str | None = None) -> dict:
    port = _port(rng, region)
    nat = rng.choice(NATIONALITIES)
    air = port.kind == "AIR"
    return {
        "event_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        "region": port.region, "station_id": port.station_id, "port_code": port.code,
        "occurred_at": _ms(at), "published_at": _ms(at + timedelta(seconds=1)),
        "subject": subject or _token(rng), "name_token": None,
        "direction": rng.choice(("ENTRY", "EXIT")),
        "document_type": "PASSPORT" if nat != "HKG" else "HK_MACAO_PERMIT",
        "document_country": nat, "nationality": nat,
        "conveyance_type": "FLIGHT" if air else "VESSEL",
        "conveyance_id": f"MU{rng.randint(100, 999)}/{at:%Y-%m-%d}" if air else f"IMO{rng.randint(9000000, 9999999)}/V1",
        "scheduled_port": None, "lane": rng.choice(("MANUAL", "E_GATE")),
        "entry_basis": "CITIZEN" if nat == "CHN" else rng.choice(("VISA", "VISA_FREE", "TRANSIT_144H")),
        "decision": "CLEARED" if rng.random() > 0.01 else "REFUSED",
        "origin_country": None, "destination_country": None,
    }


def alert(rng: random.Random, at: datetime, subject: str | None = None) -> dict:
    port = _port(rng)
    return {
        "event_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        "region": port.region, "station_id": port.station_id, "port_code": port.code,
        "occurred_at": _ms(at), "published_at": _ms(at + timedelta(seconds=2)),
        "subject": subject or _token(rng), "kind": rng.choice(("WATCHLIST_HIT", "FORGED_DOCUMENT", "OVERSTAY")),
        "severity": rng.choice(("LOW", "MEDIUM", "HIGH")), "source": "OFFICER",
        "status": "RAISED", "nationality": rng.choice(NATIONALITIES), "document_type": None,
        "document_country": None, "document_series": None, "fraud_method": None, "conveyance_type": None,
        "conveyance_id": None, "description": "synthetic",
    }


def case(rng: random.Random, at: datetime, stage: str = "OPENED", case_id: str | None = None) -> dict:
    port = _port(rng)
    return {
        "event_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        "region": port.region, "station_id": port.station_id, "port_code": port.code,
        "occurred_at": _ms(at), "published_at": _ms(at + timedelta(seconds=5)),
        "case_id": case_id or f"{port.region}-{at:%Y}-{rng.randint(0, 999999):06d}", "stage": stage,
        "case_type": rng.choice(("ILLEGAL_ENTRY", "ILLEGAL_STAY", "DOCUMENT_FRAUD")),
        "method": rng.choice(("FORGED_DOCUMENT", "VISA_OVERSTAY", "OTHER")),
        "subjects": [_token(rng)], "nationalities": [rng.choice(NATIONALITIES)], "persons": 1,
        "conveyance_type": None, "conveyance_id": None, "transferred_to": None, "description": "synthetic",
    }


def derived_alert(rng: random.Random, at: datetime) -> dict:
    return {
        "alert_id": uuid.UUID(int=rng.getrandbits(128)).hex, "kind": "CROSS_REGION_HIT", "severity": "HIGH",
        "rule_id": "cross_region_hit", "rule_set_version": "1", "must_act": ["JS"], "inform": ["SH"],
        "station_id": None, "port_code": None, "subject": _token(rng), "conveyance_id": None, "pattern": None,
        "evidence": [str(uuid.uuid4())], "occurred_at": _ms(at), "emitted_at": _ms(at + timedelta(seconds=1)),
        "summary": "synthetic", "details": {"from": "SH"},
    }


def trend(rng: random.Random, at: datetime) -> dict:
    return {
        "signal_id": uuid.UUID(int=rng.getrandbits(128)).hex, "rule_id": "case_trend", "rule_set_version": "1",
        "metric": "CASE_COUNT", "region": rng.choice(reference.REGIONS), "dimensions": {"case_type": "ILLEGAL_STAY"},
        "window_start": _ms(at), "window_end": _ms(at + timedelta(days=1)), "observed": 5.0, "expected": 2.0,
        "score": 2.1, "rising": True, "emitted_at": _ms(at + timedelta(days=1)),
    }


def risk(rng: random.Random, at: datetime) -> dict:
    return {
        "subject_kind": "TRAVELLER", "subject": _token(rng), "score": 42.0, "level": "MEDIUM",
        "factors": [{"name": "refusal", "weight": 42.0, "evidence": str(uuid.uuid4())}],
        "region": "SH", "rule_set_version": "1", "occurred_at": _ms(at), "emitted_at": _ms(at + timedelta(seconds=1)),
    }


def disposition(rng: random.Random, at: datetime) -> dict:
    return {
        "disposition_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        "alert_id": uuid.UUID(int=rng.getrandbits(128)).hex,
        "outcome": rng.choice(("ACKNOWLEDGED", "CONFIRMED", "FALSE_ALARM", "NO_ACTION")), "region": "JS",
        "officer": "js-duty", "note": "synthetic", "must_act": ["JS"], "inform": ["SH"], "kind": "CROSS_REGION_HIT",
        "severity": "HIGH", "decided_at": _ms(at),
    }


MAKERS = {"clearance": clearance, "alert": alert, "case": case, "derived_alert": derived_alert,
          "trend": trend, "risk": risk, "disposition": disposition}


def records(kind: str, n: int, *, seed: int = 1, start: datetime | None = None,
            span: timedelta = timedelta(days=1)) -> list[dict]:
    """``n`` records of ``kind`` spread evenly over ``span`` from ``start``."""
    rng = random.Random(seed)
    start = start or datetime(2017, 6, 1, tzinfo=timezone.utc)
    step = span / max(1, n)
    make = MAKERS[kind]
    return [make(rng, start + step * i) for i in range(n)]
