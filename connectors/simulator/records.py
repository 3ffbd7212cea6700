"""Event records of the simulator (dicts with the Avro field names), built from epoch milliseconds."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

from schemas import reference

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
SECOND = 1000
MINUTE = 60 * SECOND
HOUR = 60 * MINUTE
DAY = 24 * HOUR


def at(ms: int) -> datetime:
    return EPOCH + timedelta(milliseconds=ms)


def ms_of(dt: datetime) -> int:
    return int((dt - EPOCH) / timedelta(milliseconds=1))


def iso(ms: int) -> str:
    """``2017-06-05T10:00:00.000Z``: the ground-truth file's time format."""
    return at(ms).strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def clearance(event_id: str, t: int, published: int, port: reference.Port, traveller, direction: str,
              conveyance_type: str, conveyance_id: str, decision: str = "CLEARED",
              origin_country: str | None = None, destination_country: str | None = None,
              scheduled_port: str | None = None, lane: str | None = None, entry_basis: str | None = None) -> dict:
    return {
        "event_id": event_id, "region": port.region, "station_id": port.station_id, "port_code": port.code,
        "occurred_at": at(t), "published_at": at(published),
        "subject": traveller.subject, "name_token": traveller.name_token, "direction": direction,
        "document_type": traveller.document_type, "document_country": traveller.document_country,
        "nationality": traveller.nationality, "conveyance_type": conveyance_type, "conveyance_id": conveyance_id,
        "scheduled_port": scheduled_port, "lane": lane or traveller.lane,
        "entry_basis": entry_basis or traveller.entry_basis, "decision": decision,
        "origin_country": origin_country, "destination_country": destination_country,
    }


def alert(event_id: str, t: int, published: int, port: reference.Port, kind: str, severity: str, source: str,
          subject: str | None = None, traveller=None, conveyance_type: str | None = None,
          conveyance_id: str | None = None, document_series: str | None = None, fraud_method: str | None = None,
          description: str = "", status: str = "RAISED") -> dict:
    return {
        "event_id": event_id, "region": port.region, "station_id": port.station_id, "port_code": port.code,
        "occurred_at": at(t), "published_at": at(published),
        "subject": subject if subject is not None else (traveller.subject if traveller else None),
        "kind": kind, "severity": severity, "source": source, "status": status,
        "nationality": traveller.nationality if traveller else None,
        "document_type": traveller.document_type if traveller else None,
        "document_country": traveller.document_country if traveller else None,
        "document_series": document_series, "fraud_method": fraud_method,
        "conveyance_type": conveyance_type, "conveyance_id": conveyance_id, "description": description,
    }


def case(event_id: str, t: int, published: int, port: reference.Port, case_id: str, stage: str, case_type: str,
         method: str, subjects: list[str], nationalities: list[str], conveyance_type: str | None = None,
         conveyance_id: str | None = None, transferred_to: str | None = None, description: str = "") -> dict:
    return {
        "event_id": event_id, "region": port.region, "station_id": port.station_id, "port_code": port.code,
        "occurred_at": at(t), "published_at": at(published), "case_id": case_id, "stage": stage,
        "case_type": case_type, "method": method, "subjects": list(subjects), "nationalities": list(nationalities),
        "persons": len(subjects), "conveyance_type": conveyance_type, "conveyance_id": conveyance_id,
        "transferred_to": transferred_to, "description": description,
    }


def control(event_id: str, issued: int, starts: int, ends: int, regions: list[str], multiplier: float,
            reason: str, issued_by: str) -> dict:
    return {
        "event_id": event_id, "kind": "HEIGHTENED_MODE", "regions": list(regions), "starts_at": at(starts),
        "ends_at": at(ends), "threshold_multiplier": multiplier, "reason": reason, "occurred_at": at(issued),
        "issued_by": issued_by, "window_id": None,
    }
