"""The codec: Avro in the Confluent framing, the JSON form, projected decode, the registry, the CLI."""
from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import threading
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro.schema import load_schema
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from event_strategies import STRATEGIES
from schemas import contract, jsonform
from schemas.codec import Codec, get_codec
from schemas.errors import EventError, UndecodableError, UnknownSchemaError, ValidationError
from schemas.examples import example

ROOT = Path(__file__).resolve().parent.parent
YRDBUS = [sys.executable, "-m", "yrdbus.cli"]
FAR_FUTURE = datetime(2100, 1, 1, tzinfo=timezone.utc)  # the clock of the property tests: nothing is "future"
PROPS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def codec() -> Codec:
    return get_codec(None) if not os.environ.get("YRDBUS_SCHEMA_REGISTRY_URL") else Codec(None)


# ---------------------------------------------------------------------- round trips
@pytest.mark.parametrize("kind", sorted(STRATEGIES))
def test_every_valid_event_round_trips_through_bytes_unchanged(kind):
    c = Codec()

    @PROPS
    @given(STRATEGIES[kind])
    def check(record):
        data = c.encode(kind, record, now=FAR_FUTURE)
        assert data[0] == 0 and struct.unpack(">I", data[1:5])[0] == c.schema_id(kind)
        assert c.decode(data) == (kind, record)

    check()


@pytest.mark.parametrize("kind", sorted(STRATEGIES))
def test_every_valid_event_round_trips_through_json_unchanged(kind):
    @PROPS
    @given(STRATEGIES[kind])
    def check(record):
        text = json.dumps(jsonform.to_json(kind, record))
        back = jsonform.from_json(kind, json.loads(text))
        assert back == record
        assert json.dumps(jsonform.to_json(kind, back)) == text

    check()


def test_decode_returns_event_id_as_str_and_timestamps_as_aware_utc(codec):
    record = example("clearance")
    _, got = codec.decode(codec.encode("clearance", record))
    assert type(got["event_id"]) is str and got["event_id"] == record["event_id"]
    assert got["occurred_at"].tzinfo is not None and got["occurred_at"].utcoffset().total_seconds() == 0
    assert got["occurred_at"] == record["occurred_at"]


def test_json_form_accepts_epoch_millis_offsets_and_absent_optionals():
    record = example("alert")
    obj = jsonform.to_json("alert", record)
    millis = int(record["occurred_at"].timestamp() * 1000)
    obj["occurred_at"] = millis
    obj["published_at"] = record["published_at"].astimezone().isoformat()  # local offset, not Z
    for optional in ("document_series", "fraud_method", "status", "description"):
        del obj[optional]
    back = jsonform.from_json("alert", obj)
    assert back["occurred_at"] == record["occurred_at"]
    assert back["published_at"] == record["published_at"]
    assert back["document_series"] is None and back["fraud_method"] is None
    assert back["status"] == "RAISED" and back["description"] == ""
    assert jsonform.to_json("alert", back)["occurred_at"].endswith("Z")


@pytest.mark.parametrize("mutate, field, words", [
    (lambda o: o.update(direction="IN"), "direction", "expected ENTRY or EXIT, got 'IN'"),
    (lambda o: o.pop("lane"), "lane", "required"),
    (lambda o: o.update(occurred_at="yesterday"), "occurred_at", "ISO-8601"),
    (lambda o: o.update(occurred_at="2017-06-01T08:00:00"), "occurred_at", "offset"),
    (lambda o: o.update(event_id="not-a-uuid"), "event_id", "UUID"),
    (lambda o: o.update(conveyance_id=42), "conveyance_id", "expected a string"),
    (lambda o: o.update(nationalty="USA"), "nationalty", "not a field of clearance"),
])
def test_json_form_errors_name_the_field_and_the_rule(mutate, field, words):
    obj = jsonform.to_json("clearance", example("clearance"))
    mutate(obj)
    with pytest.raises(EventError) as info:
        jsonform.from_json("clearance", obj)
    assert info.value.field == field
    assert f"field `{field}`" in str(info.value) and words in str(info.value)


# ---------------------------------------------------------------------- hostile input
@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300) | st.binary(max_size=200).map(lambda b: b"\x00\x00\x00\x00" + bytes([1 + b[0] % 7]) + b[1:] if b else b))
def test_random_bytes_never_crash_the_decoder_each_gives_a_typed_error(data):
    c = get_codec(None)
    try:
        kind, record = c.decode(data)
    except EventError as exc:
        assert exc.reason in ("undecodable", "unknown_schema_id")
    else:  # a random body may happen to be a valid record; then it is one
        assert kind in contract.KINDS and isinstance(record, dict)


