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

Hostile input is a bad row like any other, never the end of an import: the file is read in bounded
pieces, and a line over ``YRDBUS_IMPORT_MAX_LINE_BYTES`` (1 MiB) is skipped to its end without being
held (its dead letter keeps its first 4 KiB, redacted); JSON nested deeper than 64 levels, a number
of over 100 characters, NaN or Infinity, a key given twice, a NUL character, a lone UTF-16 surrogate
or bytes that are not UTF-8 make the line a rejection naming the rule, and the next line is read. A
file that cannot be read at all (missing, a directory, not a regular file, denied, compressed or
UTF-16, no CSV header, unknown format) raises ``UnreadableFileError`` before anything is published.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import stat
import unicodedata
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from itertools import accumulate
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

from confluent_kafka import KafkaError, KafkaException

from schemas import contract, reference
from schemas import topics
from schemas.errors import EventError, UndecodableError, ValidationError
from schemas.jsonform import from_json
from schemas.pseudonym import Pseudonymizer
from schemas.validation import validate

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

# --------------------------------------------------------------------------- limits on hostile input
#: the longest line (JSONL) or row (CSV) read, in bytes without its line end: YRDBUS_IMPORT_MAX_LINE_BYTES
DEFAULT_MAX_LINE_BYTES = 1 << 20
MAX_LINE_SETTING = "YRDBUS_IMPORT_MAX_LINE_BYTES"
#: JSON nested deeper than this is refused before the parser recurses into it (a row's depth is 1 or 2)
MAX_JSON_DEPTH = 64
#: the longest number literal read (a long has at most 19 digits); Python refuses ints over 4,300 digits
MAX_NUMBER_CHARS = 100
#: what the dead letter of a line over the limit keeps of it, and of any row whose dead letter would be
#: longer than DEAD_LETTER_MAX_BYTES (the producer refuses messages over 1,000,000 bytes)
DEAD_LETTER_PREFIX_BYTES = 4096
DEAD_LETTER_MAX_BYTES = 64 * 1024
#: how much of a line over the limit is read at a time while skipping to its end
_SKIP_CHUNK = 64 * 1024
_BOM = b"\xef\xbb\xbf"
#: the first bytes of files that are not UTF-8 text at all
_NOT_TEXT = ((b"\x00\x00\xfe\xff", "UTF-32 text (it starts with a UTF-32 byte-order mark); export it as UTF-8"),
             (b"\xff\xfe\x00\x00", "UTF-32 text (it starts with a UTF-32 byte-order mark); export it as UTF-8"),
             (b"\xfe\xff", "UTF-16 text (it starts with a UTF-16 byte-order mark); export it as UTF-8"),
             (b"\xff\xfe", "UTF-16 text (it starts with a UTF-16 byte-order mark); export it as UTF-8"),
             (b"\x1f\x8b", "gzip-compressed; decompress it first"),
             (b"PK\x03\x04", "a zip archive; extract the export first"),
             (b"BZh", "bzip2-compressed; decompress it first"),
             (b"\xfd7zXZ\x00", "xz-compressed; decompress it first"),
             (b"\x28\xb5\x2f\xfd", "zstd-compressed; decompress it first"))


class ImportFileError(ValueError):
    """The file as a whole cannot be imported (unknown format, unknown kind)."""


class UnreadableFileError(ImportFileError):
    """The file cannot be read at all: missing, a directory, not a regular file, denied, not UTF-8 text,
    compressed, an unknown format, a CSV without a usable header. Nothing of it was published."""


class TooLargeError(UndecodableError):
    reason = "too_large"


class TooDeepError(UndecodableError):
    reason = "too_deep"


class BadNumberError(ValidationError):
    reason = "bad_number"


class BadTextError(ValidationError):
    reason = "bad_text"


class DuplicateKeyError(ValidationError):
    reason = "duplicate_key"


class UnimportableError(ValidationError):
    """A row that broke the import in a way no rule names (a last resort: the import goes on)."""
    reason = "unimportable"


def infer_kind(path: str | Path) -> str | None:
    """The event kind named in a file name (``sh-pvg-clearances-2017-06-05.csv`` -> clearance), or None."""
    words = re.split(r"[^a-z]+", Path(path).name.lower())
    found = {KIND_WORDS[w] for w in words if w in KIND_WORDS}
    return found.pop() if len(found) == 1 else None


def _shown_path(path: str | Path) -> str:
    """A path for a one-line message: as is, or quoted when it holds a line break or another control."""
    text = str(path)
    return text if text.isprintable() else repr(text)


