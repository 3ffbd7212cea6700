"""Avro binary in the Confluent framing: magic byte 0, a 4-byte big-endian schema id, the body.

Schema ids come from ``schemas/ids.json`` (append-only, committed) or, when
``YRDBUS_SCHEMA_REGISTRY_URL`` is set, from a Confluent-compatible registry
(confluent-kafka's ``SchemaRegistryClient``). Decoding reads the writer's
schema by its id and resolves it against the reader's (the current schema of
the kind, or a projection of it that keeps only the fields a consumer needs).

Records are dicts with the Avro field names; timestamps are tz-aware UTC
``datetime``; ``event_id`` is a UUID string.

Encoding validates the record first (``schemas.validation``): the semantic
checks (reference data, UUIDs, event time) run on every record, the
structural ones (types, enums, required fields) are left to fastavro's writer
and only re-run, to name the field, when fastavro refuses a record. That keeps
the codec within a few percent of bare fastavro (see docs/benchmarks.md).
"""
from __future__ import annotations

import io
import json
import struct
import threading
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Callable, Iterable

from fastavro import parse_schema, schemaless_reader, schemaless_writer

from schemas import contract, validation
from schemas.errors import UndecodableError, UnknownSchemaError, ValidationError

MAGIC = 0
_HEADER = struct.Struct(">bI")
_BytesIO = io.BytesIO