def test_truncated_and_padded_frames_are_undecodable(codec):
    data = codec.encode("case", example("case"))
    for bad in (data[:3], data[:-1], data + b"\x00", b"\x01" + data[1:], "text"):
        with pytest.raises(UndecodableError):
            codec.decode(bad)
    with pytest.raises(UnknownSchemaError):
        codec.decode(b"\x00\x00\x00\xff\xff" + data[5:])
    with pytest.raises(UndecodableError, match="expected alert"):
        codec.decode(data, "alert")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12)


@st.composite
def mutated_events(draw):
    kind = draw(st.sampled_from(["clearance", "alert", "case"]))
    obj = jsonform.to_json(kind, draw(STRATEGIES[kind]))
    field = draw(st.sampled_from(sorted(obj)))
    if draw(st.booleans()):
        obj[field] = draw(json_values)
    else:
        del obj[field]
    return kind, obj


@settings(max_examples=200, deadline=None)
@given(st.tuples(st.sampled_from(["clearance", "alert", "case"]), json_values) | mutated_events())
def test_random_json_never_crashes_each_gives_a_typed_error(case):
    kind, obj = case
    c = get_codec(None)
    try:
        data = c.encode(kind, jsonform.from_json(kind, obj), now=FAR_FUTURE)
    except EventError as exc:
        assert exc.reason and str(exc)
    else:
        assert c.decode(data)[0] == kind


# ---------------------------------------------------------------------- projected decode
def test_projected_decoder_reads_only_the_named_fields_with_the_same_values(codec):
    record = example("clearance")
    data = codec.encode("clearance", record)
    fields = ["subject", "region", "occurred_at", "document_type"]
    got = codec.projected_decoder("clearance", fields)(data)
    assert set(got) == set(fields)
    assert got == {f: record[f] for f in fields}


def test_projected_decoder_carries_named_types_defined_by_fields_it_skips(codec):
    record = dict(example("case"), stage="TRANSFERRED", transferred_to="AH")
    data = codec.encode("case", record)
    # Region is defined by the `region` field, which this projection leaves out
    assert codec.projected_decoder("case", ["transferred_to", "case_id"])(data) == {
        "transferred_to": "AH", "case_id": record["case_id"]}


def test_projected_decoder_refuses_another_kind_and_unknown_fields(codec):
    project = codec.projected_decoder("clearance", ["subject"])
    with pytest.raises(UndecodableError, match="expected clearance"):
        project(codec.encode("alert", example("alert")))
    with pytest.raises(ValidationError) as info:
        codec.projected_decoder("clearance", ["subjekt"])
    assert info.value.field == "subjekt"


# ---------------------------------------------------------------------- registry
class _Registry(BaseHTTPRequestHandler):
    """The two endpoints of the Confluent schema-registry API the codec uses, in memory."""

    schemas: dict[int, str] = {}
    subjects: dict[str, list[int]] = {}
    calls: list[str] = []

    def _reply(self, code: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):  # noqa: N802
        self.calls.append(f"POST {self.path}")
        parts = self.path.split("?")[0].strip("/").split("/")
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if len(parts) == 3 and parts[0] == "subjects" and parts[2] == "versions":
            text = body["schema"]
            sid = next((i for i, s in self.schemas.items() if s == text), None)
            if sid is None:
                sid = 100 + len(self.schemas)
                self.schemas[sid] = text
            self.subjects.setdefault(parts[1], []).append(sid)
            return self._reply(200, {"id": sid})
        self._reply(404, {"error_code": 404, "message": "not here"})

    def do_GET(self):  # noqa: N802
        self.calls.append(f"GET {self.path}")
        parts = self.path.split("?")[0].strip("/").split("/")
        if len(parts) == 3 and parts[:2] == ["schemas", "ids"] and int(parts[2]) in self.schemas:
            return self._reply(200, {"schema": self.schemas[int(parts[2])]})
        self._reply(404, {"error_code": 40403, "message": "Schema not found"})

    def log_message(self, *args):
        pass


@pytest.fixture
def registry():
    _Registry.schemas, _Registry.subjects, _Registry.calls = {}, {}, []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Registry)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", _Registry
    server.shutdown()
    server.server_close()


