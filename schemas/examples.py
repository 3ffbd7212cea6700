"""Example events of each source kind: valid against the contract, with pseudonymous tokens.

For people (``yrdbus codec example``), documentation and tests. The
identities are fictitious; the tokens are made with the given pseudonymizer
(the CLI uses the configured key, or the public demo key).
"""
from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

from schemas.pseudonym import DEMO_KEY, Pseudonymizer

EXAMPLE_KINDS = ("clearance", "alert", "case")


def _now() -> datetime:
    now = datetime.now(timezone.utc)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def example(kind: str, *, pseudonymizer: Pseudonymizer | None = None, now: datetime | None = None) -> dict:
    """A valid ``kind`` record (Python values), occurring a minute before ``now``."""
    p = pseudonymizer or Pseudonymizer(DEMO_KEY)
    now = now or _now()
    occurred = now - timedelta(minutes=1)
    subject = p.subject("USA", "X00000001")
    common = {"event_id": str(uuid.uuid4()), "region": "SH", "station_id": "SH-PVG", "port_code": "PVG",
              "occurred_at": occurred, "published_at": now}
    if kind == "clearance":
        return {**common, "subject": subject, "name_token": p.name("Jane Example", "1980-01-31"),
                "direction": "ENTRY", "document_type": "PASSPORT", "document_country": "USA",
                "nationality": "USA", "conveyance_type": "FLIGHT", "conveyance_id": f"MU588/{occurred:%Y-%m-%d}",
                "scheduled_port": None, "lane": "TRANSIT_144H", "entry_basis": "TRANSIT_144H",
                "decision": "CLEARED", "origin_country": "USA", "destination_country": "JPN"}
    if kind == "alert":
        return {**common, "subject": subject, "kind": "FORGED_DOCUMENT", "severity": "HIGH",
                "source": "DOCUMENT_EXAMINATION", "status": "RAISED", "nationality": "USA",
                "document_type": "PASSPORT", "document_country": "USA", "document_series": "X00",
                "fraud_method": "ALTERED", "conveyance_type": "FLIGHT",
                "conveyance_id": f"MU588/{occurred:%Y-%m-%d}",
                "description": "Data page laminate lifted; photo substitution suspected."}
    if kind == "case":
        return {**common, "region": "ZJ", "station_id": "ZJ-NBZS", "port_code": "CNNGB",
                "case_id": f"ZJ-{occurred:%Y}-000123", "stage": "OPENED", "case_type": "STOWAWAY",
                "method": "STOWAWAY_ON_VESSEL", "subjects": [subject, p.subject("VNM", "C0000002")],
                "nationalities": ["USA", "VNM"], "persons": 2, "conveyance_type": "VESSEL",
                "conveyance_id": "IMO9321483/V042", "transferred_to": None,
                "description": "Two stowaways found in a container hold on arrival."}
    raise ValueError(f"no example for kind {kind!r}; kinds with examples: {', '.join(EXAMPLE_KINDS)}")