class Codec:
    """Encodes and decodes events of every kind. One per process is enough; it is thread-safe."""

    def __init__(self, registry_url: str | None = None, *,
                 future_skew: timedelta = validation.DEFAULT_FUTURE_SKEW):
        self.registry_url = registry_url
        self.future_skew = future_skew
        self._registry = None
        self._lock = threading.Lock()
        self._writer_ids: dict[str, int] = {}          # kind -> id of the current schema
        self._headers: dict[str, bytes] = {}           # kind -> the 5 framing bytes
        self._specs: dict[str, tuple] = {}
        self._by_id: dict[int, tuple[str, object]] = {}  # id -> (kind, parsed writer schema, as decoded)
        self._writers = {kind: contract.current_parsed(kind) for kind in contract.KINDS}
        self._readers = {kind: _decode_parsed(contract.current_schema_json(kind)) for kind in contract.KINDS}
        self._checks = {kind: validation.fast_check(kind) for kind in contract.KINDS}
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
            self._by_id[row["id"]] = (kind, _decode_parsed(contract.read_history(row)))
        for kind in contract.KINDS:
            fp = contract.fingerprint(contract.current_schema_json(kind))
            match = [r for r in rows if r["fingerprint"] == fp and r["name"] == contract.KINDS[kind]]
            if match:
                self._set_writer_id(kind, match[0]["id"])

    def _init_registry(self, url: str) -> None:
        from confluent_kafka.schema_registry import SchemaRegistryClient

        # Ids are looked up lazily, on a kind's first encode or an id's first decode, so a process that
        # only decodes clearances never writes to the registry.
        self._registry = SchemaRegistryClient({"url": url})

    def _set_writer_id(self, kind: str, sid: int) -> None:
        self._writer_ids[kind] = sid
        self._headers[kind] = header = _HEADER.pack(MAGIC, sid)
        # everything encode needs, in one look-up: framing, checks, the writer without and with uuid conversion
        self._specs[kind] = (header, self._checks[kind], self._readers[kind], self._writers[kind])
        self._by_id.setdefault(sid, (kind, self._readers[kind]))

    @staticmethod
    def subject(kind: str) -> str:
        """The registry subject of a kind's value schema (Confluent's TopicNameStrategy is per topic; the
        bus uses one subject per record name, so that the four regions' topics share one schema)."""
        return f"{contract.full_name(kind)}-value"

    def _register(self, kind: str) -> int:
        from confluent_kafka.schema_registry import Schema
        from confluent_kafka.schema_registry.error import SchemaRegistryError

        with self._lock:
            if kind in self._writer_ids:
                return self._writer_ids[kind]
            schema = Schema(contract.current_schema_json(kind), "AVRO")
            try:
                sid = self._registry.register_schema(self.subject(kind), schema)
            except SchemaRegistryError as exc:
                raise UnknownSchemaError(
                    f"the registry refused the current {kind} schema ({exc})", field=None) from None
            self._set_writer_id(kind, sid)
            return sid

    def schema_id(self, kind: str) -> int:
        """Id of the current schema of ``kind`` (registering it when a registry is configured)."""
        try:
            return self._writer_ids[kind]
        except KeyError:
            contract.full_name(kind)  # raises UnknownKind for a bad kind
            if self._registry is not None:
                return self._register(kind)
            raise ValidationError(
                f"the current schema of {kind!r} is not registered in schemas/ids.json; "
                f"run `yrdbus schemas register`") from None

    def _writer(self, schema_id: int) -> tuple[str, object]:
        hit = self._by_id.get(schema_id)
        if hit is not None:
            return hit
        if self._registry is not None:
            from confluent_kafka.schema_registry.error import SchemaRegistryError
            try:
                schema = self._registry.get_schema(schema_id)
            except SchemaRegistryError as exc:
                raise UnknownSchemaError(f"schema id {schema_id} is not in the registry ({exc})") from None
            except Exception as exc:  # network trouble: the record cannot be read now
                raise UnknownSchemaError(f"schema id {schema_id}: registry lookup failed "
                                         f"({type(exc).__name__}: {exc})") from None
            name = _record_name(schema.schema_str)
            kind = contract.KIND_OF_NAME.get(name)
            if kind is None:
                raise UnknownSchemaError(f"schema id {schema_id} is {name!r}, not an event of this bus")
            parsed = _decode_parsed(schema.schema_str)
            self._by_id[schema_id] = (kind, parsed)
            return kind, parsed
        raise UnknownSchemaError(f"schema id {schema_id} is not in schemas/ids.json")

    # ------------------------------------------------------------------ encode
    def encode(self, kind: str, record: dict, *, validate: bool = True, now: datetime | None = None) -> bytes:
        """Validate, frame and encode one record of ``kind`` (a dict with the Avro field names).

        Raises a typed ``EventError`` naming the field on a bad record. ``validate=False`` skips the
        semantic checks (reference data, event time) but never the schema; ``now`` is the clock the
        future-event check uses (default: the wall clock).
        """
        spec = self._specs.get(kind)
        if spec is None:
            self.schema_id(kind)
            spec = self._specs[kind]
        header, check, lean, full = spec
        buf = _BytesIO(header)
        buf.seek(5)
        if validate:
            check(record, now, self.future_skew)
            # Validated: event_id is a canonical UUID string, so the writer can skip fastavro's uuid
            # conversion (the bytes are the same). A uuid.UUID object takes the full writer below.
            try:
                schemaless_writer(buf, lean, record)
                return buf.getvalue()
            except Exception:
                buf = _BytesIO(header)
                buf.seek(5)
        try:
            schemaless_writer(buf, full, record)
        except Exception as exc:  # fastavro raises ValueError, TypeError, KeyError, AttributeError ...
            validation.validate_structure(kind, record)  # names the field when it can
            raise ValidationError(f"does not fit the {kind} schema: {type(exc).__name__}: {exc}") from None
        return buf.getvalue()

    # ------------------------------------------------------------------ decode
    def _frame(self, data) -> int:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise UndecodableError(f"expected bytes, got {type(data).__name__}")
        if len(data) < 5:
            raise UndecodableError(f"{len(data)} bytes is shorter than the 5-byte Confluent header")
        if data[0] != MAGIC:
            raise UndecodableError(f"magic byte is {data[0]}, expected 0 (Confluent framing)")
        return _HEADER.unpack_from(data)[1]

    def decode(self, data: bytes, kind: str | None = None) -> tuple[str, dict]:
        """Decode framed bytes into (kind, record), resolving the writer's schema against the current one.

        ``kind``, when given, is the kind the caller expects: another kind is an ``UndecodableError``.
        """
        schema_id = self._frame(data)
        writer_kind, writer = self._writer(schema_id)
        if kind is not None and kind != writer_kind:
            raise UndecodableError(f"schema id {schema_id} is a {writer_kind} event, expected {kind}")
        reader = self._readers[writer_kind]
        stream = _BytesIO(data)
        stream.seek(5)
        try:
            record = schemaless_reader(stream, writer, None if reader is writer else reader)
        except Exception as exc:  # fastavro raises many types on bad bytes (EOFError, ValueError, IndexError ...)
            raise UndecodableError(f"body does not decode as schema id {schema_id} ({writer_kind}): "
                                   f"{type(exc).__name__}: {exc}") from None
        if stream.tell() != len(data):
            raise UndecodableError(f"{len(data) - stream.tell()} bytes left over after the record "
                                   f"(schema id {schema_id}, {writer_kind})")
        return writer_kind, record

    def projected_decoder(self, kind: str, fields: Iterable[str]) -> Callable[[bytes], dict]:
        """A decoder of ``kind`` events that reads only ``fields`` (a projected reader schema).

        fastavro skips the other fields without building them, so this is faster than ``decode``.
        The returned callable takes framed bytes and returns a dict of those fields; it raises the
        same typed errors as ``decode`` (and ``UndecodableError`` for an event of another kind).
        """
        fields = tuple(fields)
        projected_json = _projection(kind, fields)
        reader = _decode_parsed(projected_json)
        resolved: dict[int, tuple[object, object]] = {}  # writer id -> (writer, reader)

        def decode_projected(data: bytes) -> dict:
            schema_id = self._frame(data)
            pair = resolved.get(schema_id)
            if pair is None:
                writer_kind, writer = self._writer(schema_id)
                if writer_kind != kind:
                    raise UndecodableError(f"schema id {schema_id} is a {writer_kind} event, expected {kind}")
                pair = resolved[schema_id] = (writer, reader)
            stream = _BytesIO(data)
            stream.seek(5)
            try:
                return schemaless_reader(stream, pair[0], pair[1])
            except Exception as exc:
                raise UndecodableError(f"body does not decode as schema id {schema_id} ({kind}): "
                                       f"{type(exc).__name__}: {exc}") from None

        decode_projected.fields = fields
        return decode_projected


