"""Validation of events against the contract: the schema, the reference data and the clock.

``validate(kind, record)`` raises the typed errors of ``schemas.errors``; each
message names the field and the rule it broke, e.g.
"field `direction`: expected ENTRY or EXIT, got 'IN'".

Two halves, so that the codec stays cheap:

* ``validate_structure``: what the Avro schema says (required fields, types,
  enum symbols, ranges of int and long, tz-aware timestamps). fastavro's
  writer enforces the same, so the codec runs this half only to name the field
  when fastavro refuses a record.
* ``fast_check(kind)``: what the schema cannot say, run on every encode:
  canonical UUIDs, ISO 3166-1 alpha-3 countries, the station and the port
  belonging to the record's region, subject tokens that are tokens (never a
  document number), event time no more than a skew ahead of the clock.
"""
from __future__ import annotations

import json
import re
import time
import uuid
from datetime import date, datetime, timedelta, timezone
from functools import lru_cache
from typing import Callable

from schemas import contract, reference
from schemas.errors import (
    EnumError,
    EventError,
    FutureEventError,
    MissingFieldError,
    PortRegionError,
    ValidationError,
)

#: how far an event time may lie ahead of the validating clock (stations' clocks drift)
DEFAULT_FUTURE_SKEW = timedelta(minutes=5)

_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_TOKEN = re.compile(r"[0-9a-f]{64}")
_HEX = b"0123456789abcdef"
_INT32 = (-(2 ** 31), 2 ** 31 - 1)
_INT64 = (-(2 ** 63), 2 ** 63 - 1)
#: fields whose values may identify a person: an error never repeats them
SENSITIVE = frozenset({"subject", "subjects", "name_token"})


def validate(kind: str, record: dict, *, now: datetime | None = None,
             skew: timedelta = DEFAULT_FUTURE_SKEW) -> None:
    """Raise the typed ``EventError`` for the first rule ``record`` (a ``kind`` event) breaks; else None."""
    validate_structure(kind, record)
    fast_check(kind)(record, now, skew)


# ====================================================================== structure
def validate_structure(kind: str, record) -> None:
    """Check ``record`` against the current Avro schema of ``kind``: required fields, types, enums."""
    schema = _schema(kind)
    if not isinstance(record, dict):
        raise ValidationError(f"a {kind} event must be an object (dict), got {type(record).__name__}")
    _check_record(schema.root, record, "", schema)


class _Named:
    """The current schema of a kind with its named types (enums) looked up by name."""

    def __init__(self, kind: str):
        self.root = json.loads(contract.current_schema_json(kind))
        self.names: dict[str, dict] = {}
        self._collect(self.root, self.root.get("namespace", ""))

    def _collect(self, node, ns):
        if isinstance(node, dict):
            if node.get("type") in ("enum", "record", "fixed") and "name" in node:
                name = node["name"] if "." in node["name"] else f"{node.get('namespace', ns)}.{node['name']}"
                self.names.setdefault(name, node)
                ns = node.get("namespace", ns)
            for v in node.values():
                self._collect(v, ns)
        elif isinstance(node, list):
            for v in node:
                self._collect(v, ns)

    def resolve(self, node):
        """A type node with a named reference replaced by its definition."""
        if isinstance(node, str) and node in self.names:
            return self.names[node]
        if isinstance(node, str) and f"{self.root.get('namespace', '')}.{node}" in self.names:
            return self.names[f"{self.root['namespace']}.{node}"]
        return node


@lru_cache(maxsize=None)
def _schema(kind: str) -> _Named:
    return _Named(kind)


def shown(field: str, value) -> str:
    """How an error shows a value: a short repr, or only its length for fields that may identify a person."""
    top = field.split(".", 1)[0].split("[", 1)[0]
    if top in SENSITIVE and isinstance(value, str):
        return f"a string of {len(value)} characters"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _path(parent: str, name: str) -> str:
    return f"{parent}.{name}" if parent else name


