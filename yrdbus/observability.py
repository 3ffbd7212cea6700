"""Observability of the bus: the Kafka exporter, the Prometheus the stack can start, and its rules.

Every process serves its own Prometheus metrics (the stations' publisher, the stream
workers, the sink, the gateway). What no process can see by itself is Kafka's side of the
pipeline: how far each consumer group is behind on each partition, and how many records
reached each topic (the dead-letter topics above all). The Kafka exporter reads that from the
broker on every scrape. ``yrdbus stack up --with-prometheus`` starts it beside a real
Prometheus (Debian's package) that scrapes every local process with the configuration and the
alerting rules of ``infra/prometheus/``.

The station-silence alert needs each station's operating hours. They come from the same traffic
profile the simulator and the flow-surge detector use (``schemas/reference/flow_profile.json``):
a station is watched in the UTC hours when it expects at least ``WATCH_MIN_CROSSINGS_PER_HOUR``
crossings in that hour and in the two before it; ``station_hours_rules()`` writes them as the
recording rule ``yrdbus:station_operating_hours`` (``infra/prometheus/rules/station-hours.yml``).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml

from schemas.settings import Settings

log = logging.getLogger("yrdbus.observability")

ROOT = Path(__file__).resolve().parent.parent
PROMETHEUS_DIR = ROOT / "infra" / "prometheus"
CONFIG_FILE = PROMETHEUS_DIR / "prometheus.yml"
RULES_DIR = PROMETHEUS_DIR / "rules"
RULE_TESTS_DIR = PROMETHEUS_DIR / "tests"
STATION_HOURS_FILE = RULES_DIR / "station-hours.yml"

# Scrape jobs, as named in infra/prometheus/prometheus.yml (the alerting rules select on them).
JOB_PROMETHEUS = "prometheus"
JOB_STATION = "yrdbus-station"
JOB_WORKER = "yrdbus-worker"
JOB_SINK = "yrdbus-sink"
JOB_GATEWAY = "yrdbus-gateway"
JOB_KAFKA = "yrdbus-kafka"

# A station is silent when it published nothing for this long in its operating hours (StationSilent).
SILENCE_MINUTES = 90
# ... and an hour is an operating hour of a station when it expects at least this many crossings in it
# (and in the two hours before, so that the whole silence window lies in busy time). Flights and vessels
# bring travellers in bursts: in simulated weeks of the 2017 profile, no station went 70 minutes without an
# event in such hours, while quieter stations (Anqing, Wuhu, Huangshan) normally do.
WATCH_MIN_CROSSINGS_PER_HOUR = 50.0


class ObservabilityError(RuntimeError):
    """Something the operator must fix: a missing package, a port in use, a process that did not start."""


# =========================================================================== station operating hours
def station_expected_per_hour() -> dict[str, list[float]]:
    """Expected crossings per UTC hour at each station on its quietest weekday (flow profile x reference)."""
    from connectors.simulator.profile import load_profile
    from schemas import reference

    profile = load_profile()
    ports = reference.ports()
    quietest = min(profile.day_of_week)
    out = {}
    for station_id, station in sorted(reference.stations().items()):
        station_ports = [ports[code] for code in station["ports"] if code in ports]
        out[station_id] = [sum(profile.port_mean_per_hour(p) * profile.hour_of_day[p.kind][h] for p in station_ports)
                           * quietest for h in range(24)]
    return out


def station_watch_hours() -> dict[str, list[int]]:
    """UTC hours in which each station is watched for silence (empty: a station too quiet to watch)."""
    out = {}
    for station_id, per_hour in station_expected_per_hour().items():
        busy = [v >= WATCH_MIN_CROSSINGS_PER_HOUR for v in per_hour]
        out[station_id] = [h for h in range(24) if busy[h] and busy[h - 1] and busy[h - 2]]
    return out


def _hour_ranges(hours: list[int]) -> list[tuple[int, int]]:
    """[start, end) runs of consecutive hours, a run across midnight split in two."""
    runs: list[tuple[int, int]] = []
    for h in sorted(hours):
        if runs and runs[-1][1] == h:
            runs[-1] = (runs[-1][0], h + 1)
        else:
            runs.append((h, h + 1))
    return runs


def _hours_expr(hours: list[int]) -> str:
    if len(hours) == 24:
        return "vector(1)"
    parts = []
    for start, end in _hour_ranges(hours):
        if end - start == 1:
            parts.append(f"hour() == {start}")
        elif start == 0:
            parts.append(f"hour() < {end}")
        elif end == 24:
            parts.append(f"hour() >= {start}")
        else:
            parts.append(f"(hour() >= {start} and hour() < {end})")
    return "vector(1) and on () " + (parts[0] if len(parts) == 1 and parts[0].startswith("(") else
                                     "(" + " or ".join(parts) + ")")


def station_hours_rules() -> str:
    """The recording rules of the stations' operating hours (the content of station-hours.yml)."""
    from schemas import reference

    stations = reference.stations()
    rules = []
    for station_id, hours in station_watch_hours().items():
        if not hours:
            continue
        rules.append({"record": "yrdbus:station_operating_hours", "expr": _hours_expr(hours),
                      "labels": {"station": station_id, "region": stations[station_id]["region"]}})
    quiet = sorted(s for s, h in station_watch_hours().items() if not h)
    head = (
        "# Generated by `yrdbus prometheus station-hours --write` from schemas/reference/flow_profile.json and the\n"
        "# reference stations: do not edit by hand (a test compares this file with the generator).\n"
        f"# yrdbus:station_operating_hours is 1 for a station in the UTC hours it expects at least\n"
        f"# {WATCH_MIN_CROSSINGS_PER_HOUR:g} crossings in that hour and in the two before it (quietest weekday);\n"
        f"# StationSilent fires there after {SILENCE_MINUTES} minutes without an event.\n"
        f"# Too quiet to watch: {', '.join(quiet) if quiet else 'none'}.\n")
    body = yaml.safe_dump({"groups": [{"name": "yrdbus-station-hours", "interval": "1m", "rules": rules}]},
                          sort_keys=False, width=200)
    return head + body