def file_format(path: str | Path) -> str:
    suffixes = [s.lower() for s in Path(path).suffixes]
    if ".csv" in suffixes:
        return "csv"
    if ".jsonl" in suffixes or ".ndjson" in suffixes or ".json" in suffixes:
        return "jsonl"
    raise UnreadableFileError(f"{_shown_path(path)}: cannot tell the format from the name; expected .jsonl "
                              f"(or .ndjson) or .csv")


def open_export(path: str | Path) -> BinaryIO:
    """``path`` opened for reading (binary), or ``UnreadableFileError`` saying in one line why it cannot be.

    Only a regular file is opened: a FIFO would block the import, a device never end. The type is checked
    again on the open descriptor (opened without blocking), so a file swapped in between is caught too.
    """
    shown = _shown_path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise UnreadableFileError(f"{shown}: no such file") from None
    except PermissionError:
        raise UnreadableFileError(f"{shown}: permission denied") from None
    except (OSError, ValueError) as exc:       # ValueError: a NUL in the path
        raise UnreadableFileError(f"{shown}: cannot be read: {getattr(exc, 'strerror', None) or exc}") from None
    _regular(st, shown)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise UnreadableFileError(f"{shown}: no such file") from None
    except PermissionError:
        raise UnreadableFileError(f"{shown}: permission denied") from None
    except OSError as exc:
        raise UnreadableFileError(f"{shown}: cannot be read: {exc.strerror or exc}") from None
    try:
        _regular(os.fstat(fd), shown)
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        f = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    try:
        head = f.read(4096)
        f.seek(0)
    except OSError as exc:
        f.close()
        raise UnreadableFileError(f"{shown}: cannot be read: {exc.strerror or exc}") from None
    for magic, what in _NOT_TEXT:
        if head.startswith(magic):
            f.close()
            raise UnreadableFileError(f"{shown}: not UTF-8 text: the file is {what}")
    nuls = head.count(b"\x00")
    if len(head) >= 16 and nuls * 8 > len(head):
        f.close()
        raise UnreadableFileError(f"{shown}: not UTF-8 text: {nuls:,} NUL bytes in its first {len(head):,} "
                                  f"bytes (binary data, or UTF-16 without a byte-order mark)")
    return f


def _regular(st: os.stat_result, shown: str) -> None:
    if stat.S_ISDIR(st.st_mode):
        raise UnreadableFileError(f"{shown}: is a directory, not an export file")
    if not stat.S_ISREG(st.st_mode):
        what = ("a FIFO (named pipe)" if stat.S_ISFIFO(st.st_mode) else "a device" if stat.S_ISCHR(st.st_mode)
                or stat.S_ISBLK(st.st_mode) else "a socket" if stat.S_ISSOCK(st.st_mode) else "a special file")
        raise UnreadableFileError(f"{shown}: is {what}, not a regular file; write the export to a file first")


def check_export(path: str | Path) -> str:
    """The format of ``path`` (``jsonl`` or ``csv``) once it is known to be readable; else ``UnreadableFileError``."""
    fmt = file_format(path)
    open_export(path).close()
    return fmt


def _limit_text(limit: int) -> str:
    if limit % (1 << 20) == 0:
        return f"{limit >> 20} MiB"
    if limit % 1024 == 0:
        return f"{limit >> 10} KiB"
    return f"{limit:,}-byte"


def _short(text: str, n: int = 40) -> str:
    """``repr(text)``, cut to about ``n`` characters with its length said: messages stay one short line."""
    if len(text) <= n:
        return repr(text)
    return f"{text[:n]!r}... ({len(text):,} characters)"


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
    raw: bytes                      # the original bytes of the line (CSV: of the row); a prefix when truncated
    obj: dict | None                # the row as a JSON-form object, or None when it could not be read
    error: EventError | None = None
    header: list[str] | None = None  # CSV: the column names
    truncated: bool = False         # raw is only the first bytes of a line over the limit


@dataclass
class _Line:
    no: int
    data: bytes         # the line without its end; only its first DEAD_LETTER_PREFIX_BYTES when not whole
    end: bytes          # b"\n", b"\r\n" or b"" (the last line)
    size: int           # its length in bytes, without the end
    whole: bool         # False: over the limit, skipped without being held


def _split_end(chunk: bytes) -> tuple[bytes, bytes]:
    if chunk.endswith(b"\r\n"):
        return chunk[:-2], b"\r\n"
    if chunk.endswith(b"\n"):
        return chunk[:-1], b"\n"
    return chunk, b""