def _check_record(schema: dict, record: dict, path: str, named: _Named) -> None:
    for field in schema["fields"]:
        name = field["name"]
        fpath = _path(path, name)
        if name not in record:
            if "default" in field:
                continue
            raise MissingFieldError("required, but absent", field=fpath)
        _check(field["type"], record[name], fpath, named)


def _type_name(node) -> str:
    if isinstance(node, str):
        return node.rsplit(".", 1)[-1]
    if isinstance(node, list):
        return " or ".join(_type_name(n) for n in node)
    if node.get("logicalType"):
        return node["logicalType"]
    if node.get("type") in ("enum", "record", "fixed"):
        return node["name"].rsplit(".", 1)[-1]
    return node.get("type", "?")


def _check(node, value, path: str, named: _Named) -> None:
    node = named.resolve(node)
    if isinstance(node, list):
        _check_union(node, value, path, named)
        return
    if isinstance(node, str):
        _check_primitive(node, value, path)
        return
    t = node["type"]
    logical = node.get("logicalType")
    if value is None and t != "null":
        raise MissingFieldError(f"required, got null (expected {_type_name(node)})", field=path)
    if logical in ("timestamp-millis", "timestamp-micros"):
        check_timestamp(value, path)
        return
    if logical == "uuid":
        check_uuid(value, path)
        return
    if logical == "date":
        if not isinstance(value, (date, int)) or isinstance(value, (bool, datetime)):
            raise ValidationError(f"expected a date, got {shown(path, value)}", field=path)
        return
    if t == "enum":
        check_enum(node, value, path)
    elif t == "array":
        if not isinstance(value, (list, tuple)):
            raise ValidationError(f"expected an array, got {type(value).__name__}", field=path)
        for i, item in enumerate(value):
            _check(node["items"], item, f"{path}[{i}]", named)
    elif t == "map":
        if not isinstance(value, dict):
            raise ValidationError(f"expected a map (object), got {type(value).__name__}", field=path)
        for k, v in value.items():
            if not isinstance(k, str):
                raise ValidationError(f"map keys must be strings, got {k!r}", field=path)
            _check(node["values"], v, f"{path}.{k}", named)
    elif t == "record":
        if not isinstance(value, dict):
            raise ValidationError(f"expected a record (object), got {type(value).__name__}", field=path)
        _check_record(node, value, path, named)
    elif t == "fixed":
        if not isinstance(value, bytes) or len(value) != node["size"]:
            raise ValidationError(f"expected {node['size']} bytes, got {shown(path, value)}", field=path)
    else:
        _check(t, value, path, named)


def _check_primitive(t: str, value, path: str) -> None:
    if t == "null":
        if value is not None:
            raise ValidationError(f"expected null, got {shown(path, value)}", field=path)
        return
    if value is None:
        raise MissingFieldError(f"required, got null (expected {t})", field=path)
    if t == "string":
        ok = isinstance(value, str)
    elif t == "boolean":
        ok = isinstance(value, bool)
    elif t in ("int", "long"):
        ok = isinstance(value, int) and not isinstance(value, bool)
        lo, hi = _INT32 if t == "int" else _INT64
        if ok and not lo <= value <= hi:
            raise ValidationError(f"expected a {t} in [{lo}, {hi}], got {value}", field=path)
    elif t in ("float", "double"):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif t == "bytes":
        ok = isinstance(value, (bytes, bytearray))
    else:
        ok = True
    if not ok:
        raise ValidationError(f"expected {t}, got {type(value).__name__} {shown(path, value)}", field=path)


def _check_union(branches: list, value, path: str, named: _Named) -> None:
    if value is None:
        if "null" in branches:
            return
        raise MissingFieldError(f"required, got null (expected {_type_name(branches)})", field=path)
    others = [b for b in branches if b != "null"]
    first: EventError | None = None
    for b in others:
        try:
            _check(b, value, path, named)
            return
        except EventError as exc:
            first = first or exc
    if len(others) == 1 and first is not None:
        raise first
    raise ValidationError(f"expected {_type_name(branches)}, got {shown(path, value)}", field=path)


