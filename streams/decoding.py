"""Decoding source events into plain events for the rules, fast.

An event written with the current schema of its kind (the usual case) is read
with that schema stripped of its logical types: timestamps stay epoch millis
and ids stay strings, which is what the rules want, and fastavro has no
schema resolution to do. An event written with an older schema goes through
the codec (resolution against the current schema), then ``plain``.
"""
from __future__ import annotations

import io
import json
import struct

from fastavro import parse_schema, schemaless_reader

from schemas import contract
from schemas.errors import UndecodableError
from streams.events import plain

_HEADER = struct.Struct(">bI")


def _strip_logical(obj):
    if isinstance(obj, dict):
        return {k: _strip_logical(v) for k, v in obj.items() if k != "logicalType"}
    if isinstance(obj, list):
        return [_strip_logical(v) for v in obj]
    return obj


class PlainDecoder:
    def __init__(self, codec):
        self.codec = codec
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
            return plain(k, rec)
        stream = io.BytesIO(data)
        stream.seek(5)
        try:
            rec = schemaless_reader(stream, fast[1], None)
        except Exception as exc:
            raise UndecodableError(f"body does not decode as schema id {sid}: {type(exc).__name__}: {exc}") from None
        if stream.tell() != len(data):
            raise UndecodableError(f"{len(data) - stream.tell()} bytes left over after the record (schema id {sid})")
        rec["_kind"] = fast[0]
        return rec