def _lines(stream, limit: int) -> Iterator[_Line]:
    """The lines of ``stream`` with their numbers; one over ``limit`` bytes is read to its end in pieces of
    64 KiB and dropped but for its first 4 KiB, so at most ``limit`` bytes of the file are held at a time."""
    n = 0
    keep = min(limit, DEAD_LETTER_PREFIX_BYTES)
    while True:
        chunk = stream.readline(limit + 2)      # room for the line and its "\r\n"
        if not chunk:
            return
        n += 1
        whole = chunk.endswith(b"\n") or len(chunk) < limit + 2
        if n == 1 and chunk.startswith(_BOM):   # a UTF-8 byte-order mark: allowed, and not part of the data
            chunk = chunk[len(_BOM):]
        if whole:
            data, end = _split_end(chunk)
            if len(data) <= limit:
                yield _Line(n, data, end, len(data), True)
            else:
                yield _Line(n, data[:keep], end, len(data), False)
            continue
        size, prefix, end = len(chunk), chunk[:keep], b""
        del chunk
        while True:
            piece = stream.readline(_SKIP_CHUNK)
            if not piece:
                break
            if piece.endswith(b"\n"):
                piece, end = _split_end(piece)
                size += len(piece)
                break
            size += len(piece)
        yield _Line(n, prefix, end, size, False)


def _too_long(line: _Line, limit: int, kept: int | None) -> TooLargeError:
    said = f"line is {line.size:,} bytes, over the {_limit_text(limit)} limit ({MAX_LINE_SETTING})"
    if kept is None:
        return TooLargeError(said)
    return TooLargeError(f"{said}; skipped unread, its dead letter keeps the first {kept:,} bytes")


def _json_type(value) -> str:
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    if value is None:
        return "null"
    return "number"


class _Refused:
    """A JSON value refused while parsing (a number too long, NaN): kept in its place, so the walk after the
    parse can name its field."""
    __slots__ = ("error",)

    def __init__(self, error: EventError):
        self.error = error

    def __repr__(self) -> str:
        return "<refused value>"


class _Object(dict):
    """A JSON object that gave a key twice (the parser keeps the last value; the row is refused)."""
    duplicate: str = ""


def _parse_int(text: str):
    if len(text) > MAX_NUMBER_CHARS:
        digits = len(text.lstrip("-"))
        return _Refused(BadNumberError(f"a number of {digits:,} digits, over the limit of {MAX_NUMBER_CHARS} "
                                       f"characters for a number (no field takes one that long)"))
    return int(text)


def _parse_float(text: str):
    if len(text) > MAX_NUMBER_CHARS:
        return _Refused(BadNumberError(f"a number of {len(text):,} characters, over the limit of "
                                       f"{MAX_NUMBER_CHARS} characters for a number"))
    value = float(text)
    if not math.isfinite(value):
        return _Refused(BadNumberError("a number too large to be finite (it reads as infinity); numbers must "
                                       "be finite"))
    return value


def _parse_constant(name: str):
    return _Refused(BadNumberError(f"{name} is not a number JSON allows (NaN, Infinity and -Infinity are "
                                   f"refused)"))


def _object(pairs: list) -> dict:
    obj = dict(pairs)
    if len(obj) == len(pairs):
        return obj
    seen: set = set()
    dup = next(k for k, _ in pairs if k in seen or seen.add(k))
    out = _Object(obj)
    out.duplicate = dup
    return out


def _loads(text: str) -> tuple[object, bool]:
    """``text`` parsed, and whether it may hold a refused value (then ``_refusal`` finds it and its field)."""
    refused = []

    def number(parse):
        def hook(s):
            v = parse(s)
            if v.__class__ is _Refused:
                refused.append(v)
            return v
        return hook

    def constant(name):
        refused.append(name)
        return _parse_constant(name)

    def pairs(items):
        obj = _object(items)
        if obj.__class__ is _Object:
            refused.append(obj)
        return obj

    obj = json.loads(text, parse_int=number(_parse_int), parse_float=number(_parse_float), parse_constant=constant,
                     object_pairs_hook=pairs)
    # a NUL or a lone surrogate in a string can only come from an escape (raw ones are refused before)
    return obj, bool(refused) or "\\u0000" in text or _SURROGATE_ESCAPE.search(text) is not None


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _key_path(parent: str, key: str) -> str:
    name = key if (key.isprintable() and 0 < len(key) <= 64 and "`" not in key) else _short(key, 24)
    return f"{parent}.{name}" if parent else name