def check_enum(node: dict, value, path: str) -> None:
    symbols = node["symbols"]
    if value in symbols if isinstance(value, str) else False:
        return
    if len(symbols) == 2:
        expected = f"{symbols[0]} or {symbols[1]}"
    else:
        expected = "one of " + ", ".join(symbols)
    raise EnumError(f"expected {expected}, got {shown(path, value)}", field=path)


_EPOCH_MS = (-62_135_596_800_000, 253_402_300_799_999)


def check_timestamp(value, path: str) -> None:
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValidationError("expected a timezone-aware (UTC) datetime, got a naive one", field=path)
        return
    if isinstance(value, int) and not isinstance(value, bool):
        # what a reader can turn back into a datetime: years 1 to 9999 (a wider long decodes to an error)
        if not _EPOCH_MS[0] <= value <= _EPOCH_MS[1]:
            raise ValidationError(f"epoch milliseconds out of range (years 1 to 9999): {value}", field=path)
        return
    raise ValidationError(f"expected a UTC datetime (or epoch milliseconds), got {type(value).__name__} "
                          f"{shown(path, value)}", field=path)


def check_uuid(value, path: str) -> None:
    if isinstance(value, uuid.UUID):
        return
    if isinstance(value, str) and _UUID.fullmatch(value):
        return
    raise ValidationError(
        f"expected a UUID in canonical lower-case form (8-4-4-4-12 hex digits), got {shown(path, value)}",
        field=path)


# ====================================================================== semantics
Check = Callable[[dict, "datetime | None", timedelta], None]


@lru_cache(maxsize=None)
def fast_check(kind: str) -> Check:
    """The checks of ``kind`` that the schema cannot express, as one callable ``(record, now, skew)``.

    Built once per kind: every lookup table is bound in advance so that a valid record costs a few
    dictionary look-ups. A record that is structurally broken (a field missing, a list where a string
    belongs) is handed to ``validate_structure`` to name the field.
    """
    contract.full_name(kind)
    body = _SEMANTIC.get(kind) or _check_times_only(kind)
    if getattr(body, "guarded", False):  # it catches and explains by itself (saves a call per record)
        return body

    def check(record, now, skew, _body=body, _kind=kind):
        try:
            _body(record, now, skew)
        except EventError:
            raise
        except Exception as exc:  # a wrong type or a missing key reached a look-up: say which field
            validate_structure(_kind, record)
            raise ValidationError(f"does not fit the {_kind} schema: {type(exc).__name__}: {exc}") from None

    return check


@lru_cache(maxsize=None)
def _tables():
    ports = reference.ports()
    stations: dict[str, set[str]] = {}
    for s in reference.stations().values():
        stations.setdefault(s["station_id"], set()).add(s["region"])
    for p in ports.values():  # a station id can serve several ports (airport and sea port of one city)
        stations.setdefault(p.station_id, set()).add(p.region)
    port_region = {code: p.region for code, p in ports.items()}
    return port_region, stations, frozenset(reference.countries())


@lru_cache(maxsize=None)
def _places() -> frozenset:
    """Every valid (region, station_id, port_code) triple: one set look-up checks all three together."""
    port_region, stations, _ = _tables()
    ports = reference.ports()
    return frozenset((p.region, p.station_id, code) for code, p in ports.items()
                     if p.region in stations.get(p.station_id, ()))


class _Limit:
    """The latest acceptable event time against the wall clock, cached (see ``_clearance``)."""

    __slots__ = ("skew", "limit")

    def __init__(self):
        self.skew = None
        self.limit = None

    def reset(self, skew: timedelta) -> datetime:
        self.skew = skew
        self.limit = datetime.fromtimestamp(time.time(), timezone.utc) + skew
        return self.limit


