"""Avro binary in the Confluent framing: magic byte 0, a 4-byte big-endian schema id, the body.

Schema ids come from ``schemas/ids.json`` (append-only, committed) or, when
``YRDBUS_SCHEMA_REGISTRY_URL`` is set, from a Confluent-compatible registry.
Decoding reads the writer's schema by its id and resolves it against the
reader's (the current schema of the kind).
"""
from __future__ import annotations

import io
import struct
from functools import lru_cache

from fastavro import schemaless_reader, schemaless_writer

from schemas import contract
from schemas.errors import UndecodableError, UnknownSchemaError, ValidationError

MAGIC = 0
_HEADER = struct.Struct(">bI")


class Codec:
    """Encodes and decodes events of every kind. One per process is enough; it is thread-safe."""

    def __init__(self, registry_url: str | None = None):
        self.registry_url = registry_url
        self._writer_ids: dict[str, int] = {}       # kind -> id of the current schema
        self._by_id: dict[int, tuple[str, object]] = {}  # id -> (kind, parsed writer schema)
        if registry_url:
            self._init_registry(registry_url)
        else:
            self._init_local()

    # ------------------------------------------------------------------ ids
    def _init_local(self) -> None:
        rows = contract.load_ids()
        for row in rows:
            kind = contract.KIND_OF_NAME.get(row["name"])
            if kind is None:
                continue
            self._by_id[row["id"]] = (kind, contract.parsed(contract.read_history(row)))
        for kind in contract.KINDS:
            fp = contract.fingerprint(contract.current_schema_json(kind))
            match = [r for r in rows if r["fingerprint"] == fp and r["name"] == contract.KINDS[kind]]
            if match:
                self._writer_ids[kind] = match[0]["id"]

    def _init_registry(self, url: str) -> None:
        from confluent_kafka.schema_registry import Schema, SchemaRegistryClient

        self._registry = SchemaRegistryClient({"url": url})
        for kind, name in contract.KINDS.items():
            schema = Schema(contract.current_schema_json(kind), "AVRO")
            sid = self._registry.register_schema(f"{name}-value", schema)
            self._writer_ids[kind] = sid
            self._by_id[sid] = (kind, contract.current_parsed(kind))

    def schema_id(self, kind: str) -> int:
        try:
            return self._writer_ids[kind]
        except KeyError:
            contract.full_name(kind)  # raises UnknownKind for a bad kind
            raise ValidationError(
                f"the current schema of {kind!r} is not registered in schemas/ids.json; "
                f"run `yrdbus schemas register`", field=None) from None

    def _writer(self, schema_id: int) -> tuple[str, object]:
        hit = self._by_id.get(schema_id)
        if hit is not None:
            return hit
        if self.registry_url:
            from confluent_kafka.schema_registry.error import SchemaRegistryError
            try:
                schema = self._registry.get_schema(schema_id)
            except SchemaRegistryError as exc:
                raise UnknownSchemaError(f"schema id {schema_id} is not in the registry ({exc})") from None
            parsed = contract.parsed(schema.schema_str)
            name = _record_name(schema.schema_str)
            kind = contract.KIND_OF_NAME.get(name)
            if kind is None:
                raise UnknownSchemaError(f"schema id {schema_id} is {name!r}, not an event of this bus")
            self._by_id[schema_id] = (kind, parsed)
            return kind, parsed
        raise UnknownSchemaError(f"schema id {schema_id} is not in schemas/ids.json")

    # ------------------------------------------------------------------ encode
    def encode(self, kind: str, record: dict) -> bytes:
        """Frame and encode one record of ``kind`` (a dict with the Avro field names)."""
        buf = io.BytesIO()
        buf.write(_HEADER.pack(MAGIC, self.schema_id(kind)))
        try:
            schemaless_writer(buf, contract.current_parsed(kind), record)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise ValidationError(f"does not fit the {kind} schema: {exc}") from None
        return buf.getvalue()

    # ------------------------------------------------------------------ decode
    def decode(self, data: bytes, kind: str | None = None) -> tuple[str, dict]:
        """Decode framed bytes into (kind, record), resolving the writer's schema against the current one."""
        if not isinstance(data, (bytes, bytearray, memoryview)) or len(data) < 5:
            raise UndecodableError(f"{len(data) if data is not None else 0} bytes is shorter than the 5-byte Confluent header")
        magic, schema_id = _HEADER.unpack_from(data)
        if magic != MAGIC:
            raise UndecodableError(f"magic byte is {magic}, expected 0 (Confluent framing)")
        writer_kind, writer = self._writer(schema_id)
        if kind is not None and kind != writer_kind:
            raise UndecodableError(f"schema id {schema_id} is a {writer_kind} event, expected {kind}")
        stream = io.BytesIO(data)
        stream.seek(5)
        try:
            record = schemaless_reader(stream, writer, _reader_for(writer_kind, writer))
        except Exception as exc:  # fastavro raises many types on bad bytes (EOFError, ValueError, IndexError ...)
            raise UndecodableError(f"body does not decode as schema id {schema_id}: {type(exc).__name__}: {exc}") from None
        if stream.tell() != len(data):
            raise UndecodableError(f"{len(data) - stream.tell()} bytes left over after the record (schema id {schema_id})")
        return writer_kind, record


def _reader_for(kind: str, writer):
    reader = contract.current_parsed(kind)
    return None if reader is writer else reader


def _record_name(schema_str: str) -> str:
    import json

    s = json.loads(schema_str)
    name = s.get("name", "")
    ns = s.get("namespace")
    return name if "." in name or not ns else f"{ns}.{name}"


@lru_cache(maxsize=4)
def get_codec(registry_url: str | None = None) -> Codec:
    return Codec(registry_url)
