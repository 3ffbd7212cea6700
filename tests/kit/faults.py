"""The fault suite's harness: a known set of events through the real bus, a fault, and an exact account.

Each fault test (``tests/faults/``) does the same four things:

1. **Publish a known set of events.** ``workload()`` builds the scripted incidents a-j of
   docs/scenarios.md (``kit.scripted``, the stream layer's deterministic stand-in for the
   simulator's scenarios, with its ground truth) inside hours of plain background traffic; the
   ``Stations`` publish them with the real station publisher (idempotent, ``acks=all``), paced over a
   number of seconds so that the fault strikes while they publish.
2. **Run the bus's processes as subprocesses**: ``yrdbus worker`` and ``yrdbus sink`` (with its live query
   endpoint) under a private topic prefix, each with its own consumer group, data folder and ClickHouse
   store (``Bus``).
3. **Inject the fault**: SIGKILL a process, stop or kill a broker, take the store away, fill its disk.
4. **Verify** (``Bus.verify``): read ClickHouse back and compare *sets of ids*, not counts: every
   published ``event_id`` stored exactly once, no other; the derived alerts scored against the ground
   truth with ``streams.evaluate`` (each expected alert found by exactly one alert id, no other alert).

``FaultResult`` is one row of the table ``make faults`` prints (``table()``).

``YRDBUS_FAULTS=short`` (the default, what ``make test`` runs) uses a small workload and short outages;
``YRDBUS_FAULTS=full`` (``make faults``) a larger one and a one-minute ClickHouse outage.

``python -m kit.faults`` holds the harness's own processes: ``sink`` runs ``yrdbus sink`` with two
signal handlers that take the store away under it and bring it back (below), ``check-store`` opens a
store folder in a fresh process and checks every table, ``table`` prints a results file.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable, Optional

import typer

ROOT = Path(__file__).resolve().parents[2]
TESTS = ROOT / "tests"

#: 2017-06-01T08:00Z: the scripted incidents' reference time (as in the stream layer's own tests)
T0 = 1_496_304_000_000
HOUR = 3_600_000

#: tables of the source events the sink stores, by kind (control events stay on their compacted topic)
EVENT_TABLES = {"clearance": "clearances", "alert": "alerts", "case": "cases"}
#: the tables the sink writes (and the materialized views' targets): what a store outage takes away
SINK_TABLES = ("sink_batches", "clearances", "alerts", "cases", "derived_alerts", "trends", "risk_scores",
               "dead_letters", "flow_hourly", "cases_daily")


class FaultError(RuntimeError):
    """The harness could not set a fault up (not a finding about the bus); the message says why."""


# =========================================================================== scales
@dataclass(frozen=True)
class Scale:
    """How big a run is: ``short`` for CI (``make test``), ``full`` for ``make faults``."""

    name: str
    background_per_hour: int    # background clearances per simulated hour at eight ports (84 hours of them)
    pvg_per_hour: int           # more background at Shanghai Pudong alone (far below its hourly baseline)
    publish_s: float            # the stations publish the workload over this many seconds
    store_outage_s: float       # ClickHouse away for this long
    broker_outage_s: float      # the single broker stopped for this long
    disk_full_s: float          # the store's disk kept full for this long
    timeout_s: float            # longest wait for the bus to catch up after a fault


SCALES = {
    "short": Scale("short", 12, 0, 6.0, 10.0, 5.0, 6.0, 180.0),
    "full": Scale("full", 12, 0, 45.0, 60.0, 20.0, 20.0, 420.0),
}


def current_scale() -> Scale:
    name = os.environ.get("YRDBUS_FAULTS", "short").strip().lower() or "short"
    if name not in SCALES:
        raise FaultError(f"YRDBUS_FAULTS={name!r}: expected one of {', '.join(SCALES)}")
    return SCALES[name]


# =========================================================================== the known events
@dataclass
class Workload:
    """Events in event-time order as (kind, record), the ids the store must hold, the alerts it must derive."""

    seed: int
    records: list[tuple[str, dict]]
    truth: list[dict]
    expected: dict[str, set[str]]          # table -> event ids

    @property
    def stored_kinds(self) -> int:
        """Events of the kinds the store keeps (everything but control events)."""
        return sum(len(v) for v in self.expected.values())

    @property
    def control_events(self) -> int:
        return sum(1 for k, _ in self.records if k == "control")


def workload(background_per_hour: int, pvg_per_hour: int = 0, seed: int = 11) -> Workload:
    """The scripted incidents a-j from ``T0`` inside 84 hours of background traffic (same seed, same events).

    The background raises nothing: each traveller crosses once. Its volume is bounded by the flow-surge
    rule: 240 crossings a simulated hour over the eight ports, or 200 more at Shanghai Pudong, already raise
    FLOW_SURGE_SUPPORT alerts (the rule judges each port against the hour-of-week level it has seen), which the
    ground truth does not list. So both scales use 12 an hour; ``pvg_per_hour`` is there to study that rule.
    """
    from kit.scripted import Script, background, incidents, token

    script = Script(seed)
    incidents(script, T0)
    background(script, T0 - 2 * HOUR, 84, background_per_hour)
    start = T0 - 2 * HOUR
    for hh in range(84):
        for i in range(pvg_per_hour):
            script.clearance("PVG", start + hh * HOUR + script.rng.randrange(HOUR), token("bg-pvg", hh, i),
                             script.rng.choice(["ENTRY", "EXIT"]), destination="JPN")
    records, expected = [], {t: set() for t in EVENT_TABLES.values()}
    for kind, _region, _key, rec in sorted(script.events, key=lambda e: (e[3]["occurred_at"], e[3]["event_id"])):
        rec = {k: (_dt(v) if k in ("occurred_at", "published_at", "starts_at", "ends_at") else v)
               for k, v in rec.items()}
        records.append((kind, rec))
        if kind in EVENT_TABLES:
            expected[EVENT_TABLES[kind]].add(rec["event_id"])
    return Workload(seed, records, list(script.truth), expected)


def _dt(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc)


# =========================================================================== stations
#: how far (event time) the stations may run ahead of what the stream layer has re-keyed
RUN_AHEAD_MS = 30 * 60 * 1000
#: held that long with nothing more re-keyed, the stations give up: the stream layer has stalled
STALL_S = 180.0


class RekeyTracker:
    """Which events the stream layer's re-key step has forwarded: a reader of ``<prefix>streams.subjects``.

    The workload compresses 84 hours of event time into seconds. A worker that falls behind (killed, cut
    off from its broker, or only starved of CPU) then reads a backlog of many event-hours from a dozen
    source partitions in no event-time order, and the stream layer's rules are only exact for events out
    of order by less than their lateness (``streams/rules.toml``: 30 minutes). Real stations publish in
    real time, so a fault of seconds is a backlog of seconds. ``Stations`` keep that shape: they run at most
    ``RUN_AHEAD_MS`` of event time ahead of what this tracker has seen re-keyed, whatever the fault does.
    """

    IDLE_S = 15.0

    def __init__(self, bootstrap: str, topic: str):
        self.bootstrap, self.topic = bootstrap, topic
        self.seen: set[str] = set()
        self.positions: dict[int, int] = {}      # partition -> the next offset to read
        self.consumers = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rekey-tracker", daemon=True)

    def start(self) -> "RekeyTracker":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

        from schemas.codec import get_codec

        codec = get_codec()
        while not self._stop.is_set():
            c = Consumer({"bootstrap.servers": self.bootstrap, "group.id": f"yrdbus-faults-{uuid.uuid4().hex[:6]}",
                          "enable.auto.commit": False, "log_level": 0, "logger": _Quiet()})
            self.consumers += 1
            try:
                while not self._stop.is_set():
                    try:
                        meta = c.list_topics(self.topic, timeout=5).topics.get(self.topic)
                    except Exception:
                        meta = None
                    if meta is not None and meta.error is None and meta.partitions:
                        c.assign([TopicPartition(self.topic, p, self.positions.get(p, OFFSET_BEGINNING))
                                  for p in meta.partitions])
                        break
                    time.sleep(0.2)
                read_at = time.monotonic()
                # a consumer that read nothing for IDLE_S is made again where it was: librdkafka's clients were seen
                # to stay cut off from a broker that came back after an outage
                while not self._stop.is_set() and time.monotonic() - read_at < self.IDLE_S:
                    for m in c.consume(1000, timeout=0.2):
                        if m.error() is None:
                            read_at = time.monotonic()
                            self.positions[m.partition()] = m.offset() + 1
                            if m.value():
                                try:
                                    self.seen.add(codec.decode(m.value())[1]["event_id"])
                                except Exception:
                                    pass
            finally:
                c.close()

    def describe(self) -> str:
        return (f"{len(self.seen)} events seen, read up to {dict(sorted(self.positions.items()))} by the "
                f"{self.consumers} consumer(s) of the tracker")


class _Quiet:
    """librdkafka's connection errors while a broker is down on purpose are expected here."""

    def log(self, *args, **kwargs):
        pass