def test_registry_ids_frame_the_bytes_and_older_writer_versions_resolve(registry):
    url, reg = registry
    c = Codec(url)
    record = example("clearance")
    data = c.encode("clearance", record)
    sid = struct.unpack(">I", data[1:5])[0]
    assert sid >= 100 and reg.subjects["yrd.border.ClearanceEvent-value"] == [sid]
    assert reg.schemas[sid] == contract.current_schema_json("clearance")

    # A producer on an older version (without destination_country) registered its schema: a fresh codec
    # looks the id up in the registry and resolves that writer against the current reader.
    old = json.loads(contract.current_schema_json("clearance"))
    old["fields"] = [f for f in old["fields"] if f["name"] != "destination_country"]
    old_id = 100 + len(reg.schemas)
    reg.schemas[old_id] = json.dumps(old)
    body = _bare_write(old, {k: v for k, v in record.items() if k != "destination_country"})
    reader = Codec(url)
    kind, got = reader.decode(b"\x00" + struct.pack(">I", old_id) + body)
    assert kind == "clearance" and got == dict(record, destination_country=None)
    assert any(c.startswith(f"GET /schemas/ids/{old_id}") for c in reg.calls)
    with pytest.raises(UnknownSchemaError):
        reader.decode(b"\x00" + struct.pack(">I", 99999) + body)


def _bare_write(schema: dict, record: dict) -> bytes:
    import io

    buf = io.BytesIO()
    schemaless_writer(buf, parse_schema(schema), record)
    return buf.getvalue()


# ---------------------------------------------------------------------- command line
def _run(args, stdin: bytes = b"", env=None) -> subprocess.CompletedProcess:
    return subprocess.run(YRDBUS + args, input=stdin, capture_output=True, cwd=ROOT, timeout=60,
                          env={**os.environ, **(env or {})})


def test_bytes_from_codec_encode_decode_with_nothing_but_fastavro_and_the_avsc_files(tmp_path):
    for kind in ("clearance", "alert", "case"):
        out = _run(["codec", "example", "--kind", kind])
        assert out.returncode == 0, out.stderr
        event = json.loads(out.stdout)
        enc = _run(["codec", "encode", "--kind", kind], out.stdout)
        assert enc.returncode == 0, enc.stderr
        data = enc.stdout

        # A reader that knows only the framing: magic byte, 4-byte id, then the body of the schema whose
        # name the id table gives, read from the .avsc files with fastavro.
        assert data[0] == 0
        sid = struct.unpack(">I", data[1:5])[0]
        ids = json.loads((ROOT / "schemas" / "ids.json").read_text())["schemas"]
        name = next(r["name"] for r in ids if r["id"] == sid)
        schema = load_schema(str(ROOT / "schemas" / "avsc" / f"{name}.avsc"))
        import io

        got = schemaless_reader(io.BytesIO(data[5:]), schema)
        assert str(got["event_id"]) == event["event_id"]
        assert got["subject" if kind != "case" else "subjects"] == event["subject" if kind != "case" else "subjects"]
        assert got["occurred_at"] == datetime.fromisoformat(event["occurred_at"])

        dec = _run(["codec", "decode"], data)
        assert dec.returncode == 0, dec.stderr
        assert json.loads(dec.stdout) == event


def test_codec_encode_fails_naming_the_field_on_a_bad_event():
    event = json.loads(_run(["codec", "example", "--kind", "clearance"]).stdout)
    event["direction"] = "IN"
    out = _run(["codec", "encode", "--kind", "clearance"], json.dumps(event).encode())
    assert out.returncode != 0 and out.stdout == b""
    assert "field `direction`: expected ENTRY or EXIT, got 'IN'" in out.stderr.decode()

    out = _run(["codec", "encode", "--kind", "clearance"], b'{"event_id": ')
    assert out.returncode != 0 and "not JSON" in out.stderr.decode()

    event["direction"] = "ENTRY"
    event["port_code"] = "NKG"  # Nanjing is a port of JS, the event is SH's
    out = _run(["codec", "encode", "--kind", "clearance"], json.dumps(event).encode())
    assert out.returncode != 0 and "field `port_code`: port NKG is a port of JS, not of SH" in out.stderr.decode()


def test_codec_decode_fails_clearly_on_garbage():
    out = _run(["codec", "decode"], b"\x00\x00\x00\x00\x01\xff\xff")
    assert out.returncode != 0 and "error:" in out.stderr.decode() and out.stdout == b""
