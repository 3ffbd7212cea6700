"""The event contract: which Avro schema each kind of event has, and every version of it.

``schemas/avsc/`` holds the current schemas, one named type a file
(``yrd.border.<Name>.avsc``; fastavro resolves the references between them).
``schemas/history/<Name>/v<N>.avsc`` keeps every version ever registered,
fully expanded, and ``schemas/ids.json`` is the append-only table of local
schema ids used in the Confluent framing when no registry is configured.
"""
from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path

from fastavro import parse_schema
from fastavro.schema import load_schema

HERE = Path(__file__).resolve().parent
AVSC_DIR = HERE / "avsc"
HISTORY_DIR = HERE / "history"
IDS_FILE = HERE / "ids.json"
NAMESPACE = "yrd.border"

#: kind (as used in topic names, files and the CLI) -> full Avro name
KINDS: dict[str, str] = {
    "clearance": f"{NAMESPACE}.ClearanceEvent",
    "alert": f"{NAMESPACE}.AlertEvent",
    "case": f"{NAMESPACE}.CaseEvent",
    "control": f"{NAMESPACE}.ControlEvent",
    "derived_alert": f"{NAMESPACE}.DerivedAlert",
    "trend": f"{NAMESPACE}.TrendSignal",
    "risk": f"{NAMESPACE}.RiskScore",
    "disposition": f"{NAMESPACE}.AlertDisposition",
}
#: kinds that stations publish
SOURCE_KINDS = ("clearance", "alert", "case")
KIND_OF_NAME = {v: k for k, v in KINDS.items()}


class UnknownKind(ValueError):
    pass


def full_name(kind: str) -> str:
    try:
        return KINDS[kind]
    except KeyError:
        raise UnknownKind(f"unknown event kind {kind!r}; expected one of {', '.join(KINDS)}") from None


@lru_cache(maxsize=None)
def current_schema_json(kind: str) -> str:
    """The current schema of ``kind``, every named type expanded, as canonical JSON text."""
    return expanded_schema_json(AVSC_DIR, full_name(kind))


def expanded_schema_json(avsc_dir: Path, name: str) -> str:
    """The schema ``name`` of the folder ``avsc_dir``, every named type expanded, as canonical JSON text."""
    expanded = load_schema(str(Path(avsc_dir) / f"{name}.avsc"), _write_hint=False, _injected_schemas=set())
    return json.dumps(_strip_fastavro_keys(expanded), sort_keys=True, ensure_ascii=False)


def project(schema: dict, fields) -> dict:
    """A copy of the record ``schema`` (expanded JSON) keeping only ``fields``, in that order.

    A named type (an enum) is defined where it is first used in an expanded schema and referred to by
    name afterwards; a projection that keeps only a later use carries the definition there instead.
    """
    named = _named_definitions(schema)
    ns = schema.get("namespace") or schema["name"].rpartition(".")[0]
    by_name = {f["name"]: f for f in schema["fields"]}
    seen: set[str] = {_full(schema["name"], ns)}
    return dict(schema, fields=[_inline_named(by_name[f], named, seen, ns) for f in fields])


def _full(name: str, ns: str) -> str:
    return name if "." in name or not ns else f"{ns}.{name}"


def _named_definitions(schema) -> dict[str, dict]:
    out: dict[str, dict] = {}

    def walk(node, ns):
        if isinstance(node, dict):
            if node.get("type") in ("enum", "record", "fixed") and "name" in node:
                full = _full(node["name"], node.get("namespace", ns))
                out.setdefault(full, node)
                ns = full.rpartition(".")[0]
            for v in node.values():
                walk(v, ns)
        elif isinstance(node, list):
            for v in node:
                walk(v, ns)

    walk(schema, schema.get("namespace", ""))
    return out


def _inline_named(node, named: dict[str, dict], seen: set[str], ns: str):
    if isinstance(node, str):
        full = _full(node, ns)
        if full in named and full not in seen:
            return _inline_named(named[full], named, seen, ns)  # the definition marks itself seen
        return node
    if isinstance(node, list):
        return [_inline_named(v, named, seen, ns) for v in node]
    if isinstance(node, dict):
        if node.get("type") in ("enum", "record", "fixed") and "name" in node:
            full = _full(node["name"], node.get("namespace", ns))
            if full in seen:
                return full
            seen.add(full)
        return {k: (_inline_named(v, named, seen, ns) if k in ("type", "items", "values", "fields") else v)
                for k, v in node.items()}
    return node


def _strip_fastavro_keys(obj):
    if isinstance(obj, dict):
        return {k: _strip_fastavro_keys(v) for k, v in obj.items() if not k.startswith("__")}
    if isinstance(obj, list):
        return [_strip_fastavro_keys(v) for v in obj]
    return obj


def fingerprint(schema_json: str) -> str:
    return hashlib.sha256(schema_json.encode()).hexdigest()


@lru_cache(maxsize=None)
def parsed(schema_json: str):
    """fastavro's parsed form of a schema's JSON text (cached: parsing is not free)."""
    return parse_schema(json.loads(schema_json))


def current_parsed(kind: str):
    return parsed(current_schema_json(kind))


def load_ids(folder: Path | None = None) -> list[dict]:
    """Rows of the local id table: {"id", "name", "version", "fingerprint", "file"}."""
    ids_file = IDS_FILE if folder is None else Path(folder) / "ids.json"
    if not ids_file.is_file():
        return []
    return json.loads(ids_file.read_text())["schemas"]


def history_file(name: str, version: int, folder: Path | None = None) -> Path:
    return (HISTORY_DIR if folder is None else Path(folder) / "history") / name / f"v{version}.avsc"


def read_history(row: dict, folder: Path | None = None) -> str:
    """The schema JSON text of one row of the id table."""
    base = HERE if folder is None else Path(folder)
    return json.dumps(json.loads((base / row["file"]).read_text()), sort_keys=True, ensure_ascii=False)


def register_local(kind: str, folder: Path | None = None) -> dict:
    """Append the current schema of ``kind`` as a new version, unless it is already registered.

    ``folder`` is a schemas folder (``avsc/``, ``history/``, ``ids.json``); default: this package's.
    Ids and versions only ever grow: a row, once written, is never changed.
    """
    name = full_name(kind)
    base = HERE if folder is None else Path(folder)
    text = current_schema_json(kind) if folder is None else expanded_schema_json(base / "avsc", name)
    fp = fingerprint(text)
    rows = load_ids(base)
    for row in rows:
        if row["fingerprint"] == fp and row["name"] == name:
            return row
    version = 1 + max((r["version"] for r in rows if r["name"] == name), default=0)
    path = history_file(name, version, base)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(json.loads(text), indent=2, ensure_ascii=False) + "\n")
    row = {"id": 1 + max((r["id"] for r in rows), default=0), "name": name, "version": version,
           "fingerprint": fp, "file": str(path.relative_to(base))}
    rows.append(row)
    (base / "ids.json").write_text(json.dumps({"schemas": rows}, indent=1) + "\n")
    return row
