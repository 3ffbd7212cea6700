"""How each topic and event kind lands in its table, and the Avro bytes ClickHouse reads.

The sink does not decode Avro in Python on its fast path: it strips the 5-byte Confluent header of each
record, concatenates the bodies into one Avro object-container block under the writer's schema, and lets
ClickHouse parse them (``file(..., 'Avro', structure)``). ``structure`` is the writer schema in ClickHouse
types (enums as Enum8, timestamps as DateTime64(3, 'UTC'), records as named Tuples): ClickHouse reads
the Avro into those native types quickly and converts them to the table's types (LowCardinality ...)
on the way in, which is several times faster than asking its Avro reader for LowCardinality directly.
"""
from __future__ import annotations

import io
import json
import os
import re
from dataclasses import dataclass
from functools import lru_cache

from schemas import topics

#: event kind -> table
TABLE_OF_KIND = {
    "clearance": "clearances",
    "alert": "alerts",
    "case": "cases",
    "derived_alert": "derived_alerts",
    "trend": "trends",
    "risk": "risk_scores",
    "disposition": "dispositions",
}
DEAD_LETTERS = "dead_letters"
EVENT_TABLES = tuple(TABLE_OF_KIND.values())
ALL_TABLES = EVENT_TABLES + (DEAD_LETTERS,)


@dataclass(frozen=True)
class Route:
    table: str
    kind: str | None      # the Avro kind expected on the topic; None: a dead-letter topic


def sink_topics(prefix: str = "") -> tuple[list[str], str]:
    """The topics the sink reads: (named topics, a regex subscription for every dead-letter topic)."""
    named = [prefix + t for t in topics.source_topics()]
    named += [prefix + topics.DERIVED_ALERTS, prefix + topics.TRENDS, prefix + topics.RISK_SCORES,
              prefix + topics.DISPOSITIONS]
    pattern = "^" + re.escape(topics.dead_letter(prefix)) + ".*"
    return named, pattern


@lru_cache(maxsize=4096)
def route_for(topic: str, prefix: str = "") -> Route | None:
    """Where a topic's records go; None for a topic the sink does not store."""
    dlq = topics.dead_letter(prefix)
    if topic.startswith(dlq):
        return Route(DEAD_LETTERS, None)
    if prefix:
        if not topic.startswith(prefix):
            return None
        topic = topic[len(prefix):]
    if topic == topics.DERIVED_ALERTS:
        return Route("derived_alerts", "derived_alert")
    if topic == topics.TRENDS:
        return Route("trends", "trend")
    if topic == topics.RISK_SCORES:
        return Route("risk_scores", "risk")
    if topic == topics.DISPOSITIONS:
        return Route("dispositions", "disposition")
    parts = topic.split(".")
    if len(parts) == 3 and parts[0] == "border" and parts[2] in ("clearance", "alert", "case"):
        return Route(TABLE_OF_KIND[parts[2]], parts[2])
    return None


# --------------------------------------------------------------------------- Avro -> ClickHouse types
_PRIMITIVE = {"string": "String", "bytes": "String", "int": "Int32", "long": "Int64", "float": "Float32",
              "double": "Float64", "boolean": "Bool"}


def _quote(s: str) -> str:
    return "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"


def clickhouse_type(node, named: dict[str, object] | None = None, ns: str = "") -> str:
    """The ClickHouse type ClickHouse's Avro reader produces natively for an Avro type."""
    named = {} if named is None else named
    if isinstance(node, str):
        if node in _PRIMITIVE:
            return _PRIMITIVE[node]
        full = node if "." in node else f"{ns}.{node}" if ns else node
        ref = named.get(full) or named.get(node)
        if ref is None:
            raise ValueError(f"Avro type {node!r} is not defined before its use")
        return clickhouse_type(ref, named, ns)
    if isinstance(node, list):
        branches = [b for b in node if b != "null"]
        if len(branches) != 1:
            raise ValueError(f"union {node!r}: only [null, T] unions map to a column")
        inner = clickhouse_type(branches[0], named, ns)
        if len(branches) == len(node):
            return inner
        # Arrays, maps and tuples cannot be Nullable in ClickHouse
        return inner if inner.startswith(("Array(", "Map(", "Tuple(")) else f"Nullable({inner})"
    t = node["type"]
    if t in ("enum", "record", "fixed"):
        full = node["name"] if "." in node["name"] else f"{node.get('namespace', ns)}.{node['name']}".lstrip(".")
        named.setdefault(full, node)
        ns = full.rpartition(".")[0]
    logical = node.get("logicalType")
    if t == "long" and logical == "timestamp-millis":
        return "DateTime64(3, 'UTC')"
    if t == "long" and logical == "timestamp-micros":
        return "DateTime64(6, 'UTC')"
    if t == "string" and logical == "uuid":
        return "UUID"
    if t == "int" and logical == "date":
        return "Date32"
    if t in _PRIMITIVE:
        return _PRIMITIVE[t]
    if t == "enum":
        symbols = node["symbols"]
        width = 8 if len(symbols) < 128 else 16
        return f"Enum{width}(" + ", ".join(f"{_quote(s)} = {i}" for i, s in enumerate(symbols)) + ")"
    if t == "array":
        return f"Array({clickhouse_type(node['items'], named, ns)})"
    if t == "map":
        return f"Map(String, {clickhouse_type(node['values'], named, ns)})"
    if t == "record":
        return "Tuple(" + ", ".join(f"{f['name']} {clickhouse_type(f['type'], named, ns)}"
                                    for f in node["fields"]) + ")"
    if t == "fixed":
        return f"FixedString({int(node['size'])})"
    raise ValueError(f"Avro type {t!r} has no ClickHouse column type here")


@lru_cache(maxsize=256)
def structure(schema_json: str) -> tuple[tuple[str, str], ...]:
    """(field, ClickHouse type) for each field of a record schema, in order."""
    schema = json.loads(schema_json)
    named: dict[str, object] = {}
    ns = schema.get("namespace") or schema["name"].rpartition(".")[0]
    named[schema["name"] if "." in schema["name"] else f"{ns}.{schema['name']}"] = schema
    return tuple((f["name"], clickhouse_type(f["type"], named, ns)) for f in schema["fields"])


def structure_sql(schema_json: str) -> str:
    return ", ".join(f"`{name}` {t}" for name, t in structure(schema_json))


# --------------------------------------------------------------------------- object container file
def _zigzag(n: int) -> bytes:
    n = (n << 1) ^ (n >> 63)
    out = bytearray()
    while n & ~0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _avro_bytes(b: bytes) -> bytes:
    return _zigzag(len(b)) + b


def container(schema_json: str, bodies: list[bytes], joined: bytes | None = None) -> bytes:
    """An Avro object container file holding ``bodies`` (schemaless records of ``schema_json``) in one block.

    ``joined``: ``b"".join(bodies)`` when the caller has it already (the sink reads event times from it)."""
    sync = os.urandom(16)
    out = io.BytesIO()
    out.write(b"Obj\x01")
    out.write(_zigzag(2))
    out.write(_avro_bytes(b"avro.schema"))
    out.write(_avro_bytes(schema_json.encode()))
    out.write(_avro_bytes(b"avro.codec"))
    out.write(_avro_bytes(b"null"))
    out.write(_zigzag(0))
    out.write(sync)
    data = b"".join(bodies) if joined is None else joined
    out.write(_zigzag(len(bodies)))
    out.write(_zigzag(len(data)))
    return b"".join((out.getvalue(), data, sync))   # one copy of the bodies, not two