def _strip_uuid(obj):
    """The schema with ``logicalType: uuid`` removed, so that fastavro hands back the UUID as the string it
    is on the wire (no ``uuid.UUID`` built for every record: cheaper, and what a JSON consumer wants)."""
    if isinstance(obj, dict):
        if obj.get("logicalType") == "uuid":
            return {k: _strip_uuid(v) for k, v in obj.items() if k != "logicalType"}
        return {k: _strip_uuid(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_strip_uuid(v) for v in obj]
    return obj


@lru_cache(maxsize=None)
def _decode_parsed(schema_json: str):
    return parse_schema(_strip_uuid(json.loads(schema_json)))


@lru_cache(maxsize=None)
def _projection(kind: str, fields: tuple[str, ...]) -> str:
    schema = json.loads(contract.current_schema_json(kind))
    names = [f["name"] for f in schema["fields"]]
    unknown = [f for f in fields if f not in names]
    if unknown:
        raise ValidationError(f"not a field of {kind}; fields are {', '.join(names)}", field=unknown[0])
    if not fields:
        raise ValidationError(f"a projection of {kind} needs at least one field")
    return json.dumps(contract.project(schema, fields), sort_keys=True)


def _record_name(schema_str: str) -> str:
    s = json.loads(schema_str)
    name = s.get("name", "")
    ns = s.get("namespace")
    return name if "." in name or not ns else f"{ns}.{name}"


def get_codec(registry_url: str | None = None) -> Codec:
    """The process's codec. ``registry_url`` defaults to ``YRDBUS_SCHEMA_REGISTRY_URL`` (settings)."""
    if registry_url is None:
        from schemas.settings import get_settings

        registry_url = get_settings().schema_registry_url or None
    return _codec_for(registry_url)


@lru_cache(maxsize=4)
def _codec_for(registry_url: str | None) -> Codec:
    return Codec(registry_url)
