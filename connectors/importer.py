"""Import a station's export (JSONL or CSV) onto the bus: validate, pseudonymize, publish, dead-letter.

Each line (JSONL) or row (CSV, the same column names; arrays ``;``-separated)
is one event in the JSON form of the contract (``schemas.jsonform``). Raw
identities a station's system exports are turned into tokens here and never
published: ``document_number`` (with ``document_country``) becomes
``subject``; ``name`` (with ``birth_date`` when given) becomes ``name_token``
(clearances); for cases, ``document_numbers`` with ``document_countries``
become ``subjects``. A row without ``event_id`` gets one derived from its
content, so importing the same file twice gives the same ids; a row without
``published_at`` is stamped with the time of the import.

A bad row is reported as ``line N, field `f`: reason`` and goes to the
dead-letter topic of the source topic it was meant for
(``dlq.border.<REGION>.<kind>``; ``dlq.import`` when its region cannot be
told), with raw identities redacted: the dead-letter topic is on the bus too.
"""
from __future__ import annotations

import csv
import io
import json
import re
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator

from schemas import contract, reference
from schemas.errors import EventError, UndecodableError, ValidationError
from schemas.jsonform import from_json
from schemas.pseudonym import Pseudonymizer
from schemas.validation import validate
from yrdbus import topics

SOURCE_KINDS = contract.SOURCE_KINDS
#: raw identity fields a station export may carry; turned into tokens, never published
RAW_FIELDS = ("document_number", "name", "birth_date", "document_numbers", "document_countries", "names")
#: CSV columns holding arrays (cells are ';'-separated)
ARRAY_FIELDS = frozenset({"subjects", "nationalities", "document_numbers", "document_countries", "names"})
REDACTED = "<redacted>"
#: fixed namespace of content-derived event ids
EVENT_ID_NAMESPACE = uuid.UUID("6f1d2c1e-3a55-4d39-9a57-3b1f0c6c2e11")
KIND_WORDS = {"clearance": "clearance", "clearances": "clearance", "alert": "alert", "alerts": "alert",
              "case": "case", "cases": "case"}


class ImportFileError(ValueError):
    """The file as a whole cannot be imported (unknown format, unknown kind)."""


def infer_kind(path: str | Path) -> str | None:
    """The event kind named in a file name (``sh-pvg-clearances-2017-06-05.csv`` -> clearance), or None."""
    words = re.split(r"[^a-z]+", Path(path).name.lower())
    found = {KIND_WORDS[w] for w in words if w in KIND_WORDS}
    return found.pop() if len(found) == 1 else None


def file_format(path: str | Path) -> str:
    suffixes = [s.lower() for s in Path(path).suffixes]
    if ".csv" in suffixes:
        return "csv"
    if ".jsonl" in suffixes or ".ndjson" in suffixes or ".json" in suffixes:
        return "jsonl"
    raise ImportFileError(f"{path}: cannot tell the format from the name; expected .jsonl (or .ndjson) or .csv")


@dataclass
class Rejection:
    line: int
    field: str | None
    reason: str
    message: str

    def as_dict(self) -> dict:
        return {"line": self.line, "field": self.field, "reason": self.reason, "message": self.message}


@dataclass
class ImportResult:
    file: str
    kind: str
    rows: int = 0
    published: int = 0
    rejected: int = 0
    delivered: int = 0
    failed: int = 0
    rejections: list[Rejection] = field(default_factory=list)
    dead_letter_topics: set[str] = field(default_factory=set)

    def as_dict(self, max_rejections: int = 100) -> dict:
        return {"file": self.file, "kind": self.kind, "rows": self.rows, "published": self.published,
                "rejected": self.rejected, "delivered": self.delivered, "failed": self.failed,
                "dead_letter_topics": sorted(self.dead_letter_topics),
                "rejections": [r.as_dict() for r in self.rejections[:max_rejections]]}


