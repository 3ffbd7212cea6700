"""Fuzzing the importer of station exports: JSONL and CSV lines, raw identities of every wrong type.

A hostile or broken file never stops an import: each line becomes a record or a typed ``EventError``
naming the line and the field, and the bytes kept for the dead-letter topic never carry a raw
document number or name. Whole files of hostile lines (deep nesting, numbers of thousands of digits,
lines over the limit, random bytes, NaN, NUL, lone surrogates, keys given twice) go through the
importer and its publisher: nothing escapes, and every line is imported or rejected.
"""
from __future__ import annotations

import io
import json
import re
from datetime import datetime, timezone

from hypothesis import example as hypothesis_example
from hypothesis import given
from hypothesis import strategies as st

from connectors.importer import _NOT_TEXT as NOT_TEXT
from connectors.importer import (DEAD_LETTER_MAX_BYTES, RAW_FIELDS, Importer, ImportFileError, RowImporter,
                                 UnreadableFileError, read_csv, read_jsonl, redact)
from fuzzing import SQL, fuzz, wrong_values
from test_hostile_importer import fake_publisher, letters
from schemas import contract
from schemas.errors import EventError
from schemas.examples import example
from schemas.jsonform import to_json
from schemas.pseudonym import Pseudonymizer

P = Pseudonymizer(b"fuzzing-key-of-thirty-two-bytes!")
NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)
KINDS = sorted(contract.SOURCE_KINDS)
FIELDS = {k: [f["name"] for f in json.loads(contract.current_schema_json(k))["fields"]] for k in KINDS}
#: a raw identity long and odd enough that finding it in the dead-letter bytes means it leaked
SECRET_DOC = "E9Q7X3Z1K5"


def export_row(kind: str) -> dict:
    """A row as a station's system exports it: JSON form, raw identities instead of tokens."""
    row = to_json(kind, example(kind))
    row.pop("event_id", None)
    if kind in ("clearance", "alert"):
        row.pop("subject", None)
        row.pop("name_token", None)
        row["document_number"] = SECRET_DOC
        row.setdefault("document_country", "USA")
        if kind == "clearance":
            row["name"] = "ZHANG San"
    else:
        row.pop("subjects", None)
        row["document_numbers"] = [SECRET_DOC]
        row["document_countries"] = ["USA"]
    return row


@st.composite
def hostile_lines(draw) -> tuple[str, bytes]:
    kind = draw(st.sampled_from(KINDS))
    how = draw(st.sampled_from(["bytes", "json_value", "row", "row", "row"]))
    if how == "bytes":
        return kind, draw(st.binary(max_size=300)).replace(b"\n", b" ")
    if how == "json_value":
        return kind, json.dumps(draw(wrong_values), default=repr).encode()
    row = export_row(kind)
    names = FIELDS[kind] + list(RAW_FIELDS) + ["subject", "unknown_field"]
    for name in draw(st.lists(st.sampled_from(names), max_size=4, unique=True)):
        if draw(st.integers(0, 9)) == 0:
            row.pop(name, None)
        else:
            v = draw(wrong_values)
            row[name] = v.decode("latin-1") if isinstance(v, bytes) else v
    text = json.dumps(row, default=repr, ensure_ascii=draw(st.booleans()))
    if draw(st.integers(0, 7)) == 0:    # truncated mid-line
        text = text[:draw(st.integers(0, len(text)))]
    return kind, text.encode("utf-8", "surrogatepass")


def check_row(kind: str, row, importer: RowImporter) -> None:
    if row.error is None:
        assert isinstance(row.obj, dict)
        try:
            record = importer.record(row.obj)
        except EventError as exc:
            assert str(exc)
        else:
            for f in RAW_FIELDS:
                assert f not in record
    else:
        assert isinstance(row.error, EventError) and str(row.error).startswith("line ")
    kept = redact(row)
    assert isinstance(kept, bytes)
    assert SECRET_DOC.encode() not in kept, kept[:300]


@fuzz()
@given(st.lists(hostile_lines(), min_size=1, max_size=4))
def test_fuzz_jsonl_lines_become_records_or_typed_errors_without_leaking_identities(lines):
    for kind, line in lines:
        importer = RowImporter(kind, P, now=lambda: NOW)
        for row in read_jsonl(io.BytesIO(line + b"\n")):
            check_row(kind, row, importer)


