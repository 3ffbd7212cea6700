"""Topic names of the bus, in one place."""
from __future__ import annotations

from schemas.reference import REGIONS
from schemas.contract import SOURCE_KINDS

DERIVED_ALERTS = "alerts.derived"
TRENDS = "trends"
RISK_SCORES = "risk.scores"
CONTROL = "control"


def source(region: str, kind: str) -> str:
    """``border.<REGION>.<kind>``: what a region's stations publish (kind: clearance, alert, case)."""
    return f"border.{region}.{kind}"


def source_topics() -> list[str]:
    return [source(r, k) for r in REGIONS for k in SOURCE_KINDS]


def routed_alerts(region: str) -> str:
    """``alerts.to.<REGION>``: the derived alerts a region must act on or be informed of."""
    return f"alerts.to.{region}"


def dead_letter(topic: str) -> str:
    return f"dlq.{topic}"
