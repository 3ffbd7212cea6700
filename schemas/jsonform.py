"""The JSON form of events: the Avro field names, plain JSON values, for file import and for people.

* timestamps: ISO-8601 strings with an offset (``2017-06-01T08:00:00.000Z``) or
  epoch milliseconds; ``to_json`` writes ISO-8601 UTC with milliseconds and 'Z'.
* enums: their symbol as a string; UUIDs: strings.
* optional fields: ``null`` or absent (absent takes the schema's default).
* unions are written plainly (``"subject": "ab12..."``), not in Avro's JSON
  encoding (``{"string": "ab12..."}``): the only unions of the contract are
  "null or one type".

``from_json`` checks the shape (field names, types, enum symbols) and raises a
typed ``EventError`` naming the field; the contract's other rules (reference
data, event time) are ``schemas.validation.validate``'s, and the codec runs
them on encode.
"""
from __future__ import annotations

import copy
import uuid
from datetime import datetime, timedelta, timezone

from schemas import contract
from schemas.errors import EnumError, MissingFieldError, ValidationError
from schemas.validation import _Named, _path, _schema, _type_name, check_enum, shown

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def from_json(kind: str, obj) -> dict:
    """The record (Avro field names, Python values) of a ``kind`` event given in JSON form."""
    contract.full_name(kind)
    named = _schema(kind)
    if not isinstance(obj, dict):
        raise ValidationError(f"a {kind} event in JSON is an object, got {type(obj).__name__}")
    return _record_in(named.root, obj, "", named, kind)


def to_json(kind: str, record: dict) -> dict:
    """The JSON form (a dict of JSON values) of a ``kind`` record."""
    contract.full_name(kind)
    named = _schema(kind)
    return _record_out(named.root, record, named)


# ---------------------------------------------------------------------- in
def _record_in(schema: dict, obj: dict, path: str, named: _Named, what: str) -> dict:
    fields = schema["fields"]
    known = {f["name"] for f in fields}
    for key in obj:
        if key not in known:
            raise ValidationError(f"not a field of {what}; its fields are {', '.join(f['name'] for f in fields)}",
                                  field=_path(path, str(key)))
    out = {}
    for f in fields:
        name = f["name"]
        fpath = _path(path, name)
        if name in obj:
            out[name] = _in(f["type"], obj[name], fpath, named)
        elif "default" in f:
            out[name] = _in(f["type"], copy.deepcopy(f["default"]), fpath, named)
        else:
            raise MissingFieldError("required, but absent", field=fpath)
    return out


def _in(node, value, path: str, named: _Named):
    node = named.resolve(node)
    if isinstance(node, list):
        if value is None:
            if "null" in node:
                return None
            raise MissingFieldError(f"required, got null (expected {_type_name(node)})", field=path)
        others = [b for b in node if b != "null"]
        errors = []
        for b in others:
            try:
                return _in(b, value, path, named)
            except ValidationError as exc:
                errors.append(exc)
        if len(errors) == 1:
            raise errors[0]
        raise ValidationError(f"expected {_type_name(node)}, got {shown(path, value)}", field=path)
    if isinstance(node, str):
        return _primitive_in(node, value, path)
    t = node["type"]
    logical = node.get("logicalType")
    if value is None and t != "null":
        raise MissingFieldError(f"required, got null (expected {_type_name(node)})", field=path)
    if logical == "timestamp-millis":
        return timestamp_in(value, path)
    if logical == "uuid":
        return _uuid_in(value, path)
    if t == "enum":
        if not isinstance(value, str):
            raise EnumError(f"expected a symbol of {_type_name(node)} as a string, got {shown(path, value)}",
                            field=path)
        check_enum(node, value, path)
        return value
    if t == "array":
        if not isinstance(value, list):
            raise ValidationError(f"expected an array, got {_json_type(value)}", field=path)
        return [_in(node["items"], v, f"{path}[{i}]", named) for i, v in enumerate(value)]
    if t == "map":
        if not isinstance(value, dict):
            raise ValidationError(f"expected an object (map), got {_json_type(value)}", field=path)
        return {str(k): _in(node["values"], v, f"{path}.{k}", named) for k, v in value.items()}
    if t == "record":
        if not isinstance(value, dict):
            raise ValidationError(f"expected an object, got {_json_type(value)}", field=path)
        return _record_in(node, value, path, named, node["name"].rsplit(".", 1)[-1])
    return _in(t, value, path, named)