@st.composite
def hostile_csv(draw) -> tuple[str, bytes]:
    kind = draw(st.sampled_from(KINDS))
    row = export_row(kind)
    header = list(row)
    if draw(st.booleans()):
        header.append(draw(st.sampled_from(["unknown_field", "subject", "names", ""])))
    cells = []
    for h in header:
        v = row.get(h, "")
        if draw(st.integers(0, 3)) == 0:
            v = draw(st.one_of(st.text(max_size=40), st.sampled_from(SQL), st.integers().map(str),
                               st.just("A" * 20_000), st.sampled_from(['"', '""', "\n", '"\n"', ";", ","])))
        cells.append(";".join(v) if isinstance(v, list) else str(v))
    buf = io.StringIO()
    import csv

    w = csv.writer(buf)
    w.writerow(header)
    for _ in range(draw(st.integers(1, 3))):
        w.writerow(cells[:draw(st.integers(0, len(cells)))] if draw(st.integers(0, 5)) == 0 else cells)
    data = buf.getvalue().encode("utf-8", "surrogatepass")
    if draw(st.integers(0, 5)) == 0:
        data += draw(st.binary(max_size=60))
    return kind, data


@fuzz()
@given(hostile_csv())
# a time made of a digit int() does not read ('²'.isdigit() is true): found by this test
@hypothesis_example(("case", b"region,station_id,port_code,occurred_at,published_at,case_id,stage,case_type,method,"
                             b"nationalities,persons,conveyance_type,conveyance_id\r\n"
                             b",,,\xc2\xb2,2026-11-28T20:01:47.828Z,ZJ-2026-000123,OPENED,STOWAWAY,"
                             b"STOWAWAY_ON_VESSEL,USA;VNM,,VESSEL,IMO9321483/V042\r\n"))
def test_fuzz_csv_rows_become_records_or_typed_errors_without_leaking_identities(case):
    kind, data = case
    importer = RowImporter(kind, P, now=lambda: NOW)
    try:
        for row in read_csv(io.BytesIO(data), kind):
            check_row(kind, row, importer)
    except ImportFileError as exc:   # the file as a whole (its header) cannot be read
        assert str(exc)


# --------------------------------------------------------------------------- whole files of hostile lines
#: a small line limit, so that lines over it are cheap to make
LIMIT = 2048


def _with(row: dict, name: str, literal: str) -> str:
    """``row`` as JSON text with ``name`` set to the JSON text ``literal`` (a number, NaN, nested brackets ...)."""
    body = json.dumps({k: v for k, v in row.items() if k != name})
    return body[:-1] + (", " if len(body) > 2 else "") + f'"{name}": {literal}' + "}"


