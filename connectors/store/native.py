"""ClickHouse's Native format at the protocol revision a client asks for.

A ClickHouse server answers an HTTP query in ``Native`` format in the layout of the client's
``client_protocol_version`` parameter: from revision 1 each block starts with its BlockInfo
(``1 is_overflows 2 bucket_num 0``), and from revision 54454 (custom serialization) each column's type
is followed by a one-byte "has custom serialization" flag. clickhouse-go (Grafana's ClickHouse data
source) asks for revision 54460 and reads that layout; clickhouse-connect asks for 54405 when the
server honours it. chDB writes revision 0 only, so the endpoint rewrites chDB's answer block by block.

Rewriting needs where each column's data ends, so this module walks the data of every type a query can
return in Native format (numbers, dates and times, decimals, strings, enums, UUIDs, IPs, Nullable,
Array, Tuple, Map, LowCardinality, Nested, Nothing). Types whose Native layout carries state of its own
(JSON, Dynamic, Variant, Object, AggregateFunction states) are refused with a message that names the
column, rather than sent in a layout the client would misread.
"""
from __future__ import annotations

import re
import struct

#: the first revision with block info, and the first with the per-column custom-serialization flag
MIN_REVISION_WITH_BLOCK_INFO = 1
MIN_REVISION_WITH_CUSTOM_SERIALIZATION = 54454
#: BlockInfo as ClickHouse writes it for these revisions: field 1 is_overflows=0, field 2 bucket_num=-1, end
BLOCK_INFO = b"\x01\x00\x02" + struct.pack("<i", -1) + b"\x00"

_FIXED = {"UInt8": 1, "Int8": 1, "Bool": 1, "Enum8": 1, "UInt16": 2, "Int16": 2, "Enum16": 2, "Date": 2,
          "BFloat16": 2, "UInt32": 4, "Int32": 4, "Float32": 4, "Date32": 4, "DateTime": 4, "IPv4": 4,
          "Decimal32": 4, "Time": 4, "UInt64": 8, "Int64": 8, "Float64": 8, "DateTime64": 8, "Decimal64": 8,
          "Time64": 8, "UInt128": 16, "Int128": 16, "UUID": 16, "IPv6": 16, "Decimal128": 16, "UInt256": 32,
          "Int256": 32, "Decimal256": 32, "Nothing": 1}
_INTERVAL = re.compile(r"^Interval[A-Za-z]+$")
_LC_INDEX_SIZES = (1, 2, 4, 8)
_LC_HAS_ADDITIONAL_KEYS = 1 << 9
_LC_NEED_GLOBAL_DICTIONARY = 1 << 8


class NativeError(ValueError):
    """An answer that cannot be written in the requested layout; the message names the column and type."""


# --------------------------------------------------------------------------- type names
def split_type(name: str) -> tuple[str, list[str]]:
    """``"Map(String, Array(UInt8))"`` -> ``("Map", ["String", "Array(UInt8)"])``."""
    name = name.strip()
    i = name.find("(")
    if i < 0 or not name.endswith(")"):
        return name, []
    head, inner = name[:i].strip(), name[i + 1:-1]
    args, depth, quote, start = [], 0, None, 0
    k = 0
    while k < len(inner):
        c = inner[k]
        if quote:
            if c == "\\":
                k += 1
            elif c == quote:
                quote = None
        elif c in "'`\"":
            quote = c
        elif c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
        elif c == "," and depth == 0:
            args.append(inner[start:k].strip())
            start = k + 1
        k += 1
    args.append(inner[start:].strip())
    return head, args


def _tuple_element_type(arg: str) -> str:
    """The type of a Tuple element written ``name Type``, with the name in backquotes, or ``Type``."""
    arg = arg.strip()
    m = re.match(r"^(`(?:[^`\\]|\\.)*`|[A-Za-z_][A-Za-z0-9_]*)\s+(\S.*)$", arg, re.S)
    return m.group(2) if m else arg


# --------------------------------------------------------------------------- walking column data
class _Reader:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes | memoryview, pos: int = 0):
        self.data = data
        self.pos = pos

    def need(self, n: int) -> None:
        if self.pos + n > len(self.data):
            raise NativeError(f"Native data ends early at byte {self.pos} (wanted {n} more)")

    def varint(self) -> int:
        shift = result = 0
        data = self.data
        while True:
            self.need(1)
            b = data[self.pos]
            self.pos += 1
            result |= (b & 0x7F) << shift
            if b < 0x80:
                return result
            shift += 7
            if shift > 63:
                raise NativeError(f"a variable-length integer at byte {self.pos} is too long")

    def string(self) -> bytes:
        n = self.varint()
        self.need(n)
        s = bytes(self.data[self.pos:self.pos + n])
        self.pos += n
        return s

    def uint64(self) -> int:
        self.need(8)
        (v,) = struct.unpack_from("<Q", self.data, self.pos)
        self.pos += 8
        return v

    def skip(self, n: int) -> None:
        self.need(n)
        self.pos += n