def _future(value, path: str, now: datetime | None, skew: timedelta, clock: _Limit | None = None) -> None:
    if clock is not None and now is None:
        clock.reset(skew)
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValidationError("expected a timezone-aware (UTC) datetime, got a naive one", field=path)
        ahead = value.timestamp() - (time.time() if now is None else now.timestamp())
    else:  # epoch millis (fastavro accepts them too)
        check_timestamp(value, path)
        ahead = value / 1000.0 - (time.time() if now is None else now.timestamp())
    if ahead > skew.total_seconds():
        raise FutureEventError(
            f"event time {_iso(value)} is {_span(ahead)} ahead of the clock "
            f"({_iso(now) if now is not None else 'now'}); at most {_span(skew.total_seconds())} is allowed",
            field=path)


def _aware(value, path: str) -> None:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValidationError("expected a timezone-aware (UTC) datetime, got a naive one", field=path)
    else:
        check_timestamp(value, path)


def _iso(value) -> str:
    if isinstance(value, datetime):
        return value.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    if isinstance(value, int):
        return _iso(datetime.fromtimestamp(value / 1000.0, timezone.utc))
    return repr(value)


def _span(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.0f} s"


def _uuid(value, path: str = "event_id") -> None:
    if value.__class__ is str and _UUID.fullmatch(value):
        return
    check_uuid(value, path)


def _token(value, path: str) -> None:
    if value.__class__ is str and _TOKEN.fullmatch(value):
        return
    raise ValidationError(
        f"expected a subject token (64 lower-case hex digits of HMAC-SHA256, see schemas.pseudonym), "
        f"got {shown(path, value)}; document numbers and names never travel in clear", field=path)


def _country(value, path: str, countries) -> None:
    if value in countries:
        return
    raise ValidationError(f"expected an ISO 3166-1 alpha-3 country code (e.g. CHN, USA), got {shown(path, value)}",
                          field=path)


def _station_and_port(record: dict, tables) -> str:
    port_region, stations, _ = tables
    region = record["region"]
    station = record["station_id"]
    regions = stations.get(station)
    if regions is None:
        raise ValidationError(f"unknown station {shown('station_id', station)}; stations are listed in "
                              f"schemas/reference/stations.json", field="station_id")
    if region not in regions:
        raise PortRegionError(f"station {station} belongs to {', '.join(sorted(regions))}, not to {region}",
                              field="station_id")
    port = record["port_code"]
    preg = port_region.get(port)
    if preg is None:
        raise ValidationError(f"unknown port {shown('port_code', port)}; ports are listed in "
                              f"schemas/reference/ports.json", field="port_code")
    if preg != region:
        raise PortRegionError(f"port {port} is a port of {preg}, not of {region}", field="port_code")
    return region


def _explain(kind: str, record, exc: Exception):
    """A wrong type or a missing key reached a look-up: name the field (or say what fastavro would)."""
    validate_structure(kind, record)
    raise ValidationError(f"does not fit the {kind} schema: {type(exc).__name__}: {exc}") from None


