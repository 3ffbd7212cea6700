"""Risk scores: a dynamic level per traveller and per vessel, with the factors that made it.

The score is the sum of the factors' points (rule set ``[risk.traveller]`` /
``[risk.vessel]``), capped at 100; factors older than ``horizon_days`` drop.
State is a plain list of factors, so it lives in the subject's or vessel's table entry.
"""
from __future__ import annotations

LEVELS = ("LOW", "MEDIUM", "HIGH", "CRITICAL")


def add_factor(factors: list, name: str, weight: float, evidence: str, at: int) -> bool:
    """Add a factor once per (name, evidence); True when it is new."""
    if weight <= 0:
        return False
    for f in factors:
        if f["name"] == name and f["evidence"] == evidence:
            return False
    factors.append({"name": name, "weight": float(weight), "evidence": evidence, "at": int(at)})
    return True


def prune(factors: list, now_ms: int, horizon_ms: int) -> None:
    factors[:] = [f for f in factors if now_ms - f["at"] <= horizon_ms]


def level(rs, score: float) -> str:
    bands = rs["risk"]["bands"]
    out = "LOW"
    for name in LEVELS[1:]:
        if score >= float(bands[name]):
            out = name
    return out


def score_record(rs, subject_kind: str, subject: str, factors: list, region: str | None, at: int) -> dict:
    score = min(100.0, sum(f["weight"] for f in factors))
    return {
        "subject_kind": subject_kind,
        "subject": subject,
        "score": round(score, 2),
        "level": level(rs, score),
        "factors": [{"name": f["name"], "weight": f["weight"], "evidence": f["evidence"]}
                    for f in sorted(factors, key=lambda f: (f["at"], f["name"], f["evidence"]))],
        "region": region,
        "rule_set_version": rs.version,
        "occurred_at": int(at),
        "emitted_at": None,
    }


def severity_factor(severity: str | None) -> str:
    return f"alert_{(severity or 'LOW').lower()}"


def remove_factor(factors: list, name: str, evidence: str) -> bool:
    """Drop the factor of (name, evidence) (its alert was withdrawn); True when there was one."""
    n = len(factors)
    factors[:] = [f for f in factors if not (f["name"] == name and f["evidence"] == evidence)]
    return len(factors) != n
