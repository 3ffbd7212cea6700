"""The one versioned rule set of the stream layer (``streams/rules.toml``).

Every threshold lives in that file; a detector reads its own section. The
rule id a derived alert names is the section name, e.g. ``cross_region_hit``.
"""
from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_FILE = Path(__file__).resolve().parent / "rules.toml"


class RuleSetError(ValueError):
    pass


@dataclass(frozen=True)
class RuleSet:
    version: str
    sections: dict
    source: str = ""
    flow_profile: dict | None = field(default=None, compare=False)

    def __getitem__(self, name: str) -> dict:
        try:
            return self.sections[name]
        except KeyError:
            raise RuleSetError(f"rule set {self.source or '(inline)'}: no section [{name}]") from None

    def minutes_ms(self, section: str, key: str) -> int:
        return int(float(self[section][key]) * 60_000)

    def hours_ms(self, section: str, key: str) -> int:
        return int(float(self[section][key]) * 3_600_000)

    def days_ms(self, section: str, key: str) -> int:
        return int(float(self[section][key]) * 86_400_000)

    def allowed_delay_ms(self) -> int:
        """How far behind the regional watermark a late event still has its windows judged again (48 h in a
        rule file older than the setting)."""
        return int(float(self.sections.get("event_time", {}).get("allowed_delay_hours", 48)) * 3_600_000)


def from_dict(data: dict, source: str = "", base_dir: Path = ROOT) -> RuleSet:
    version = data.get("version")
    if not isinstance(version, str) or not version:
        raise RuleSetError(f"rule set {source or '(inline)'}: field `version`: a non-empty string is required")
    sections = {k: v for k, v in data.items() if k != "version"}
    _check_event_time(sections.get("event_time"), source)
    profile = None
    path = sections.get("flow_surge", {}).get("profile")
    if path:
        p = Path(path)
        p = p if p.is_absolute() else base_dir / p
        if p.is_file():
            profile = json.loads(p.read_text())
    return RuleSet(version=version, sections=sections, source=source, flow_profile=profile)


def _check_event_time(section, source: str) -> None:
    """The [event_time] durations are numbers >= 0; the allowed delay, when given, is at least the regional
    lateness (an event the watermark still waits for is never past the delay)."""
    if section is None:
        return
    where = f"rule set {source or '(inline)'}: [event_time]"
    for key, value in section.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise RuleSetError(f"{where} field `{key}`: expected a number >= 0, got {value!r}")
    delay = section.get("allowed_delay_hours")
    if delay is not None and delay * 60 < section.get("global_lateness_minutes", 0):
        raise RuleSetError(f"{where} field `allowed_delay_hours`: {delay} h is shorter than global_lateness_minutes "
                           f"({section['global_lateness_minutes']} min)")


def load(path: str | Path | None = None) -> RuleSet:
    p = Path(path) if path else DEFAULT_FILE
    try:
        data = tomllib.loads(p.read_text())
    except FileNotFoundError:
        raise RuleSetError(f"rule set file {p} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise RuleSetError(f"rule set file {p}: {exc}") from None
    return from_dict(data, source=str(p))


@lru_cache(maxsize=1)
def default() -> RuleSet:
    return load(DEFAULT_FILE)
