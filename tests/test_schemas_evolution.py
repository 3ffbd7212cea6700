"""Schema evolution: `yrdbus schemas check` on the committed schemas and on deliberate changes to a copy."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from schemas import contract, evolution

ROOT = Path(__file__).resolve().parent.parent
SCHEMAS = ROOT / "schemas"


def yrdbus(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "yrdbus.cli", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=120, env=dict(os.environ))


@pytest.fixture
def copy(tmp_path) -> Path:
    """A copy of the schemas folder (avsc/, history/, ids.json) to change freely."""
    dest = tmp_path / "schemas"
    dest.mkdir()
    for part in ("avsc", "history"):
        shutil.copytree(SCHEMAS / part, dest / part)
    shutil.copy(SCHEMAS / "ids.json", dest / "ids.json")
    return dest


def edit(folder: Path, name: str, change) -> None:
    path = folder / "avsc" / f"yrd.border.{name}.avsc"
    schema = json.loads(path.read_text())
    change(schema)
    path.write_text(json.dumps(schema, indent=2))


def test_schemas_check_passes_on_the_committed_schemas():
    out = yrdbus("schemas", "check", "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    report = json.loads(out.stdout)
    assert report["ok"] and report["problems"] == []
    assert report["compared"] >= len(contract.KINDS)
    assert report["unregistered"] == []  # every current schema has an id


def test_a_new_required_field_breaks_backward_compatibility_and_the_check_names_it(copy):
    edit(copy, "ClearanceEvent", lambda s: s["fields"].append(
        {"name": "visa_number", "type": "string", "doc": "Number of the visa."}))
    out = yrdbus("schemas", "check", "--dir", str(copy))
    assert out.returncode == 1
    assert "yrd.border.ClearanceEvent v1 (backward), field `visa_number`" in out.stderr
    assert "no default" in out.stderr


def test_a_removed_enum_symbol_breaks_backward_compatibility_naming_the_field(copy):
    edit(copy, "Direction", lambda s: s.update(symbols=["ENTRY"]))
    out = yrdbus("schemas", "check", "--dir", str(copy), "--json")
    assert out.returncode == 1
    problems = json.loads(out.stdout)["problems"]
    assert {"schema": "yrd.border.ClearanceEvent", "version": 1, "direction": "backward", "field": "direction"} \
        .items() <= problems[0].items()
    assert "EXIT" in problems[0]["message"]


def test_a_narrowed_type_breaks_forward_compatibility_naming_the_field(copy):
    def widen(s):
        f = next(f for f in s["fields"] if f["name"] == "persons")
        f["type"], f["default"] = "long", 1  # old readers (int) cannot read a long

    edit(copy, "CaseEvent", widen)
    _, problems = evolution.check(copy)
    assert [(p.schema, p.direction, p.field) for p in problems] == [("yrd.border.CaseEvent", "forward", "persons")]


def test_a_field_without_doc_fails_the_check(copy):
    def undocumented(s):
        s["fields"].append({"name": "gate", "type": ["null", "string"], "default": None})

    edit(copy, "AlertEvent", undocumented)
    _, problems = evolution.check(copy)
    assert [(p.direction, p.field) for p in problems] == [("doc", "gate")]


def test_a_compatible_change_passes_and_registers_as_a_new_version(copy):
    edit(copy, "ClearanceEvent", lambda s: s["fields"].append(
        {"name": "gate", "type": ["null", "string"], "default": None, "doc": "E-gate number, when one was used."}))
    out = yrdbus("schemas", "check", "--dir", str(copy), "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    assert json.loads(out.stdout)["unregistered"] == ["clearance"]

    out = yrdbus("schemas", "register", "--dir", str(copy), "--json")
    assert out.returncode == 0, out.stderr
    added = json.loads(out.stdout)["added"]
    assert [(r["name"], r["version"], r["id"]) for r in added] == [
        ("yrd.border.ClearanceEvent", 2, 1 + max(r["id"] for r in contract.load_ids()))]
    assert (copy / "history" / "yrd.border.ClearanceEvent" / "v2.avsc").is_file()
    assert evolution.check(copy)[1] == [] and evolution.unregistered(copy) == []
    # append-only: the earlier rows are unchanged
    assert contract.load_ids(copy)[:-1] == contract.load_ids()


def test_register_refuses_an_incompatible_schema(copy):
    edit(copy, "Direction", lambda s: s.update(symbols=["ENTRY"]))
    before = (copy / "ids.json").read_text()
    out = yrdbus("schemas", "register", "--dir", str(copy))
    assert out.returncode == 1 and "not registering" in out.stderr
    assert (copy / "ids.json").read_text() == before


# ---------------------------------------------------------------------- derived alert status (v2)
def _alert_v(version: int) -> dict:
    return json.loads(contract.history_file("yrd.border.DerivedAlert", version).read_text())


def _derived_alert(**extra) -> dict:
    return {"alert_id": "3f1c9a52-2d8e-5b7a-9c43-1b2f7e0a9d11", "kind": "CROSS_REGION_HIT", "severity": "HIGH",
            "rule_id": "cross_region_hit", "rule_set_version": "1", "must_act": ["JS"], "inform": ["SH"],
            "station_id": None, "port_code": "NKG", "subject": "s-1", "conveyance_id": None, "pattern": None,
            "evidence": ["e-1", "e-2"], "occurred_at": 1496620800000, "emitted_at": 1496620900000,
            "summary": "flagged in SH, seen in JS", "details": {}, **extra}


def _write_read(writer: dict, reader: dict, record: dict) -> dict:
    import io

    from fastavro import parse_schema, schemaless_reader, schemaless_writer

    buf = io.BytesIO()
    schemaless_writer(buf, parse_schema(writer), record)
    buf.seek(0)
    return schemaless_reader(buf, parse_schema(writer), parse_schema(reader))


def test_derived_alert_v2_is_registered_with_status_and_reason_and_v3_with_the_escalation_kind_is_current():
    rows = [r for r in contract.load_ids() if r["name"] == "yrd.border.DerivedAlert"]
    assert [r["version"] for r in rows] == [1, 2, 3]
    v2 = {f["name"]: f for f in _alert_v(2)["fields"]}
    assert v2["status"]["type"]["symbols"] == ["RAISED", "WITHDRAWN"] and v2["status"]["default"] == "RAISED"
    assert v2["status_reason"]["type"] == ["null", "string"] and v2["status_reason"]["default"] is None
    v3 = {f["name"]: f for f in _alert_v(3)["fields"]}
    assert set(v3["kind"]["type"]["symbols"]) - set(v2["kind"]["type"]["symbols"]) == {"ESCALATION"}
    assert {k: v for k, v in v3.items() if k != "kind"} == {k: v for k, v in v2.items() if k != "kind"}
    assert json.loads(contract.current_schema_json("derived_alert")) == json.loads(
        json.dumps(_alert_v(3), sort_keys=True))


def test_a_v2_reader_reads_a_v3_escalation_as_other_and_a_v3_reader_reads_v2_as_it_was():
    record = _derived_alert(kind="ESCALATION", status="RAISED", status_reason=None)
    assert _write_read(_alert_v(3), _alert_v(2), record)["kind"] == "OTHER"      # the enum's default
    assert _write_read(_alert_v(3), _alert_v(3), record)["kind"] == "ESCALATION"
    old = _derived_alert(status="WITHDRAWN", status_reason="read later")
    assert _write_read(_alert_v(2), _alert_v(3), old)["status"] == "WITHDRAWN"


def test_a_v2_reader_reads_a_v1_derived_alert_as_raised_without_reason():
    got = _write_read(_alert_v(1), _alert_v(2), _derived_alert())
    assert got["status"] == "RAISED" and got["status_reason"] is None
    assert got["alert_id"] == _derived_alert()["alert_id"]


def test_a_v1_reader_reads_a_v2_withdrawn_derived_alert_ignoring_the_new_fields():
    record = _derived_alert(status="WITHDRAWN", status_reason="flag resolved before the crossing")
    got = _write_read(_alert_v(2), _alert_v(1), record)
    assert "status" not in got and "status_reason" not in got
    assert got["alert_id"] == record["alert_id"] and got["evidence"] == record["evidence"]
    assert _write_read(_alert_v(2), _alert_v(2), record)["status"] == "WITHDRAWN"


def test_the_codec_decodes_a_v1_framed_derived_alert_as_raised_and_round_trips_a_withdrawn_one():
    import struct

    from schemas.codec import Codec

    codec = Codec()
    v1 = next(r["id"] for r in contract.load_ids() if r["name"] == "yrd.border.DerivedAlert" and r["version"] == 1)
    import io

    from fastavro import parse_schema, schemaless_writer

    buf = io.BytesIO()
    schemaless_writer(buf, parse_schema(_alert_v(1)), _derived_alert())
    kind, got = codec.decode(b"\x00" + struct.pack(">I", v1) + buf.getvalue())
    assert kind == "derived_alert" and (got["status"], got["status_reason"]) == ("RAISED", None)

    record = _derived_alert(status="WITHDRAWN", status_reason="flag resolved before the crossing")
    data = codec.encode("derived_alert", record, validate=False)
    assert struct.unpack(">I", data[1:5])[0] == codec.schema_id("derived_alert") != v1
    got = codec.decode(data)[1]
    assert (got["status"], got["status_reason"]) == ("WITHDRAWN", "flag resolved before the crossing")