# =========================================================================== reading
@dataclass
class Row:
    line: int
    raw: bytes                      # the original bytes of the line (CSV: of the row)
    obj: dict | None                # the row as a JSON-form object, or None when it could not be read
    error: EventError | None = None
    header: list[str] | None = None  # CSV: the column names


def read_jsonl(stream) -> Iterator[Row]:
    for n, line in enumerate(stream, start=1):
        raw = line.rstrip(b"\r\n")
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            msg = f"not JSON: {exc.msg} (column {exc.colno})" if isinstance(exc, json.JSONDecodeError) \
                else f"not UTF-8 text: {exc.reason}"
            yield Row(n, raw, None, UndecodableError(msg).at(f"line {n}"))
            continue
        if not isinstance(obj, dict):
            yield Row(n, raw, None, ValidationError(f"expected a JSON object, got {type(obj).__name__}").at(f"line {n}"))
            continue
        yield Row(n, raw, obj)


def _scalar_types(kind: str) -> dict[str, str]:
    """field -> 'int' | 'float' | 'bool' for the CSV cells that are not strings."""
    out = {}
    for f in json.loads(contract.current_schema_json(kind))["fields"]:
        t = f["type"]
        branches = t if isinstance(t, list) else [t]
        for b in branches:
            if isinstance(b, dict):
                if b.get("logicalType"):
                    continue
                b = b.get("type")
            if b in ("int", "long"):
                out[f["name"]] = "int"
            elif b in ("float", "double"):
                out[f["name"]] = "float"
            elif b == "boolean":
                out[f["name"]] = "bool"
    return out


def read_csv(stream, kind: str) -> Iterator[Row]:
    text = io.TextIOWrapper(stream, encoding="utf-8", newline="")
    consumed: list[str] = []
    line_no = [0]

    def lines():
        for line in text:
            line_no[0] += 1
            consumed.append(line)
            yield line

    reader = csv.reader(lines())
    try:
        header = next(reader)
    except StopIteration:
        return
    except UnicodeDecodeError as exc:
        raise ImportFileError(f"line 1: not UTF-8 text ({exc.reason})") from None
    header = [h.strip() for h in header]
    types = _scalar_types(kind)
    consumed.clear()
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            return
        except (csv.Error, UnicodeDecodeError) as exc:
            raw = "".join(consumed).rstrip("\r\n").encode()
            consumed.clear()
            yield Row(line_no[0], raw, None, UndecodableError(f"not CSV: {exc}").at(f"line {line_no[0]}"), header)
            continue
        first_line = line_no[0] - len(consumed) + 1
        raw = "".join(consumed).rstrip("\r\n").encode()
        consumed.clear()
        if not any(c.strip() for c in cells):
            continue
        if len(cells) != len(header):
            yield Row(first_line, raw, None, ValidationError(
                f"has {len(cells)} cells, the header has {len(header)} columns").at(f"line {first_line}"), header)
            continue
        obj, error = {}, None
        for name, cell in zip(header, cells):
            if cell == "":
                continue           # absent: the schema's default, or a missing-field error
            try:
                obj[name] = _csv_value(name, cell, types)
            except ValidationError as exc:
                error = exc.at(f"line {first_line}")
                break
        yield Row(first_line, raw, None if error else obj, error, header)


def _csv_value(name: str, cell: str, types: dict[str, str]):
    if name in ARRAY_FIELDS:
        return [c.strip() for c in cell.split(";") if c.strip()]
    t = types.get(name)
    if t == "int":
        try:
            return int(cell)
        except ValueError:
            raise ValidationError(f"expected an integer, got {cell!r}", field=name) from None
    if t == "float":
        try:
            return float(cell)
        except ValueError:
            raise ValidationError(f"expected a number, got {cell!r}", field=name) from None
    if t == "bool":
        if cell.lower() in ("true", "1", "yes"):
            return True
        if cell.lower() in ("false", "0", "no"):
            return False
        raise ValidationError(f"expected true or false, got {cell!r}", field=name)
    # epoch milliseconds; isdigit() alone also takes digits int() refuses (superscripts such as '²')
    if name in ("occurred_at", "published_at", "starts_at", "ends_at") and cell.isascii() and cell.isdigit():
        return int(cell)
    return cell