def rekeyed(kind: str, rec: dict) -> bool:
    """Whether the re-key step forwards this event to ``streams.subjects`` (so the tracker can see it)."""
    if kind == "clearance":
        return True
    if kind == "alert":
        return bool(rec.get("subject"))
    if kind == "case":
        return bool(rec.get("subjects"))
    return False


class Stations:
    """The stations of the four regions publishing a workload with the station publisher, in a thread.

    Paced to take at least ``seconds``; with a ``tracker``, never more than ``RUN_AHEAD_MS`` of event time
    ahead of what the stream layer has re-keyed (see ``RekeyTracker``).
    """

    def __init__(self, bootstrap: str, prefix: str, wl: Workload, seconds: float,
                 tracker: RekeyTracker | None = None, config: dict | None = None,
                 on_stall: Callable[[], None] | None = None):
        from prometheus_client import CollectorRegistry

        from connectors.publisher import StationPublisher

        self.wl = wl
        self.seconds = seconds
        self.tracker = tracker
        self.on_stall = on_stall          # called once before a stall is reported (the worker's task dump)
        self.publisher = StationPublisher(bootstrap, topic_prefix=prefix, registry=CollectorRegistry(),
                                          client_id="yrdbus-faults-stations",
                                          config={"log_level": 0, "logger": _Quiet(), **(config or {})})
        self.sent = 0
        self.held_s = 0.0          # time spent waiting for the stream layer
        self.unconfirmed: int | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="stations", daemon=True)

    def start(self) -> "Stations":
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            n = len(self.wl.records)
            tracked = [(rec["occurred_at"], rec["event_id"]) for kind, rec in self.wl.records if rekeyed(kind, rec)]
            j = 0
            t0 = time.monotonic()
            for i, (kind, rec) in enumerate(self.wl.records):
                if self.tracker is not None:
                    limit = rec["occurred_at"].timestamp() * 1000 - RUN_AHEAD_MS
                    moved = time.monotonic()
                    while j < len(tracked) and tracked[j][0].timestamp() * 1000 < limit:
                        if tracked[j][1] in self.tracker.seen:
                            j += 1
                            moved = time.monotonic()
                            continue
                        waited = time.monotonic()
                        if waited - moved > STALL_S:
                            if self.on_stall is not None:
                                self.on_stall()
                            raise FaultError(f"the stream layer re-keyed nothing for {STALL_S:.0f} s: the stations "
                                             f"wait at {i}/{n} for event {tracked[j][1]} (of "
                                             f"{tracked[j][0].isoformat()}) to show in {self.tracker.topic} "
                                             f"({self.tracker.describe()})")
                        self.publisher.poll(0.02)
                        self.held_s += time.monotonic() - waited
                due = t0 + self.seconds * i / n
                delay = due - time.monotonic()
                if delay > 0:
                    self.publisher.poll(delay)
                self.publisher.publish(kind, rec)
                self.sent = i + 1
            # every event confirmed by the broker, however long a fault keeps it from confirming
            self.unconfirmed = self.publisher.close(timeout=600)
        except BaseException as exc:  # reported by join()
            self.error = exc

    @property
    def fraction(self) -> float:
        return self.sent / max(1, len(self.wl.records))

    def wait_fraction(self, fraction: float, timeout: float = 600.0) -> None:
        deadline = time.monotonic() + timeout
        while self.fraction < fraction and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.error:
            raise self.error
        if self.fraction < fraction and self._thread.is_alive():
            raise FaultError(f"the stations handed over {self.sent}/{len(self.wl.records)} events in "
                             f"{timeout:.0f} s, not the {fraction:.0%} awaited")

    def join(self, timeout: float = 600.0) -> dict:
        self._thread.join(timeout)
        if self.error:
            raise self.error
        if self._thread.is_alive():
            raise FaultError(f"the stations did not finish within {timeout:.0f} s "
                             f"({self.sent}/{len(self.wl.records)} handed over)")
        return {**self.publisher.stats(), "unconfirmed": self.unconfirmed, "held_s": round(self.held_s, 1)}


