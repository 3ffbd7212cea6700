"""Building derived alerts: ids from rule and evidence, routing to regions."""
from __future__ import annotations

import uuid

from schemas.reference import REGIONS

#: namespace of derived alert ids (uuid5 of rule id and sorted evidence)
ALERT_NAMESPACE = uuid.UUID("6f1d3c52-2d8e-5b7a-9c43-1b2f7e0a9d11")
SEVERITIES = ("LOW", "MEDIUM", "HIGH", "CRITICAL")
#: a derived alert's status: raised, or withdrawn by a later version of it (same id) that events read later disprove
RAISED, WITHDRAWN = "RAISED", "WITHDRAWN"


def alert_id(rule_id: str, evidence: list[str], key: str = "") -> str:
    """Same rule, same evidence (in any order): same id. Reprocessing cannot make a second alert."""
    return str(uuid.uuid5(ALERT_NAMESPACE, "|".join([rule_id, key, *sorted(set(evidence))])))


def ordered(regions) -> list[str]:
    got = set(regions)
    return [r for r in REGIONS if r in got]


def others(*regions: str) -> list[str]:
    return [r for r in REGIONS if r not in regions]


def severity_at_least(severity: str | None, floor: str) -> bool:
    return severity in SEVERITIES and SEVERITIES.index(severity) >= SEVERITIES.index(floor)


def make(rs, rule_id: str, kind: str, severity: str, must_act, inform, evidence: list[str],
         occurred_at: int, summary: str, *, subject=None, conveyance_id=None, pattern=None, port_code=None,
         station_id=None, details: dict | None = None, key: str = "", published_at: int | None = None,
         id_evidence: list[str] | None = None) -> dict:
    """A DerivedAlert record (times in epoch millis; ``emitted_at`` is set when it is sent). The id is made
    of the rule, ``key`` and ``id_evidence`` (all the evidence unless given)."""
    must = ordered(must_act)
    info = [r for r in ordered(inform) if r not in must]
    det = {k: str(v) for k, v in (details or {}).items() if v is not None}
    if published_at is not None:
        det["evidence_published_at"] = str(int(published_at))
    return {
        "alert_id": alert_id(rule_id, evidence if id_evidence is None else id_evidence, key),
        "kind": kind,
        "severity": severity if severity in SEVERITIES else "MEDIUM",
        "rule_id": rule_id,
        "rule_set_version": rs.version,
        "must_act": must,
        "inform": info,
        "station_id": station_id,
        "port_code": port_code,
        "subject": subject,
        "conveyance_id": conveyance_id,
        "pattern": pattern,
        "evidence": sorted(set(evidence)),
        "occurred_at": int(occurred_at),
        "emitted_at": None,
        "summary": summary,
        "details": det,
        "status": RAISED,
        "status_reason": None,
    }


def withdrawn(alert: dict, reason: str) -> dict:
    """The version of a raised ``alert`` that withdraws it: the same id, evidence and routing, status WITHDRAWN and
    the reason (which events disprove it). Sent like any alert, it replaces the raised version downstream."""
    return {**alert, "status": WITHDRAWN, "status_reason": reason, "emitted_at": None}


def is_live(alert: dict) -> bool:
    """Raised and not withdrawn (a record of an older schema version has no status: raised)."""
    return (alert.get("status") or RAISED) != WITHDRAWN


def recipients(alert: dict) -> list[str]:
    """Regions that receive a routed copy: must_act and inform."""
    return ordered([*alert["must_act"], *alert["inform"]])
