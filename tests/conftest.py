"""Shared fixtures: one real Kafka broker and one embedded ClickHouse engine per test run.

Each is started by the first test that asks for it: the pure tests (marker ``unit``: `make unit`, or
`pytest -m unit`) start neither, and need no Java, Kafka or ClickHouse.

The broker is started once per session in a temporary folder on free ports
(or, when YRDBUS_KAFKA_BOOTSTRAP is set, that cluster is used). Each test gets
its own topic names and consumer groups through ``unique``; each ClickHouse
test gets its own database.
"""
from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path

import pytest

from schemas.settings import Settings


#: the fault suite's results of this run (tests/faults): every pytest-xdist worker appends to one file
RESULTS_ENV = "YRDBUS_TEST_FAULT_RESULTS"
ROOT = Path(__file__).resolve().parents[1]


def pytest_configure(config):
    if not hasattr(config, "workerinput"):   # the reporting process; xdist workers inherit the variable
        path = ROOT / "var" / "faults" / f".run-{os.getpid()}.jsonl"
        path.unlink(missing_ok=True)
        os.environ[RESULTS_ENV] = str(path)


#: the test files that take longest (seconds of a fresh clone's run with four processes, `--durations=0`, the
#: CPU shared), run first: pytest-xdist hands out files in collection order (with `--no-loadscope-reorder`, see
#: the Makefile), and a long file started last keeps one process busy after the others are done
LONGEST_FIRST = (      # seconds each file took in quiet fresh-clone runs (f12e845: 623 s in all; c06739e: 831 s)
    # Heavy files alternate between those that wait on a worker or a broker and those that compute: with
    # the four heaviest worker files started together (test_run, the brokers' and processes' faults, the
    # simulated week) a quiet run took 831 s, in this order 623 s.
    "test_streams_simulated.py",          # 161 / 410: the simulator's incidents and a week of baseline, a worker
    "test_order_suite.py",                # 125 / 212: the simulator's day in four orders at the stages
    "faults/test_faults_brokers.py",      # 183 / 264: a broker stopped and restarted, three brokers losing one
    "test_order_suite_other_orders.py",   # 160 /  66: a tenth of the volume in seven orders, restarts
    "test_scaleout.py",                   # 120 / 139: a three-broker cluster, a worker joined by a second
    "faults/test_faults_processes.py",    # 132 / 168
    "test_dashboards.py",                 #  86 /  45: a simulated day, clickhouse-go built at two versions
    "test_run.py",                        # 268 / 494: two `yrdbus run`s of 60 s and their own brokers
    "faults/test_faults_store.py",        # 107 / 146
    "test_security_kafka.py",             #  89 /  94
    "test_order_suite_broker.py",         #  92 /  70: a second worker joining and leaving
    "test_foundation.py",                 #  97 / 187
    "test_gateway_wall.py",               #  77 /  94: Chromium, a worker
    "test_hostile_worker.py",             #  63 /  74
    "test_streams_worker.py",             #  59 /  56
    "test_store_sink.py",                 #  43 /  59
    "test_hostile_sink.py",               #  46 /  46
    "test_publisher.py",                  #  44 /  33
    "test_security_secrets.py",           #  40 /  36
    "test_fuzz_queries.py",               #  33 /  31
)


def pytest_collection_modifyitems(session, config, items):  # noqa: ARG001
    """The longest files first (``LONGEST_FIRST``), the others after them in their usual order."""
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}

    def key(item):
        try:
            rel = Path(str(item.fspath)).resolve().relative_to(ROOT / "tests").as_posix()
        except ValueError:
            return len(rank)
        return rank.get(rel, len(rank))
    items.sort(key=key)   # stable: each file's tests keep their order


def pytest_terminal_summary(terminalreporter, exitstatus, config):  # noqa: ARG001
    """The fault table of this run (``make faults``; ``make test`` runs the short form)."""
    path = Path(os.environ.get(RESULTS_ENV, ""))
    if hasattr(config, "workerinput") or not path.name or not path.exists():
        return
    from kit import faults

    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    path.unlink()
    if not rows:
        return
    scale = rows[0]["scale"]
    terminalreporter.section(f"fault suite ({scale})")
    terminalreporter.write_line(faults.table(rows))
    out = path.parent / f"results-{scale}.jsonl"
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    terminalreporter.write_line(f"(also in {out})")


def free_port() -> int:
    """A port nothing listens on now, below the ephemeral range, never one this process was given before
    (kit.faults.free_port_run says why)."""
    from kit.faults import free_port_run

    return free_port_run(1)


def embedded_settings(var_dir: Path, **overrides) -> Settings:
    """Settings for a private embedded broker in ``var_dir`` on free ports."""
    return Settings(var_dir=var_dir, kafka_bootstrap=None, kafka_port=free_port(),
                    kafka_controller_port=free_port(), kafka_heap="512m", **overrides)


@pytest.fixture(scope="session")
def session_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("yrdbus")


@pytest.fixture(scope="session")
def kafka(session_dir) -> Settings:
    """Settings whose ``bootstrap`` reaches a real, running Kafka broker."""
    external = os.environ.get("YRDBUS_KAFKA_BOOTSTRAP")
    if external:
        yield Settings(kafka_bootstrap=external, var_dir=session_dir)
        return
    from yrdbus.stack import KafkaStack

    settings = embedded_settings(session_dir / "var")
    stack = KafkaStack(settings)
    stack.up(echo=lambda m: None)
    yield settings
    stack.down(echo=lambda m: None)


@pytest.fixture(scope="session")
def clickhouse_url(session_dir) -> str:
    """The one embedded engine this test process may open (chDB: one engine per process)."""
    return os.environ.get("YRDBUS_TEST_CLICKHOUSE_URL", f"chdb://{session_dir / 'clickhouse'}")


@pytest.fixture
def unique(request) -> str:
    """A short name unique to this test, for topics, groups and databases."""
    base = "".join(c if c.isalnum() else "_" for c in request.node.name)[:40]
    return f"{base}_{uuid.uuid4().hex[:6]}"


@pytest.fixture
def ch(clickhouse_url, unique):
    """A clickhouse-connect client and a database of this test's own."""
    from connectors.store import client as store

    client = store.get_client(clickhouse_url)
    db = f"t_{unique}".lower()
    client.command(f"CREATE DATABASE {db}")
    yield client, db
    client.command(f"DROP DATABASE IF EXISTS {db} SYNC")


@pytest.fixture(scope="session")
def secure_kafka(session_dir):
    """A private secured broker (SCRAM-SHA-512 over TLS, ACLs: yrdbus.security) with the bus's topics applied.

    Yields its ``KafkaStack``: ``client_settings(principal)`` and ``client_env(principal)`` act as a principal.
    """
    import subprocess
    import sys

    from yrdbus.stack import KafkaStack

    settings = embedded_settings(session_dir / "secure-var")
    stack = KafkaStack(settings)
    stack.up(echo=lambda m: None, secure=True)
    try:
        env = {**os.environ, **stack.client_env("admin"), "YRDBUS_VAR_DIR": str(settings.var_dir)}
        for attempt in range(3):   # a broker that has just started may still be loading its coordinators
            done = subprocess.run([sys.executable, "-m", "yrdbus.cli", "topics", "apply"], env=env,
                                  capture_output=True, text=True, timeout=120)
            if done.returncode == 0:
                break
            time.sleep(2)
        else:
            raise RuntimeError(f"topics apply on the secured broker failed:\n{done.stdout}{done.stderr}")
        yield stack
    finally:
        stack.down(echo=lambda m: None)