def _text_problem(text: str, path: str) -> EventError | None:
    if "\x00" in text:
        return BadTextError("contains a NUL character (\\u0000)", field=path or None)
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            return BadTextError(f"contains {ascii(text[exc.start])}, a lone UTF-16 surrogate, which is not text",
                                field=path or None)
    return None


def _refusal(value, path: str = "") -> EventError | None:
    """The first refused value in a parsed row (depth at most MAX_JSON_DEPTH), with its field set."""
    if isinstance(value, str):
        return _text_problem(value, path)
    if isinstance(value, _Refused):
        value.error.field = path or None
        return value.error
    if isinstance(value, dict):
        if isinstance(value, _Object):
            return DuplicateKeyError(f"key {_short(value.duplicate, 24)} appears twice in one object",
                                     field=path or None)
        for k, v in value.items():
            p = _key_path(path, k)
            found = _text_problem(k, p) or _refusal(v, p)
            if found is not None:
                return found
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found = _refusal(v, f"{path}[{i}]")
            if found is not None:
                return found
    return None


_ESCAPE = re.compile(r"\\.", re.S)
_STRING = re.compile(r'"[^"]*"')
_NOT_BRACKETS = bytes(sorted(set(range(256)) - set(b"[]{}")))
_STEP = [0] * 256
_STEP[ord("[")] = _STEP[ord("{")] = 1
_STEP[ord("]")] = _STEP[ord("}")] = -1


