"""The contract's bounds on event time, checked wherever an event is read, not only where it is written.

A station (or a compromised one, within its ACLs) can put any time in a schema-valid record. Detection runs
on event time, so a record dated in the year 9999 would move every watermark to the year 9999 and fire every
deadline at once. The bounds:

* no later than ``skew`` ahead of the reading process's clock (stations' clocks drift; 5 minutes);
* no earlier than ``floor`` (``YRDBUS_EVENT_TIME_FLOOR``, 2000-01-01 UTC by default: archives of the
  agencies' business system reach back to the early 2000s; ClickHouse's DateTime64 starts at 1900).

``EventTimeBounds.check(ms)`` raises the typed error that names the field and the rule; the worker and the
sink send such a record to the dead-letter topic. ``OccurredAtReader`` reads ``occurred_at`` from a framed
Avro record without decoding the rest (the sink's hot path does not decode records).
"""
from __future__ import annotations

import json
import time
from datetime import datetime, timedelta, timezone
from typing import Callable

from schemas.errors import EventTimeTooEarlyError, FutureEventError, UndecodableError

DEFAULT_FLOOR = datetime(2000, 1, 1, tzinfo=timezone.utc)
DEFAULT_SKEW = timedelta(minutes=5)
#: the kinds whose ``occurred_at`` is a station's claim (derived outputs carry the worker's own times)
SOURCE_KINDS = frozenset({"clearance", "alert", "case", "control"})


def _iso(ms: int) -> str:
    try:
        return datetime.fromtimestamp(ms / 1000.0, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
    except (OverflowError, OSError, ValueError):
        return f"{ms} ms since 1970 (outside any calendar)"


def _span(seconds: float) -> str:
    if seconds >= 86400 * 365:
        return f"{seconds / (86400 * 365.25):.0f} years"
    if seconds >= 86400:
        return f"{seconds / 86400:.1f} days"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.1f} min"


class EventTimeBounds:
    """The accepted range of event times: ``[floor, clock() + skew]``."""

    __slots__ = ("floor_ms", "skew_ms", "clock", "_limit_ms", "_limit_at")

    def __init__(self, floor: datetime = DEFAULT_FLOOR, skew: timedelta = DEFAULT_SKEW,
                 clock: Callable[[], float] = time.time):
        if floor.tzinfo is None:
            floor = floor.replace(tzinfo=timezone.utc)
        self.floor_ms = int(floor.timestamp() * 1000)
        self.skew_ms = int(skew.total_seconds() * 1000)
        self.clock = clock
        self._limit_ms = -(1 << 62)

    @classmethod
    def from_settings(cls, settings) -> "EventTimeBounds":
        return cls(settings.event_time_floor, timedelta(seconds=settings.event_time_future_skew_s))

    @property
    def floor(self) -> datetime:
        return datetime.fromtimestamp(self.floor_ms / 1000.0, timezone.utc)

    def check(self, ms: int, field: str = "occurred_at") -> None:
        """Raise ``FutureEventError`` or ``EventTimeTooEarlyError`` for an event time outside the bounds."""
        # The upper limit is cached: an event time below the cached limit is below the true one (clocks
        # move forward); any other is checked against the clock itself.
        if self.floor_ms <= ms <= self._limit_ms:
            return
        now_ms = int(self.clock() * 1000)
        self._limit_ms = now_ms + self.skew_ms
        if ms < self.floor_ms:
            raise EventTimeTooEarlyError(
                f"event time {_iso(ms)} is before the contract's floor {_iso(self.floor_ms)} "
                f"(YRDBUS_EVENT_TIME_FLOOR)", field=field)
        if ms > self._limit_ms:
            raise FutureEventError(
                f"event time {_iso(ms)} is {_span((ms - now_ms) / 1000.0)} ahead of the clock ({_iso(now_ms)}); "
                f"at most {_span(self.skew_ms / 1000.0)} is allowed", field=field)

    def contains(self, ms: int) -> bool:
        try:
            self.check(ms)
        except (FutureEventError, EventTimeTooEarlyError):
            return False
        return True


# ---------------------------------------------------------------------- reading occurred_at from bytes
def _read_long(data: bytes, pos: int) -> tuple[int, int]:
    """A zig-zag varint long at ``pos``: (value, next position)."""
    shift = result = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise UndecodableError("the record ends inside a varint")
        b = data[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return (result >> 1) ^ -(result & 1), pos
        shift += 7


def _skip_plan(schema_json: str, field: str = "occurred_at") -> list[str] | None:
    """The Avro types of the fields before ``field`` if each can be skipped without a schema walk
    (string, bytes, int, long, enum), and ``field`` is a long; else None (read it by decoding)."""
    schema = json.loads(schema_json)
    plan = []
    for f in schema.get("fields", ()):
        t = f["type"]
        name = t.get("type") if isinstance(t, dict) else t
        if f["name"] == field:
            return plan if name == "long" else None
        if name in ("string", "bytes"):
            plan.append("bytes")
        elif name in ("int", "long", "enum"):
            plan.append("long")
        else:
            return None
    return None


class OccurredAtReader:
    """``occurred_at`` (epoch millis) of a framed Avro record, read without decoding the whole record.

    ``writer(schema_id) -> (kind, writer schema JSON) | None`` names the schemas; for each, the fields
    before ``occurred_at`` are skipped by their length prefixes (the source kinds put four short fields
    first). A schema where that is not possible is decoded with fastavro instead.
    """

    def __init__(self, writer: Callable[[int], "tuple[str, str] | None"]):
        self._writer = writer
        self._plans: dict[int, object] = {}

    def _plan(self, sid: int):
        plan = self._plans.get(sid)
        if plan is None:
            known = self._writer(sid)
            if known is None:
                raise UndecodableError(f"schema id {sid} is not a known schema of this bus")
            plan = _skip_plan(known[1])
            if plan is None:
                from fastavro import parse_schema

                plan = parse_schema(json.loads(known[1]))
            self._plans[sid] = plan
        return plan

    def read(self, data: bytes) -> int:
        sid = int.from_bytes(data[1:5], "big")
        plan = self._plan(sid)
        if isinstance(plan, list):
            pos = 5
            try:
                for step in plan:
                    n = data[pos]
                    if n < 0x80:   # one-byte varint: the common case of short strings and enums
                        pos += 1 + (n >> 1 if step == "bytes" else 0)
                        if step == "bytes" and n & 1:
                            raise UndecodableError("a negative string length")
                        continue
                    n, pos = _read_long(data, pos)
                    if step == "bytes":
                        if n < 0:
                            raise UndecodableError("a negative string length")
                        pos += n
                value, _ = _read_long(data, pos)
            except IndexError:
                raise UndecodableError("the record ends before its occurred_at field") from None
            return value
        import io

        from fastavro import schemaless_reader

        try:
            rec = schemaless_reader(io.BytesIO(data[5:]), plan, None)
        except Exception as exc:
            raise UndecodableError(f"body does not decode as schema id {sid}: {type(exc).__name__}: {exc}") from None
        v = rec.get("occurred_at")
        if isinstance(v, datetime):
            return int(v.timestamp() * 1000)
        if not isinstance(v, int):
            raise UndecodableError("the record has no occurred_at")
        return v
