"""The foundation: a real Apache Kafka broker and the real ClickHouse engine."""
from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer

from connectors.store import client as store
from yrdbus.stack import KafkaStack

from conftest import embedded_settings

YRDBUS = str(Path(sys.executable).with_name("yrdbus"))


def produce(bootstrap: str, topic: str, values: list[bytes]) -> None:
    p = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all"})
    for i, v in enumerate(values):
        p.produce(topic, key=str(i).encode(), value=v)
    assert p.flush(30) == 0


def consume(bootstrap: str, topic: str, group: str, expect: int, timeout_s: float = 30) -> list[bytes]:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "auto.offset.reset": "earliest"})
    c.subscribe([topic])
    got: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    while len(got) < expect and time.monotonic() < deadline:
        m = c.poll(0.5)
        if m is not None and not m.error():
            got.append(m.value())
    c.close()
    return got


def test_confluent_kafka_round_trip_on_the_real_broker(kafka, unique):
    values = [f"clearance {i}".encode() for i in range(500)]
    produce(kafka.bootstrap, unique, values)
    assert sorted(consume(kafka.bootstrap, unique, unique, len(values))) == sorted(values)


def test_aiokafka_round_trip_on_the_real_broker(kafka, unique):
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    async def go() -> list[bytes]:
        producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap, acks="all", enable_idempotence=True)
        await producer.start()
        try:
            for i in range(50):
                await producer.send_and_wait(unique, f"alert {i}".encode(), key=str(i).encode())
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(unique, bootstrap_servers=kafka.bootstrap, group_id=unique,
                                    auto_offset_reset="earliest")
        await consumer.start()
        got = []
        try:
            while len(got) < 50:
                batch = await asyncio.wait_for(consumer.getmany(timeout_ms=500), timeout=30)
                got += [m.value for msgs in batch.values() for m in msgs]
        finally:
            await consumer.stop()
        return got

    got = asyncio.run(go())
    assert sorted(got) == sorted(f"alert {i}".encode() for i in range(50))


def test_clickhouse_connect_on_chdb_creates_inserts_and_queries(ch):
    client, db = ch
    client.command(f"CREATE TABLE {db}.crossings (port LowCardinality(String), n UInt32, "
                   f"at DateTime64(3, 'UTC')) ENGINE = MergeTree ORDER BY (port, at)")
    from datetime import datetime, timezone
    at = datetime(2017, 6, 1, 8, 30, tzinfo=timezone.utc)
    client.insert(f"{db}.crossings", [["PVG", 3, at], ["NKG", 2, at], ["PVG", 4, at]],
                  column_names=["port", "n", "at"])
    rows = client.query(f"SELECT port, sum(n) FROM {db}.crossings GROUP BY port ORDER BY port").result_rows
    assert rows == [("NKG", 2), ("PVG", 7)]
    assert client.command("SELECT version()").startswith("26.")


def test_embedded_store_refuses_a_second_folder_in_one_process(clickhouse_url, tmp_path):
    store.get_client(clickhouse_url)
    with pytest.raises(store.StoreError, match="one engine per process"):
        store.get_client(f"chdb://{tmp_path / 'other'}")