# =========================================================================== processes
_GIVEN: set[int] = set()


def _ephemeral_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port_run(n: int = 1, avoid: Iterable[int] = ()) -> int:
    """The first of ``n`` consecutive free ports (a multi-broker stack takes port, port+1, ...).

    Drawn at random below the kernel's ephemeral range: a port from that range (what binding port 0 gives) is
    free when it is probed, yet any outgoing connection on the machine may take it as its local port before the
    server binds it (seen: a Kafka node of a test cluster exiting at start-up while parallel tests connected).
    A port this process was given before is not given again."""
    avoid = set(avoid) | _GIVEN
    lo, hi = 15000, _ephemeral_start()
    if hi - lo < 1000:
        lo, hi = 1024, 65000
    rng = random.SystemRandom()
    for _ in range(500):
        base = rng.randrange(lo, hi - n)
        ports = range(base, base + n)
        if not avoid.intersection(ports) and all(_free(p) for p in ports):
            _GIVEN.update(ports)
            return base
    raise FaultError(f"no {n} consecutive free ports on 127.0.0.1")


def free_port() -> int:
    return free_port_run(1)


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def clean_env(**overrides: str) -> dict[str, str]:
    """The environment of a child: this one without any YRDBUS_* variable, plus ``overrides``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("YRDBUS_")}
    env.update({"PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}, **overrides)
    return env


def kit_argv(*args: str) -> list[str]:
    """The command line of ``python -m kit.faults ARGS`` in a child that finds the kit (``tests/`` on its path)."""
    boot = f"import sys; sys.path.insert(0, {str(TESTS)!r}); from kit.faults import main; sys.exit(main())"
    return [sys.executable, "-c", boot, *args]


def yrdbus_argv() -> list[str]:
    exe = Path(sys.executable).with_name("yrdbus")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "yrdbus.cli"]


class Proc:
    """One child process of the bus, its output in ``<log_dir>/<name>-<n>.log`` (one file per start)."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path):
        self.name, self.argv, self.env, self.log_dir = name, argv, env, log_dir
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self.exits: list[int] = []

    def start(self, *extra: str, argv: list[str] | None = None) -> "Proc":
        """Start it (again); ``extra`` arguments, or another command line ``argv``, for this start only."""
        if self.alive:
            raise FaultError(f"{self.name} is already running (pid {self.proc.pid})")
        self.starts += 1
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen([*(argv or self.argv), *extra], env=self.env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        return self

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"{self.name}-{self.starts}.log"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.alive else None

    def signal(self, sig: int) -> None:
        if self.alive:
            self.proc.send_signal(sig)

    def kill(self) -> int:
        """SIGKILL, and wait until it is gone; returns its exit status."""
        if self.proc is None:
            return 0
        if self.alive:
            self.proc.send_signal(signal.SIGKILL)
        code = self.proc.wait(30)
        self.exits.append(code)
        return code

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM (a clean stop), SIGKILL after ``timeout``."""
        if self.proc is None:
            return None
        if self.alive:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.send_signal(signal.SIGKILL)
                self.proc.wait(30)
        code = self.proc.returncode
        self.exits.append(code)
        return code

    def wait(self, timeout: float) -> int:
        code = self.proc.wait(timeout)
        self.exits.append(code)
        return code

    def log_text(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.log_dir.glob(f"{self.name}-*.log")))

    def tail(self, lines: int = 25) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


# =========================================================================== the account
@dataclass
class FaultResult:
    """One row of the fault table; ``lost``, ``doubled`` and ``unexpected`` must all be 0."""

    fault: str
    published: int                 # events of the stored kinds the stations published (and the broker confirmed)
    rows: int                      # rows of those events in ClickHouse
    alerts_expected: int           # derived alerts the ground truth asks for
    alerts_found: int              # distinct derived alerts in ClickHouse that match a truth row
    lost: int                      # published events not stored + expected alerts not found
    doubled: int                   # event rows stored more than once + incidents alerted under a second id
    unexpected: int = 0            # rows of events never published + alerts matching no truth row
    alert_reemitted: int = 0       # the same alert id written again (at-least-once; ReplacingMergeTree merges it)
    alert_ids: str = ""            # digest of the set of alert ids found (the same input gives the same ids)
    seconds: float = 0.0
    scale: str = ""
    notes: str = ""
    details: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return (self.lost, self.doubled, self.unexpected) == (0, 0, 0) and self.rows == self.published \
            and self.alerts_found == self.alerts_expected

    def describe(self) -> str:
        return json.dumps(asdict(self), indent=1, default=str)


COLUMNS = [("fault", "fault"), ("published", "events published"), ("rows", "rows in ClickHouse"),
           ("alerts_expected", "alerts expected"), ("alerts_found", "alerts found"), ("lost", "lost"),
           ("doubled", "doubled"), ("unexpected", "unexpected"), ("alert_reemitted", "alerts re-emitted (same id)"),
           ("alert_ids", "alert ids (digest)"), ("seconds", "seconds")]


def table(results: list[FaultResult | dict], markdown: bool = True) -> str:
    """The fault table, as Markdown (``make faults`` prints it; docs/faults.md records one)."""
    rows = [r if isinstance(r, dict) else asdict(r) for r in results]
    head = [h for _, h in COLUMNS]
    body = [[f"{r[k]:.0f}" if k == "seconds" else str(r[k]) for k, _ in COLUMNS] for r in rows]
    if not markdown:
        widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]
        line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths))  # noqa: E731
        return "\n".join([line(head), line(["-" * w for w in widths]), *map(line, body)])
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" if i == 0 else "---:" for i in range(len(head))) + "|"]
    out += ["| " + " | ".join(b) + " |" for b in body]
    return "\n".join(out)


# =========================================================================== a private copy of the bus
class Bus:
    """Topics under a private prefix on a broker, one stream worker, one sink with its own store."""

    def __init__(self, bootstrap: str, root: Path, name: str, *, replication: int = 1, partitions: int = 3,
                 sink_batch_rows: int = 1000, sink_env: dict[str, str] | None = None,
                 store_dir: Path | None = None, harness_sink: bool = False):
        self.bootstrap = bootstrap
        self.root = Path(root)
        self.name = name
        tag = uuid.uuid4().hex[:6]
        self.prefix = f"f{tag}."
        self.app_id = f"f{tag}-streams"
        self.group = f"f{tag}-sink"
        self._worker_caught_up: CaughtUp | None = None
        self.replication = replication
        self.partitions = partitions
        self.store_dir = Path(store_dir) if store_dir else self.root / "clickhouse"
        self.query_port = free_port()
        self.log_dir = self.root / "log"
        base = dict(YRDBUS_KAFKA_BOOTSTRAP=bootstrap, YRDBUS_VAR_DIR=str(self.root / "var"))
        # INFO: the worker's group membership (joins, assignments, recovery) is in its log when a test fails
        worker_argv = yrdbus_argv() + ["worker", "--prefix", self.prefix, "--app-id", self.app_id,
                                       "--partitions", str(partitions), "--replication", str(replication),
                                       "--data-dir", str(self.root / "worker")]
        self.worker = Proc("worker", worker_argv, clean_env(**base, YRDBUS_WORKER_LOGLEVEL="info"), self.log_dir)
        self.sink_cmd = ["sink", "--prefix", self.prefix, "--group", self.group, "--port", str(self.query_port)]
        sink_argv = (kit_argv("sink", "--") if harness_sink else yrdbus_argv()) + self.sink_cmd
        self.sink_env = clean_env(**base, YRDBUS_CLICKHOUSE_URL=f"chdb://{self.store_dir}",
                                  YRDBUS_SINK_BATCH_ROWS=str(sink_batch_rows), YRDBUS_SINK_BATCH_AGE_S="0.5",
                                  **(sink_env or {}))
        self.sink = Proc("sink", sink_argv, self.sink_env, self.log_dir)
        self._client = None
        self.tracker: RekeyTracker | None = None

    # ------------------------------------------------------------------ set-up
    def apply_topics(self) -> list:
        from schemas import topics

        return topics.apply(self.bootstrap, prefix=self.prefix, timeout=60)

    def describe_topics(self) -> list[dict]:
        from schemas import topics

        return topics.describe(self.bootstrap, prefix=self.prefix)

    def stations(self, wl: Workload, seconds: float) -> Stations:
        """The stations, held within ``RUN_AHEAD_MS`` of what this bus's worker has re-keyed."""
        if self.tracker is None:
            self.tracker = RekeyTracker(self.bootstrap, self.prefix + "streams.subjects").start()
        return Stations(self.bootstrap, self.prefix, wl, seconds, tracker=self.tracker, on_stall=self.dump_worker)

    def dump_worker(self) -> None:
        """Have the worker write every thread's stack and every asyncio task's into its log (SIGUSR1, mode's
        Worker), so that a stalled worker's log says where it waits."""
        if self.worker.alive:
            size = self.worker.log_path.stat().st_size
            self.worker.signal(signal.SIGUSR1)
            deadline = time.monotonic() + 10
            while self.worker.log_path.stat().st_size == size and time.monotonic() < deadline:
                time.sleep(0.1)
            time.sleep(1.0)     # the rest of the dump

    def close(self) -> None:
        if self.tracker is not None:
            self.tracker.stop()
        for p in (self.worker, self.sink):
            try:
                p.stop(20)
            except Exception:
                p.kill()

    # ------------------------------------------------------------------ reading the store
    def client(self):
        """A client of the sink's live query endpoint (the sink process owns the store)."""
        import clickhouse_connect

        if self._client is None:
            self._client = clickhouse_connect.get_client(host="127.0.0.1", port=self.query_port, database="yrdbus",
                                                         connect_timeout=5, send_receive_timeout=60)
        return self._client

    def query(self, sql: str, parameters: dict | None = None, attempts: int = 3) -> list:
        for attempt in range(attempts):
            try:
                return self.client().query(sql, parameters=parameters or {}).result_rows
            except Exception:
                self._client = None     # a new connection next time
                if attempt == attempts - 1:
                    raise
                time.sleep(1.0)

    def progress(self) -> dict:
        """Distinct events and derived alerts stored so far (-1 while the endpoint cannot say)."""
        try:
            n = sum(self.query(f"SELECT uniqExact(event_id) FROM {t}")[0][0] for t in EVENT_TABLES.values())
            a = self.query("SELECT uniqExact(alert_id) FROM derived_alerts")[0][0]
            return {"events": n, "alerts": a}
        except Exception as exc:
            self._client = None
            return {"events": -1, "alerts": -1, "error": str(exc).splitlines()[0][:200] if str(exc) else repr(exc)}

    def caught_up(self) -> bool:
        """Whether the worker's and the sink's groups have committed everything there is to read (the worker's
        own topics: everything they held once the sources were done, ``CaughtUp``)."""
        from connectors.store import tables as T
        from schemas import topics

        if self._worker_caught_up is None:
            self._worker_caught_up = CaughtUp(self.bootstrap, self.app_id,
                                              [self.prefix + t for t in topics.source_topics()],
                                              [self.prefix + "streams.subjects", self.prefix + "streams.regional"])
        named, _ = T.sink_topics(self.prefix)
        return self._worker_caught_up() and committed_everything(self.bootstrap, self.group, named)

    def wait_complete(self, wl: Workload, timeout: float, *, check: Callable[[], None] | None = None) -> dict:
        """Until every event and every expected alert is stored and both groups have read everything.

        Returns the last progress seen; a timeout is not raised here: ``verify`` then says what is missing.
        ``check`` is called on every round (e.g. to fail early when a process died).
        """
        deadline = time.monotonic() + timeout
        last: dict = {}
        while time.monotonic() < deadline:
            if check:
                check()
            last = self.progress()
            if last["events"] >= wl.stored_kinds and last["alerts"] >= len(wl.truth):
                try:
                    if self.caught_up():
                        # one more look: nothing may still be on its way to the store
                        time.sleep(1.0)
                        if self.caught_up():
                            return {**last, "complete": True}
                except Exception as exc:  # the broker may be in the middle of a fault
                    last["error"] = str(exc)[:200]
            time.sleep(1.0)
        return {**last, "complete": False}

    def verify(self, wl: Workload, fault: str, *, published: int | None = None, started: float | None = None,
               notes: str = "") -> FaultResult:
        """Read the store back and account for every event and every expected alert, by id."""
        from streams.evaluate import score

        lost = doubled = unexpected = rows = 0
        per_table = {}
        for table, want in wl.expected.items():
            got = dict(self.query(f"SELECT toString(event_id), count() FROM {table} GROUP BY event_id"))
            missing = want - set(got)
            extra = set(got) - want
            dup = sum(c - 1 for c in got.values() if c > 1)
            rows += sum(c for i, c in got.items() if i in want)
            lost += len(missing)
            doubled += dup
            unexpected += sum(got[i] for i in extra)
            per_table[table] = {"expected": len(want), "distinct": len(got), "missing": sorted(missing)[:5],
                                "doubled": dup, "unexpected": sorted(extra)[:5]}
        # re-emissions: rows of one version beyond the first (the version withdrawing an alert is not one)
        raw = dict(self.query("SELECT concat(toString(alert_id), ':', status), count() FROM derived_alerts "
                              "GROUP BY alert_id, status"))
        cols = ("alert_id", "kind", "must_act", "inform", "subject", "conveyance_id", "pattern", "port_code",
                "occurred_at", "status")
        alerts = [dict(zip(cols, r)) for r in self.query(
            "SELECT toString(alert_id), kind, must_act, inform, subject, conveyance_id, pattern, port_code, "
            "occurred_at, status FROM derived_alerts FINAL")]
        for a in alerts:
            at = a["occurred_at"]
            if isinstance(at, datetime):
                a["occurred_at"] = int((at if at.tzinfo else at.replace(tzinfo=timezone.utc)).timestamp() * 1000)
        result = score(wl.truth, alerts)
        rows_matched = [row for sc in result["scenarios"] for row in sc["rows"]]
        alerts_lost = sum(1 for row in rows_matched if not row["matched"])
        matched_ids = {i for row in rows_matched for i in row["alert_ids"]}
        found = len(matched_ids)
        # Truth rows may overlap (d-1's two TREND_RISING rows each accept both regions' alerts), so an alert
        # id can match two rows: an incident alerted twice shows as more distinct matching ids than rows met.
        alerts_doubled = max(0, found - (len(wl.truth) - alerts_lost))
        false_alerts = len(result["false_alerts"])
        ids = sorted({a["alert_id"] for a in alerts})
        return FaultResult(
            fault=fault, published=wl.stored_kinds if published is None else published, rows=rows,
            alerts_expected=len(wl.truth), alerts_found=found, lost=lost + alerts_lost,
            doubled=doubled + alerts_doubled, unexpected=unexpected + false_alerts,
            alert_reemitted=sum(c - 1 for c in raw.values() if c > 1),
            alert_ids=hashlib.sha256("\n".join(ids).encode()).hexdigest()[:10],
            seconds=(time.monotonic() - started) if started else 0.0, scale=current_scale().name, notes=notes,
            details={"tables": per_table, "alert_ids": {a["alert_id"]: a["kind"] for a in alerts}, "false_alerts": result["false_alerts"][:5],
                     "missed": [(sc["scenario_id"], row["expected_alert_kind"]) for sc in result["scenarios"]
                                for row in sc["rows"] if not row["matched"]],
                     "precision": result["precision"], "recall": result["recall"]})


class CaughtUp:
    """A predicate: ``group`` has committed every record of ``sources`` and, of ``internal`` (the stages' own
    topics), every record they held once the sources were done. The workers write a tick to the internal topics
    every 2 s, so their ends never stay put: held to the ends of the moment, a check passes only when a commit
    happens to fall between a tick and the look, which beside other processes took minutes (the broker-restart
    fault waited 2 min for two such passes a second apart). Ask the same object again: the ends are noted at the
    first look with the sources done, and forgotten when the sources are not done any more."""

    def __init__(self, bootstrap: str, group: str, sources: list[str], internal: list[str],
                 config: dict | None = None):
        self.bootstrap, self.group, self.sources, self.internal = bootstrap, group, sources, internal
        self.config = config
        self.marks: dict | None = None

    def __call__(self) -> bool:
        from confluent_kafka import KafkaException

        try:
            if not committed_everything(self.bootstrap, self.group, self.sources, self.config):
                self.marks = None
                return False
            if self.marks is None:
                self.marks = end_offsets(self.bootstrap, self.internal, self.config)
            return committed_past(self.bootstrap, self.group, self.marks, self.config)
        except KafkaException:   # the group coordinator is moving (a young or restarted broker): ask again later
            return False


def end_offsets(bootstrap: str, topic_names: list[str], config: dict | None = None) -> dict[tuple[str, int], int]:
    """The end offset of every partition of these topics."""
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "yrdbus-faults-ends", "enable.auto.commit": False,
                  "socket.timeout.ms": 10000, **(config or {})})
    try:
        md = c.list_topics(timeout=10)
        out = {}
        for t in topic_names:
            meta = md.topics.get(t)
            if meta is None or meta.error is not None:
                continue
            for p in meta.partitions:
                out[(t, p)] = c.get_watermark_offsets(TopicPartition(t, p), timeout=10)[1]
        return out
    finally:
        c.close()