def write_station_hours(path: Path = STATION_HOURS_FILE) -> bool:
    """Write the station-hours rules; True when the file changed."""
    text = station_hours_rules()
    if path.is_file() and path.read_text() == text:
        return False
    path.write_text(text)
    return True


# =========================================================================== scrape configuration
def scrape_targets(settings: Settings, workers: int = 1) -> dict[str, list[str]]:
    """host:port of every local process, per scrape job, from the settings (what `yrdbus run` starts)."""
    host = "127.0.0.1"
    return {
        JOB_PROMETHEUS: [f"{host}:{settings.prometheus_port}"],
        JOB_STATION: [f"{host}:{settings.station_metrics_port}"],
        JOB_WORKER: [f"{host}:{settings.worker_metrics_port + i}" for i in range(workers)],
        JOB_SINK: [f"{host}:{settings.query_port}"],
        JOB_GATEWAY: [f"{host}:{settings.gateway_port}"],
        JOB_KAFKA: [f"{host}:{settings.kafka_exporter_port}"],
    }


def render_config(settings: Settings, *, workers: int = 1, scrape_interval: str | None = None,
                  rules_dir: Path = RULES_DIR) -> str:
    """infra/prometheus/prometheus.yml with the targets of these settings and absolute rule paths."""
    config = yaml.safe_load(CONFIG_FILE.read_text())
    targets = scrape_targets(settings, workers)
    for job in config["scrape_configs"]:
        if job["job_name"] in targets:
            job["static_configs"] = [{"targets": targets[job["job_name"]]}]
    config["rule_files"] = [str(rules_dir.resolve() / "*.yml")]
    if scrape_interval:
        config.setdefault("global", {})["scrape_interval"] = scrape_interval
        config["global"]["evaluation_interval"] = scrape_interval
    return ("# Written by yrdbus from infra/prometheus/prometheus.yml and the settings; rewritten on every start.\n"
            + yaml.safe_dump(config, sort_keys=False))


# =========================================================================== promtool
def promtool_path() -> str:
    path = shutil.which("promtool")
    if not path:
        raise ObservabilityError("promtool is not installed: `bash infra/os-packages.sh prometheus` "
                                 "(Debian's prometheus package brings it)")
    return path


