"""Schema evolution: every earlier version of every schema against the current one, both directions.

*Backward*: a consumer on the current schema reads what an old producer wrote.
*Forward*: a consumer still on an old schema reads what a current producer
writes. Both must hold, because the four agencies upgrade at their own pace.
The check is the Apache Avro project's own (``avro.compatibility``); a
failure is attributed to the fields that break it, by checking each field on
its own. The check also requires a ``doc`` on every field of the current
schemas (the contract is read by people of four agencies).

The folder is configurable (``check(folder)``): a copy of ``schemas/`` with
its ``avsc/`` and ``history/`` folders.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import avro.schema
from avro.compatibility import ReaderWriterCompatibilityChecker, SchemaCompatibilityType

from schemas import contract


@dataclass(frozen=True)
class Problem:
    schema: str          # full Avro name, e.g. yrd.border.ClearanceEvent
    version: int | None  # the historical version compared (None: a rule on the current schema)
    direction: str       # backward | forward | doc | missing
    field: str | None
    message: str

    def __str__(self) -> str:
        where = f"{self.schema}" + (f" v{self.version}" if self.version is not None else "")
        field = f", field `{self.field}`" if self.field else ""
        return f"{where} ({self.direction}){field}: {self.message}"

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Compared:
    schema: str
    version: int
    compatible: bool


def history_versions(folder: Path, name: str) -> list[tuple[int, Path]]:
    d = Path(folder) / "history" / name
    out = []
    for p in d.glob("v*.avsc") if d.is_dir() else ():
        try:
            out.append((int(p.stem[1:]), p))
        except ValueError:
            continue
    return sorted(out)


def check(folder: Path | str | None = None) -> tuple[list[Compared], list[Problem]]:
    """Compare every version in ``<folder>/history`` with ``<folder>/avsc``, both ways; also docs on fields.

    Returns (comparisons made, problems found); no problems means the contract evolves safely.
    """
    folder = Path(folder) if folder is not None else contract.HERE
    avsc_dir = folder / "avsc"
    compared: list[Compared] = []
    problems: list[Problem] = []
    for kind, name in contract.KINDS.items():
        path = avsc_dir / f"{name}.avsc"
        if not path.is_file():
            problems.append(Problem(name, None, "missing", None, f"no current schema at {path}"))
            continue
        current_json = contract.expanded_schema_json(avsc_dir, name)
        current = json.loads(current_json)
        problems.extend(_doc_problems(name, current))
        for version, vpath in history_versions(folder, name):
            old = json.loads(vpath.read_text())
            found = compare(name, version, old, current)
            compared.append(Compared(name, version, not found))
            problems.extend(found)
    return compared, problems


def compare(name: str, version: int, old: dict, current: dict) -> list[Problem]:
    """Problems of reading ``old`` data with ``current`` (backward) and ``current`` data with ``old`` (forward)."""
    out = []
    for direction, reader, writer in (("backward", current, old), ("forward", old, current)):
        result = _compat(reader, writer)
        if result.compatibility is SchemaCompatibilityType.compatible:
            continue
        per_field = _per_field(reader, writer, direction)
        if per_field:
            out.extend(Problem(name, version, direction, f, m) for f, m in per_field)
        else:
            out.append(Problem(name, version, direction, None, _describe(result, direction)))
    return out


def _compat(reader: dict, writer: dict):
    return ReaderWriterCompatibilityChecker().get_compatibility(
        avro.schema.parse(json.dumps(reader)), avro.schema.parse(json.dumps(writer)))


def _per_field(reader: dict, writer: dict, direction: str) -> list[tuple[str, str]]:
    """Check field by field to say which fields break compatibility (the checker's own report is unordered)."""
    r_names = [f["name"] for f in reader["fields"]]
    w_names = {f["name"] for f in writer["fields"]}
    for f in writer["fields"]:
        w_names.update(f.get("aliases", ()))
    found = []
    for fname in r_names:
        r_field = next(f for f in reader["fields"] if f["name"] == fname)
        aliases = [fname, *r_field.get("aliases", ())]
        w_match = next((f["name"] for f in writer["fields"] if f["name"] in aliases), None)
        r_one = contract.project(reader, [fname])
        w_one = contract.project(writer, [w_match] if w_match else [])
        result = _compat(r_one, w_one)
        if result.compatibility is not SchemaCompatibilityType.compatible:
            found.append((fname, _describe(result, direction)))
    return found


_WHY = {
    "reader_field_missing_default_value": "the reading side has this field, the writing side has not, and it has no default",
    "missing_enum_symbols": "the writing side has enum symbols the reading side lacks (and no enum default)",
    "type_mismatch": "the types cannot be resolved",
    "name_mismatch": "the named type was renamed",
    "missing_union_branch": "the writing side has a union branch the reading side lacks",
    "fixed_size_mismatch": "the fixed size changed",
}


def _describe(result, direction: str) -> str:
    reasons = sorted({i.value for i in result.incompatibilities})
    parts = [f"{_WHY.get(r, r)} [{r}]" for r in reasons]
    detail = ", ".join(sorted(str(m) for m in result.messages if m))
    side = ("the current schema cannot read data written with this version" if direction == "backward"
            else "this version cannot read data written with the current schema")
    return f"{side}: {'; '.join(parts)}" + (f" ({detail})" if detail else "")


def _doc_problems(name: str, schema: dict) -> list[Problem]:
    return [Problem(name, None, "doc", f["name"], "every field of the contract needs a `doc` string")
            for f in schema["fields"] if not str(f.get("doc", "")).strip()]


def unregistered(folder: Path | str | None = None) -> list[str]:
    """Kinds whose current schema differs from their latest registered version (``schemas register`` adds them)."""
    folder = Path(folder) if folder is not None else contract.HERE
    out = []
    for kind, name in contract.KINDS.items():
        current = contract.expanded_schema_json(folder / "avsc", name)
        versions = history_versions(folder, name)
        known = {contract.fingerprint(json.dumps(json.loads(p.read_text()), sort_keys=True, ensure_ascii=False))
                 for _, p in versions}
        if contract.fingerprint(current) not in known:
            out.append(kind)
    return out
