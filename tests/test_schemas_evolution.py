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