def promtool(*args: str, cwd: Path | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([promtool_path(), *args], capture_output=True, text=True, cwd=cwd, timeout=timeout)


def rule_files() -> list[Path]:
    return sorted(RULES_DIR.glob("*.yml"))


def rule_test_files() -> list[Path]:
    return sorted(RULE_TESTS_DIR.glob("*.yml"))


def check(config_file: Path = CONFIG_FILE) -> list[dict]:
    """promtool check config, check rules and test rules: one result per step, with its output."""
    steps = [("check config", ["check", "config", str(config_file)]),
             ("check rules", ["check", "rules", *map(str, rule_files())]),
             ("test rules", ["test", "rules", *map(str, rule_test_files())])]
    out = []
    for name, args in steps:
        r = promtool(*args)
        out.append({"step": f"promtool {name}", "ok": r.returncode == 0,
                    "output": (r.stdout + r.stderr).strip()})
    return out


# =========================================================================== Kafka exporter
class KafkaCollector:
    """Prometheus collector that reads consumer lag and topic end offsets from the broker on every scrape.

    ``prefix`` limits it to one copy of the bus (tests run prefixed copies on a shared broker): topics that
    start with it (or ``dlq.`` + it), and the groups that committed offsets on them.
    """

    def __init__(self, bootstrap: str, *, prefix: str = "", groups: list[str] | None = None,
                 config: dict | None = None, timeout_s: float = 5.0):
        from confluent_kafka.admin import AdminClient

        self.prefix = prefix
        self.groups = list(groups) if groups else None
        self.timeout_s = timeout_s
        self.admin = AdminClient({"bootstrap.servers": bootstrap, **(config or {})})

    def _wanted(self, topic: str) -> bool:
        if topic.startswith("__"):
            return False
        return not self.prefix or topic.startswith(self.prefix) or topic.startswith("dlq." + self.prefix)

    def read(self) -> tuple[dict[tuple[str, int], int], dict[tuple[str, str, int], int]]:
        """(end offset per (topic, partition), lag per (group, topic, partition))."""
        from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
        from confluent_kafka.admin import OffsetSpec

        md = self.admin.list_topics(timeout=self.timeout_s)
        request = {TopicPartition(name, p): OffsetSpec.latest()
                   for name, t in md.topics.items() if self._wanted(name) and not t.error for p in t.partitions}
        ends: dict[tuple[str, int], int] = {}
        if request:
            for tp, fut in self.admin.list_offsets(request, request_timeout=self.timeout_s).items():
                try:
                    ends[(tp.topic, tp.partition)] = fut.result().offset
                except Exception as exc:  # one partition without a leader must not hide the others
                    log.debug("end offset of %s[%s]: %s", tp.topic, tp.partition, exc)
        if self.groups is not None:
            group_ids = self.groups
        else:
            listing = self.admin.list_consumer_groups(request_timeout=self.timeout_s).result()
            group_ids = sorted(g.group_id for g in listing.valid)
        lag: dict[tuple[str, str, int], int] = {}
        for group in group_ids:
            try:
                fut = self.admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)],
                                                             request_timeout=self.timeout_s)[group]
                committed = fut.result().topic_partitions or []
            except Exception as exc:
                log.debug("offsets of group %s: %s", group, exc)
                continue
            for tp in committed:
                end = ends.get((tp.topic, tp.partition))
                if end is None or tp.offset < 0:
                    continue
                lag[(group, tp.topic, tp.partition)] = max(0, end - tp.offset)
        return ends, lag

    def describe(self):
        return []

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        t0 = time.perf_counter()
        try:
            ends, lag = self.read()
            up = 1
        except Exception as exc:
            log.warning("the broker did not answer the exporter: %s", exc)
            ends, lag, up = {}, {}, 0
        yield GaugeMetricFamily("yrdbus_kafka_up", "1 when the broker answered the exporter's last scrape, else 0.",
                                value=up)
        messages = CounterMetricFamily("yrdbus_kafka_topic_messages",
                                       "Records written to the topic so far: the sum of its partitions' end offsets.",
                                       labels=["topic"])
        per_topic: dict[str, int] = {}
        for (topic, _), end in ends.items():
            per_topic[topic] = per_topic.get(topic, 0) + max(0, end)
        for topic, n in sorted(per_topic.items()):
            messages.add_metric([topic], n)
        yield messages
        gauge = GaugeMetricFamily("yrdbus_kafka_consumer_lag_messages",
                                  "Records between a consumer group's committed offset and the end of the partition.",
                                  labels=["group", "topic", "partition"])
        for (group, topic, partition), n in sorted(lag.items()):
            gauge.add_metric([group, topic, str(partition)], n)
        yield gauge
        yield from conventional_families(ends, lag)
        yield GaugeMetricFamily("yrdbus_kafka_exporter_scrape_duration_seconds",
                                "Time the exporter took to read the broker for this scrape.",
                                value=time.perf_counter() - t0)