def _skip_prefix(type_name: str, r: _Reader) -> None:
    """The serialization state prefix a type writes before its data (LowCardinality's key version)."""
    head, args = split_type(type_name)
    if head == "LowCardinality":
        r.skip(8)
    elif head in ("Array", "Nullable"):
        _skip_prefix(args[0], r)
    elif head == "Map":
        _skip_prefix(args[0], r)
        _skip_prefix(args[1], r)
    elif head in ("Tuple", "Nested"):
        for a in args:
            _skip_prefix(_tuple_element_type(a), r)


def _skip(type_name: str, rows: int, r: _Reader, column: str) -> None:
    """Move ``r`` past ``rows`` values of ``type_name`` (after its state prefix)."""
    if rows == 0:
        return
    head, args = split_type(type_name)
    if head in _FIXED or _INTERVAL.match(head):
        r.skip(rows * _FIXED.get(head, 8))
    elif head == "Decimal":
        precision = int(args[0]) if args else 10
        r.skip(rows * (4 if precision <= 9 else 8 if precision <= 18 else 16 if precision <= 38 else 32))
    elif head == "FixedString":
        r.skip(rows * int(args[0]))
    elif head == "String":
        for _ in range(rows):
            r.skip(r.varint())
    elif head == "Nullable":
        r.skip(rows)
        _skip(args[0], rows, r, column)
    elif head == "Array":
        r.skip(8 * (rows - 1))
        items = r.uint64()
        _skip(args[0], items, r, column)
    elif head == "Map":
        r.skip(8 * (rows - 1))
        items = r.uint64()
        _skip(args[0], items, r, column)
        _skip(args[1], items, r, column)
    elif head in ("Tuple", "Nested"):
        if head == "Nested":   # Nested(a T, b U) is Array(Tuple(a T, b U))
            r.skip(8 * (rows - 1))
            rows = r.uint64()
        for a in args:
            _skip(_tuple_element_type(a), rows, r, column)
    elif head == "LowCardinality":
        dictionary_type = args[0]
        inner_head, inner_args = split_type(dictionary_type)
        if inner_head == "Nullable":
            dictionary_type = inner_args[0]
        done = 0
        while done < rows:
            flags = r.uint64()
            if flags & _LC_NEED_GLOBAL_DICTIONARY:
                raise NativeError(f"column {column}: LowCardinality with a shared dictionary is not served in "
                                  f"Native format here; cast it with toString() or CAST")
            if flags & _LC_HAS_ADDITIONAL_KEYS:
                keys = r.uint64()
                _skip(dictionary_type, keys, r, column)
            count = r.uint64()
            r.skip(count * _LC_INDEX_SIZES[flags & 0xFF if (flags & 0xFF) < 4 else 3])
            done += count
    elif head == "SimpleAggregateFunction":
        _skip(args[-1], rows, r, column)
    else:
        raise NativeError(f"column {column} has type {type_name}, which this endpoint does not serve in Native "
                          f"format at a client protocol revision; cast it (toString, CAST) or ask for another "
                          f"format (JSONEachRow, TabSeparated)")


# --------------------------------------------------------------------------- rewriting blocks
def at_revision(data: bytes, revision: int) -> bytes:
    """chDB's Native answer (revision 0) in the layout of protocol ``revision``."""
    if revision < MIN_REVISION_WITH_BLOCK_INFO or not data:
        return data
    custom = revision >= MIN_REVISION_WITH_CUSTOM_SERIALIZATION
    view = memoryview(data)
    r = _Reader(view)
    out = bytearray()
    while r.pos < len(view):
        out += BLOCK_INFO
        start = r.pos
        columns = r.varint()
        rows = r.varint()
        out += view[start:r.pos]
        for _ in range(columns):
            start = r.pos
            name = r.string().decode("utf-8", "replace")
            type_name = r.string().decode("utf-8", "replace")
            out += view[start:r.pos]
            if custom:
                out += b"\x00"
            start = r.pos
            if rows:
                _skip_prefix(type_name, r)
                _skip(type_name, rows, r, name)
            out += view[start:r.pos]
    return bytes(out)
