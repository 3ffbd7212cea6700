"""`yrdbus run`: the whole bus in one command, checked against what it leaves in ClickHouse.

One real run (its own broker, store and ports): a child process is killed in
the middle and must be reported; the summary's counts must be what ClickHouse
holds afterwards.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import free_port

YRDBUS = str(Path(sys.executable).with_name("yrdbus"))


def _pid_of(argv_part: str, port: int) -> int | None:
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv_part.encode() in cmd and str(port).encode() in cmd:
            return int(proc.name)
    return None


def _sql(env: dict, query: str) -> list[dict]:
    out = subprocess.run([YRDBUS, "sql", "--json", query], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    text = out.stdout.strip()
    data = json.loads(text)
    return data["data"] if isinstance(data, dict) and "data" in data else data


def test_run_reports_a_killed_process_and_its_summary_is_what_clickhouse_holds(tmp_path):
    var = tmp_path / "var"
    gateway_port = free_port()
    env = {**os.environ,
           "YRDBUS_VAR_DIR": str(var), "YRDBUS_CLICKHOUSE_URL": f"chdb://{var / 'clickhouse'}",
           "YRDBUS_KAFKA_PORT": str(free_port()), "YRDBUS_KAFKA_CONTROLLER_PORT": str(free_port()),
           "YRDBUS_KAFKA_HEAP": "512m", "YRDBUS_QUERY_PORT": str(free_port()),
           "YRDBUS_GATEWAY_PORT": str(gateway_port), "YRDBUS_WORKER_METRICS_PORT": str(free_port()),
           "YRDBUS_STATION_METRICS_PORT": str(free_port()), "YRDBUS_KAFKA_EXPORTER_PORT": str(free_port()),
           "YRDBUS_GATEWAY_TOKENS_FILE": str(tmp_path / "none.toml")}
    env.pop("YRDBUS_KAFKA_BOOTSTRAP", None)
    env.pop("DURATION", None)
    log_path = tmp_path / "run.log"
    with open(log_path, "w") as log:   # the child's own file description: reading it here moves no offset of its
        proc = subprocess.Popen([YRDBUS, "run", "--duration", "60"], env=env, stdout=log, stderr=subprocess.STDOUT,
                                cwd=tmp_path)
    try:
        killed = None
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline and proc.poll() is None:
            if killed is None and "Simulator started" in log_path.read_text():
                time.sleep(3)
                killed = _pid_of("gateway", gateway_port)
                assert killed, "the gateway child was not found"
                os.kill(killed, signal.SIGKILL)
            time.sleep(0.5)
        code = proc.wait(timeout=max(1, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
        subprocess.run([YRDBUS, "stack", "down"], env=env, capture_output=True, timeout=120)
    output = log_path.read_text()

    # The killed child is reported, with its last log lines, and the run says so in its exit status.
    assert killed is not None
    assert "process 'gateway' stopped (killed by signal 9)" in output, output[-3000:]
    assert code == 1, output[-3000:]
    summary = json.loads((var / "run" / "summary.json").read_text())
    assert summary["failed_processes"] == ["gateway"]
    assert summary["events_total"] > 1000, summary

    # The summary is what ClickHouse holds: events per region and kind, derived alerts by kind.
    since = summary["since"][:19].replace("T", " ")
    stored: dict[str, dict[str, int]] = {}
    for kind, table in (("clearance", "clearances"), ("alert", "alerts"), ("case", "cases")):
        for row in _sql(env, f"SELECT region, count() AS n FROM yrdbus.{table} "
                             f"WHERE ingested_at >= toDateTime64('{since}', 3, 'UTC') GROUP BY region"):
            stored.setdefault(row["region"], {})[kind] = int(row["n"])
    for region, kinds in summary["events"].items():
        for kind, n in kinds.items():
            assert stored.get(region, {}).get(kind, 0) == n, (region, kind, n, stored)
    alerts = _sql(env, "SELECT kind, uniqExact(alert_id) AS n FROM yrdbus.derived_alerts "
                       f"WHERE ingested_at >= toDateTime64('{since}', 3, 'UTC') GROUP BY kind")
    assert {r["kind"]: int(r["n"]) for r in alerts} == summary["derived_alerts_by_kind"]
    assert "evaluation" in summary and 0.0 <= summary["evaluation"]["recall"] <= 1.0