def conventional_families(ends: dict, lag: dict):
    """The same figures under the names of the community Kafka exporter (danielqsj/kafka_exporter), which
    community Kafka dashboards and alerts query: ``kafka_consumergroup_lag{consumergroup,topic,partition}``,
    its sum per group and topic, the groups' committed offsets and the partitions' end offsets."""
    from prometheus_client.core import GaugeMetricFamily

    per_partition = GaugeMetricFamily("kafka_consumergroup_lag", "Current approximate lag of a consumer group at "
                                      "topic/partition (as kafka_exporter).",
                                      labels=["consumergroup", "topic", "partition"])
    committed = GaugeMetricFamily("kafka_consumergroup_current_offset", "Current offset of a consumer group at "
                                  "topic/partition (as kafka_exporter).", labels=["consumergroup", "topic", "partition"])
    summed = GaugeMetricFamily("kafka_consumergroup_lag_sum", "Current approximate lag of a consumer group at a topic "
                               "for all partitions (as kafka_exporter).", labels=["consumergroup", "topic"])
    sums: dict[tuple[str, str], int] = {}
    for (group, topic, partition), n in sorted(lag.items()):
        per_partition.add_metric([group, topic, str(partition)], n)
        committed.add_metric([group, topic, str(partition)], max(0, ends.get((topic, partition), 0)) - n)
        sums[(group, topic)] = sums.get((group, topic), 0) + n
    for (group, topic), n in sorted(sums.items()):
        summed.add_metric([group, topic], n)
    offsets = GaugeMetricFamily("kafka_topic_partition_current_offset", "Current offset of a broker at "
                                "topic/partition (as kafka_exporter).", labels=["topic", "partition"])
    for (topic, partition), end in sorted(ends.items()):
        offsets.add_metric([topic, str(partition)], max(0, end))
    yield from (per_partition, summed, committed, offsets)


def exporter_registry(bootstrap: str, **kwargs):
    from prometheus_client import CollectorRegistry, ProcessCollector

    registry = CollectorRegistry()
    registry.register(KafkaCollector(bootstrap, **kwargs))
    ProcessCollector(registry=registry)
    return registry


def serve_exporter(bootstrap: str, port: int, *, host: str = "127.0.0.1", stop=None, **kwargs) -> None:
    """Serve the Kafka exporter's /metrics until ``stop`` (an Event) is set or the process is told to end."""
    import threading

    from prometheus_client import start_http_server

    registry = exporter_registry(bootstrap, **kwargs)
    server, thread = start_http_server(port, addr=host, registry=registry)
    stop = stop or threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *a: stop.set()) \
        if threading.current_thread() is threading.main_thread() else None
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


# =========================================================================== the Prometheus of the stack
def _yrdbus() -> list[str]:
    exe = Path(sys.executable).with_name("yrdbus")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "yrdbus.cli"]


def _cmdline(pid: int) -> list[bytes]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return []


def _get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (urllib.error.URLError, OSError):
        return 0, b""