def committed_past(bootstrap: str, group: str, marks: dict[tuple[str, int], int], config: dict | None = None) -> bool:
    """Whether ``group``'s committed offsets have reached these offsets (partition -> offset)."""
    from confluent_kafka import Consumer, TopicPartition

    if not marks:
        return True
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False,
                  "socket.timeout.ms": 10000, **(config or {})})
    try:
        got = c.committed([TopicPartition(t, p) for t, p in marks], timeout=10)
        return all(marks[(tp.topic, tp.partition)] <= 0 or tp.offset >= marks[(tp.topic, tp.partition)] for tp in got)
    finally:
        c.close()


def committed_everything(bootstrap: str, group: str, topic_names: list[str], config: dict | None = None) -> bool:
    """Whether ``group``'s committed offsets have reached the end of every partition of these topics."""
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False,
                  "socket.timeout.ms": 10000, **(config or {})})
    try:
        md = c.list_topics(timeout=10)
        tps = []
        for t in topic_names:
            meta = md.topics.get(t)
            if meta is None or meta.error is not None:
                continue
            tps += [TopicPartition(t, p) for p in meta.partitions]
        for tp in c.committed(tps, timeout=10):
            _, hi = c.get_watermark_offsets(TopicPartition(tp.topic, tp.partition), timeout=10)
            if hi > 0 and tp.offset < hi:
                return False
        return True
    finally:
        c.close()


