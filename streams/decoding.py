"""Decoding source events into plain events for the rules, fast.

An event written with the current schema of its kind (the usual case) is read
with that schema stripped of its logical types: timestamps stay epoch millis
and ids stay strings, which is what the rules want, and fastavro has no
schema resolution to do. An event written with an older schema goes through
the codec (resolution against the current schema), then ``plain``.

Given ``bounds`` (``schemas.eventtime.EventTimeBounds``), a source event (clearance, alert, case, control)
whose ``occurred_at`` lies outside them is refused with the bounds' typed error, as an undecodable one is:
the stages decode before they observe event time, so a forged date never reaches a rule or a watermark.
"""
from __future__ import annotations

import io
import json
import struct

from fastavro import parse_schema, schemaless_reader

from schemas import contract
from schemas.errors import UndecodableError
from schemas.eventtime import SOURCE_KINDS
from streams.events import plain

_HEADER = struct.Struct(">bI")


def _strip_logical(obj):
    if isinstance(obj, dict):
        return {k: _strip_logical(v) for k, v in obj.items() if k != "logicalType"}
    if isinstance(obj, list):
        return [_strip_logical(v) for v in obj]
    return obj


class PlainDecoder:
    def __init__(self, codec, bounds=None):
        self.codec = codec
        self.bounds = bounds        # EventTimeBounds: the source kinds' occurred_at is checked (None: not)
        self._fast: dict[int, tuple[str, object]] = {}
        for kind in contract.KINDS:
            try:
                sid = codec.schema_id(kind)
            except Exception:  # a kind without a registered current schema: always the codec's way
                continue
            raw = _strip_logical(json.loads(contract.current_schema_json(kind)))
            self._fast[sid] = (kind, parse_schema(raw))

    def decode(self, data: bytes, kind: str | None = None) -> dict:
        if not isinstance(data, (bytes, bytearray)) or len(data) < 5:
            raise UndecodableError(f"{0 if data is None else len(data)} bytes is shorter than the 5-byte header")
        magic, sid = _HEADER.unpack_from(data)
        fast = self._fast.get(sid) if magic == 0 else None
        if fast is None or (kind is not None and fast[0] != kind):
            k, rec = self.codec.decode(bytes(data), kind)
            ev = plain(k, rec)
            if self.bounds is not None and k in SOURCE_KINDS:
                self.bounds.check(ev["occurred_at"])
            return ev
        stream = io.BytesIO(data)
        stream.seek(5)
        try:
            rec = schemaless_reader(stream, fast[1], None)
        except Exception as exc:
            raise UndecodableError(f"body does not decode as schema id {sid}: {type(exc).__name__}: {exc}") from None
        if stream.tell() != len(data):
            raise UndecodableError(f"{len(data) - stream.tell()} bytes left over after the record (schema id {sid})")
        rec["_kind"] = fast[0]
        if self.bounds is not None and fast[0] in SOURCE_KINDS:
            self.bounds.check(rec["occurred_at"])   # one comparison while it is inside the cached limits
        return rec
