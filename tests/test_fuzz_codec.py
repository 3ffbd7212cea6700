"""Fuzzing the event contract: the decoder, the projected decoder, encoding and the JSON form.

Whatever the bytes or the values, the codec answers with a record or a typed ``EventError`` that says
what is wrong (the reason travels to the dead-letter topic); it never raises anything else.
"""
from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from fuzzing import SQL, frame, fuzz, hostile_text, wrong_values
from schemas import contract
from schemas.codec import get_codec
from schemas.errors import EventError
from schemas.examples import example
from schemas.jsonform import from_json, to_json

CODEC = get_codec(None)
KINDS = sorted(contract.KINDS)
SOURCE = sorted(contract.SOURCE_KINDS)
KNOWN_IDS = sorted({CODEC.schema_id(k) for k in KINDS} | set(CODEC._by_id))
VALID = {k: CODEC.encode(k, example(k), validate=False) for k in SOURCE}
FIELDS = {k: [f["name"] for f in json.loads(contract.current_schema_json(k))["fields"]] for k in KINDS}


@st.composite
def hostile_frames(draw) -> bytes:
    """Garbage, truncated frames, mutated frames, unknown schema ids, valid headers over random bodies."""
    how = draw(st.sampled_from(["garbage", "truncated", "mutated", "unknown_id", "known_id", "appended"]))
    if how == "garbage":
        return draw(st.binary(max_size=400))
    valid = VALID[draw(st.sampled_from(SOURCE))]
    if how == "truncated":
        return valid[:draw(st.integers(0, len(valid) - 1))]
    if how == "mutated":
        data = bytearray(valid)
        for _ in range(draw(st.integers(1, 8))):
            i = draw(st.integers(0, len(data) - 1))
            data[i] = draw(st.integers(0, 255))
        return bytes(data)
    if how == "unknown_id":
        sid = draw(st.integers(0, 2 ** 32 - 1).filter(lambda i: i not in KNOWN_IDS))
        return frame(sid, valid[5:] if draw(st.booleans()) else draw(st.binary(max_size=200)))
    if how == "known_id":
        return frame(draw(st.sampled_from(KNOWN_IDS)), draw(st.binary(max_size=300)))
    return valid + draw(st.binary(min_size=1, max_size=50))


@fuzz()
@given(hostile_frames(), st.sampled_from([None] + KINDS))
def test_fuzz_decoder_answers_a_record_or_a_typed_error(data, expected_kind):
    try:
        kind, record = CODEC.decode(data, expected_kind)
    except EventError as exc:
        assert exc.reason in ("undecodable", "unknown_schema_id") and str(exc)
    else:
        assert kind in contract.KINDS and isinstance(record, dict)
        assert expected_kind in (None, kind)


@fuzz()
@given(hostile_frames(), st.data())
def test_fuzz_projected_decoder_answers_a_record_or_a_typed_error(data, draw):
    kind = draw.draw(st.sampled_from(KINDS))
    fields = draw.draw(st.lists(st.sampled_from(FIELDS[kind]), min_size=1, max_size=4, unique=True))
    decode = CODEC.projected_decoder(kind, fields)
    try:
        record = decode(data)
    except EventError as exc:
        assert exc.reason in ("undecodable", "unknown_schema_id") and str(exc)
    else:
        assert set(record) == set(fields)


@st.composite
def tampered_records(draw) -> tuple[str, dict]:
    """A valid record of a kind with some fields given wrong types, huge strings, SQL, or taken away."""
    kind = draw(st.sampled_from(SOURCE))
    record = example(kind)
    for name in draw(st.lists(st.sampled_from(FIELDS[kind]), min_size=1, max_size=5, unique=True)):
        if draw(st.integers(0, 9)) == 0:
            record.pop(name, None)
        else:
            record[name] = draw(wrong_values)
    if draw(st.booleans()):
        record[draw(st.text(min_size=1, max_size=8))] = draw(wrong_values)
    return kind, record


@fuzz()
@given(tampered_records())
def test_fuzz_encoder_refuses_wrong_types_with_a_typed_error_naming_the_field(case):
    kind, record = case
    try:
        data = CODEC.encode(kind, record)
    except EventError as exc:
        assert exc.reason and str(exc)
    else:
        # what it accepts is a valid event that reads back as itself
        assert CODEC.decode(data)[0] == kind


@fuzz()
@given(tampered_records(), st.booleans())
def test_fuzz_json_form_refuses_bad_values_with_a_typed_error(case, as_json_text):
    kind, record = case
    obj = to_json(kind, example(kind))
    for k, v in record.items():
        obj[k] = v if not isinstance(v, bytes) else v.decode("latin-1")
    if as_json_text:   # what a file carries: the values JSON can hold
        obj = json.loads(json.dumps(obj, default=str))
    try:
        from_json(kind, obj)
    except EventError as exc:
        assert str(exc)


@fuzz()
@given(st.sampled_from(SOURCE), st.sampled_from(SQL) | hostile_text)
def test_fuzz_sql_and_huge_strings_in_text_fields_are_data_not_code(kind, text):
    """A string field holds any text: encoded and decoded back byte for byte (the store sees it as data)."""
    record = example(kind)
    free_text = [f for f in ("conveyance_id", "description", "document_series") if f in FIELDS[kind]]
    for f in free_text:
        record[f] = text
    try:
        data = CODEC.encode(kind, record, validate=False)
    except EventError:
        return   # a field of a type that is not text
    _, back = CODEC.decode(data)
    for f in free_text:
        if isinstance(record.get(f), str):
            assert back[f] == text