def _cli(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([YRDBUS, *args], env=env, capture_output=True, text=True, timeout=180)


@pytest.fixture
def own_stack_env(tmp_path):
    """Environment for a `yrdbus` CLI with a broker of its own in tmp_path."""
    s = embedded_settings(tmp_path / "var")
    env = {**os.environ, "YRDBUS_VAR_DIR": str(s.var_dir), "YRDBUS_KAFKA_PORT": str(s.kafka_port),
           "YRDBUS_KAFKA_CONTROLLER_PORT": str(s.kafka_controller_port), "YRDBUS_KAFKA_HEAP": "512m"}
    env.pop("YRDBUS_KAFKA_BOOTSTRAP", None)
    yield env, s
    KafkaStack(s).down(echo=lambda m: None)


def test_stack_up_twice_and_down_twice(own_stack_env):
    env, s = own_stack_env
    first = _cli(env, "stack", "up")
    assert first.returncode == 0, first.stderr
    assert f"127.0.0.1:{s.kafka_port}" in first.stdout
    second = _cli(env, "stack", "up")
    assert second.returncode == 0 and "already running" in second.stdout

    status = json.loads(_cli(env, "stack", "status", "--json").stdout)
    pid = status["kafka"]["pid"]
    assert status["kafka"]["running"] is True
    assert status["kafka"]["bootstrap"] == f"127.0.0.1:{s.kafka_port}"
    # The broker is a JVM running Apache Kafka's own main class.
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert Path(cmdline[0].decode()).name == "java" and b"kafka.Kafka" in cmdline

    assert _cli(env, "stack", "down").returncode == 0
    again = _cli(env, "stack", "down")
    assert again.returncode == 0 and "not running" in again.stdout
    assert json.loads(_cli(env, "stack", "status", "--json").stdout)["kafka"]["running"] is False
    from yrdbus.stack import _is_kafka_process
    assert not _is_kafka_process(pid)  # gone, or a zombie awaiting its reaper


def test_external_bootstrap_starts_nothing(tmp_path):
    env = {**os.environ, "YRDBUS_VAR_DIR": str(tmp_path / "var"), "YRDBUS_KAFKA_BOOTSTRAP": "127.0.0.1:1"}
    out = _cli(env, "stack", "up")
    assert out.returncode == 0 and "external cluster" in out.stdout
    assert not (tmp_path / "var" / "kafka").exists()


def test_broker_restart_keeps_the_topics_messages(tmp_path, unique):
    s = embedded_settings(tmp_path / "var")
    stack = KafkaStack(s)
    stack.up(echo=lambda m: None)
    try:
        values = [f"case {i}".encode() for i in range(200)]
        produce(s.bootstrap, unique, values)
        stack.down(echo=lambda m: None)
        assert not stack.status()["kafka"]["running"]
        stack.up(echo=lambda m: None)
        assert sorted(consume(s.bootstrap, unique, unique, len(values))) == sorted(values)
    finally:
        stack.down(echo=lambda m: None)


@pytest.mark.skipif(shutil.which("kcat") is None, reason="kcat is installed by `make test` (infra/os-packages.sh)")
def test_kcat_lists_the_broker_and_round_trips_a_message(kafka, unique):
    listing = subprocess.run(["kcat", "-b", kafka.bootstrap, "-L"], capture_output=True, text=True, timeout=30)
    assert listing.returncode == 0, listing.stderr
    assert "broker 1 at 127.0.0.1" in listing.stdout
    produced = subprocess.run(["kcat", "-b", kafka.bootstrap, "-t", unique, "-P"],
                              input="from kcat\n", capture_output=True, text=True, timeout=30)
    assert produced.returncode == 0, produced.stderr
    consumed = subprocess.run(["kcat", "-b", kafka.bootstrap, "-t", unique, "-C", "-o", "beginning", "-c", "1", "-e"],
                              capture_output=True, text=True, timeout=30)
    assert consumed.stdout.strip() == "from kcat"


def test_every_command_has_help():
    from typer.main import get_command
    from typer.testing import CliRunner
    from yrdbus.cli import app

    def walk(cmd, path):
        yield path
        for name, sub in getattr(cmd, "commands", {}).items():
            yield from walk(sub, path + [name])

    paths = list(walk(get_command(app), []))
    assert len(paths) > 4
    # the installed entry point itself, once; every command's help through the same Typer app in this process
    # (a process each cost 40 s of the suite's CPU, all of it Python starting and importing)
    out = subprocess.run([YRDBUS, "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "Usage" in out.stdout, out.stderr
    runner = CliRunner()
    for path in paths:
        got = runner.invoke(app, [*path, "--help"])
        assert got.exit_code == 0 and "Usage" in got.output, (path, got.output, got.exception)


def test_every_command_module_is_added_one_way_and_fails_one_way():
    """A command area is a module ``yrdbus/cli_<area>.py`` with ``register(app)``, listed in ``yrdbus.cli.AREAS``;
    a failure goes through ``yrdbus.cli_common.fail``: no module keeps its own copy, none imports after code."""
    import ast

    from yrdbus import cli

    pkg = Path(cli.__file__).parent
    modules = sorted(p.stem for p in pkg.glob("cli_*.py") if p.stem != "cli_common")
    assert sorted(m.__name__.rsplit(".", 1)[1] for m in cli.AREAS) == modules
    for path in sorted(pkg.glob("cli*.py")):
        tree = ast.parse(path.read_text())
        defined = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
        assert not defined & {"fail", "_fail"} or path.stem == "cli_common", path.name
        if path.stem not in ("cli", "cli_common"):
            assert "register" in defined, path.name
        seen_code = False
        for node in tree.body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                assert not seen_code, f"{path.name}:{node.lineno}: an import after code"
            elif not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)):
                seen_code = True


def test_the_pure_tests_run_without_java_kafka_or_clickhouse(tmp_path):
    """`make unit` (pytest -m unit) in a process where `java` only leaves a mark, no broker is reachable and the
    store's URL leads nowhere: every test passes, nothing ran Java, and the embedded engine (chDB) was never
    loaded (collecting the other test files imports the ClickHouse client library, which connects to nothing)."""
    fake = tmp_path / "bin"
    fake.mkdir()
    mark = tmp_path / "java-ran"
    (fake / "java").write_text(f"#!/bin/sh\ntouch {mark}\nexit 1\n")
    (fake / "java").chmod(0o755)
    probe = tmp_path / "probe_modules.py"
    loaded = tmp_path / "loaded.json"
    probe.write_text("import json, sys\n\n\ndef pytest_sessionfinish(session, exitstatus):\n"
                     f"    open({str(loaded)!r}, 'w').write(json.dumps(sorted(sys.modules)))\n")
    env = {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}", "PYTHONPATH": str(tmp_path),
           "YRDBUS_KAFKA_BOOTSTRAP": "127.0.0.1:1", "YRDBUS_TEST_CLICKHOUSE_URL": "http://127.0.0.1:1",
           "YRDBUS_CLICKHOUSE_URL": "http://127.0.0.1:1"}
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-m", "pytest", "-m", "unit", "-q", "-p", "no:cacheprovider",
                           "-p", "probe_modules", "-n", "0", "-W", "ignore::DeprecationWarning"],
                          cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert " passed" in done.stdout and "deselected" in done.stdout, done.stdout[-500:]
    assert not mark.exists(), "a pure test ran java"
    modules = json.loads(loaded.read_text())
    assert not [m for m in modules if m.split(".")[0] == "chdb"]


def test_cluster_ids_never_start_with_a_dash_that_the_storage_tool_would_read_as_an_option():
    from yrdbus.stack import _new_cluster_id

    ids = [_new_cluster_id() for _ in range(5000)]
    assert all(len(i) == 22 and not i.startswith("-") for i in ids)
    assert len(set(ids)) == len(ids)
