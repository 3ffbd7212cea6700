"""Plain events for the rules: the Avro record's fields, times as epoch millis, and ``_kind``."""
from __future__ import annotations

from datetime import datetime, timezone

TIME_FIELDS = ("occurred_at", "published_at", "starts_at", "ends_at", "window_start", "window_end", "emitted_at")


def to_ms(value) -> int | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return int(value.timestamp() * 1000)
    return int(value)


def from_ms(ms: int | None) -> datetime | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, tz=timezone.utc)


def plain(kind: str, record: dict) -> dict:
    ev = dict(record)
    for f in TIME_FIELDS:
        if f in ev:
            ev[f] = to_ms(ev[f])
    if "event_id" in ev and ev["event_id"] is not None:
        ev["event_id"] = str(ev["event_id"])
    ev["_kind"] = kind
    return ev


def for_avro(record: dict) -> dict:
    """The record with its millis times turned back into datetimes (fastavro takes either; this is explicit)."""
    out = {k: v for k, v in record.items() if not k.startswith("_")}
    for f in TIME_FIELDS:
        if f in out and isinstance(out[f], int):
            out[f] = from_ms(out[f])
    return out


def iso(ms: int) -> str:
    return from_ms(ms).strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"
