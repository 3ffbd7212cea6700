"""The region's traffic shape: expected crossings per port and hour, case rates (schemas/reference/flow_profile.json).

The stream layer's flow-surge detector computes the same expectation from the
same file, so baseline traffic drawn here (Poisson around it) shows it no surge.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import lru_cache

from schemas import reference

PROFILE_FILE = reference.DIR / "flow_profile.json"
HOURS_A_YEAR = 8760
HOUR_MS = 3_600_000


@dataclass(frozen=True)
class FlowProfile:
    hour_of_day: dict[str, tuple[float, ...]]   # port kind -> 24 multipliers by UTC hour
    day_of_week: tuple[float, ...]               # 7 multipliers by UTC weekday, Monday first
    annual_crossings: int
    foreign_share: float
    cases_per_day: dict[str, dict[tuple[str, str], float]]   # region -> (case_type, method) -> mean a day

    def port_mean_per_hour(self, port: reference.Port) -> float:
        """A port's mean crossings an hour over the year, before the hour and day curves."""
        share = reference.regions()[port.region]["share_of_crossings"]
        return self.annual_crossings * share * port.share_of_region / HOURS_A_YEAR

    def expected(self, port: reference.Port, hour_start_ms: int) -> float:
        """Expected crossings at ``port`` in the UTC hour starting at ``hour_start_ms`` (epoch ms)."""
        t = datetime.fromtimestamp(hour_start_ms / 1000, timezone.utc)
        return (self.port_mean_per_hour(port) * self.hour_of_day[port.kind][t.hour]
                * self.day_of_week[t.weekday()])

    def cases_expected(self, region: str, hour_start_ms: int) -> dict[tuple[str, str], float]:
        """Expected cases opened in ``region`` in that hour, per (case_type, method): flat over the day."""
        d = self.day_of_week[datetime.fromtimestamp(hour_start_ms / 1000, timezone.utc).weekday()]
        return {k: v * d / 24 for k, v in self.cases_per_day.get(region, {}).items()}


@lru_cache(maxsize=None)
def load_profile() -> FlowProfile:
    raw = json.loads(PROFILE_FILE.read_text())
    cases = {region: {tuple(k.split("/", 1)): float(v) for k, v in rates.items()}
             for region, rates in raw.get("cases_per_day", {}).items()}
    return FlowProfile(
        hour_of_day={k: tuple(float(x) for x in v) for k, v in raw["hour_of_day"].items()},
        day_of_week=tuple(float(x) for x in raw["day_of_week"]),
        annual_crossings=int(raw["annual_crossings"]),
        foreign_share=float(raw["foreign_share"]),
        cases_per_day=cases,
    )