class PrometheusStack:
    """A real Prometheus and the Kafka exporter, as background processes with their data under ``<var>/prometheus``."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.home = settings.var_dir.resolve() / "prometheus"
        self.config_file = self.home / "prometheus.yml"
        self.data_dir = self.home / "data"
        self.pid_file = self.home / "prometheus.pid"
        self.exporter_pid_file = self.home / "kafka-exporter.pid"
        self.log_dir = settings.log_dir.resolve()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.settings.prometheus_port}"

    @property
    def exporter_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.kafka_exporter_port}/metrics"

    # ------------------------------------------------------------------ processes
    def _pid(self, pid_file: Path, marker: bytes) -> int | None:
        try:
            pid = int(pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        return pid if any(marker in part for part in _cmdline(pid)) else None

    def pid(self) -> int | None:
        """The running Prometheus of this stack, or None."""
        return self._pid(self.pid_file, b"--storage.tsdb.path=" + str(self.data_dir).encode())

    def exporter_pid(self) -> int | None:
        return self._pid(self.exporter_pid_file, b"exporter")

    def status(self) -> dict:
        pid, epid = self.pid(), self.exporter_pid()
        return {"running": pid is not None, "pid": pid, "url": self.url if pid else None,
                "config": str(self.config_file), "data": str(self.data_dir),
                "kafka_exporter": {"running": epid is not None, "pid": epid,
                                   "url": self.exporter_url if epid else None}}

    def _spawn(self, argv: list[str], log_name: str, pid_file: Path, env: dict | None = None) -> subprocess.Popen:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_dir / log_name, "ab") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    cwd=self.home, start_new_session=True, env={**os.environ, **(env or {})})
        pid_file.write_text(f"{proc.pid}\n")
        return proc

    def write_config(self, *, workers: int = 1, scrape_interval: str | None = None) -> Path:
        self.home.mkdir(parents=True, exist_ok=True)
        self.config_file.write_text(render_config(self.settings, workers=workers, scrape_interval=scrape_interval))
        return self.config_file

    def up(self, *, workers: int = 1, scrape_interval: str | None = None, exporter: bool = True,
           prefix: str = "", echo=print, timeout_s: float = 30.0) -> dict:
        """Start the exporter and Prometheus (or rewrite the targets of a running one and reload it)."""
        binary = shutil.which("prometheus")
        if not binary:
            raise ObservabilityError("Prometheus is not installed: `bash infra/os-packages.sh prometheus` "
                                     "(Debian's package)")
        self.write_config(workers=workers, scrape_interval=scrape_interval)
        check_result = promtool("check", "config", str(self.config_file))
        if check_result.returncode != 0:
            raise ObservabilityError(f"promtool refuses {self.config_file}:\n{check_result.stdout}{check_result.stderr}")
        if exporter and not self.exporter_pid():
            argv = _yrdbus() + ["prometheus", "exporter", "--port", str(self.settings.kafka_exporter_port)]
            if prefix:
                argv += ["--prefix", prefix]
            env = {"YRDBUS_VAR_DIR": str(self.settings.var_dir.resolve())}
            env["YRDBUS_KAFKA_BOOTSTRAP"] = self.settings.bootstrap
            self._spawn(argv, "kafka-exporter.log", self.exporter_pid_file, env)
        pid = self.pid()
        if pid:
            req = urllib.request.Request(self.url + "/-/reload", method="POST")
            try:
                urllib.request.urlopen(req, timeout=5).close()
            except (urllib.error.URLError, OSError):
                os.kill(pid, signal.SIGHUP)
            echo(f"Prometheus is already running at {self.url} (pid {pid}); targets rewritten and reloaded.")
            return self.status()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        argv = [binary, f"--config.file={self.config_file}", f"--storage.tsdb.path={self.data_dir}",
                f"--web.listen-address=127.0.0.1:{self.settings.prometheus_port}", "--web.enable-lifecycle",
                "--storage.tsdb.retention.time=15d"]
        proc = self._spawn(argv, "prometheus.log", self.pid_file)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise ObservabilityError(f"Prometheus exited with status {proc.returncode} at start; "
                                         f"see {self.log_dir / 'prometheus.log'}:\n{_tail(self.log_dir / 'prometheus.log')}")
            if _get(self.url + "/-/ready")[0] == 200:
                echo(f"Prometheus is up at {self.url} (pid {proc.pid}), scraping the local processes; "
                     f"Kafka exporter on {self.exporter_url}.")
                return self.status()
            time.sleep(0.2)
        raise ObservabilityError(f"Prometheus did not answer {self.url}/-/ready within {timeout_s:.0f} s; "
                                 f"see {self.log_dir / 'prometheus.log'}")

    def down(self, echo=print, timeout_s: float = 20.0) -> bool:
        """Stop Prometheus and the exporter; True when something was running."""
        stopped = False
        for name, pid in (("Prometheus", self.pid()), ("Kafka exporter", self.exporter_pid())):
            if not pid:
                continue
            stopped = True
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout_s
            while _cmdline(pid) and time.monotonic() < deadline:
                if _reaped(pid):
                    break
                time.sleep(0.1)
            if _cmdline(pid) and not _reaped(pid):
                echo(f"{name} (pid {pid}) did not stop within {timeout_s:.0f} s; killing it.")
                os.kill(pid, signal.SIGKILL)
            echo(f"{name} stopped (pid {pid}).")
        self.pid_file.unlink(missing_ok=True)
        self.exporter_pid_file.unlink(missing_ok=True)
        return stopped

    # ------------------------------------------------------------------ queries
    def api(self, path: str, **params) -> dict:
        from urllib.parse import urlencode

        status, body = _get(f"{self.url}{path}" + (f"?{urlencode(params)}" if params else ""), timeout=10)
        try:
            return json.loads(body)
        except ValueError:
            return {"status": "error", "error": f"HTTP {status}", "body": body[:200].decode("utf-8", "replace")}

    def targets(self) -> list[dict]:
        return self.api("/api/v1/targets").get("data", {}).get("activeTargets", [])


def _reaped(pid: int) -> bool:
    """True when ``pid`` is gone (reaping it if it is our own zombie child)."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == pid
    except ChildProcessError:
        state = b""
        try:
            state = Path(f"/proc/{pid}/stat").read_bytes().split(b") ", 1)[1][:1]
        except (OSError, IndexError):
            return True
        return state == b"Z"


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