def _json_type(value) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
            int: "a number", float: "a number", type(None): "null"}.get(type(value), type(value).__name__)


def _primitive_in(t: str, value, path: str):
    if t == "null":
        if value is None:
            return None
        raise ValidationError(f"expected null, got {shown(path, value)}", field=path)
    if value is None:
        raise MissingFieldError(f"required, got null (expected {t})", field=path)
    if t == "string" and isinstance(value, str):
        return value
    if t == "boolean" and isinstance(value, bool):
        return value
    if t in ("int", "long") and isinstance(value, int) and not isinstance(value, bool):
        lo, hi = (-(2 ** 31), 2 ** 31 - 1) if t == "int" else (-(2 ** 63), 2 ** 63 - 1)
        if not lo <= value <= hi:
            raise ValidationError(f"expected a {t} in [{lo}, {hi}], got {value}", field=path)
        return value
    if t in ("float", "double") and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    raise ValidationError(f"expected {'a ' + t if t != 'int' else 'an int'}, got {_json_type(value)} "
                          f"{shown(path, value)}", field=path)


def timestamp_in(value, path: str) -> datetime:
    """An ISO-8601 string with an offset, or epoch milliseconds, as a tz-aware UTC datetime (millisecond precision)."""
    if isinstance(value, bool):
        raise ValidationError("expected an ISO-8601 time or epoch milliseconds, got a boolean", field=path)
    if isinstance(value, int):
        try:
            return _EPOCH + timedelta(milliseconds=value)
        except OverflowError:
            raise ValidationError(f"epoch milliseconds out of range: {value}", field=path) from None
    if isinstance(value, str):
        try:
            dt = datetime.fromisoformat(value)
        except ValueError:
            raise ValidationError(f"expected an ISO-8601 time such as 2017-06-01T08:00:00.000Z, got "
                                  f"{shown(path, value)}", field=path) from None
        if dt.tzinfo is None or dt.utcoffset() is None:
            raise ValidationError(f"an ISO-8601 time needs its offset ('Z' for UTC), got {shown(path, value)}",
                                  field=path)
        try:
            dt = dt.astimezone(timezone.utc)
        except OverflowError:
            raise ValidationError(f"time out of range: {shown(path, value)}", field=path) from None
        return dt.replace(microsecond=dt.microsecond // 1000 * 1000)
    raise ValidationError(f"expected an ISO-8601 time or epoch milliseconds, got {_json_type(value)}", field=path)


def _uuid_in(value, path: str) -> str:
    if isinstance(value, str):
        try:
            return str(uuid.UUID(value))
        except ValueError:
            pass
    raise ValidationError(f"expected a UUID (8-4-4-4-12 hex digits), got {shown(path, value)}", field=path)


# ---------------------------------------------------------------------- out
def _record_out(schema: dict, record: dict, named: _Named) -> dict:
    out = {}
    for f in schema["fields"]:
        name = f["name"]
        if name in record:
            out[name] = _out(f["type"], record[name], named)
        elif "default" in f:
            out[name] = copy.deepcopy(f["default"])
        else:
            raise MissingFieldError("required, but absent", field=name)
    return out


def _out(node, value, named: _Named):
    if value is None:
        return None
    node = named.resolve(node)
    if isinstance(node, list):
        for b in node:
            if b == "null":
                continue
            return _out(b, value, named)
        return value
    if isinstance(node, str):
        return value
    logical = node.get("logicalType")
    t = node["type"]
    if logical == "timestamp-millis":
        return timestamp_out(value)
    if logical == "uuid":
        return str(value)
    if t == "array":
        return [_out(node["items"], v, named) for v in value]
    if t == "map":
        return {k: _out(node["values"], v, named) for k, v in value.items()}
    if t == "record":
        return _record_out(node, value, named)
    return value


def timestamp_out(value) -> str:
    """ISO-8601 UTC with milliseconds and 'Z', e.g. 2017-06-01T08:00:00.123Z."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = _EPOCH + timedelta(milliseconds=value)
    if value.tzinfo is None:
        raise ValidationError("expected a timezone-aware (UTC) datetime, got a naive one")
    value = value.astimezone(timezone.utc)
    return (f"{value.year:04d}-{value.month:02d}-{value.day:02d}T{value.hour:02d}:{value.minute:02d}:"
            f"{value.second:02d}.{value.microsecond // 1000:03d}Z")
