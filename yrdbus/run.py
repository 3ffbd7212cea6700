"""`yrdbus run`: the whole bus in one command, on the embedded default.

It brings the stack up, applies the topics, starts the ClickHouse sink (which
migrates the schema and serves the live query endpoint), the stream worker(s)
and the alert gateway, then the simulator with its scripted incidents. It shows
live progress, stops cleanly on Ctrl-C or after ``--duration``, and ends with a
summary read back from ClickHouse and scored against the simulator's ground truth.

A sink, worker or gateway that dies is started again (they are made to be: the
sink and the worker commit what they wrote and replay the rest), after a backoff,
and said on one line; one that keeps dying (RESTARTS: a sixth death within 5
minutes) stops the run with a failing status. The simulator is not restarted.

A simulated run starts from empty topics and an empty store (the simulated
calendar restarts, so state from an earlier simulated run would make its
events late and its alerts repeats) unless ``--keep-data``; `--no-simulate`
never deletes anything.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import typer
from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table

from connectors.store import client as store
from schemas import topics
from schemas.contract import SOURCE_KINDS
from schemas.reference import REGIONS
from schemas.settings import Settings
from yrdbus.stack import KafkaStack
from yrdbus.supervisor import ChildSpec, RestartPolicy, Supervisor

STREAMS_APP_ID = "yrdbus-streams"
SEVERITY_STYLE = {"CRITICAL": "bold white on red", "HIGH": "bold red", "MEDIUM": "yellow", "LOW": "cyan"}
RAW_TABLES = {"clearance": "clearances", "alert": "alerts", "case": "cases"}
HOUR_MS = 3_600_000
#: a long-running child that dies is started again after 1, 2, 4 ... up to 30 s (1 s again once it had
#: stayed up a minute); the sixth death within 5 minutes is a crash loop, which ends the run
RESTARTS = RestartPolicy(max_restarts=5, window_s=300.0, backoff_s=1.0, backoff_max_s=30.0, reset_after_s=60.0)


class CrashLoop(RuntimeError):
    """A child kept dying: the run stops."""


# --------------------------------------------------------------------------- self check
def self_check(settings: Settings, echo=typer.echo) -> dict:
    """A publish/consume round trip on the broker and a write/read on ClickHouse."""
    from confluent_kafka import Consumer, Producer

    run_id = uuid.uuid4().hex[:8]
    topic = "yrdbus.selfcheck"
    n = 100
    from schemas.kafka_config import kafka_security

    security = kafka_security(settings)
    producer = Producer({"bootstrap.servers": settings.bootstrap, "enable.idempotence": True, "acks": "all",
                         **security})
    t0 = time.perf_counter()
    for i in range(n):
        producer.produce(topic, key=f"{run_id}-{i}".encode(), value=f"{run_id} message {i}".encode())
    remaining = producer.flush(30)
    if remaining:
        raise RuntimeError(f"{remaining} self-check messages were not delivered within 30 s")
    consumer = Consumer({"bootstrap.servers": settings.bootstrap, "group.id": f"yrdbus-selfcheck-{run_id}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False, **security})
    consumer.subscribe([topic])
    seen = 0
    deadline = time.monotonic() + 30
    while seen < n and time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is None or msg.error():
            continue
        if msg.value().startswith(run_id.encode()):
            seen += 1
    consumer.close()
    kafka_ms = (time.perf_counter() - t0) * 1000
    echo(f"Kafka round trip: {n} messages produced to '{topic}' and consumed back: {seen}/{n} ({kafka_ms:.0f} ms)")

    client = store.get_client(settings.clickhouse_url)
    now = datetime.now(timezone.utc)
    client.command("CREATE DATABASE IF NOT EXISTS yrdbus_selfcheck")
    client.command("CREATE TABLE IF NOT EXISTS yrdbus_selfcheck.roundtrip (run_id String, n UInt32, "
                   "at DateTime64(3, 'UTC')) ENGINE = MergeTree ORDER BY (run_id, n)")
    client.insert("yrdbus_selfcheck.roundtrip", [[run_id, i, now] for i in range(n)],
                  column_names=["run_id", "n", "at"])
    rows = client.query("SELECT count() FROM yrdbus_selfcheck.roundtrip WHERE run_id = {r:String}",
                        parameters={"r": run_id}).result_rows[0][0]
    echo(f"ClickHouse write/read at {store.describe(settings.clickhouse_url)}: {n} rows written, {rows} read back")
    return {"kafka_sent": n, "kafka_received": seen, "clickhouse_rows": rows}


# --------------------------------------------------------------------------- options
@dataclass
class RunOptions:
    duration: float | None = None
    simulate: bool = True
    workers: int = 1
    speed: float = 3600.0
    # A tenth of the region's 2017 volume: what one stream worker keeps up with on a small machine
    # while the broker, the sink and the simulator share its cores (docs/benchmarks.md).
    scale: float = 0.1
    seed: int = 7
    scenarios: str = "all"
    keep_data: bool = False
    drain_s: float | None = None
    json_summary: bool = False
    live: bool | None = None          # None: when stdout is a terminal
    lang: str = "zh-CN"               # the live view's and the summary's language (yrdbus/words.py)


def _yrdbus() -> list[str]:
    exe = Path(sys.executable).with_name("yrdbus")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "yrdbus.cli"]


def _drain_quiet_s() -> float:
    """Seconds without lag before a timed run stops: long enough for both stages to see their upstreams go
    idle (the worker's rule set: idle_partition_seconds, global_idle_seconds) and read a tick (2 s) after."""
    from streams import ruleset

    et = ruleset.load(os.environ.get("YRDBUS_RULES") or None)["event_time"]
    return max(float(et.get("global_idle_seconds", 10)), float(et.get("idle_partition_seconds", 10))) + 3


def _plan(opts: RunOptions) -> tuple[float | None, float]:
    """(simulator wall seconds, drain budget) for a run of opts.duration seconds."""
    if opts.duration is None:
        return None, opts.drain_s or 60.0
    drain = opts.drain_s if opts.drain_s is not None else max(15.0, 0.25 * opts.duration)
    # Start-up (broker, topics, workers joining) takes some 15-25 s of the budget.
    sim = max(5.0, opts.duration - drain - 20.0)
    return sim, drain


# --------------------------------------------------------------------------- fresh data
#: how long a timed run's drain may go on past its planned end while the worker or the sink is behind
DRAIN_CAP_S = 300.0
MARKER = "simulated.json"     # under <var>/run: the simulated calendar of the last run, for --keep-data


def _reset_simulated_data(settings: Settings, stack: KafkaStack, echo) -> None:
    """A simulated run starts from empty topics, an empty store and no worker state, whatever is there: events
    of an earlier run, or of `yrdbus simulate`, would be read (and counted) again."""
    folders = [stack.home, settings.var_dir / "streams"]
    if store.is_embedded(settings.clickhouse_url):
        folders.append(store.embedded_path(settings.clickhouse_url))
    if not any(f.exists() for f in folders):
        return
    echo("A simulated run starts from empty topics and an empty store: replacing what is there "
         "(topics, store, worker state); --keep-data keeps it.")
    stack.down(echo=lambda m: None)
    stack.reset()
    for folder in folders[1:]:
        shutil.rmtree(folder, ignore_errors=True)
    (settings.var_dir / "run" / MARKER).unlink(missing_ok=True)


#: the rules' longest memory of an incident (a flag's active days, the fraud-spread cooldown: streams/rules.toml)
KEPT_RUN_GAP_DAYS = 30


def _continued(settings: Settings, opts: RunOptions) -> tuple[int, int | None]:
    """(seed, simulated start in ms or None for the simulator's own) of this run's simulator. A run that keeps
    the data of an earlier simulated run goes on with its calendar, with the next seed, so that no event and no
    event id comes a second time: it starts on the first Monday (the simulator's own start is one) at least
    ``KEPT_RUN_GAP_DAYS`` past the latest event time the earlier run can have reached, so that the rules' memory
    of its incidents (baselines, cooldowns, active flags) has lapsed and this run's incidents stand on their own."""
    marker = settings.var_dir / "run" / MARKER
    if not (opts.keep_data and marker.is_file()):
        return opts.seed, None
    prev = json.loads(marker.read_text())
    reached = prev.get("reached_ms") or _reached_bound(prev, time.time())
    day = 24 * HOUR_MS
    first_day = -(-(int(reached) + KEPT_RUN_GAP_DAYS * day) // day)        # days since the epoch, rounded up
    monday = first_day + (4 - first_day) % 7                               # 1970-01-01 was a Thursday: day 4 is a Monday
    return int(prev["seed"]) + 1, monday * day


def _reached_bound(calendar: dict, now_s: float) -> int:
    """The latest event time a simulator started as ``calendar`` says can have reached by ``now_s``: it
    publishes at most ``speed`` simulated seconds a wall second, and no further than its planned end."""
    bound = calendar["start_ms"] + max(0.0, now_s - calendar["wall_started_s"]) * calendar["speed"] * 1000
    if calendar.get("planned_end_ms"):
        bound = min(bound, calendar["planned_end_ms"])
    return int(bound)


def _gateway_access(settings: Settings, echo) -> tuple[Path, Path | None]:
    """The gateway's access file; a run without one gets a demo file with one all-regions token."""
    configured = Path(settings.gateway_tokens_file)
    if configured.is_file():
        return configured, None
    from connectors.gateway.access import hash_token, new_token

    run_dir = settings.var_dir / "run"
    run_dir.mkdir(parents=True, exist_ok=True)
    access = run_dir / "gateway.toml"
    token_file = run_dir / "gateway.token"
    if not (access.is_file() and token_file.is_file()):
        token = new_token("command-centre")
        token_file.touch(mode=0o600)
        token_file.write_text(token + "\n")
        access.write_text(
            "# Made by `yrdbus run` because no access file was configured (YRDBUS_GATEWAY_TOKENS_FILE).\n"
            "# The token itself is in gateway.token beside this file (mode 600).\n"
            "[[tokens]]\n"
            'id = "command-centre"\n'
            f'hash = "{hash_token(token)}"\n'
            "all = true\n"
            'note = "regional command centre (demo run)"\n')
        echo(f"No gateway access file configured: made {access} with one all-regions token in {token_file}.")
    return access, token_file


# --------------------------------------------------------------------------- the run
_ALERT_FIELDS = ("alert_id", "kind", "severity", "must_act", "inform", "subject", "conveyance_id", "pattern",
                 "port_code", "occurred_at", "emitted_at", "status", "status_reason")


def stored_alerts(client, since: str, database: str = "yrdbus") -> tuple[list[dict], list[dict]]:
    """The derived alerts stored since ``since`` (ingestion time, UTC), each as its last version by emitted_at:
    (those that stand, those withdrawn)."""
    last = ", ".join(f"argMax({f}, emitted_at)" for f in _ALERT_FIELDS[1:])
    rows = client.query(
        f"SELECT alert_id, {last} FROM {database}.derived_alerts "
        "WHERE ingested_at >= {since:DateTime64(3, 'UTC')} GROUP BY alert_id ORDER BY alert_id",
        parameters={"since": since}).result_rows
    alerts = [dict(zip(_ALERT_FIELDS, row)) for row in rows]
    return ([a for a in alerts if a["status"] != "WITHDRAWN"], [a for a in alerts if a["status"] == "WITHDRAWN"])


class BusRun:
    def __init__(self, settings: Settings, opts: RunOptions, console: Console | None = None):
        from yrdbus.words import Words

        self.words = Words(opts.lang)
        self.settings = settings
        self.opts = opts
        # Piped output (logs, CI) is not wrapped at 80 columns, so each message stays on one line.
        self.console = console or Console(soft_wrap=not sys.stdout.isatty())
        self.var = settings.var_dir
        self.run_dir = self.var / "run"
        self.truth_file = self.run_dir / "truth.jsonl"
        self.sup = Supervisor(settings.log_dir, restart=RESTARTS)
        self.monitor = None
        self.started_wall = datetime.now(timezone.utc)
        self.t0 = time.monotonic()
        self.messages: list[str] = []
        self.interrupted = False
        self.crash_loop: list[str] = []
        self.token_file: Path | None = None
        self.calendar: dict | None = None

    def say(self, text: str) -> None:
        self.messages.append(text)
        self.console.print(text)

    # ------------------------------------------------------------------ phases
    def start(self) -> None:
        s = self.settings
        stack = KafkaStack(s)
        if self.opts.simulate and not self.opts.keep_data and s.embedded_kafka:
            _reset_simulated_data(s, stack, self.say)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        # Before any Kafka client exists in this process: hashing the demo token (scrypt) after librdkafka
        # had started its threads and a child had been forked crashed this process on a fresh store.
        access, self.token_file = _gateway_access(s, self.say)
        stack.up(echo=self.say)
        changes = topics.apply(s.bootstrap)
        self.say(f"Topics applied: {len(changes)} change(s).")

        env = {"YRDBUS_KAFKA_BOOTSTRAP": s.bootstrap, "YRDBUS_VAR_DIR": str(self.var.resolve()),
               "YRDBUS_CLICKHOUSE_URL": s.clickhouse_url, "YRDBUS_GATEWAY_TOKENS_FILE": str(access.resolve())}
        if s.embedded_kafka:
            env["YRDBUS_KAFKA_BOOTSTRAP"] = s.bootstrap
        y = _yrdbus()
        self.sup.base_env.update(env)
        self.sup.start(ChildSpec("sink", y + ["sink", "--port", str(s.query_port)]))
        for i in range(self.opts.workers):
            self.sup.start(ChildSpec(f"worker-{i + 1}", y + [
                "worker", "--app-id", STREAMS_APP_ID, "--metrics-port", str(s.worker_metrics_port + i),
                "--data-dir", str((self.var / "streams" / f"worker-{i + 1}").resolve())]))
        self.sup.start(ChildSpec("gateway", y + ["gateway", "--port", str(s.gateway_port), "--log-level", "warning"]))

        self._wait_ready()
        # The monitor's first look comes after the processes are ready: right after the topics were created,
        # while their leaders were still being elected, its first reading crashed this process (in librdkafka).
        from yrdbus.monitor import BusMonitor
        self.monitor = BusMonitor(s.bootstrap, [STREAMS_APP_ID, s.sink_group])
        self.monitor.snapshot()

        if self.opts.simulate:
            self._start_simulator(y)

    def _start_simulator(self, y: list[str]) -> None:
        from connectors.simulator.engine import DEFAULT_START

        sim_s, _ = _plan(self.opts)
        seed, start_ms = _continued(self.settings, self.opts)
        start_ms = start_ms or int(DEFAULT_START.timestamp() * 1000)
        start = datetime.fromtimestamp(start_ms / 1000, timezone.utc)
        argv = y + ["simulate", "--seed", str(seed), "--speed", str(self.opts.speed), "--scale", str(self.opts.scale),
                    "--start", start.strftime("%Y-%m-%dT%H:%MZ"),
                    "--scenarios", self.opts.scenarios, "--truth", str(self.truth_file.resolve())]
        if sim_s is not None:
            argv += ["--duration", f"{sim_s:.0f}"]
        self.sup.start(ChildSpec("simulator", argv, env={"YRDBUS_DEMO": "true"}, finite=True))
        self.calendar = {"seed": seed, "speed": self.opts.speed, "scale": self.opts.scale, "start_ms": start_ms,
                         "wall_started_s": time.time(),
                         "planned_end_ms": start_ms + int(sim_s * self.opts.speed * 1000) if sim_s else None,
                         "started_at": self.started_wall.isoformat()}
        self._write_calendar()
        self.say(f"Simulator started: seed {seed}, from {start:%Y-%m-%d %H:%M} UTC"
                 + (" (continuing the kept data's calendar)" if self.opts.keep_data and start_ms != int(
                     DEFAULT_START.timestamp() * 1000) else "")
                 + f", {self.opts.speed:g} simulated seconds a second, {self.opts.scale:g} x the 2017 volume, "
                 f"scenarios {self.opts.scenarios}" + (f", {sim_s:.0f} s" if sim_s else ""))

    def _write_calendar(self, final: bool = False) -> None:
        """The simulated calendar of this run (<var>/run/simulated.json); at the end, the latest event time the
        simulator can have reached, where a later --keep-data run goes on from."""
        if self.calendar is None:
            return
        if final:
            self.calendar["reached_ms"] = _reached_bound(self.calendar, time.time())
        (self.run_dir / MARKER).write_text(json.dumps(self.calendar) + "\n")

    def _wait_ready(self, timeout_s: float = 90.0) -> None:
        """Until the sink answers /ping, the gateway answers, and every worker has joined its group."""
        import httpx2 as httpx
        from confluent_kafka.admin import AdminClient

        from schemas.kafka_config import kafka_security

        admin = AdminClient({"bootstrap.servers": self.settings.bootstrap, **kafka_security(self.settings)})
        deadline = time.monotonic() + timeout_s
        want = {"sink": f"http://127.0.0.1:{self.settings.query_port}/ping",
                "gateway": f"http://127.0.0.1:{self.settings.gateway_port}/healthz"}
        ready: set[str] = set()
        while time.monotonic() < deadline:
            self._report_deaths()
            for name, url in want.items():
                if name in ready:
                    continue
                try:
                    if httpx.get(url, timeout=1).status_code < 500:
                        ready.add(name)
                except httpx.HTTPError:
                    pass
            try:
                group = admin.describe_consumer_groups([STREAMS_APP_ID])[STREAMS_APP_ID].result(timeout=5)
                members = [m for m in group.members if m.assignment and m.assignment.topic_partitions]
                if len(members) >= self.opts.workers:
                    ready.add("workers")
            except Exception:
                pass
            if {"sink", "gateway", "workers"} <= ready:
                self.say(f"Sink, query endpoint, gateway and {self.opts.workers} worker(s) ready "
                         f"({time.monotonic() - self.t0:.0f} s).")
                return
            time.sleep(0.5)
        missing = {"sink", "gateway", "workers"} - ready
        self.say(f"[yellow]Not ready after {timeout_s:.0f} s: {', '.join(sorted(missing))}; going on.[/]")

    def _report_deaths(self) -> None:
        """Say each death (a restart on one line); a crash loop stops the run (CrashLoop)."""
        looped = []
        for death in self.sup.check():
            if death.expected:
                continue
            if death.restart:
                self.say(f"[bold yellow]{escape(death.one_line())}[/]")
            elif death.gave_up:
                self.say(f"[bold red]{escape(death.describe())}[/]")
                self.say(f"[bold red]{escape(death.one_line())}: stopping the run.[/]")
                looped.append(death.name)
            else:
                self.say(f"[bold red]{escape(death.describe())}[/]")
        if looped:
            self.crash_loop += looped
            raise CrashLoop(f"crash loop: {', '.join(looped)}")

    def _lag(self) -> int:
        snap = self.monitor.last
        return sum(v for v in snap.lag.values() if v > 0) if snap else 0

    def watch(self) -> None:
        """Live progress until the duration is over or Ctrl-C; then drain the consumers."""
        sim_s, drain_s = _plan(self.opts)
        end = None if self.opts.duration is None else self.t0 + self.opts.duration
        live = self.opts.live if self.opts.live is not None else self.console.is_terminal
        last_line = 0.0

        def tick() -> bool:
            nonlocal last_line
            self.monitor.snapshot()
            self._report_deaths()
            if live:
                display.update(self.render())
            elif time.monotonic() - last_line >= 10:
                last_line = time.monotonic()
                self.console.print(self.progress_line())
            return True

        display = Live(self.render(), console=self.console, refresh_per_second=2, transient=False) if live else None
        if display:
            display.start()
        try:
            sim = self.sup.get("simulator")
            overran = False
            while True:
                tick()
                now = time.monotonic()
                if end is not None and now >= end - drain_s and (sim is None or not sim.running):
                    break
                if end is not None and now >= end:
                    # The simulator publishes for its own wall seconds, counted from when it started: a slow
                    # start-up (a loaded machine) moves its end past the run's. Stopping it there would lose its
                    # ground truth and score nothing, so the run waits for it, then drains in full.
                    if sim is None or not sim.running or now >= end + (sim_s or 0.0) + 60.0:
                        break
                    if not overran:
                        overran = True
                        self.say("The simulator is still publishing (the bus took longer to start than planned); "
                                 "waiting for it to finish before the drain.")
                time.sleep(1.0)
            # Drain: let the worker and the sink catch up with what was published, and the regional stage see
            # its upstreams fall idle (global_idle_seconds, 10 s) and judge the hours and hits that are due. The
            # duration bounds the traffic, not its processing: a worker behind (a loaded machine) is waited for,
            # up to DRAIN_CAP_S past the planned end, so that the summary scores everything that was published.
            left = (end - time.monotonic()) if end else drain_s
            planned_end = time.monotonic() + (drain_s if overran else max(5.0, left))
            hard_end = planned_end + DRAIN_CAP_S
            quiet, quiet_s, said = 0, _drain_quiet_s(), False
            while time.monotonic() < hard_end:
                tick()
                lag = self._lag()
                quiet = quiet + 1 if lag == 0 else 0
                if quiet >= quiet_s:
                    break
                if not said and time.monotonic() >= planned_end and lag > 0:
                    said = True
                    self.say(f"Draining past the planned end: {lag:,} record(s) still to process "
                             f"(waiting at most {DRAIN_CAP_S:.0f} s more).")
                time.sleep(1.0)
            else:
                self.say(f"Stopped with {self._lag():,} record(s) unprocessed: the summary scores what was done.")
        except KeyboardInterrupt:
            self.interrupted = True
            self.say("Interrupted: stopping the bus.")
        finally:
            if display:
                display.stop()

    def stop(self) -> None:
        self.sup.stop()
        self._write_calendar(final=True)
        self._report_deaths()
        if self.monitor:
            self.monitor.close()

    # ------------------------------------------------------------------ display
    def progress_line(self) -> str:
        rates = self.monitor.rates()
        counts = self.monitor.since_start()
        alerts = sum(counts.get("alerts_by_kind", {}).values())
        return (f"[{time.monotonic() - self.t0:5.0f} s] events/s "
                + " ".join(f"{r} {rates[r]:.0f}" for r in REGIONS)
                + f" | derived alerts {alerts} | lag {self._lag()} | dead letters {counts.get('dead_letters', 0)}")

    def render(self):
        m = self.monitor
        rates = m.rates() if m else {r: 0.0 for r in REGIONS}
        counts = m.since_start() if m else {}
        w = self.words
        ev = Table(title=w("run.events_by_region"), expand=True)
        ev.add_column(w("col.region"))
        ev.add_column(w("run.events_per_s"), justify="right")
        for k in SOURCE_KINDS:
            ev.add_column(w("run.kind." + k), justify="right")
        for r in REGIONS:
            row = counts.get("events", {}).get(r, {})
            ev.add_row(w.value(r), f"{rates[r]:,.0f}", *[f"{row.get(k, 0):,}" for k in SOURCE_KINDS])
        al = Table(title=w("run.alerts_by_kind"), expand=True)
        al.add_column(w("col.kind"))
        al.add_column(w("run.count"), justify="right")
        for kind, n in sorted(counts.get("alerts_by_kind", {}).items(), key=lambda kv: -kv[1]):
            al.add_row(w.value(kind), str(n))
        newest = Table(title=w("run.newest_alerts"), expand=True)
        for col in ("severity", "kind", "must_act", "inform", "summary"):
            newest.add_column(w("run.col." + col), overflow="ellipsis", no_wrap=col != "summary")
        for a in (m.last.newest_alerts if m and m.last else [])[:8]:
            gone = a.get("status") == "WITHDRAWN"
            newest.add_row(f"[{SEVERITY_STYLE.get(a['severity'], '')}]{w.value(a['severity'])}[/]", w.value(a["kind"]),
                           w.region_list(a["must_act"]), w.region_list(a.get("inform") or []),
                           f"[dim]WITHDRAWN ({escape(a.get('status_reason') or 'no reason given')}):[/] "
                           f"[strike]{escape(a['summary'])}[/]"
                           if gone else a["summary"])
        health = Table.grid(padding=(0, 2))
        lag = m.last.lag if m and m.last else {}
        health.add_row(f"elapsed {time.monotonic() - self.t0:,.0f} s",
                       *[f"lag {g}: {v if v >= 0 else '?'}" for g, v in lag.items()],
                       f"dead letters: {counts.get('dead_letters', 0)}",
                       "processes: " + " ".join(
                           c.name + (" (restarting)" if c.restarting else "" if c.running else " (stopped)")
                           + (f" (restarted {c.restarts}x)" if c.restarts else "") for c in self.sup.children))
        return Panel(Group(ev, al, newest, health), title="yrdbus run", subtitle="Ctrl-C stops")

    # ------------------------------------------------------------------ summary
    def summary(self) -> dict:
        """Read back from ClickHouse: what this run stored, and how the alerts score against the truth."""
        client = store.get_client(self.settings.clickhouse_url)
        since = self.started_wall.strftime("%Y-%m-%d %H:%M:%S")
        params = {"since": since}
        events: dict[str, dict[str, int]] = {r: {k: 0 for k in SOURCE_KINDS} for r in REGIONS}
        for kind, table in RAW_TABLES.items():
            for region, n in client.query(
                    f"SELECT region, count() FROM yrdbus.{table} WHERE ingested_at >= {{since:DateTime64(3, 'UTC')}} "
                    f"GROUP BY region", parameters=params).result_rows:
                events.setdefault(region, {})[kind] = n
        alert_dicts, withdrawn = stored_alerts(client, since)
        by_kind: dict[str, int] = {}
        for a in alert_dicts:
            by_kind[a["kind"]] = by_kind.get(a["kind"], 0) + 1
        # one row per refused record (FINAL: the worker's and the sink's dead letters of one record, and a replay's)
        dead = client.query("SELECT count() FROM yrdbus.dead_letters FINAL WHERE ingested_at >= {since:DateTime64(3, 'UTC')}",
                            parameters=params).result_rows[0][0]
        out = {"events": events, "events_total": sum(sum(v.values()) for v in events.values()),
               "derived_alerts_by_kind": dict(sorted(by_kind.items())), "derived_alerts_total": len(alert_dicts),
               "derived_alerts_withdrawn": len(withdrawn),
               "dead_letters": dead, "failed_processes": [d.name for d in self.sup.deaths],
               "restarts": {c.name: c.restarts for c in self.sup.children if c.spec.restartable},
               "crash_loop": list(self.crash_loop),
               "since": self.started_wall.isoformat()}
        if self.opts.simulate and self.truth_file.is_file():
            from streams.evaluate import load_truth, score

            for a in alert_dicts:
                for f in ("occurred_at", "emitted_at"):
                    if isinstance(a[f], datetime):
                        a[f] = int(a[f].replace(tzinfo=a[f].tzinfo or timezone.utc).timestamp() * 1000)
            result = score(load_truth(self.truth_file), alert_dicts)
            out["evaluation"] = {"precision": result["precision"], "recall": result["recall"],
                                 "scenarios": [{"scenario_id": s["scenario_id"], "scenario": s.get("scenario"),
                                                "detected": s["detected"]} for s in result["scenarios"]]}
        return out

    def print_summary(self, summary: dict) -> None:
        c, w = self.console, self.words
        t = Table(title=w("run.events_stored"))
        t.add_column(w("col.region"))
        for k in SOURCE_KINDS:
            t.add_column(w("run.kind." + k), justify="right")
        for r in REGIONS:
            t.add_row(w.value(r), *[f"{summary['events'].get(r, {}).get(k, 0):,}" for k in SOURCE_KINDS])
        c.print(t)
        a = Table(title=w("run.alerts_by_kind"))
        a.add_column(w("col.kind"))
        a.add_column(w("run.count"), justify="right")
        for kind, n in summary["derived_alerts_by_kind"].items():
            a.add_row(w.value(kind), str(n))
        c.print(a)
        if summary.get("derived_alerts_withdrawn"):
            c.print(w("run.withdrawn", n=summary["derived_alerts_withdrawn"]))
        c.print(w("run.dead_letters", n=summary["dead_letters"]))
        ev = summary.get("evaluation")
        if ev:
            # the figures in English too: scripts and operators read this line
            title = w("run.scripted", precision=f"{ev['precision']:.3f}", recall=f"{ev['recall']:.3f}")
            c.print(title if w.lang == "en" else f"{title} (precision {ev['precision']:.3f}, recall {ev['recall']:.3f})")
            s = Table()
            s.add_column(w("run.scenario"))
            s.add_column(w("run.incident"))
            s.add_column(w("run.detected"))
            for sc in ev["scenarios"]:
                s.add_row(sc["scenario_id"], sc.get("scenario") or "",
                          f"[green]{w('run.yes')}[/]" if sc["detected"] else f"[red]{w('run.missed')}[/]")
            c.print(s)
        restarted = {name: n for name, n in summary.get("restarts", {}).items() if n}
        if restarted:
            c.print("[yellow]Processes restarted during the run: "
                    + ", ".join(f"{name} {n}x" for name, n in restarted.items())
                    + f"[/] (logs in {self.settings.log_dir})")
        if summary["failed_processes"]:
            c.print(f"[bold red]Processes that died during the run: {', '.join(summary['failed_processes'])}[/] "
                    f"(logs in {self.settings.log_dir})")
        if summary.get("crash_loop"):
            c.print(f"[bold red]The run stopped early: {', '.join(summary['crash_loop'])} kept dying "
                    f"({RESTARTS.describe()}).[/]")
        s = self.settings
        c.print("\nLook further:")
        c.print("  yrdbus query --list                                   the analysts' named queries")
        c.print("  yrdbus query cross_region_hits --format table         for example")
        c.print("  yrdbus sql \"SELECT kind, count() FROM yrdbus.derived_alerts GROUP BY kind\"")
        c.print(f"  yrdbus evaluate --truth {self.truth_file}")
        c.print(f"  logs: {s.log_dir}/<process>.log;  stop the broker: yrdbus stack down")
        c.print(f"  while a bus runs: query endpoint http://127.0.0.1:{s.query_port}/ (ClickHouse HTTP), "
                f"gateway and wall http://127.0.0.1:{s.gateway_port}/, metrics: worker :{s.worker_metrics_port}/metrics, "
                f"sink :{s.query_port}/metrics, gateway :{s.gateway_port}/metrics")


def run_bus(settings: Settings, opts: RunOptions) -> int:
    import faulthandler

    faulthandler.enable()  # a crash in a native library still says where
    run = BusRun(settings, opts)
    previous = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        run.start()
        run.watch()
    except KeyboardInterrupt:
        run.interrupted = True
        run.say("Interrupted: stopping the bus.")
    except CrashLoop:
        pass   # said where it was found; the summary names the process and the status fails
    finally:
        run.stop()
        signal.signal(signal.SIGTERM, previous)
    summary = run.summary()
    if opts.json_summary:
        print(json.dumps(summary, default=str))
    else:
        run.print_summary(summary)
    (run.run_dir / "summary.json").write_text(json.dumps(summary, default=str, indent=1) + "\n")
    if summary["failed_processes"]:
        return 1
    ev = summary.get("evaluation")
    if ev and not run.interrupted and opts.duration is not None and ev["recall"] < 1.0:
        run.console.print("[bold red]Not every scripted incident was detected.[/]")
        return 2
    return 0
