"""A running bus under the project's Prometheus: every process is scraped and up; every PromQL expression of
the dashboards and the rules parses on that Prometheus and names metrics the processes really export (their
live /metrics); `yrdbus report` runs through the sink's live query endpoint.

The processes are started as `yrdbus run` starts them (sink with its query endpoint, a stream worker, the
gateway, the simulator), on a private copy of the bus (topic prefix) of the test broker and free ports."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from conftest import free_port
from schemas.settings import Settings
from yrdbus import observability as obs
from yrdbus import report
from yrdbus.supervisor import ChildSpec, Supervisor

YRDBUS = [str(Path(sys.executable).with_name("yrdbus"))]
JOBS = {obs.JOB_PROMETHEUS, obs.JOB_STATION, obs.JOB_WORKER, obs.JOB_SINK, obs.JOB_GATEWAY, obs.JOB_KAFKA}
# Grafana's own variables in the dashboards' PromQL, as Grafana replaces them before Prometheus sees them
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h"}


def _get(url: str, timeout: float = 5) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read()


@pytest.fixture(scope="module")
def bus(kafka, tmp_path_factory):
    from connectors.gateway.access import hash_token, new_token

    var = tmp_path_factory.mktemp("observed-bus")
    prefix = f"obs{os.getpid()}{int(time.time()) % 100000}."
    settings = Settings(_env_file=None, var_dir=var, kafka_bootstrap=kafka.bootstrap,
                        clickhouse_url=f"chdb://{var / 'clickhouse'}", query_port=free_port(),
                        gateway_port=free_port(), worker_metrics_port=free_port(),
                        station_metrics_port=free_port(), kafka_exporter_port=free_port(), prometheus_port=free_port())
    access = var / "gateway.toml"
    access.write_text(f'[[tokens]]\nid = "cc"\nhash = "{hash_token(new_token("cc"))}"\nall = true\n')
    sup = Supervisor(settings.log_dir)
    sup.base_env.update({"YRDBUS_KAFKA_BOOTSTRAP": kafka.bootstrap, "YRDBUS_VAR_DIR": str(var),
                         "YRDBUS_CLICKHOUSE_URL": settings.clickhouse_url, "YRDBUS_GATEWAY_TOKENS_FILE": str(access),
                         "YRDBUS_STATION_METRICS_PORT": str(settings.station_metrics_port), "YRDBUS_DEMO": "true"})
    prom = obs.PrometheusStack(settings)
    try:
        sup.start(ChildSpec("sink", YRDBUS + ["sink", "--port", str(settings.query_port), "--prefix", prefix]))
        sup.start(ChildSpec("worker-1", YRDBUS + ["worker", "--app-id", f"{prefix}streams", "--prefix", prefix,
                                                  "--metrics-port", str(settings.worker_metrics_port),
                                                  "--data-dir", str(var / "streams")]))
        sup.start(ChildSpec("gateway", YRDBUS + ["gateway", "--port", str(settings.gateway_port), "--prefix", prefix,
                                                 "--log-level", "warning"]))
        sup.start(ChildSpec("simulator", YRDBUS + ["simulate", "--prefix", prefix, "--seed", "3", "--speed", "1800",
                                                   "--scale", "0.02", "--scenarios", "all", "--duration", "150"],
                            finite=True))
        prom.up(scrape_interval="1s", prefix=prefix, echo=lambda m: None)
        yield settings, prom, sup, prefix
    finally:
        prom.down(echo=lambda m: None)
        sup.stop()


def _wait_all_up(prom, timeout_s: float = 75.0) -> list[dict]:
    deadline = time.monotonic() + timeout_s
    targets: list[dict] = []
    while time.monotonic() < deadline:
        targets = prom.targets()
        if {t["labels"]["job"] for t in targets} == JOBS and all(t["health"] == "up" for t in targets):
            return targets
        time.sleep(1)
    return targets


def test_the_projects_prometheus_scrapes_every_process_of_a_running_bus(bus):
    settings, prom, sup, _ = bus
    targets = _wait_all_up(prom)
    health = {(t["labels"]["job"], t["scrapeUrl"]): (t["health"], t.get("lastError")) for t in targets}
    assert {job for job, _ in health} == JOBS, health
    assert all(h == "up" for h, _ in health.values()), (health, [d.describe() for d in sup.check()])
    # and Prometheus itself sees them so: up == 1 for every job
    result = prom.api("/api/v1/query", query='up{job=~"yrdbus-.*|prometheus"}')["data"]["result"]
    assert {r["metric"]["job"]: r["value"][1] for r in result} == {job: "1" for job in JOBS}


def _exported_names(text: str) -> set[str]:
    """Every sample name a /metrics page declares (a labelled metric without samples yet still declares its type)."""
    names = set()
    for family in text_string_to_metric_families(text):
        suffixes = {"counter": ["_total", "_created"], "histogram": ["_bucket", "_sum", "_count", "_created"],
                    "summary": ["", "_sum", "_count", "_created"], "gauge": [""], "info": ["_info"]}.get(family.type, [""])
        names.update(family.name + s for s in suffixes)
        names.update(s.name for s in family.samples)
    return names


def _expressions() -> list[tuple[str, str]]:
    out = []
    for uid, model in report.dashboards().items():
        for p in report.panels(model):
            for t in p.get("targets", []):
                if t.get("datasource", {}).get("type") == "prometheus":
                    out.append((f"{uid}: {p['title']}", t["expr"]))
    for f in obs.rule_files():
        for g in yaml.safe_load(f.read_text())["groups"]:
            for r in g["rules"]:
                out.append((f"{f.name}: {r.get('alert') or r.get('record')}", r["expr"]))
    return out


def test_every_promql_expression_parses_and_names_metrics_the_processes_export(bus):
    settings, prom, _, _ = bus
    targets = _wait_all_up(prom)
    exported: set[str] = set()
    for t in targets:
        if t["labels"]["job"] != obs.JOB_PROMETHEUS:
            exported |= _exported_names(_get(t["scrapeUrl"]).decode())
    recorded = {r["record"] for f in obs.rule_files() for g in yaml.safe_load(f.read_text())["groups"]
                for r in g["rules"] if "record" in r}
    exprs = _expressions()
    assert len(exprs) > 20
    for where, expr in exprs:
        for var, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(var, value)
        answer = prom.api("/api/v1/query", query=expr)
        assert answer.get("status") == "success", f"{where}: {expr}: {answer}"
        # metric names: identifiers before a selector, a range or the end of a term, never label names or functions
        stripped = re.sub(r'\{[^}]*\}', "{}", expr)
        stripped = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", stripped)
        names = {n for n in re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", stripped)
                 if n.startswith(("yrdbus_", "yrdbus:")) or n == "up"}
        if not names:       # only the stations' schedules are made of the clock alone
            assert where.endswith("yrdbus:station_operating_hours") and expr.startswith("vector(1)"), \
                f"{where}: no metric in {expr}"
        for name in names:
            assert name in exported or name in recorded or name == "up", \
                f"{where}: {name} is not exported by any process of the bus"


def test_report_runs_through_the_live_query_endpoint_of_a_running_bus(bus, tmp_path):
    settings, _, _, _ = bus
    count = f"http://127.0.0.1:{settings.query_port}/?database=yrdbus&query=" + urllib.parse.quote(
        "SELECT count() FROM clearances")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:      # until the sink has stored some of the simulator's traffic
        try:
            if (settings.var_dir / "run" / "query.json").is_file() and int(_get(count)) > 0:
                break
        except (OSError, ValueError):
            pass
        time.sleep(1)
    env = {**os.environ, "YRDBUS_VAR_DIR": str(settings.var_dir), "YRDBUS_CLICKHOUSE_URL": settings.clickhouse_url}
    env.pop("YRDBUS_CONFIG", None)
    r = subprocess.run(YRDBUS + ["report", "--out", str(tmp_path / "r"), "--panel", "Crossings against the baseline",
                                 "--json"], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["source"].rstrip("/") == f"http://127.0.0.1:{settings.query_port}"
    assert [p["title"] for p in summary["panels"]] == ["Crossings against the baseline"]
    assert summary["panels"][0]["rows"] > 0      # the simulated hours the sink stored while the bus ran
    assert Path(summary["panels"][0]["file"]).read_bytes()[:4] == b"\x89PNG"
