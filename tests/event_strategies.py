"""Hypothesis strategies for valid events of every kind (the contract's rules included).

Source events (clearance, alert, case) take their stations, ports and
countries from the reference data; the stream layer's kinds are drawn from
their schema. Timestamps have millisecond precision, as on the wire, and lie
in the past (a future event time is invalid).
"""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

from hypothesis import strategies as st

from schemas import contract, reference

UTC = timezone.utc
PAST = datetime(2026, 1, 1, tzinfo=UTC)  # before any clock this runs on
PORTS = sorted(reference.ports().values(), key=lambda p: p.code)
COUNTRIES = sorted(reference.countries())


def ms_datetimes(lo: datetime = datetime(1990, 1, 1), hi: datetime = PAST.replace(tzinfo=None)):
    return st.datetimes(min_value=lo, max_value=hi, timezones=st.just(UTC)).map(
        lambda d: d.replace(microsecond=d.microsecond // 1000 * 1000))


tokens = st.binary(min_size=32, max_size=32).map(bytes.hex)
event_ids = st.uuids().map(str)
countries = st.sampled_from(COUNTRIES)
texts = st.text(max_size=30)


def symbols(kind: str, field: str):
    """The enum symbols of ``field`` of ``kind``'s current schema."""
    schema = json.loads(contract.current_schema_json(kind))
    names = _named(schema)
    node = next(f["type"] for f in schema["fields"] if f["name"] == field)
    if isinstance(node, list):
        node = next(b for b in node if b != "null")
    if isinstance(node, str):
        node = names[node]
    return node["symbols"]


def _named(schema) -> dict:
    out = {}

    def walk(n):
        if isinstance(n, dict):
            if n.get("type") == "enum":
                out.setdefault(n["name"], n)
            for v in n.values():
                walk(v)
        elif isinstance(n, list):
            for v in n:
                walk(v)

    walk(schema)
    return out


def enum(kind: str, field: str):
    return st.sampled_from(symbols(kind, field))


def optional(strategy):
    return st.none() | strategy


@st.composite
def _common(draw, kind: str) -> dict:
    port = draw(st.sampled_from(PORTS))
    occurred = draw(ms_datetimes())
    return {"event_id": draw(event_ids), "region": port.region, "station_id": port.station_id,
            "port_code": port.code, "occurred_at": occurred,
            "published_at": occurred + timedelta(milliseconds=draw(st.integers(0, 10 ** 7)))}


@st.composite
def clearances(draw) -> dict:
    r = draw(_common("clearance"))
    r.update({
        "subject": draw(tokens), "name_token": draw(optional(tokens)),
        "direction": draw(enum("clearance", "direction")),
        "document_type": draw(enum("clearance", "document_type")),
        "document_country": draw(countries), "nationality": draw(countries),
        "conveyance_type": draw(enum("clearance", "conveyance_type")), "conveyance_id": draw(texts),
        "scheduled_port": draw(optional(st.sampled_from([p.code for p in PORTS]))),
        "lane": draw(enum("clearance", "lane")), "entry_basis": draw(enum("clearance", "entry_basis")),
        "decision": draw(enum("clearance", "decision")),
        "origin_country": draw(optional(countries)), "destination_country": draw(optional(countries)),
    })
    return r


@st.composite
def alerts(draw) -> dict:
    r = draw(_common("alert"))
    subject = draw(optional(tokens))
    conveyance = draw(texts if subject is None else optional(texts))
    r.update({
        "subject": subject, "kind": draw(enum("alert", "kind")), "severity": draw(enum("alert", "severity")),
        "source": draw(enum("alert", "source")), "status": draw(enum("alert", "status")),
        "nationality": draw(optional(countries)), "document_type": draw(optional(enum("alert", "document_type"))),
        "document_country": draw(optional(countries)), "document_series": draw(optional(texts)),
        "fraud_method": draw(optional(enum("alert", "fraud_method"))),
        "conveyance_type": draw(optional(enum("alert", "conveyance_type"))), "conveyance_id": conveyance,
        "description": draw(texts),
    })
    return r


@st.composite
def cases(draw) -> dict:
    r = draw(_common("case"))
    stage = draw(enum("case", "stage"))
    others = [g for g in reference.REGIONS if g != r["region"]]
    r.update({
        "case_id": draw(st.text(min_size=1, max_size=20)), "stage": stage,
        "case_type": draw(enum("case", "case_type")), "method": draw(enum("case", "method")),
        "subjects": draw(st.lists(tokens, max_size=4)), "nationalities": draw(st.lists(countries, max_size=4)),
        "persons": draw(st.integers(1, 10_000)),
        "conveyance_type": draw(optional(enum("case", "conveyance_type"))), "conveyance_id": draw(optional(texts)),
        "transferred_to": draw(st.sampled_from(others) if stage == "TRANSFERRED" else optional(st.sampled_from(others))),
        "description": draw(texts),
    })
    return r


# ---------------------------------------------------------------------- stream-layer kinds, from the schema
def from_schema(kind: str):
    schema = json.loads(contract.current_schema_json(kind))
    names = _named(schema)
    return _record(schema, names)


def _record(node, names):
    return st.fixed_dictionaries({f["name"]: _type(f["type"], names) for f in node["fields"]})


def _type(node, names):
    if isinstance(node, list):
        return st.one_of(*[_type(b, names) for b in node])
    if isinstance(node, str):
        if node in names:
            return _type(names[node], names)
        return {
            "null": st.none(), "boolean": st.booleans(), "string": texts,
            "int": st.integers(-(2 ** 31), 2 ** 31 - 1), "long": st.integers(-(2 ** 63), 2 ** 63 - 1),
            "double": st.floats(allow_nan=False, allow_infinity=False),
            "float": st.floats(width=32, allow_nan=False, allow_infinity=False),
        }[node]
    logical = node.get("logicalType")
    if logical == "timestamp-millis":
        return ms_datetimes()
    if logical == "uuid":
        return event_ids
    t = node["type"]
    if t == "enum":
        return st.sampled_from(node["symbols"])
    if t == "array":
        return st.lists(_type(node["items"], names), max_size=3)
    if t == "map":
        return st.dictionaries(st.text(max_size=8), _type(node["values"], names), max_size=3)
    if t == "record":
        return _record(node, names)
    return _type(t, names)


def controls():
    return from_schema("control").filter(lambda r: r["ends_at"] > r["starts_at"] and r["regions"])


STRATEGIES = {
    "clearance": clearances(), "alert": alerts(), "case": cases(), "control": controls(),
    "derived_alert": from_schema("derived_alert"), "trend": from_schema("trend"), "risk": from_schema("risk"),
}