@st.composite
def hostile_file_line(draw, kind: str) -> bytes:
    row = export_row(kind)
    names = FIELDS[kind] + list(RAW_FIELDS)
    how = draw(st.sampled_from(["row", "deep", "number", "long", "bytes", "constant", "text", "duplicate", "blank"]))
    if how == "row":
        text = json.dumps(row)
    elif how == "deep":
        depth = draw(st.integers(1, 3000))
        opener, closer = draw(st.sampled_from([("[", "]"), ('{"a": ', "}")]))
        nested = opener * depth + ("1" + closer * depth if draw(st.booleans()) else "")
        text = nested if draw(st.booleans()) else _with(row, draw(st.sampled_from(names)), nested)
    elif how == "number":
        digits = "".join(draw(st.lists(st.sampled_from("0123456789"), min_size=1, max_size=20))) \
            * draw(st.integers(1, 300))
        literal = draw(st.sampled_from(["{}", "-{}", "{}.5", "1.{}", "1e{}", "0.{}e-5"])).format(digits)
        text = _with(row, draw(st.sampled_from(names)), literal)
    elif how == "long":
        text = _with(row, "conveyance_id", json.dumps("x" * draw(st.integers(LIMIT - 600, 3 * LIMIT))))
    elif how == "bytes":
        return draw(st.binary(max_size=300)).replace(b"\n", b" ")
    elif how == "constant":
        literal = draw(st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999", "-1e400", "[NaN]", '{"x": NaN}']))
        text = _with(row, draw(st.sampled_from(names)), literal)
    elif how == "text":
        bad = draw(st.sampled_from(["\\u0000", "\\ud800", "\\udfff\\ud800", "\\udbff", "a\\u0000b"]))
        text = _with(row, draw(st.sampled_from(names)), f'"{bad}"')
        raw = text.encode()
        if draw(st.booleans()):          # a raw NUL, a BOM, a lone CR or bytes that are not UTF-8, anywhere
            at = draw(st.integers(0, len(raw)))
            odd = draw(st.sampled_from([b"\x00", b"\xef\xbb\xbf", b"\r", b"\xff", b"\xc3", b"\xed\xa0\x80"]))
            raw = raw[:at] + odd + raw[at:]
        return raw
    elif how == "duplicate":
        name = draw(st.sampled_from(list(row)))
        text = _with(row, name, json.dumps(row[name])).replace("{", "{" + f'"{name}": 1, ', 1)
    else:
        return draw(st.sampled_from([b"", b"   ", b"\t", b"\r"]))
    raw = text.encode("utf-8", "surrogatepass")
    return raw + b"\r" if draw(st.integers(0, 4)) == 0 else raw


def _blank(line: bytes, first: bool) -> bool:
    if first and line.startswith(b"\xef\xbb\xbf"):
        line = line[3:]
    return len(line.rstrip(b"\r")) <= LIMIT and not line.strip()


def _run(kind: str, f, pub):
    """The import of ``f``, or None when the file as a whole is not text (a compression format's magic bytes, a
    UTF-16 byte-order mark, NUL bytes in over an eighth of its first 4 KiB: random bytes make these too)."""
    try:
        # the clock of the import: the examples' event times are of the moment they were made
        return Importer(pub, P, kind, max_line_bytes=LIMIT).run(f)
    except UnreadableFileError as exc:
        head = f.read_bytes()[:4096]
        assert str(exc).startswith(f"{f}: not UTF-8 text: ")
        assert head.count(0) * 8 > len(head) or any(head.startswith(magic) for magic, _ in NOT_TEXT), head[:20]
        assert pub._producer.messages == []
        return None


def _accounted(result, lines_in_file: list[bytes], blank, pub) -> None:
    counted = [n for n, line in enumerate(lines_in_file, start=1) if not blank(n, line)]
    assert result.rows == len(counted) == result.published + result.rejected
    assert [r.line for r in result.rejections] == sorted({r.line for r in result.rejections})
    assert {r.line for r in result.rejections} <= set(counted)
    assert all(r.message.startswith(f"line {r.line}") and "\n" not in r.message for r in result.rejections)
    sent = letters(pub)
    assert len(sent) == result.rejected
    for _, value, _ in sent:
        assert len(value) <= DEAD_LETTER_MAX_BYTES and SECRET_DOC.encode() not in value, value[:300]


@fuzz()
@given(st.sampled_from(KINDS).flatmap(lambda k: st.tuples(st.just(k), st.lists(hostile_file_line(k), min_size=1,
                                                                                 max_size=6))))
def test_fuzz_hostile_jsonl_files_never_stop_an_import_and_every_line_is_accounted_for(tmp_path, case):
    kind, lines = case
    f = tmp_path / "export.jsonl"
    f.write_bytes(b"\n".join(lines) + b"\n")
    pub = fake_publisher()
    result = _run(kind, f, pub)
    if result is not None:
        _accounted(result, lines, lambda n, line: _blank(line, n == 1), pub)


#: a hostile CSV cell: never a quote, a comma, a CR or a line break (each line stays one row)
hostile_cell = st.one_of(
    st.integers(1, 6000).map(lambda n: "9" * n),
    st.sampled_from(["NaN", "inf", "-Infinity", "1e999", "\x00", "a\x00b", "\ufeff", "١٢", "1_000", "²", ""]),
    st.integers(LIMIT - 600, 3 * LIMIT).map(lambda n: "y" * n),
    st.text(max_size=30).map(lambda t: re.sub(r'[",\r\n]', "", t)),
    st.binary(max_size=40).map(lambda b: re.sub(rb'[",\r\n]', b"", b).decode("latin-1")),
)


@fuzz()
@given(st.sampled_from(KINDS).flatmap(lambda k: st.tuples(st.just(k), st.lists(
    st.lists(st.tuples(st.integers(0, 40), hostile_cell), max_size=3), min_size=1, max_size=5), st.booleans())))
def test_fuzz_hostile_csv_files_never_stop_an_import_and_every_row_is_accounted_for(tmp_path, case):
    kind, rows, latin = case
    row = export_row(kind)
    header = list(row)
    out = [",".join(header).encode()]
    for changes in rows:
        cells = [";".join(v) if isinstance(v, list) else "" if v is None else str(v) for v in row.values()]
        for at, cell in changes:
            cells[at % len(cells)] = cell
        text = ",".join(cells)
        # a cell drawn as bytes is written as those bytes (latin-1 text): often not UTF-8
        out.append(text.encode("latin-1", "replace") if latin else text.encode("utf-8", "surrogatepass"))
    f = tmp_path / "export.csv"
    f.write_bytes(b"\r\n".join(out) + b"\r\n")
    pub = fake_publisher()
    result = _run(kind, f, pub)
    if result is None:
        return

    def blank(n: int, line: bytes) -> bool:
        if n == 1:
            return True                  # the header
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            return False
        return len(line) <= LIMIT and "\x00" not in text and all(not c.strip() for c in text.split(","))

    _accounted(result, out, blank, pub)
