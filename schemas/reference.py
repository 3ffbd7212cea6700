"""Reference data of the four regions: regions, stations, ports, countries, document types.

Loaded from ``schemas/reference/*.json``; used to validate events and loaded
into ClickHouse as dictionaries.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

DIR = Path(__file__).resolve().parent / "reference"
REGIONS = ("SH", "JS", "ZJ", "AH")


@dataclass(frozen=True)
class Port:
    code: str
    code_system: str
    name: str
    name_zh: str
    region: str
    kind: str            # AIR | SEA | RIVER
    station_id: str
    share_of_region: float
    transit_144h: bool


def _load(name: str, key: str) -> list[dict]:
    return json.loads((DIR / name).read_text())[key]


@lru_cache(maxsize=None)
def regions() -> dict[str, dict]:
    return {r["code"]: r for r in _load("regions.json", "regions")}


@lru_cache(maxsize=None)
def ports() -> dict[str, Port]:
    return {p["code"]: Port(**p) for p in _load("ports.json", "ports")}


@lru_cache(maxsize=None)
def stations() -> dict[str, dict]:
    return {s["station_id"]: s for s in _load("stations.json", "stations")}


@lru_cache(maxsize=None)
def countries() -> dict[str, dict]:
    return {c["alpha3"]: c for c in _load("countries.json", "countries")}


@lru_cache(maxsize=None)
def document_types() -> dict[str, dict]:
    return {d["code"]: d for d in _load("document_types.json", "document_types")}


def ports_of(region: str) -> list[Port]:
    return [p for p in ports().values() if p.region == region]


def neighbours(region: str) -> list[str]:
    return list(regions()[region]["neighbours"])