def group_ready(bootstrap: str, group: str, members: int = 1, topics: Iterable[str] = ()) -> bool:
    """Whether ``group`` has ``members`` members holding partitions (a worker that has joined and been
    assigned) and, between them, at least one partition of each of ``topics``."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap, "socket.timeout.ms": 10000})
    try:
        g = admin.describe_consumer_groups([group])[group].result(timeout=10)
    except Exception:
        return False
    holding = [m for m in g.members if m.assignment and m.assignment.topic_partitions]
    assigned = {tp.topic for m in holding for tp in m.assignment.topic_partitions}
    return len(holding) >= members and set(topics) <= assigned


def topic_records(bootstrap: str, topic: str) -> int:
    """Records on ``topic`` now (high minus low watermark, summed over its partitions); 0 if it is not there."""
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"yrdbus-faults-{uuid.uuid4().hex[:6]}",
                  "socket.timeout.ms": 10000})
    try:
        meta = c.list_topics(topic, timeout=10).topics.get(topic)
        if meta is None or meta.error is not None:
            return 0
        total = 0
        for p in meta.partitions:
            lo, hi = c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            total += max(0, hi - lo)
        return total
    finally:
        c.close()


def busiest_leader(bootstrap: str, topic_names: list[str]) -> int:
    """The broker leading the most partitions of these topics (the one whose loss moves the most)."""
    from confluent_kafka.admin import AdminClient

    md = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=10)
    leaders = Counter(p.leader for t in topic_names if t in md.topics for p in md.topics[t].partitions.values())
    if not leaders:
        raise FaultError(f"no partition of {len(topic_names)} topics has a leader")
    return leaders.most_common(1)[0][0]


def wait_for(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.25):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = predicate()
        if got:
            return got
        time.sleep(interval)
    raise FaultError(f"timed out after {timeout:.0f} s waiting for {what}")


# =========================================================================== the store's disk
class SmallDisk:
    """A tmpfs of ``size_mb`` mounted at ``path`` (root only): a disk that can be filled on purpose."""

    def __init__(self, path: Path, size_mb: int):
        self.path = Path(path)
        self.size_mb = size_mb
        self.mounted = False
        self.ballast = self.path / "ballast.bin"

    def mount(self) -> "SmallDisk":
        self.path.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={self.size_mb}m,mode=0755", "tmpfs",
                               str(self.path)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise FaultError(f"cannot mount a {self.size_mb} MiB tmpfs at {self.path} (root is needed): "
                             f"{proc.stderr.strip()}")
        self.mounted = True
        return self

    def free_bytes(self) -> int:
        st = os.statvfs(self.path)
        return st.f_bavail * st.f_frsize

    def fill(self, leave_bytes: int) -> int:
        """Write a ballast file until only about ``leave_bytes`` are free; returns the ballast's size."""
        chunk = b"\0" * (1 << 20)
        with open(self.ballast, "ab") as f:
            while self.free_bytes() > leave_bytes + len(chunk):
                f.write(chunk)
                f.flush()
            rest = self.free_bytes() - leave_bytes
            if rest > 0:
                f.write(b"\0" * rest)
            f.flush()
            os.fsync(f.fileno())
        return self.ballast.stat().st_size

    def empty(self) -> None:
        self.ballast.unlink(missing_ok=True)

    def unmount(self) -> None:
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.path)], capture_output=True)
            self.mounted = False