# =========================================================================== one row
class RowImporter:
    """Turns one row's JSON-form object into a valid record: identities to tokens, ids, region, validation."""

    def __init__(self, kind: str, pseudonymizer: Pseudonymizer, region: str | None = None,
                 now: Callable[[], datetime] | None = None):
        if kind not in SOURCE_KINDS:
            raise ImportFileError(f"stations import {', '.join(SOURCE_KINDS)} events, not {kind!r}")
        if region is not None and region not in reference.REGIONS:
            raise ImportFileError(f"unknown region {region!r}; expected one of {', '.join(reference.REGIONS)}")
        self.kind = kind
        self.p = pseudonymizer
        self.region = region
        self.now = now or (lambda: datetime.now(timezone.utc))

    def record(self, obj: dict) -> dict:
        obj = dict(obj)
        self._pseudonymize(obj)
        if self.region is not None:
            given = obj.get("region")
            if given is None:
                obj["region"] = self.region
            elif given != self.region:
                raise ValidationError(f"this import is for region {self.region} (--region), the row says {given!r}",
                                      field="region")
        if "event_id" not in obj or obj["event_id"] in (None, ""):
            obj["event_id"] = self._derived_id(obj)
        if obj.get("published_at") in (None, ""):
            now = self.now()
            obj["published_at"] = now.replace(microsecond=now.microsecond // 1000 * 1000).isoformat()
        record = from_json(self.kind, obj)
        validate(self.kind, record, now=self.now())
        return record

    def _derived_id(self, obj: dict) -> str:
        body = json.dumps({k: v for k, v in obj.items() if k not in ("published_at", "event_id")},
                          sort_keys=True, ensure_ascii=False, default=str)
        return str(uuid.uuid5(EVENT_ID_NAMESPACE, f"{self.kind}|{body}"))

    def _pseudonymize(self, obj: dict) -> None:
        """Replace raw identities with tokens, in place. Raw fields never survive this."""
        raw = {k: obj.pop(k) for k in RAW_FIELDS if k in obj}
        if not raw:
            return
        if self.kind in ("clearance", "alert") and "document_number" in raw:
            if obj.get("subject") not in (None, ""):
                raise ValidationError("give either subject or document_number, not both", field="subject")
            obj["subject"] = self.p.subject(obj.get("document_country") or "", raw["document_number"])
        if self.kind == "clearance" and "name" in raw:
            if obj.get("name_token") not in (None, ""):
                raise ValidationError("give either name_token or name, not both", field="name_token")
            obj["name_token"] = self.p.name(raw["name"], raw.get("birth_date"))
        elif self.kind == "clearance" and "birth_date" in raw:
            raise ValidationError("birth_date without name: the name token needs the name", field="birth_date")
        if self.kind == "case" and "document_numbers" in raw:
            numbers = raw["document_numbers"]
            countries = raw.get("document_countries")
            if not isinstance(numbers, list) or not isinstance(countries, list) or len(numbers) != len(countries):
                raise ValidationError("document_numbers needs document_countries, one issuing country for each "
                                      "number", field="document_countries")
            if obj.get("subjects"):
                raise ValidationError("give either subjects or document_numbers, not both", field="subjects")
            subjects = []
            for i, (c, n) in enumerate(zip(countries, numbers)):
                try:
                    subjects.append(self.p.subject(c, n))
                except EventError as exc:
                    exc.field = f"{exc.field}s[{i}]" if exc.field else None
                    raise
            obj["subjects"] = subjects
            obj.setdefault("persons", len(subjects))
        unused = [k for k in raw if k not in self._consumed()]
        if unused:
            raise ValidationError(f"is not taken by {self.kind} imports (identity fields of a {self.kind}: "
                                  f"{', '.join(self._consumed())})", field=unused[0])

    def _consumed(self) -> tuple[str, ...]:
        return {"clearance": ("document_number", "name", "birth_date"), "alert": ("document_number",),
                "case": ("document_numbers", "document_countries")}[self.kind]


def redact(row: Row) -> bytes:
    """The bytes of ``row`` fit for the dead-letter topic: raw identities replaced by ``<redacted>``."""
    if row.header is not None:     # CSV
        raw_cols = [i for i, h in enumerate(row.header) if h in RAW_FIELDS]
        if not raw_cols:
            return row.raw
        try:
            cells = next(csv.reader([row.raw.decode("utf-8")]))
        except (csv.Error, UnicodeDecodeError, StopIteration):
            return REDACTED.encode()
        if len(cells) != len(row.header):
            # the cells do not line up with the columns (a broken quote, a cell over several lines):
            # which one holds an identity cannot be told, so nothing of the row is kept
            return REDACTED.encode()
        for i in raw_cols:
            if i < len(cells) and cells[i] != "":
                cells[i] = REDACTED
        buf = io.StringIO()
        csv.writer(buf, lineterminator="").writerow(cells)
        return buf.getvalue().encode()
    if row.obj is not None:
        if not any(k in row.obj for k in RAW_FIELDS):
            return row.raw
        return json.dumps({k: (REDACTED if k in RAW_FIELDS else v) for k, v in row.obj.items()},
                          ensure_ascii=False).encode()
    text = row.raw.decode("utf-8", "replace")
    # a key may also be spelled with JSON escapes ("document\u005fnumber"): then keep nothing either
    if any(f'"{k}"' in text for k in RAW_FIELDS) or "\\u" in text:
        return REDACTED.encode()
    return row.raw


# =========================================================================== the file
class Importer:
    """Imports one file through a ``StationPublisher``."""

    def __init__(self, publisher, pseudonymizer: Pseudonymizer, kind: str, region: str | None = None,
                 now: Callable[[], datetime] | None = None):
        self.publisher = publisher
        self.rows = RowImporter(kind, pseudonymizer, region, now)
        self.kind = kind
        self.region = region

    def _dead_letter_source(self, row: Row) -> str:
        prefix = self.publisher.prefix
        for candidate in ((row.obj or {}).get("region"), self.region,
                          str((row.obj or {}).get("station_id") or "").split("-", 1)[0]):
            if candidate in reference.REGIONS:
                return prefix + topics.source(candidate, self.kind)
        return prefix + "import"

    def run(self, path: str | Path, on_row: Callable[[int, int], None] | None = None,
            on_reject: Callable[[Rejection], None] | None = None) -> ImportResult:
        """Import ``path``; ``on_row(bytes_read, rows)`` reports progress, ``on_reject`` each rejection."""
        path = Path(path)
        fmt = file_format(path)
        result = ImportResult(str(path), self.kind)
        start = dict(self.publisher.stats())
        done_bytes = 0
        with open(path, "rb") as f:
            rows = read_csv(f, self.kind) if fmt == "csv" else read_jsonl(f)
            for row in rows:
                result.rows += 1
                done_bytes += len(row.raw) + 1
                error = row.error
                if error is None:
                    try:
                        record = self.rows.record(row.obj)
                        self.publisher.publish(self.kind, record)
                        result.published += 1
                    except EventError as exc:
                        error = exc.at(f"line {row.line}")
                if error is not None:
                    rej = Rejection(row.line, error.field, error.reason, str(error))
                    result.rejected += 1
                    if len(result.rejections) < 10_000:
                        result.rejections.append(rej)
                    topic = self.publisher.dead_letter(self._dead_letter_source(row), redact(row), error)
                    result.dead_letter_topics.add(topic)
                    if on_reject:
                        on_reject(rej)
                if on_row and result.rows % 500 == 0:
                    on_row(done_bytes, result.rows)
        remaining = self.publisher.flush()
        stats = self.publisher.stats()
        result.delivered = stats["delivered"] - start["delivered"]
        result.failed = stats["failed"] - start["failed"] + remaining
        if on_row:
            on_row(done_bytes, result.rows)
        return result