def _clearance():
    tables = _tables()
    port_region, _, countries = tables
    places = _places()
    clock = _Limit()
    countries_or_none = countries | {None}  # an optional field: one look-up instead of two
    ports_or_none = frozenset(port_region) | {None}

    # The common case costs a handful of look-ups and one byte translation; anything doubtful falls through
    # to the checks that name the field and the rule.
    def check(r, now, skew):
        try:
            # The identifiers in one pass: event_id (8-4-4-4-12 lower-case hex), subject and name_token (64
            # lower-case hex each). Deleting the hex digits from their bytes must leave the four dashes of the
            # UUID, and those sit at 8, 13, 18, 23. str.translate on bytes beats three regex matches on fresh
            # strings by 2-3x. Anything else (a uuid.UUID, a bad token) takes the checks that say which.
            eid = r["event_id"]
            sub = r["subject"]
            nt = r.get("name_token")
            if not (eid.__class__ is str and sub.__class__ is str and len(eid) == 36 and len(sub) == 64
                    and eid[8:24:5] == "----"
                    and ((eid + sub) if nt is None else (eid + sub + nt) if nt.__class__ is str and len(nt) == 64
                         else "").encode().translate(None, _HEX) == b"----"):
                _uuid(eid)
                _token(sub, "subject")
                if nt is not None:
                    _token(nt, "name_token")
            if (r["region"], r["station_id"], r["port_code"]) not in places:
                _station_and_port(r, tables)
            occ = r["occurred_at"]
            # Against the wall clock, the limit is cached: an event time before the cached limit is before
            # the true one (clocks move forward); any other is checked against the clock itself, which also
            # moves the cache on. A naive event time cannot be compared: TypeError, explained below.
            limit = (clock.limit if skew is clock.skew else clock.reset(skew)) if now is None else now + skew
            if occ.__class__ is not datetime or not occ <= limit:
                _future(occ, "occurred_at", now, skew, clock)
            if r["published_at"].tzinfo is None:
                _aware(r["published_at"], "published_at")
            if r["document_country"] not in countries:
                _country(r["document_country"], "document_country", countries)
            if r["nationality"] not in countries:
                _country(r["nationality"], "nationality", countries)
            if r.get("origin_country") not in countries_or_none:
                _country(r["origin_country"], "origin_country", countries)
            if r.get("destination_country") not in countries_or_none:
                _country(r["destination_country"], "destination_country", countries)
            sp = r.get("scheduled_port")
            if sp not in ports_or_none:
                raise ValidationError(f"unknown port {shown('scheduled_port', sp)}; ports are listed in "
                                      f"schemas/reference/ports.json", field="scheduled_port")
        except EventError:
            raise
        except Exception as exc:
            _explain("clearance", r, exc)

    check.guarded = True
    return check


def _alert():
    tables = _tables()
    _, _, countries = tables

    def check(r, now, skew):
        _uuid(r["event_id"])
        _station_and_port(r, tables)
        _future(r["occurred_at"], "occurred_at", now, skew)
        _aware(r["published_at"], "published_at")
        s = r.get("subject")
        if s is not None:
            _token(s, "subject")
        for f in ("nationality", "document_country"):
            v = r.get(f)
            if v is not None:
                _country(v, f, countries)
        if s is None and r.get("conveyance_id") is None:
            raise MissingFieldError("an alert names a subject, a conveyance_id, or both; both are null",
                                    field="subject")

    return check


def _case():
    tables = _tables()
    _, _, countries = tables

    def check(r, now, skew):
        _uuid(r["event_id"])
        region = _station_and_port(r, tables)
        _future(r["occurred_at"], "occurred_at", now, skew)
        _aware(r["published_at"], "published_at")
        if not r["case_id"]:
            raise MissingFieldError("required, got an empty string", field="case_id")
        for i, s in enumerate(r.get("subjects", ())):
            _token(s, f"subjects[{i}]")
        for i, c in enumerate(r.get("nationalities", ())):
            _country(c, f"nationalities[{i}]", countries)
        persons = r.get("persons", 1)
        if isinstance(persons, int) and persons < 1:
            raise ValidationError(f"expected at least 1 person, got {persons}", field="persons")
        if r["stage"] == "TRANSFERRED":
            to = r.get("transferred_to")
            if to is None:
                raise MissingFieldError("required when stage is TRANSFERRED", field="transferred_to")
            if to == region:
                raise ValidationError(f"a case is transferred to another region, got its own ({to})",
                                      field="transferred_to")

    return check


def _control():
    def check(r, now, skew):
        _uuid(r["event_id"])
        _aware(r["occurred_at"], "occurred_at")
        _aware(r["starts_at"], "starts_at")
        _aware(r["ends_at"], "ends_at")
        if r["ends_at"] <= r["starts_at"]:
            raise ValidationError("the window ends before it starts (ends_at <= starts_at)", field="ends_at")
        if not r["regions"]:
            raise MissingFieldError("at least one region is required", field="regions")

    return check


def _check_times_only(kind: str):
    fields = [f["name"] for f in _schema(kind).root["fields"]
              if isinstance(f["type"], dict) and f["type"].get("logicalType") == "timestamp-millis"]

    def check(r, now, skew):
        for f in fields:
            _aware(r[f], f)

    return check


_SEMANTIC = {"clearance": _clearance(), "alert": _alert(), "case": _case(), "control": _control()}