# =========================================================================== harness processes
def _store_outage_handlers(url: str, database: str = "yrdbus") -> None:
    """SIGUSR1: detach every table the sink writes (ClickHouse refuses every insert and every read of them);
    SIGUSR2: attach them again. The DDL runs on a thread with its own handle to the process's engine, never
    inside the signal handler (which may interrupt the sink in the middle of a client call)."""
    import queue

    from connectors.store import client as store

    path = str(store.embedded_path(url))
    orders: queue.Queue = queue.Queue()
    marker = Path(os.environ.get("YRDBUS_FAULTS_STATE", path + ".outage"))

    def run() -> None:
        import chdb

        while True:
            order = orders.get()
            # a handle of its own for each order, closed after it: none is left open beside the sink's when the
            # process exits (a second open handle at exit is one more thing the engine's shutdown waits on)
            conn = chdb.connect(path)
            names = SINK_TABLES if order == "detach" else tuple(reversed(SINK_TABLES))
            try:
                for t in names:
                    try:
                        conn.query(f"{order.upper()} TABLE {database}.{t}", "TabSeparated")
                    except Exception as exc:
                        print(f"faults: {order} {database}.{t}: {str(exc).splitlines()[0]}", flush=True)
            finally:
                conn.close()
            marker.write_text(order + "\n")
            print(f"faults: store {'away' if order == 'detach' else 'back'} ({order} {len(names)} tables)",
                  flush=True)

    threading.Thread(target=run, name="store-outage", daemon=True).start()
    signal.signal(signal.SIGUSR1, lambda *_: orders.put("detach"))
    signal.signal(signal.SIGUSR2, lambda *_: orders.put("attach"))


