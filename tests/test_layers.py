"""Imports run one way (docs/architecture.md): the contract at the bottom, the parts on it, the command line and
the operations on top; the product never imports the test kit.

Every ``import`` of every module of the four product packages is read from its source (those inside functions
too), so a lazy import cannot hide an upward one.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]

#: package -> its layer; a module may import its own package and the packages of lower layers only
LAYERS = {
    "schemas": 0,      # the contract: schemas, codec, validation, topics, settings, Kafka client settings
    "streams": 1,      # the parts: the stream layer ...
    "connectors": 1,   # ... stations, the store, the gateway
    "yrdbus": 2,       # the command line and the operations
}
#: what no product module imports: the test kit, the tests, the benchmarks
NEVER = ("kit", "tests", "bench", "conftest", "pytest", "hypothesis")


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, top-level package) of every absolute import in a source file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module.split(".")[0]))
    return out


def violations(root: Path) -> list[str]:
    found = []
    for package, layer in LAYERS.items():
        for path in sorted((root / package).rglob("*.py")):
            where = path.relative_to(root)
            for line, target in imports(path):
                if target in NEVER:
                    found.append(f"{where}:{line} imports {target}, which is not part of the product")
                elif target in LAYERS and target != package and LAYERS[target] >= layer:
                    found.append(f"{where}:{line} ({package}, layer {layer}) imports {target} "
                                 f"(layer {LAYERS[target]}): imports run from the command line down to the contract")
    return found


def test_imports_run_from_the_command_line_down_to_the_contract():
    assert violations(ROOT) == []


def test_the_check_finds_an_upward_a_sideways_and_a_test_kit_import(tmp_path):
    for package in LAYERS:
        (tmp_path / package).mkdir()
    (tmp_path / "schemas" / "codec.py").write_text("def f():\n    from yrdbus.settings import get_settings\n")
    (tmp_path / "streams" / "app.py").write_text("import connectors.store.sink\nfrom schemas import topics\n")
    (tmp_path / "connectors" / "sink.py").write_text("from kit.faults import free_port\nimport streams\n")
    (tmp_path / "yrdbus" / "cli.py").write_text("from streams import app\nfrom connectors import sink\n"
                                                "from schemas import codec\n")
    found = violations(tmp_path)
    assert [f.split(" ")[0] for f in found] == ["schemas/codec.py:2", "streams/app.py:1", "connectors/sink.py:1",
                                                "connectors/sink.py:2"], found
