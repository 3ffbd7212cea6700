"""The Native layout at a client's protocol revision (connectors.store.native), on blocks written by hand in
ClickHouse's revision-0 layout: what is added where, what is kept byte for byte, what is refused."""
from __future__ import annotations

import re
import struct

import pytest

from connectors.store import native

pytestmark = pytest.mark.unit


def s(text: str | bytes) -> bytes:
    b = text.encode() if isinstance(text, str) else text
    assert len(b) < 128
    return bytes([len(b)]) + b


def block(rows: int, *columns: tuple[str, str, bytes]) -> bytes:
    return bytes([len(columns), rows]) + b"".join(s(n) + s(t) + data for n, t, data in columns)


U64 = struct.Struct("<Q")
COLUMNS = [  # name, type, three rows of data in revision 0
    ("n", "UInt64", b"".join(U64.pack(i) for i in range(3))),
    ("s", "String", s("a") + s("") + s("ccc")),
    ("ns", "Nullable(String)", b"\x00\x01\x00" + s("x") + s("") + s("z")),
    ("arr", "Array(Array(UInt8))", U64.pack(1) + U64.pack(1) + U64.pack(3) + U64.pack(0) + U64.pack(1) + U64.pack(2)
     + b"\x07\x08"),
    ("m", "Map(String, UInt16)", U64.pack(1) + U64.pack(1) + U64.pack(2) + s("k") + s("q") + b"\x01\x00\x02\x00"),
    ("t", "Tuple(a DateTime('Asia/Shanghai'), `b c` FixedString(2))", b"\x00" * 12 + b"xyxyxy"),
    ("lc", "LowCardinality(Nullable(String))", U64.pack(1) + U64.pack(0x600) + U64.pack(3) + s("") + s("")
     + s("v") + U64.pack(3) + b"\x00\x02\x02"),
    ("d", "Decimal(20, 4)", b"\x01" * 48),
    ("e", "Enum8('a, b' = 1, 'c)' = 2)", b"\x01\x02\x01"),
]


def test_revision_zero_and_empty_answers_are_sent_as_chdb_wrote_them():
    data = block(3, *COLUMNS)
    assert native.at_revision(data, 0) == data
    assert native.at_revision(b"", 54460) == b""


@pytest.mark.parametrize("revision, flag", [(54405, b""), (54460, b"\x00")])
def test_each_block_gets_block_info_and_each_column_the_custom_serialization_flag_from_54454(revision, flag):
    first, second = block(3, *COLUMNS), block(1, ("n", "UInt64", U64.pack(9)))
    out = native.at_revision(first + second, revision)
    want = native.BLOCK_INFO + bytes([len(COLUMNS), 3]) + b"".join(
        s(n) + s(t) + flag + data for n, t, data in COLUMNS)
    want += native.BLOCK_INFO + b"\x01\x01" + s("n") + s("UInt64") + flag + U64.pack(9)
    assert out == want


def test_a_block_without_rows_keeps_its_header():
    out = native.at_revision(block(0, ("n", "UInt64", b""), ("s", "String", b"")), 54460)
    assert out == native.BLOCK_INFO + b"\x02\x00" + s("n") + s("UInt64") + b"\x00" + s("s") + s("String") + b"\x00"


def test_block_info_is_what_clickhouse_writes():
    assert native.BLOCK_INFO == b"\x01\x00\x02\xff\xff\xff\xff\x00"


@pytest.mark.parametrize("type_name", ["JSON", "Dynamic", "Variant(String, UInt64)",
                                       "AggregateFunction(sum, UInt64)", "Object('json')"])
def test_types_with_serialization_state_of_their_own_are_refused_by_column(type_name):
    with pytest.raises(native.NativeError, match=rf"column payload has type {re.escape(type_name)}.*cast"):
        native.at_revision(block(1, ("payload", type_name, b"\x00" * 8)), 54460)


def test_data_that_ends_early_is_an_error_not_a_short_answer():
    data = block(3, ("s", "String", s("a") + s("b")))
    with pytest.raises(native.NativeError, match="ends early"):
        native.at_revision(data, 54460)


def test_type_names_split_at_top_level_commas_only():
    assert native.split_type("Map(String, Array(Tuple(a UInt8, b String)))") == (
        "Map", ["String", "Array(Tuple(a UInt8, b String))"])
    assert native.split_type("Enum8('a, (b' = 1, 'c' = 2)") == ("Enum8", ["'a, (b' = 1", "'c' = 2"])
    assert native.split_type("UInt64") == ("UInt64", [])
