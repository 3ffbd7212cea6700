"""Ground truth: one JSONL row for every derived alert a scripted incident must raise (docs/scenarios.md)."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from connectors.simulator.records import iso


@dataclass
class TruthRow:
    scenario_id: str
    scenario: str
    incident_kind: str
    expected_alert_kind: str
    must_notify: list[str]
    window_start: int            # epoch ms, inclusive
    window_end: int              # epoch ms, inclusive
    subjects: list[str] = field(default_factory=list)
    conveyance_id: str | None = None
    pattern: str | None = None
    port_code: str | None = None
    # an alert the incident may cause, depending on the traffic around it: matched, it is no false alert;
    # missing, the incident still counts as detected
    optional: bool = False

    def as_json(self) -> dict:
        """The row in the file's format, keys in the order docs/scenarios.md shows them."""
        return {
            "scenario_id": self.scenario_id, "scenario": self.scenario, "incident_kind": self.incident_kind,
            "expected_alert_kind": self.expected_alert_kind, "must_notify": sorted(set(self.must_notify)),
            "subjects": list(self.subjects), "conveyance_id": self.conveyance_id, "pattern": self.pattern,
            "port_code": self.port_code, "window_start": iso(self.window_start), "window_end": iso(self.window_end),
            **({"optional": True} if self.optional else {}),
        }


def write(path: str | Path, rows: list[TruthRow]) -> int:
    """Write ``rows`` as JSONL (sorted by scenario id, then window); returns the number written."""
    rows = sorted(rows, key=lambda r: (r.scenario_id, r.window_start, r.expected_alert_kind))
    text = "".join(json.dumps(r.as_json(), ensure_ascii=False) + "\n" for r in rows)
    Path(path).write_text(text)
    return len(rows)


def read(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