def _crash_after_inserts(n: int) -> None:
    """Make the sink of this process die (SIGKILL) right after its ``n``-th insert, before it dead-letters what the
    insert set aside and commits the batch's offsets: the crash a replay must store exactly once."""
    from connectors.store.sink import Sink

    write = Sink._write
    done = [0]

    def crashing_write(self, *args, **kwargs):
        result = write(self, *args, **kwargs)
        done[0] += 1
        if done[0] >= n:
            os.kill(os.getpid(), signal.SIGKILL)
        return result

    Sink._write = crashing_write


def check_store(folder: Path, database: str = "yrdbus") -> dict:
    """Open a store folder in this (fresh) process: CHECK TABLE on every MergeTree table, and the row counts."""
    from connectors.store import client as store

    client = store.get_client(f"chdb://{folder}")
    tables = [r[0] for r in client.query(
        "SELECT name FROM system.tables WHERE database = {db:String} AND engine LIKE '%MergeTree%' ORDER BY name",
        parameters={"db": database}).result_rows]
    out = {"tables": {}, "broken": []}
    for t in tables:
        # one row per part (part, is_passed, message); an empty table answers one empty row
        res = client.query(f"CHECK TABLE {database}.{t} SETTINGS check_query_single_value_result = 0").result_rows
        ok = all(str(r[1] if len(r) > 1 else r[0]).strip() not in ("0", "False", "false") for r in res)
        n = client.query(f"SELECT count() FROM {database}.{t}").result_rows[0][0]
        out["tables"][t] = {"ok": ok, "rows": n}
        if not ok:
            out["broken"].append(t)
    detached = client.query("SELECT table, name, reason FROM system.detached_parts WHERE database = {db:String}",
                            parameters={"db": database}).result_rows
    out["detached_parts"] = [list(map(str, r)) for r in detached]
    return out