def _nested_over(text: str, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether ``text`` opens more than ``limit`` arrays or objects inside one another, strings left out.

    Done at the speed of C (escapes, then strings, then all but brackets taken out; the deepest running
    sum of the brackets), so a line of a million brackets takes milliseconds; a line with at most
    ``limit`` brackets is not looked at.
    """
    if text.count("[") + text.count("{") <= limit:
        return False
    if "\\" in text:
        text = _ESCAPE.sub("", text)
    brackets = _STRING.sub("", text).encode("utf-8", "ignore").translate(None, _NOT_BRACKETS)
    return len(brackets) > limit and max(accumulate(map(_STEP.__getitem__, brackets))) > limit


def _jsonl_row(n: int, raw: bytes) -> Row:
    where = f"line {n}"
    nul = raw.find(b"\x00")
    if nul >= 0:
        return Row(n, raw, None, BadTextError(f"contains a NUL byte (byte {nul + 1})").at(where))
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Row(n, raw, None, UndecodableError(f"not UTF-8 text: {exc.reason} (byte {exc.start + 1})").at(where))
    if _nested_over(text):
        return Row(n, raw, None, TooDeepError(f"JSON nested deeper than {MAX_JSON_DEPTH} levels").at(where))
    try:
        obj, suspect = _loads(text)
    except json.JSONDecodeError as exc:
        return Row(n, raw, None, UndecodableError(f"not JSON: {exc.msg} (column {exc.colno})").at(where))
    except RecursionError:      # not reached after _nested_over; kept so that no depth can end the import
        return Row(n, raw, None, TooDeepError(f"JSON nested deeper than {MAX_JSON_DEPTH} levels").at(where))
    except (ValueError, TypeError, OverflowError) as exc:
        return Row(n, raw, None, UndecodableError(f"not JSON: {_short(str(exc), 80)}").at(where))
    if not isinstance(obj, dict):
        return Row(n, raw, None, ValidationError(f"expected a JSON object, got {_json_type(obj)}").at(where))
    refused = _refusal(obj) if suspect else None
    if refused is not None:
        return Row(n, raw, obj, refused.at(where))
    return Row(n, raw, obj)


def read_jsonl(stream, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> Iterator[Row]:
    """One ``Row`` for each line that is not blank: an object, or the error that refuses it."""
    for line in _lines(stream, max_line_bytes):
        if not line.whole:
            error = _too_long(line, max_line_bytes, len(line.data)).at(f"line {line.no}")
            yield Row(line.no, line.data, None, error, truncated=True)
            continue
        if not line.data.strip():
            continue
        yield _jsonl_row(line.no, line.data)


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


def _known_columns(kind: str) -> set[str]:
    return {f["name"] for f in json.loads(contract.current_schema_json(kind))["fields"]} | set(RAW_FIELDS)


class _RowTooLarge(Exception):
    """Raised by the CSV feed: a line over the limit, or a row (a quoted cell over lines) that grew past it."""


class _NulInRow(Exception):
    def __init__(self, line: int, byte: int):
        super().__init__(line, byte)
        self.line, self.byte = line, byte


class _CsvFeed:
    """The lines of a CSV file for ``csv.reader``, decoded one by one within the limits.

    Its errors (a line or row over the limit, a NUL byte, bytes that are not UTF-8) come out of the
    reader's ``next()``; the reader starts afresh on the next line then. ``taken`` holds the lines of the
    row being read, for its line numbers and its bytes.
    """

    def __init__(self, stream, limit: int):
        self._lines = _lines(stream, limit)
        self.limit = limit
        self.taken: list[_Line] = []
        self._bytes = 0

    def start(self) -> None:
        self.taken = []
        self._bytes = 0

    def __iter__(self) -> "_CsvFeed":
        return self

    def __next__(self) -> str:
        line = next(self._lines)
        self.taken.append(line)
        self._bytes += line.size + len(line.end)
        if not line.whole or self._bytes - len(line.end) > self.limit:
            raise _RowTooLarge()
        nul = line.data.find(b"\x00")
        if nul >= 0:
            raise _NulInRow(line.no, nul + 1)
        return (line.data + line.end).decode("utf-8")

    @property
    def first(self) -> int:
        return self.taken[0].no

    def raw(self) -> tuple[bytes, bool]:
        """The bytes of the row read (without its last line end), and whether they are only its first ones."""
        data = b"".join(line.data + line.end for line in self.taken)
        data = data[:len(data) - len(self.taken[-1].end)]
        if not all(line.whole for line in self.taken) or len(data) > self.limit:
            return data[:DEAD_LETTER_PREFIX_BYTES], True
        return data, False


def _csv_error(exc: Exception, feed: _CsvFeed, kept: int | None) -> EventError:
    first, last = feed.first, feed.taken[-1].no
    over = f" (lines {first}-{last})" if last != first else ""
    if isinstance(exc, _RowTooLarge):
        if first == last:
            return _too_long(feed.taken[-1], feed.limit, kept)
        return TooLargeError(f"a CSV row over lines {first}-{last} is over the {_limit_text(feed.limit)} limit "
                             f"({MAX_LINE_SETTING}): a quoted cell that never closes?"
                             + ("" if kept is None else f"; its dead letter keeps the first {kept:,} bytes"))
    if isinstance(exc, _NulInRow):
        at = f"byte {exc.byte}" if exc.line == first else f"line {exc.line}, byte {exc.byte}"
        return BadTextError(f"contains a NUL byte ({at})")
    if isinstance(exc, UnicodeDecodeError):
        at = f"byte {exc.start + 1}" if last == first else f"line {last}, byte {exc.start + 1}"
        return UndecodableError(f"not UTF-8 text: {exc.reason} ({at})")
    text = str(exc)
    if text.startswith("field larger than field limit"):
        return TooLargeError(f"a cell is over {csv.field_size_limit():,} characters, the CSV reader's limit "
                             f"(csv.field_size_limit){over}")
    if text.startswith("new-line character seen in unquoted field"):
        return UndecodableError(f"a carriage return (\\r) inside an unquoted cell{over}; lines end with \\n or \\r\\n")
    return UndecodableError(f"not CSV: {_short(text, 80)}{over}")


def _csv_header(reader, feed: _CsvFeed, kind: str) -> list[str] | None:
    """The column names (the first row that is not blank), or None for a file without any row."""
    while True:
        feed.start()
        try:
            cells = next(reader)
        except StopIteration:
            return None
        except (_RowTooLarge, _NulInRow, UnicodeDecodeError, csv.Error) as exc:
            raise UnreadableFileError(f"line {feed.first}: the CSV header cannot be read: "
                                      f"{_csv_error(exc, feed, None).detail}") from None
        if any(c.strip() for c in cells):
            break
    header = [h.strip() for h in cells]
    known = _known_columns(kind)
    if not known & set(header):
        raise UnreadableFileError(
            f"line {feed.first}: no CSV header: the first row names no field of a {kind} event (such as "
            f"{', '.join(sorted(known - set(RAW_FIELDS))[:4])}); a CSV export starts with its column names")
    seen: set[str] = set()
    for h in header:
        if h in seen and h:
            raise UnreadableFileError(f"line {feed.first}: the CSV header names the column {_short(h, 40)} twice")
        seen.add(h)
    return header


def read_csv(stream, kind: str, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> Iterator[Row]:
    """One ``Row`` for each CSV row that is not blank; ``UnreadableFileError`` when the header cannot be read."""
    feed = _CsvFeed(stream, max_line_bytes)
    reader = csv.reader(feed)
    header = _csv_header(reader, feed, kind)
    if header is None:
        return
    types = _scalar_types(kind)
    while True:
        feed.start()
        try:
            cells = next(reader)
        except StopIteration:
            return
        except (_RowTooLarge, _NulInRow, UnicodeDecodeError, csv.Error) as exc:
            raw, truncated = feed.raw()
            yield Row(feed.first, raw, None, _csv_error(exc, feed, len(raw)).at(f"line {feed.first}"), header,
                      truncated)
            continue
        first_line = feed.first
        raw, _ = feed.raw()
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


_INTEGER = re.compile(r"[+-]?[0-9]+")
_DECIMAL = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_NOT_FINITE = frozenset({"nan", "+nan", "-nan", "inf", "+inf", "-inf", "infinity", "+infinity", "-infinity"})
_TIME_FIELDS = ("occurred_at", "published_at", "starts_at", "ends_at")


def _long_number(name: str, text: str) -> BadNumberError:
    digits = text.lstrip("+-")
    size = f"{len(digits):,} digits" if digits.isascii() and digits.isdigit() else f"{len(text):,} characters"
    return BadNumberError(f"a number of {size}, over the limit of {MAX_NUMBER_CHARS} characters for a number "
                          f"(no field takes one that long)", field=name)


def _csv_value(name: str, cell: str, types: dict[str, str]):
    if name in ARRAY_FIELDS:
        return [c.strip() for c in cell.split(";") if c.strip()]
    t = types.get(name)
    if t in ("int", "float"):
        text = cell.strip()
        if len(text) > MAX_NUMBER_CHARS:
            raise _long_number(name, text)
        if t == "int":
            # ASCII digits only: int() also reads '١٢' and '1_000'
            if not _INTEGER.fullmatch(text):
                raise ValidationError(f"expected an integer, got {_short(cell)}", field=name)
            return int(text)
        if text.lower() in _NOT_FINITE:
            raise BadNumberError(f"{_short(cell)} is not a finite number", field=name)
        if not _DECIMAL.fullmatch(text):
            raise ValidationError(f"expected a number, got {_short(cell)}", field=name)
        value = float(text)
        if not math.isfinite(value):
            raise BadNumberError("a number too large to be finite (it reads as infinity)", field=name)
        return value
    if t == "bool":
        if cell.lower() in ("true", "1", "yes"):
            return True
        if cell.lower() in ("false", "0", "no"):
            return False
        raise ValidationError(f"expected true or false, got {_short(cell)}", field=name)
    # epoch milliseconds; isdigit() alone also takes digits int() refuses (superscripts such as '²')
    if name in _TIME_FIELDS and cell.isascii() and cell.isdigit():
        if len(cell) > MAX_NUMBER_CHARS:
            raise _long_number(name, cell)
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
                said = _short(given) if isinstance(given, str) else f"a JSON {_json_type(given)}"
                raise ValidationError(f"this import is for region {self.region} (--region), the row says {said}",
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
    """The bytes of ``row`` fit for the dead-letter topic: raw identities replaced by ``<redacted>``.

    Whatever cannot be taken apart well enough to tell where an identity is gives ``<redacted>`` alone.
    """
    try:
        return _redact(row)
    except Exception:  # noqa: BLE001 - a row that breaks the redaction keeps nothing of itself
        return REDACTED.encode()


def _redact(row: Row) -> bytes:
    if row.header is not None:     # CSV
        raw_cols = [i for i, h in enumerate(row.header) if _looks_raw(h)]
        if not raw_cols:
            return row.raw
        try:
            # a row cut at its first bytes may end inside a character
            cells = next(csv.reader([row.raw.decode("utf-8", "replace" if row.truncated else "strict")]))
        except (csv.Error, UnicodeDecodeError, StopIteration):
            return REDACTED.encode()
        if len(cells) != len(row.header) and not (row.truncated and len(cells) < len(row.header)):
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
        if not _has_raw_key(row.obj):
            return row.raw
        return json.dumps(_redacted(row.obj), ensure_ascii=False, default=repr).encode("utf-8", "backslashreplace")
    return _redact_json_text(row.raw)


def _has_raw_key(value) -> bool:
    if isinstance(value, dict):
        return any(_looks_raw(k) or _has_raw_key(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_raw_key(v) for v in value)
    return False


def _redacted(value):
    if isinstance(value, dict):
        return {k: (REDACTED if _looks_raw(k) else _redacted(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [_redacted(v) for v in value]
    return value


def _folded(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", unicodedata.normalize("NFKC", name).casefold())


#: the raw identity fields' names as ``_looks_raw`` compares them: letters and digits only
_RAW_FOLDED = frozenset(_folded(k) for k in RAW_FIELDS)
_NOT_LETTERS = bytes(sorted(set(range(256)) - set(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")))


def _looks_raw(key) -> bool:
    """Whether ``key`` names a raw identity field, spelled however a broken export spells it ("Document Number",
    "\ufeffname", "ｎａｍｅ"): the importer takes only the exact names, the redaction errs the other way."""
    return isinstance(key, str) and _folded(key) in _RAW_FOLDED
#: a JSON string from its opening quote: its content, and its closing quote when it has one
_JSON_STRING = re.compile(rb'"([^"\\]*+(?:\\.[^"\\]*+)*+)("?)', re.S)
_JSON_TOKEN = re.compile(rb'"[^"\\]*+(?:\\.[^"\\]*+)*+"?|[\[\]{}]', re.S)
_JSON_SCALAR = re.compile(rb'[^,\]}\n]*')
_JSON_SPACE = re.compile(rb'[ \t\r\n]*')


def _may_name_raw_field(raw: bytes) -> bool:
    """Whether a raw identity field's name may be in ``raw`` (spelled with anything between its letters): its
    letters alone, lower-cased, hold one of the names' letters. At the speed of C; rarely wrong the safe way."""
    if not raw.isascii():
        return True
    letters = raw.translate(None, _NOT_LETTERS).lower()
    return any(k.encode() in letters for k in _RAW_FOLDED)


def _redact_json_text(raw: bytes) -> bytes:
    """JSON text that did not parse (broken, too deep, or only the first bytes of a long line), with the value
    of every key naming a raw identity field replaced by ``"<redacted>"``.

    Keys are read as JSON reads them (escapes included). A raw field's name that is not followed by ``:``
    and a value that is not followed by ``,``, ``}`` or ``]`` (a line broken around an identity) leave
    nothing of the line: ``<redacted>``.
    """
    if b"\\" not in raw and not _may_name_raw_field(raw):
        return raw
    out: list[bytes] = []
    kept_to = pos = 0
    n = len(raw)
    while True:
        m = _JSON_STRING.search(raw, pos)
        if m is None:
            break
        pos = m.end()
        if not _names_raw_field(m):
            continue
        colon = _JSON_SPACE.match(raw, pos).end()
        if colon >= n:
            break                                   # the text ends with the key: no value follows
        if raw[colon:colon + 1] != b":":
            return REDACTED.encode()
        start = _JSON_SPACE.match(raw, colon + 1).end()
        end = _json_value_end(raw, start)
        after = _JSON_SPACE.match(raw, end).end()
        if after < n and raw[after:after + 1] not in (b",", b"}", b"]"):
            return REDACTED.encode()
        out += [raw[kept_to:start], b'"' + REDACTED.encode() + b'"']
        kept_to = pos = end
    out.append(raw[kept_to:])
    return b"".join(out)


def _names_raw_field(m: re.Match) -> bool:
    if not m.group(2):                  # not closed: the text ends inside it, nothing follows
        return False
    content = m.group(1)
    if b"\\" not in content and not _may_name_raw_field(content):
        return False
    try:
        name = json.loads(b'"' + content + b'"')
    except ValueError:
        return True                     # a key JSON cannot read: it may be any
    return _looks_raw(name)


def _json_value_end(raw: bytes, start: int) -> int:
    """Where the JSON value starting at ``start`` ends (the end of the text if it is cut short)."""
    n = len(raw)
    if start >= n:
        return n
    c = raw[start:start + 1]
    if c == b'"':
        return _JSON_STRING.match(raw, start).end()
    if c in (b"[", b"{"):
        depth, pos = 0, start
        while True:
            m = _JSON_TOKEN.search(raw, pos)
            if m is None:
                return n
            pos, t = m.end(), m.group()
            if t in (b"[", b"{"):
                depth += 1
            elif t in (b"]", b"}"):
                depth -= 1
                if depth == 0:
                    return pos
    return _JSON_SCALAR.match(raw, start).end()


# =========================================================================== the file
def _too_large_for_kafka(exc: KafkaException) -> bool:
    err = exc.args[0] if exc.args else None
    return isinstance(err, KafkaError) and err.code() == KafkaError.MSG_SIZE_TOO_LARGE


class Importer:
    """Imports one file through a ``StationPublisher``.

    ``max_line_bytes``: the longest line (JSONL) or row (CSV) read; default ``YRDBUS_IMPORT_MAX_LINE_BYTES``.
    """

    def __init__(self, publisher, pseudonymizer: Pseudonymizer, kind: str, region: str | None = None,
                 now: Callable[[], datetime] | None = None, max_line_bytes: int | None = None):
        self.publisher = publisher
        self.rows = RowImporter(kind, pseudonymizer, region, now)
        self.kind = kind
        self.region = region
        if max_line_bytes is None:
            from schemas.settings import get_settings

            max_line_bytes = getattr(get_settings(), "import_max_line_bytes", DEFAULT_MAX_LINE_BYTES)
        if max_line_bytes < 1:
            raise ImportFileError(f"the line limit must be a positive number of bytes, not {max_line_bytes}")
        self.max_line_bytes = max_line_bytes

    def _dead_letter_source(self, row: Row) -> str:
        prefix = self.publisher.prefix
        for candidate in ((row.obj or {}).get("region"), self.region,
                          str((row.obj or {}).get("station_id") or "").split("-", 1)[0]):
            if isinstance(candidate, str) and candidate in reference.REGIONS:
                return prefix + topics.source(candidate, self.kind)
        return prefix + "import"

    def run(self, path: str | Path, on_row: Callable[[int, int], None] | None = None,
            on_reject: Callable[[Rejection], None] | None = None) -> ImportResult:
        """Import ``path``; ``on_row(bytes_read, rows)`` reports progress, ``on_reject`` each rejection.

        Raises ``UnreadableFileError`` when the file cannot be read at all (before anything is published; or,
        when reading fails half-way, with what was read so far published).
        """
        path = Path(path)
        fmt = file_format(path)
        result = ImportResult(str(path), self.kind)
        start = dict(self.publisher.stats())
        with open_export(path) as f:
            rows = read_csv(f, self.kind, self.max_line_bytes) if fmt == "csv" else read_jsonl(f, self.max_line_bytes)
            while True:
                try:
                    row = next(rows)
                except StopIteration:
                    break
                except UnreadableFileError as exc:     # a CSV header that cannot be read
                    raise UnreadableFileError(f"{_shown_path(path)}: {exc}") from None
                except OSError as exc:
                    raise UnreadableFileError(f"{_shown_path(path)}: reading failed after {result.rows:,} rows: "
                                              f"{exc.strerror or exc}") from None
                self._import_row(row, result, on_reject)
                if on_row and result.rows % 500 == 0:
                    on_row(f.tell(), result.rows)
            done_bytes = f.tell()
        remaining = self.publisher.flush()
        stats = self.publisher.stats()
        result.delivered = stats["delivered"] - start["delivered"]
        result.failed = stats["failed"] - start["failed"] + remaining
        if on_row:
            on_row(done_bytes, result.rows)
        return result

    def _import_row(self, row: Row, result: ImportResult, on_reject) -> None:
        result.rows += 1
        where = f"line {row.line}"
        error = row.error
        if error is None:
            try:
                record = self.rows.record(row.obj)
                self.publisher.publish(self.kind, record)
                result.published += 1
                return
            except EventError as exc:
                error = exc.at(where)
            except KafkaException as exc:
                if not _too_large_for_kafka(exc):
                    raise
                error = TooLargeError("the event is too large for the bus: over the producer's message.max.bytes"
                                      ).at(where)
            except (ValueError, TypeError, KeyError, AttributeError, OverflowError, RecursionError) as exc:
                # no rule names it: still one row's fault, and the import goes on
                error = UnimportableError(f"cannot be imported: {type(exc).__name__}: {_short(str(exc), 80)}"
                                          ).at(where)
        kept = redact(row)
        if len(kept) > DEAD_LETTER_MAX_BYTES:
            kept = kept[:DEAD_LETTER_PREFIX_BYTES]
            error.detail += f"; its dead letter keeps the first {len(kept):,} bytes"
            error.at(where)
        rej = Rejection(row.line, error.field, error.reason, str(error))
        result.rejected += 1
        if len(result.rejections) < 10_000:
            result.rejections.append(rej)
        topic = self.publisher.dead_letter(self._dead_letter_source(row), kept, error)
        result.dead_letter_topics.add(topic)
        if on_reject:
            on_reject(rej)
