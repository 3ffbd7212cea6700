"""The deployment files of infra/deploy/ parse, and what they say agrees with the code.

Nothing here needs Docker or a cluster: each file is read as the tool that uses it would read it (Java
properties, systemd units, YAML, ClickHouse XML, Prometheus' own `promtool check config` when it is
installed), and its topic names, ports, settings and commands are compared with schemas/topics.py,
schemas/settings.py, the migrations and the command line.
"""
from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from schemas import topics
from schemas.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "infra" / "deploy"
#: files a deployment makes for itself (hashed gateway tokens, the subject key): never in the repository
USER_MADE = {"./gateway.toml", "./subject.key"}


def defaults() -> Settings:
    """The settings' own defaults, whatever the environment of the test run says."""
    return Settings.model_construct(**{name: f.get_default(call_default_factory=True)
                                       for name, f in Settings.model_fields.items()})


def properties(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, _, value = line.partition("=")
        assert key.strip() not in out, f"{path.name}: {key} set twice"
        out[key.strip()] = value.strip()
    return out


def unit(path: Path) -> dict[str, list[tuple[str, str]]]:
    """A systemd unit: section -> [(key, value)] (keys may repeat, as ExecStart= does)."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current = None
    for line in path.read_text().splitlines():
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        if s.startswith("[") and s.endswith("]"):
            current = s[1:-1]
            sections.setdefault(current, [])
            continue
        assert current is not None and "=" in s, f"{path.name}: not a unit line: {line!r}"
        key, _, value = s.partition("=")
        sections[current].append((key, value))
    return sections


def env_file(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if line and not line.startswith("#"))


def check_cli(argv: list[str]) -> None:
    """``argv`` (after ``yrdbus``) names an existing command, and every option it passes exists there."""
    from typer.main import get_command

    from yrdbus.cli import app

    cmd = get_command(app)
    args = list(argv)
    while args and not args[0].startswith("-") and hasattr(cmd, "commands") and args[0] in cmd.commands:
        cmd = cmd.commands[args.pop(0)]
    assert not (args and not args[0].startswith("-") and hasattr(cmd, "commands")), \
        f"`yrdbus {' '.join(argv)}`: no command {args[0]!r} there"
    opts = {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)}
    for a in args:
        if a.startswith("--"):
            assert a.split("=")[0] in opts, f"`yrdbus {' '.join(argv)}`: no option {a} (has {sorted(opts)})"


def yrdbus_commands_in_units() -> list[list[str]]:
    out = []
    for path in sorted((DEPLOY / "systemd").glob("*.service")):
        for key, value in unit(path)["Service"]:
            if key == "ExecStart":
                argv = shlex.split(value)
                assert argv[0].endswith("/yrdbus"), f"{path.name}: {value}"
                out.append(argv[1:])
    return out


# --------------------------------------------------------------------------- Kafka
def test_three_kraft_brokers_replicate_as_the_topics_require_on_the_settings_ports():
    s = defaults()
    brokers = [properties(DEPLOY / "kafka" / f"broker-{i}.properties") for i in (1, 2, 3)]
    spec = topics.definitions()[0]
    for i, p in enumerate(brokers, start=1):
        assert p["node.id"] == str(i) and p["process.roles"] == "broker,controller"
        voters = p["controller.quorum.voters"].split(",")
        assert voters == [f"{n}@kafka-{n}:{s.kafka_controller_port}" for n in (1, 2, 3)]
        assert f"PLAINTEXT://0.0.0.0:{s.kafka_port}" in p["listeners"]
        assert f"CONTROLLER://0.0.0.0:{s.kafka_controller_port}" in p["listeners"]
        assert p["advertised.listeners"] == f"PLAINTEXT://kafka-{i}:{s.kafka_port}"
        assert int(p["default.replication.factor"]) == spec.replication_for(3) == topics.WANTED_REPLICATION
        assert p["min.insync.replicas"] == spec.configs(3)["min.insync.replicas"] == "2"
        assert p["offsets.topic.replication.factor"] == "3"
    others = [{k: v for k, v in p.items() if k not in ("node.id", "advertised.listeners")} for p in brokers]
    assert others[0] == others[1] == others[2], "the three brokers differ in more than their identity"
    svc = unit(DEPLOY / "kafka" / "kafka@.service")
    start = dict(svc["Service"])["ExecStart"]
    assert start.endswith("/etc/kafka/broker-%i.properties")


def test_topic_plan_is_the_codes_definitions_for_three_brokers():
    doc = yaml.safe_load((DEPLOY / "kafka" / "topics.yaml").read_text())
    want = [{"name": s.name, "partitions": s.partitions, "replication": s.replication_for(3),
             "configs": s.configs(3), "purpose": s.purpose} for s in topics.definitions()]
    assert doc["brokers"] == 3
    assert doc["topics"] == want, "infra/deploy/kafka/topics.yaml is stale: render it again from topics.definitions()"


# --------------------------------------------------------------------------- ClickHouse
def test_clickhouse_schema_is_what_db_migrate_cluster_prints_now():
    from connectors.store import Target, render_script

    want = render_script(Target(database="yrdbus", cluster="yrd", ttl_days=0))
    assert (DEPLOY / "clickhouse" / "schema.sql").read_text() == want, \
        "schema.sql is stale: yrdbus db migrate --cluster yrd --print > infra/deploy/clickhouse/schema.sql"


def test_clickhouse_cluster_has_the_schemas_cluster_name_macros_and_a_keeper_quorum():
    cluster = ET.parse(DEPLOY / "clickhouse" / "cluster.xml").getroot()
    clusters = list(cluster.find("remote_servers"))
    assert [c.tag for c in clusters] == ["yrd"]
    schema = (DEPLOY / "clickhouse" / "schema.sql").read_text()
    assert set(re.findall(r"ON CLUSTER (\w+)", schema)) == {"yrd"}
    assert set(re.findall(r"Distributed\((\w+),", schema)) == {"yrd"}
    shards = clusters[0].findall("shard")
    assert len(shards) == 2 and all(len(s.findall("replica")) == 2 for s in shards)
    assert all(s.findtext("internal_replication") == "true" for s in shards)
    replicas = [r.findtext("host") for s in shards for r in s.findall("replica")]
    macros = ET.parse(DEPLOY / "clickhouse" / "macros.xml").getroot().find("macros")
    assert {m.tag for m in macros} >= {"shard", "replica"}
    assert "{shard}" in schema and "{replica}" in schema
    keeper = ET.parse(DEPLOY / "clickhouse" / "keeper.xml").getroot().find("keeper_server")
    raft = keeper.find("raft_configuration").findall("server")
    assert sorted(int(s.findtext("id")) for s in raft) == [1, 2, 3]
    zk = [(n.findtext("host"), n.findtext("port")) for n in cluster.find("zookeeper")]
    assert zk == [(s.findtext("hostname"), keeper.findtext("tcp_port")) for s in raft]
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())["services"]
    for host in replicas:
        env = compose[host]["environment"]
        assert env["CH_REPLICA"] == host
        assert env["CH_SHARD"] == str(1 + replicas.index(host) // 2)
    for host, _ in zk:
        assert host in compose
    assert ["db", "migrate", "--cluster", "yrd"] in yrdbus_commands_in_units()


# --------------------------------------------------------------------------- Prometheus, Grafana
def test_prometheus_jobs_and_ports_are_the_local_ones_and_promtool_accepts_it(tmp_path):
    s = defaults()
    local = yaml.safe_load((ROOT / "infra" / "prometheus" / "prometheus.yml").read_text())
    deploy = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    local_jobs = {j["job_name"] for j in local["scrape_configs"]}
    jobs = {j["job_name"]: [t for sc in j["static_configs"] for t in sc["targets"]] for j in deploy["scrape_configs"]}
    assert set(jobs) <= local_jobs
    ports = {"prometheus": {s.prometheus_port}, "yrdbus-station": {s.station_metrics_port},
             "yrdbus-worker": {s.worker_metrics_port, s.worker_metrics_port + 1},
             "yrdbus-gateway": {s.gateway_port}, "yrdbus-kafka": {s.kafka_exporter_port}}
    for job, targets in jobs.items():
        assert {int(t.rsplit(":", 1)[1]) for t in targets} <= ports[job], job
    rules = "".join(p.read_text() for p in (ROOT / "infra" / "prometheus" / "rules").glob("*.yml"))
    selected = set(re.findall(r'job="([^"]+)"', rules))
    # the sink has no /metrics against a ClickHouse server (only with the embedded store): said in the file
    assert selected - set(jobs) <= {"yrdbus-sink"}
    assert deploy["rule_files"] == local["rule_files"]
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (make test installs Debian's prometheus)")
    shutil.copy(DEPLOY / "prometheus" / "prometheus.yml", tmp_path / "prometheus.yml")
    shutil.copytree(ROOT / "infra" / "prometheus" / "rules", tmp_path / "rules")
    out = subprocess.run([promtool, "check", "config", str(tmp_path / "prometheus.yml")], capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_grafana_datasources_have_the_uids_the_dashboards_use():
    local = yaml.safe_load((ROOT / "dashboards" / "provisioning" / "datasources" / "yrdbus.yml").read_text())
    deploy = yaml.safe_load((DEPLOY / "grafana" / "datasources.yml").read_text())
    key = lambda ds: {(d["uid"], d["type"]) for d in ds["datasources"]}  # noqa: E731
    assert key(deploy) == key(local)
    import json

    used: set[str] = set()

    def walk(node) -> None:
        if isinstance(node, dict):
            ds = node.get("datasource")
            if isinstance(ds, dict) and isinstance(ds.get("uid"), str) and not ds["uid"].startswith("$"):
                used.add(ds["uid"])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    for board in (ROOT / "dashboards" / "json").glob("*.json"):
        walk(json.loads(board.read_text()))
    assert used and used <= {d["uid"] for d in deploy["datasources"]}
    ch = next(d for d in deploy["datasources"] if d["uid"] == "yrdbus-clickhouse")
    assert ch["jsonData"]["port"] == 8123 and ch["jsonData"]["defaultDatabase"] == "yrdbus"


# --------------------------------------------------------------------------- the bus's processes
def test_environment_file_names_only_settings_and_they_validate(monkeypatch):
    env = env_file(DEPLOY / "systemd" / "yrdbus.env")
    fields = {f"YRDBUS_{name.upper()}" for name in Settings.model_fields}
    assert set(env) <= fields, set(env) - fields
    for k in list(__import__("os").environ):
        if k.startswith("YRDBUS_"):
            monkeypatch.delenv(k)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("YRDBUS_CONFIG", "/nonexistent.toml")
    s = Settings()
    d = defaults()
    assert s.bootstrap == ",".join(f"kafka-{i}:{d.kafka_port}" for i in (1, 2, 3))
    assert s.gateway_port == d.gateway_port and s.kafka_exporter_port == d.kafka_exporter_port
    assert s.clickhouse_url.startswith("http://") and ":8123/yrdbus" in s.clickhouse_url
    assert s.subject_key is None, "no secret in the environment file"


def test_units_run_existing_commands_with_existing_options():
    commands = yrdbus_commands_in_units()
    assert {c[0] for c in commands} >= {"worker", "sink", "gateway", "prometheus", "topics", "db"}
    for argv in commands:
        check_cli([a for a in argv if "%i" not in a])
    worker = next(c for c in commands if c[0] == "worker")
    assert worker[worker.index("--metrics-port") + 1] == "%i"
    assert worker[worker.index("--replication") + 1] == str(topics.WANTED_REPLICATION)
    for path in (DEPLOY / "systemd").glob("*.service"):
        svc = dict(unit(path)["Service"])
        assert svc["EnvironmentFile"] == "/etc/yrdbus/yrdbus.env"
        assert "Install" in unit(path)


def test_compose_file_wires_the_same_files_commands_and_ports():
    s = defaults()
    doc = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    services = doc["services"]
    assert {"kafka-1", "kafka-2", "kafka-3", "prometheus", "grafana"} <= set(services)
    for i in (1, 2, 3):
        vols = services[f"kafka-{i}"]["volumes"]
        assert f"./kafka/broker-{i}.properties:/etc/kafka/broker.properties:ro" in vols
    assert "9092:9092" in services["kafka-1"]["ports"] and s.kafka_port == 9092
    assert f"{s.gateway_port}:{s.gateway_port}" in services["yrdbus-gateway"]["ports"]
    assert f"{s.prometheus_port}:9090" in services["prometheus"]["ports"]
    bus = {n: sv for n, sv in services.items() if n.startswith("yrdbus-")}
    fields = {f"YRDBUS_{name.upper()}" for name in Settings.model_fields}
    for name, sv in bus.items():
        assert set(sv.get("environment", {})) <= fields, name
        assert sv["env_file"] == ["./systemd/yrdbus.env"]
        if "command" in sv:
            check_cli(sv["command"])
    setup = bus["yrdbus-setup"]["entrypoint"][-1]
    for part in setup.split("&&"):
        argv = shlex.split(part)
        assert argv[0] == "yrdbus"
        check_cli(argv[1:])
    assert "topics apply" in setup and "db migrate --cluster yrd" in setup
    worker = bus["yrdbus-worker"]["command"]
    assert worker[worker.index("--metrics-port") + 1] == str(s.worker_metrics_port)
    for sv in services.values():
        for vol in sv.get("volumes", []):
            src = vol.split(":")[0]
            if src.startswith(".") and src not in USER_MADE:
                assert (DEPLOY / src).resolve().exists(), f"{src} is mounted but does not exist"
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["yrdbus"]' in dockerfile
    for folder in re.findall(r"^COPY (\w+) ", dockerfile, re.M):
        assert (ROOT / folder).is_dir()