def main(argv: list[str] | None = None) -> int:
    app = typer.Typer(help="The fault suite's harness processes (tests/faults).", no_args_is_help=True,
                      add_completion=False)

    @app.command("sink", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
    def sink(ctx: typer.Context,
             crash_after_inserts: Optional[int] = typer.Option(
                 None, "--crash-after-inserts", min=1,
                 help="SIGKILL the process after this many inserts, each before its offsets are committed.")
             ) -> None:
        """`yrdbus sink ARGS`, with SIGUSR1 taking the store's tables away under it and SIGUSR2 bringing them back
        (options of the harness before ``--``, the sink's after it)."""
        from schemas.settings import get_settings

        _store_outage_handlers(get_settings().clickhouse_url)
        if crash_after_inserts is not None:
            _crash_after_inserts(crash_after_inserts)
        from yrdbus.cli import app as yrdbus_app

        yrdbus_app(args=list(ctx.args), prog_name="yrdbus")

    @app.command("check-store")
    def check(folder: Path = typer.Argument(..., help="A chdb store folder no running process owns.")) -> None:
        """CHECK TABLE on every table of a store folder, the row counts, and any detached (broken) parts; JSON."""
        result = check_store(folder)
        typer.echo(json.dumps(result))
        raise typer.Exit(1 if result["broken"] else 0)

    @app.command("table")
    def show(results: Path = typer.Argument(..., help="A results file (JSON lines) written by tests/faults."),
             markdown: bool = typer.Option(True, "--markdown/--plain", help="Markdown (default) or plain columns.")
             ) -> None:
        """Print the fault table of a results file."""
        rows = [json.loads(line) for line in results.read_text().splitlines() if line.strip()]
        typer.echo(table(rows, markdown=markdown))

    app(args=argv, prog_name="python -m kit.faults")
    return 0


if __name__ == "__main__":
    sys.exit(main())
