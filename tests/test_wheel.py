"""The wheel works on its own: built from the repository, installed into a fresh virtual environment
(not editable), the `yrdbus` command finds every package and every data file it reads at run time.

Offline: the wheel is built with the setuptools of this environment (the `test` extra pins one that builds
wheels), without build isolation. The fresh environment gets the wheel alone (``--no-deps``); the dependencies come from this
Python's site-packages through a ``.pth`` line. Such a line adds the folder to ``sys.path`` without running
the ``.pth`` files in it, so the editable install's hook does not put the repository's source back.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_FOLDERS = ("yrdbus", "streams", "schemas", "connectors")


def _run(argv, **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=300, **kwargs)
    assert proc.returncode == 0, f"{argv} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def _source_copy(dest: Path) -> Path:
    """What the build reads, copied, so the build writes nothing into the repository (build/, *.egg-info)."""
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, dest / name)
    for name in PACKAGE_FOLDERS:
        shutil.copytree(ROOT / name, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return dest


def build_wheel(work: Path) -> Path:
    src = work / "src"
    src.mkdir()
    _source_copy(src)
    out = work / "dist"
    out.mkdir()
    _run([sys.executable, "-m", "pip", "wheel", src, "--no-deps", "--no-build-isolation", "--no-index",
          "-w", out], cwd=work)
    (wheel,) = out.glob("yrdbus-*.whl")
    return wheel


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(the wheel, the fresh environment's bin folder, an environment for its processes, a working folder,
    its site-packages)."""
    work = tmp_path_factory.mktemp("wheel")
    wheel = build_wheel(work)
    venv = work / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv])
    python = venv / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", wheel])
    site = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"]).stdout.strip())
    # the dependencies: every site-packages folder this Python imports from
    deps = [p for p in sys.path if p.endswith("site-packages")] or [sysconfig.get_path("purelib")]
    (site / "yrdbus-test-deps.pth").write_text("".join(f"{p}\n" for p in deps))
    cwd = work / "cwd"
    cwd.mkdir()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("YRDBUS_") and k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    env.update(YRDBUS_VAR_DIR=str(cwd / "var"), PYTHONDONTWRITEBYTECODE="1")
    return wheel, venv / "bin", env, cwd, site


def test_wheel_has_the_product_packages_and_no_test_kit(installed):
    wheel = installed[0]
    names = zipfile.ZipFile(wheel).namelist()
    assert not [n for n in names if n.startswith(("tests/", "bench/", "infra/", "dashboards/"))]
    packages = {os.path.dirname(n) for n in names if n.endswith("/__init__.py")}
    expected = {p.parent.relative_to(ROOT).as_posix() for folder in PACKAGE_FOLDERS
                for p in (ROOT / folder).rglob("__init__.py") if "__pycache__" not in p.parts}
    assert expected <= packages, f"packages missing from the wheel: {sorted(expected - packages)}"
    # the test kit (tests/kit) is not installed, nothing installed imports it, and no fault hook is left behind
    kit = {p.stem for p in (ROOT / "tests" / "kit").glob("*.py")} - {"__init__"}
    assert kit and not [n for n in names if n.endswith(".py") and Path(n).stem in kit]
    with zipfile.ZipFile(wheel) as zf:
        for n in names:
            if n.endswith(".py"):
                text = zf.read(n).decode()
                assert not re.search(r"^\s*(from kit\b|import kit\b)", text, re.MULTILINE), n
                assert "--crash-after-inserts" not in text, n
    # every file of the product that is not code (schemas, history, reference data, rules, migrations, named
    # queries, the wall's files and catalogue, the broker's pom) is in the wheel
    tracked = subprocess.run(["git", "ls-files", "schemas", "streams", "connectors", "yrdbus"], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout.split()
    data = [f for f in tracked if not f.endswith(".py")]
    assert len(data) > 60 and "connectors/gateway/static/i18n/messages.json" in data
    assert [f for f in data if f not in names] == []


def test_installed_code_is_the_wheels_not_the_repositorys(installed):
    _, bin_dir, env, cwd, site = installed
    probe = ("import streams, yrdbus, connectors.store, connectors.gateway.app as app, schemas.reference as ref, "
             "streams.ruleset as rs\n"
             "for m in (streams, yrdbus, connectors.store): print(m.__file__)\n"
             "assert app.STATIC.joinpath('index.html').is_file()\n"
             "assert ref.regions()\n"
             "assert rs.default().flow_profile is not None, 'the rule set did not find its flow profile'\n")
    out = _run([bin_dir / "python", "-c", probe], cwd=cwd, env=env).stdout.split()
    assert len(out) == 3
    for path in out:
        assert Path(path).is_relative_to(site), path


def test_cli_from_the_wheel(installed):
    _, bin_dir, env, cwd, _ = installed
    yrdbus = bin_dir / "yrdbus"
    migrate = _run([yrdbus, "db", "migrate", "--print"], cwd=cwd, env=env).stdout
    assert "CREATE TABLE IF NOT EXISTS yrdbus.schema_migrations" in migrate
    migrations = sorted((ROOT / "connectors" / "store" / "migrations").glob("*.sql"))
    assert migrations
    for sql in migrations:
        version, name = sql.stem.split("_", 1)
        assert f"-- migration {version} {name}" in migrate
    check = _run([yrdbus, "schemas", "check"], cwd=cwd, env=env).stdout
    history = sorted((ROOT / "schemas" / "history").glob("*/*.avsc"))
    subjects = {p.parent.name for p in history}
    assert f"{len(history)} version(s) of {len(subjects)} schema(s) checked both ways: ok" in check
    queries = _run([yrdbus, "query", "--list"], cwd=cwd, env=env).stdout
    assert "late_events: Events uploaded late" in queries
    named = sorted((ROOT / "connectors" / "store" / "queries").glob("*.sql"))
    assert named
    for sql in named:
        assert f"\n{sql.stem}: " in "\n" + queries, sql.stem


def test_the_installed_wheel_starts_its_own_broker_and_passes_run_check(installed):
    """What a new user of the wheel does first: `yrdbus run --check` starts the pinned broker (its jars and
    logging configuration come with the package) and checks a Kafka round trip and a ClickHouse write/read."""
    from kit.faults import free_port_run

    _, bin_dir, env, cwd, _ = installed
    yrdbus = bin_dir / "yrdbus"
    env = dict(env, YRDBUS_KAFKA_PORT=str(free_port_run(1)), YRDBUS_KAFKA_CONTROLLER_PORT=str(free_port_run(1)),
               YRDBUS_CLICKHOUSE_URL=f"chdb://{cwd / 'ch'}")
    try:
        lib = json.loads(_run([yrdbus, "stack", "jars", "--json"], cwd=cwd, env=env).stdout)["kafka_lib_dir"]
        assert list(Path(lib).glob("kafka_2.13-*.jar")), lib
        out = _run([yrdbus, "run", "--check"], cwd=cwd, env=env).stdout
        assert re.search(r"Kafka round trip: (\d+) messages produced .* consumed back: \1/\1", out), out
        status = json.loads(_run([yrdbus, "stack", "status", "--json"], cwd=cwd, env=env).stdout)
        assert status["kafka"]["running"], status
    finally:
        subprocess.run([yrdbus, "stack", "down"], cwd=cwd, env=env, capture_output=True, timeout=120)
    assert (cwd / "var" / "kafka").is_dir()           # the broker's data where the settings say, not in the package
