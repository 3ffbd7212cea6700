"""`yrdbus run`: the whole bus in one command, checked against what it leaves in ClickHouse.

One real run (its own broker, store and ports): a child process is killed in
the middle and must be reported and restarted; the summary's counts must be what
ClickHouse holds afterwards. A shorter run without the simulator kills the sink,
which owns the store, and it must be back, serving the store, without failing the run.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import free_port
from yrdbus.run import DRAIN_CAP_S

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


def _run_env(tmp_path: Path) -> dict:
    """A run of its own: its folder, store, broker and ports."""
    var = tmp_path / "var"
    env = {**os.environ,
           "YRDBUS_VAR_DIR": str(var),          # the store too: chdb://<var>/clickhouse
           "YRDBUS_KAFKA_PORT": str(free_port()), "YRDBUS_KAFKA_CONTROLLER_PORT": str(free_port()),
           "YRDBUS_KAFKA_HEAP": "512m", "YRDBUS_QUERY_PORT": str(free_port()),
           "YRDBUS_GATEWAY_PORT": str(free_port()), "YRDBUS_WORKER_METRICS_PORT": str(free_port()),
           "YRDBUS_STATION_METRICS_PORT": str(free_port()), "YRDBUS_KAFKA_EXPORTER_PORT": str(free_port()),
           "YRDBUS_GATEWAY_TOKENS_FILE": str(tmp_path / "none.toml"),
           "YRDBUS_SCHEMA_REGISTRY_PORT": str(free_port())}
    for name in ("YRDBUS_KAFKA_BOOTSTRAP", "YRDBUS_CLICKHOUSE_URL", "YRDBUS_SCHEMA_REGISTRY_URL", "DURATION"):
        env.pop(name, None)
    return env


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    """The README's `yrdbus simulate` example published to the run's own broker first, then `yrdbus run
    --duration 60` from another working folder, its gateway killed once the simulator has started."""
    tmp_path = tmp_path_factory.mktemp("run")
    var = tmp_path / "var"
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    env = _run_env(tmp_path)
    gateway_port = int(env["YRDBUS_GATEWAY_PORT"])
    try:
        subprocess.run([YRDBUS, "stack", "up"], env=env, cwd=cwd, check=True, capture_output=True, timeout=120)
        early = subprocess.run([YRDBUS, "simulate", "--seed", "7", "--speed", "3600", "--duration", "5",
                                "--scenarios", "all", "--truth", str(cwd / "t.jsonl"), "--json"],
                               env=env, cwd=cwd, capture_output=True, text=True, timeout=120)
        assert early.returncode == 0 and json.loads(early.stdout)["events"] > 0, early.stderr[-2000:]
    finally:
        subprocess.run([YRDBUS, "stack", "down"], env=env, cwd=cwd, capture_output=True, timeout=120)
    log_path = tmp_path / "run.log"
    with open(log_path, "w") as log:   # the child's own file description: reading it here moves no offset of its
        proc = subprocess.Popen([YRDBUS, "run", "--duration", "60"], env=env, stdout=log, stderr=subprocess.STDOUT,
                                cwd=cwd)
    try:
        killed = restarted = subjects = None
        deadline = time.monotonic() + 150 + DRAIN_CAP_S     # a loaded machine: the drain waits for the worker
        while time.monotonic() < deadline and proc.poll() is None:
            if killed is None and "Simulator started" in log_path.read_text():
                time.sleep(3)
                killed = _pid_of("gateway", gateway_port)
                assert killed, "the gateway child was not found"
                os.kill(killed, signal.SIGKILL)
                # the sink serves the read-only schema registry beside its query endpoint
                registry = f"http://127.0.0.1:{env['YRDBUS_SCHEMA_REGISTRY_PORT']}"
                with urllib.request.urlopen(f"{registry}/subjects", timeout=10) as resp:
                    subjects = json.loads(resp.read())
            elif killed is not None and restarted is None:
                restarted = _pid_of("gateway", gateway_port)
                restarted = None if restarted == killed else restarted
            time.sleep(0.5)
        code = proc.wait(timeout=max(1, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
        subprocess.run([YRDBUS, "stack", "down"], env=env, capture_output=True, timeout=120)
    return {"env": env, "var": var, "cwd": cwd, "output": log_path.read_text(), "code": code, "killed": killed,
            "restarted": restarted, "subjects": subjects,
            "summary": json.loads((var / "run" / "summary.json").read_text())}


def test_run_reports_a_killed_process_and_its_summary_is_what_clickhouse_holds(first_run):
    env, var, output, code = first_run["env"], first_run["var"], first_run["output"], first_run["code"]
    killed, restarted, summary = first_run["killed"], first_run["restarted"], first_run["summary"]

    # The killed child is reported, with the last line of its log, and started again: the run goes on whole,
    # its exit status is its check of the scripted incidents, and the summary counts the restart.
    assert killed is not None
    assert "border.SH.clearance-value" in first_run["subjects"] and "alerts.derived-value" in first_run["subjects"]
    assert "process 'gateway' stopped (killed by signal 9)" in output, output[-3000:]
    assert "restarting it in 1 s (restart 1 of 5 in 5 min)" in output, output[-3000:]
    assert restarted is not None, "no new gateway process"
    assert summary["failed_processes"] == [] and summary["restarts"]["gateway"] == 1, summary
    assert "evaluation" in summary, output[-3000:]   # the simulator finished and wrote its ground truth
    assert code == (0 if summary["evaluation"]["recall"] == 1.0 else 2), output[-3000:]
    gateway_log = (var / "log" / "gateway.log").read_text()
    assert gateway_log.count(" starting: ") == 1 and " restarting after killed by signal 9 " in gateway_log
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
    alerts = _sql(env, "SELECT kind, count() AS n FROM (SELECT argMax(kind, emitted_at) AS kind, "
                       "argMax(status, emitted_at) AS status FROM yrdbus.derived_alerts "
                       f"WHERE ingested_at >= toDateTime64('{since}', 3, 'UTC') GROUP BY alert_id) "
                       "WHERE status != 'WITHDRAWN' GROUP BY kind")
    assert {r["kind"]: int(r["n"]) for r in alerts} == summary["derived_alerts_by_kind"]
    assert "evaluation" in summary and 0.0 <= summary["evaluation"]["recall"] <= 1.0


def _doubled(env: dict) -> dict[str, int]:
    """Event ids stored more than once, per event table."""
    return {table: int(_sql(env, f"SELECT count() - uniqExact(event_id) AS n FROM yrdbus.{table}")[0]["n"])
            for table in ("clearances", "alerts", "cases")}


def test_a_simulated_run_starts_clean_after_other_publishing_and_keeps_everything_in_its_var_folder(first_run):
    env, cwd, output = first_run["env"], first_run["cwd"], first_run["output"]
    # what `yrdbus simulate` had published to the same broker was replaced, not read again
    assert "A simulated run starts from empty topics and an empty store" in output, output[-3000:]
    assert _doubled(env) == {"clearances": 0, "alerts": 0, "cases": 0}
    since = first_run["summary"]["since"][:19].replace("T", " ")
    older = _sql(env, f"SELECT count() AS n FROM yrdbus.clearances WHERE ingested_at < toDateTime64('{since}', 3, 'UTC')")
    assert int(older[0]["n"]) == 0, "clearances of the earlier publishing are in the store"
    # the broker, the store, the logs: all under YRDBUS_VAR_DIR, nothing in the working folder
    assert not (cwd / "var").exists(), sorted(p.name for p in (cwd / "var").rglob("*"))[:20]
    assert (first_run["var"] / "clickhouse").is_dir() and (first_run["var"] / "kafka").is_dir()


def test_a_run_that_keeps_the_data_goes_on_with_the_calendar_and_stores_no_event_twice(first_run):
    env, cwd, var = first_run["env"], first_run["cwd"], first_run["var"]
    before = json.loads((var / "run" / "simulated.json").read_text())
    out = subprocess.run([YRDBUS, "run", "--keep-data", "--duration", "60", "--json"], env=env, cwd=cwd,
                         capture_output=True, text=True, timeout=240 + DRAIN_CAP_S)
    subprocess.run([YRDBUS, "stack", "down"], env=env, capture_output=True, timeout=120)
    text = out.stdout + out.stderr
    assert "continuing the kept data's calendar" in text, text[-3000:]
    after = json.loads((var / "run" / "simulated.json").read_text())
    assert after["seed"] == before["seed"] + 1 and after["start_ms"] > before["reached_ms"], (before, after)
    assert _doubled(env) == {"clearances": 0, "alerts": 0, "cases": 0}
    summary = json.loads((var / "run" / "summary.json").read_text())
    assert summary["events_total"] > 1000, summary
    # the kept run's own incidents are found: its exit status is its check
    assert out.returncode == 0 and summary["evaluation"]["recall"] == 1.0, (summary["evaluation"], text[-3000:])


def test_run_restarts_a_killed_sink_which_serves_the_store_again(tmp_path):
    """The sink owns the embedded store's folder (one process at a time): a new one opens it once the old is gone."""
    var = tmp_path / "var"
    env = _run_env(tmp_path)
    query_port = int(env["YRDBUS_QUERY_PORT"])
    ping = f"http://127.0.0.1:{query_port}/ping"
    log_path = tmp_path / "run.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([YRDBUS, "run", "--no-simulate"], env=env, stdout=log, stderr=subprocess.STDOUT,
                                cwd=tmp_path)
    try:
        killed = restarted = None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None and restarted is None:
            pid = _pid_of("sink", query_port)
            if killed is None and pid and _answers(ping):
                killed = pid
                os.kill(killed, signal.SIGKILL)
            elif killed is not None and pid not in (None, killed) and _answers(ping):
                restarted = pid
            time.sleep(0.3)
        assert restarted is not None, log_path.read_text()[-3000:]
        # the run goes on: it ends on SIGTERM (as on Ctrl-C) with its summary
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=max(30, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
        subprocess.run([YRDBUS, "stack", "down"], env=env, capture_output=True, timeout=120)
    output = log_path.read_text()
    assert "process 'sink' stopped (killed by signal 9); last line of its log: " in output, output[-3000:]
    assert "restarting it in 1 s (restart 1 of 5 in 5 min)" in output, output[-3000:]
    assert code == 0, output[-3000:]
    summary = json.loads((var / "run" / "summary.json").read_text())
    assert summary["failed_processes"] == [] and summary["restarts"] == {"sink": 1, "worker-1": 0, "gateway": 0}
    sink_log = (var / "log" / "sink.log").read_text()
    assert sink_log.count(" starting: ") == 1 and sink_log.count(" restarting after killed by signal 9 ") == 1


def test_a_crash_loop_stops_the_run_with_a_clear_message(tmp_path):
    """Without a broker: the run's own handling of what its supervisor finds (restart lines, then the crash loop)."""
    import io

    import pytest
    from rich.console import Console

    from schemas.settings import Settings
    from yrdbus.run import BusRun, CrashLoop, RunOptions
    from yrdbus.supervisor import ChildSpec, RestartPolicy, Supervisor

    out = io.StringIO()
    run = BusRun(Settings(_env_file=None, var_dir=tmp_path / "var"), RunOptions(),
                 console=Console(file=out, soft_wrap=True, width=100))
    run.sup = Supervisor(tmp_path / "log", restart=RestartPolicy(max_restarts=2, backoff_s=0.01))
    run.sup.start(ChildSpec("worker-1", [sys.executable, "-c", "print('[rules] no rule set', flush=True); "
                                                               "raise SystemExit(4)"]))
    deadline = time.monotonic() + 20
    with pytest.raises(CrashLoop):
        while time.monotonic() < deadline:
            run._report_deaths()
            time.sleep(0.02)
    run.stop()
    lines = out.getvalue().splitlines()
    restarts = [line for line in lines if "restarting it in" in line]
    assert len(restarts) == 2 and "(restart 2 of 2 in 5 min)" in restarts[1], lines
    assert all(line.startswith("process 'worker-1' stopped (exit status 4); last line of its log: [rules] no rule "
                               "set; restarting it in") for line in restarts), lines
    assert any("crash loop: it was restarted 2 times in 5 min already, so it is not started again: stopping the "
               "run." in line for line in lines), lines
    assert run.crash_loop == ["worker-1"] and [d.name for d in run.sup.deaths] == ["worker-1"]
    assert run.sup.get("worker-1").restarts == 2


def test_a_timed_run_whose_simulator_ends_past_its_time_waits_for_it_and_then_drains(tmp_path, monkeypatch):
    """Without a broker: a slow start-up moves the simulator's end past the run's. Stopping it there would lose
    its ground truth (nothing to score); the run waits for it and says so, then drains."""
    import io
    from types import SimpleNamespace

    from rich.console import Console

    from schemas.settings import Settings
    from yrdbus import run as run_module
    from yrdbus.run import BusRun, RunOptions
    from yrdbus.supervisor import ChildSpec, Supervisor

    class QuietBus:   # what the monitor reads of a bus with nothing left to consume
        last = SimpleNamespace(lag={}, newest_alerts=[])

        def snapshot(self):
            return self.last

        def rates(self):
            return {r: 0.0 for r in run_module.REGIONS}

        def since_start(self):
            return {}

        def close(self):
            pass

    monkeypatch.setattr(run_module, "_drain_quiet_s", lambda: 1)
    out = io.StringIO()
    run = BusRun(Settings(_env_file=None, var_dir=tmp_path / "var"),
                 RunOptions(duration=2.0, drain_s=1.0, live=False), console=Console(file=out, soft_wrap=True))
    run.sup = Supervisor(tmp_path / "log")
    run.monitor = QuietBus()
    done = tmp_path / "truth.jsonl"
    run.sup.start(ChildSpec("simulator", [sys.executable, "-c", "import pathlib, time; time.sleep(5); "
                                                               f"pathlib.Path({str(done)!r}).write_text('{{}}')"],
                            finite=True))
    try:
        run.watch()
        assert done.is_file(), "the run stopped before its simulator finished"
        assert "The simulator is still publishing" in out.getvalue(), out.getvalue()
    finally:
        run.stop()
    assert run.sup.deaths == []


def test_the_summary_counts_each_alert_once_by_its_last_version_and_a_withdrawn_one_apart(ch):
    from datetime import datetime, timedelta, timezone

    from connectors.store import Target, migrate
    from yrdbus.run import stored_alerts

    client, db = ch
    migrate(client, Target(database=db))
    at = datetime(2017, 6, 5, 8, tzinfo=timezone.utc)

    def row(alert_id, kind, emitted, status="RAISED", reason=None):
        return [alert_id, kind, "HIGH", "r", "1", ["JS"], [], "sub", [], at, at + timedelta(seconds=emitted),
                f"{kind} {alert_id}", {}, status, reason]

    cols = ["alert_id", "kind", "severity", "rule_id", "rule_set_version", "must_act", "inform", "subject",
            "evidence", "occurred_at", "emitted_at", "summary", "details", "status", "status_reason"]
    client.insert(f"{db}.derived_alerts", [
        row("a", "CROSS_REGION_HIT", 1), row("a", "CROSS_REGION_HIT", 9, "WITHDRAWN", "flag resolved before"),
        row("b", "PORT_SHOPPING", 2), row("b", "PORT_SHOPPING", 3),                       # re-emitted: one alert
        row("c", "CROSS_REGION_HIT", 5, "WITHDRAWN", "duplicate"), row("c", "CROSS_REGION_HIT", 4),  # read late
    ], column_names=cols)
    live, withdrawn = stored_alerts(client, "2000-01-01 00:00:00", database=db)
    assert [(a["alert_id"], a["kind"], a["status"]) for a in live] == [("b", "PORT_SHOPPING", "RAISED")]
    assert [(a["alert_id"], a["status_reason"]) for a in withdrawn] == [("a", "flag resolved before"), ("c", "duplicate")]


def test_the_live_view_counts_a_raised_alert_once_and_takes_a_withdrawn_one_off_the_count():
    from yrdbus.monitor import BusMonitor

    monitor = BusMonitor("127.0.0.1:9", [])          # nothing is asked of the broker here
    try:
        def alert(aid, kind, status="RAISED"):
            return {"alert_id": aid, "kind": kind, "status": status, "summary": aid,
                    "status_reason": None if status == "RAISED" else "disproved"}

        for a in (alert("a", "CROSS_REGION_HIT"), alert("a", "CROSS_REGION_HIT"), alert("b", "CROSS_REGION_HIT"),
                  alert("c", "PORT_SHOPPING"), alert("a", "CROSS_REGION_HIT", "WITHDRAWN"),
                  alert("c", "PORT_SHOPPING", "WITHDRAWN"), alert("z", "PORT_SHOPPING", "WITHDRAWN")):
            monitor.take(a)
        assert dict(monitor.alerts_by_kind) == {"CROSS_REGION_HIT": 1} and monitor.withdrawn == 3
        assert [(a["alert_id"], a["status"]) for a in monitor.newest] == [
            ("c", "WITHDRAWN"), ("b", "RAISED"), ("a", "WITHDRAWN")]
    finally:
        monitor.close()
