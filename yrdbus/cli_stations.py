"""The stations' commands: `yrdbus topics apply|list`, `yrdbus publish`, `yrdbus simulate`."""
from __future__ import annotations

import json
import re
import signal
from datetime import datetime
from pathlib import Path
from typing import List, Optional

import typer

from schemas.settings import get_settings
from yrdbus.cli_common import fail

topics_app = typer.Typer(help="The bus's topics, defined as code (schemas/topics.py).", no_args_is_help=True)

PREFIX_HELP = "Prefix of every topic name (a private copy of the bus, e.g. for tests)."
METRICS_PORT_HELP = ("Serve the publisher's Prometheus /metrics on this port while it runs "
                     "(default: YRDBUS_STATION_METRICS_PORT, 9401; 0: not at all).")


def _serve_station_metrics(port: int) -> None:
    """Serve the process's metrics (the publisher's) for Prometheus; a port already taken is said, not fatal."""
    if not port:
        return
    from prometheus_client import start_http_server

    try:
        start_http_server(port, addr=get_settings().metrics_host)
    except OSError as exc:
        typer.secho(f"warning: metrics not served: port {port}: {exc.strerror or exc}", fg=typer.colors.YELLOW,
                    err=True)


#: exit status of a command that found no broker answering (README: "Stations")
NO_BROKER = 4


def _reachable(bootstrap: str) -> None:
    """Fail with one clear line, exit status ``NO_BROKER``, when no broker answers at ``bootstrap``; the client
    library's own retries (a line each, every second) are not printed."""
    import logging

    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    from schemas.kafka_config import KafkaSecurityError, kafka_security

    try:
        security = kafka_security()
    except KafkaSecurityError as exc:
        fail(str(exc))
    class Keep(logging.Handler):      # the client's own lines, kept for the one that says why
        def __init__(self):
            super().__init__(logging.WARNING)
            self.lines: list[str] = []

        def emit(self, record):
            self.lines.append(record.getMessage())

    kept = Keep()
    quiet = logging.getLogger("yrdbus.librdkafka.probe")
    quiet.handlers[:] = [kept]
    quiet.propagate = False
    admin = AdminClient({"bootstrap.servers": bootstrap, "logger": quiet, **security})
    try:
        admin.list_topics(timeout=10)
    except KafkaException as exc:
        reason = exc.args[0].str() if exc.args else str(exc)
        admin.poll(0.1)             # the client's log lines are handed over when it is polled
        refused = [line for line in kept.lines if any(w in line.lower() for w in ("authentication", "sasl", "ssl"))]
        if refused:   # a broker answered, and refused this client: say why, once
            said = re.sub(r"^\S+ \[[^\]]*\] \[[^\]]*\]: (\S+: )?", "", refused[-1])
            fail(f"Kafka at {bootstrap} refused this client: {said}; check the client's "
                 f"credentials and TLS settings (YRDBUS_KAFKA_SASL_*, YRDBUS_KAFKA_SSL_*)", NO_BROKER)
        advice = ("start the embedded one with `yrdbus stack up`" if get_settings().embedded_kafka else
                  "check that the cluster YRDBUS_KAFKA_BOOTSTRAP names is up and reachable from here")
        fail(f"no Kafka broker answers at {bootstrap} ({reason}); {advice}", NO_BROKER)


# --------------------------------------------------------------------------- topics
@topics_app.command("apply")
def topics_apply(
    json_out: bool = typer.Option(False, "--json", help="Print the changes as JSON."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Say what would change, change nothing."),
    prefix: str = typer.Option("", "--prefix", envvar="YRDBUS_TOPIC_PREFIX", help=PREFIX_HELP),
) -> None:
    """Create or update every topic of the bus from its definition; a second run changes nothing."""
    from schemas import topics

    bootstrap = get_settings().bootstrap
    _reachable(bootstrap)
    try:
        changes = topics.apply(bootstrap, prefix=prefix, dry_run=dry_run)
    except topics.TopicsError as exc:
        fail(str(exc))
    made = [c for c in changes if c.action != "kept"]
    if json_out:
        typer.echo(json.dumps({"bootstrap": bootstrap, "changed": bool(made), "dry_run": dry_run,
                               "changes": [c.as_dict() for c in changes]}))
        return
    for c in changes:
        typer.echo(f"{c.action:15} {c.topic}: {c.detail}")
    n = len(topics.definitions(prefix))
    typer.echo(f"{len(made)} change(s){' to make' if dry_run else ''}; {n} topics defined; "
               + ("nothing to do." if not made else "done." if not dry_run else "dry run, nothing changed."))


@topics_app.command("list")
def topics_list(
    json_out: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
    prefix: str = typer.Option("", "--prefix", envvar="YRDBUS_TOPIC_PREFIX", help=PREFIX_HELP),
) -> None:
    """Every defined topic: its definition and, when the broker answers, what the broker has."""
    from schemas import topics

    bootstrap = get_settings().bootstrap
    _reachable(bootstrap)
    rows = topics.describe(bootstrap, prefix=prefix)
    if json_out:
        typer.echo(json.dumps(rows))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"topics at {bootstrap}")
    for col in ("topic", "partitions", "replication", "cleanup", "retention", "min ISR", "state"):
        table.add_column(col, no_wrap=True)
    for r in rows:
        w = r["wanted_configs"]
        days = int(w["retention.ms"]) / 86_400_000 if w["retention.ms"] != "-1" else None
        same = r["exists"] and r["partitions"] >= r["wanted_partitions"] and r["configs"] == w
        state = "missing" if not r["exists"] else "as defined" if same else "differs: run `yrdbus topics apply`"
        table.add_row(r["topic"], str(r["partitions"] if r["exists"] else r["wanted_partitions"]),
                      str(r["replication"] if r["exists"] else r["wanted_replication"]), w["cleanup.policy"],
                      "forever" if days is None else f"{days:g} d", w["min.insync.replicas"], state)
    console = Console()
    if not console.is_terminal:      # piped: no terminal width to fit, print whole lines
        console = Console(width=200)
    console.print(table)


# --------------------------------------------------------------------------- publish
#: `yrdbus publish`'s exit status when the file cannot be read at all (0, 1 and 2: see its --help)
EXIT_UNREADABLE = 3


def publish(
    # not exists=/dir_okay=/readable=: the option parser's refusal would exit 2, the status of failed deliveries;
    # the importer says why a file cannot be read, and the command exits EXIT_UNREADABLE
    file: Path = typer.Option(..., "--file", "-f",
                              help="A station's export: JSONL (.jsonl, .ndjson) or CSV (.csv) in the event contract's JSON form."),
    kind: Optional[str] = typer.Option(None, "--kind", help="clearance, alert or case (default: named in the file name)."),
    region: Optional[str] = typer.Option(None, "--region", help="The station's region: fills rows without one, "
                                         "rejects rows of another."),
    allow_rejects: bool = typer.Option(False, "--allow-rejects", help="Exit 0 even if some rows were rejected."),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    prefix: str = typer.Option("", "--prefix", envvar="YRDBUS_TOPIC_PREFIX", help=PREFIX_HELP),
    metrics_port: Optional[int] = typer.Option(None, "--metrics-port", min=0, help=METRICS_PORT_HELP),
) -> None:
    """Load a station's own export onto the bus: validate, pseudonymize raw identities, publish.

    A bad row is reported with its line number, field and reason, and goes to
    the dead-letter topic with raw identities redacted; the rest of the file
    is read and imported. Hostile rows are bad rows: a line over
    YRDBUS_IMPORT_MAX_LINE_BYTES (1 MiB) is skipped without being held (its
    dead letter keeps its first 4 KiB); JSON nested deeper than 64 levels, a
    number of over 100 characters, NaN or Infinity, a key given twice, a NUL
    byte, a lone surrogate, bytes that are not UTF-8, a ragged CSV row, a cell
    over the CSV reader's limit.

    Exit status (with --json, also its "exit_status"):
    0  every row was published and delivered (an empty file too);
    1  rows were rejected (unless --allow-rejects); or a bad --kind or
       --region, no subject key, no broker;
    2  deliveries failed (a mistyped option exits 2 too: the option parser);
    3  the file cannot be read at all, and nothing is published: missing, a
       directory, a FIFO or device, permission denied, compressed or UTF-16,
       no CSV header, an unknown format (--json: {"file", "error"}).
    """
    from rich.console import Console
    from rich.markup import escape
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

    from connectors.importer import Importer, ImportFileError, UnreadableFileError, check_export, infer_kind
    from connectors.publisher import StationPublisher
    from schemas import topics
    from schemas.pseudonym import SubjectKeyError, from_settings

    def unreadable(message: str) -> None:
        if json_out:
            typer.echo(json.dumps({"file": str(file), "error": message, "exit_status": EXIT_UNREADABLE}))
        fail(message, EXIT_UNREADABLE)

    try:
        check_export(file)           # before the broker is asked: a file that cannot be read needs no bus
    except UnreadableFileError as exc:
        unreadable(str(exc))
    settings = get_settings()
    kind = kind or infer_kind(file)
    if kind is None:
        fail(f"cannot tell the event kind from the file name {file.name!r}; pass --kind clearance|alert|case")
    try:
        pseudonymizer = from_settings(settings)
    except SubjectKeyError as exc:
        fail(str(exc))
    _reachable(settings.bootstrap)
    topics.ensure(settings.bootstrap, prefix=prefix)
    err = Console(stderr=True)
    shown = [0]

    def on_reject(rej) -> None:
        shown[0] += 1
        if shown[0] <= 20:
            # the message quotes the row's own text: "[/x]" in a cell is text, not markup that ends the command
            err.print(f"[red]rejected[/red] {escape(rej.message)}", markup=True, highlight=False)
        elif shown[0] == 21:
            err.print("[red]... more rejections: see the summary[/red]")

    _serve_station_metrics(settings.station_metrics_port if metrics_port is None else metrics_port)
    publisher = StationPublisher(settings.bootstrap, topic_prefix=prefix, client_id="yrdbus-import")
    try:
        importer = Importer(publisher, pseudonymizer, kind, region=region,
                            max_line_bytes=settings.import_max_line_bytes)
        size = file.stat().st_size
        with Progress(TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(),
                      TextColumn("{task.fields[rows]} rows"), TimeRemainingColumn(),
                      console=err, transient=json_out, disable=size < 1_000_000) as bar:
            task = bar.add_task(f"import {file.name}", total=size, rows=0)
            result = importer.run(file, on_row=lambda b, n: bar.update(task, completed=min(b, size), rows=n),
                                  on_reject=on_reject)
    except UnreadableFileError as exc:
        unreadable(str(exc))
    except ImportFileError as exc:
        fail(str(exc))
    finally:
        publisher.close()
    status = 2 if result.failed else 1 if result.rejected and not allow_rejects else 0
    summary = {**result.as_dict(), "exit_status": status}
    if json_out:
        typer.echo(json.dumps(summary))
    else:
        typer.echo(f"{file.name}: {result.rows} rows: {result.published} published, {result.rejected} rejected"
                   + (f" (dead-lettered to {', '.join(sorted(result.dead_letter_topics))})" if result.rejected else "")
                   + f"; the broker confirmed {result.delivered} writes, {result.failed} failed"
                   + ("; the file holds no rows" if not result.rows else ""))
    if result.failed:
        # e.g. "Broker: Topic authorization failed": a station's principal writes its own region's topics only
        typer.secho(f"error: {result.failed} write(s) failed; the broker said: {publisher.last_error}",
                    fg=typer.colors.RED, err=True)
    if status:
        raise typer.Exit(status)


# --------------------------------------------------------------------------- simulate
def _parse_start(value: str) -> datetime:
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise typer.BadParameter(f"expected an ISO time such as 2017-06-05T00:00Z, got {value!r}") from None
    if dt.tzinfo is None:
        raise typer.BadParameter("the start time needs a time zone, e.g. 2017-06-05T00:00Z")
    return dt


def simulate(
    seed: int = typer.Option(7, "--seed", help="Same seed, same events (ids and tokens included)."),
    speed: Optional[float] = typer.Option(None, "--speed", min=0.001,
                                          help="Simulated seconds a wall second (3600: an hour a second). "
                                               "Default 60, or as fast as --rate allows when --rate is given."),
    rate: Optional[float] = typer.Option(None, "--rate", min=1, help="At most this many events a wall second (load)."),
    duration: Optional[float] = typer.Option(None, "--duration", min=0.1,
                                             help="Wall seconds; the simulated span is speed x duration. "
                                                  "Default: until Ctrl-C."),
    start: str = typer.Option("2017-06-05T00:00Z", "--start", help="Simulated start time (ISO, with zone)."),
    span: Optional[float] = typer.Option(None, "--span", min=0.01, help="Simulated hours (default speed x duration)."),
    regions: Optional[str] = typer.Option(None, "--regions", help="Comma-separated subset of SH,JS,ZJ,AH (default all)."),
    scenario: Optional[List[str]] = typer.Option(None, "--scenario",
                                                 help="A scripted incident (a-j or its name); repeatable."),
    scenarios: Optional[str] = typer.Option(None, "--scenarios", help="'all', or comma-separated incidents."),
    truth_file: Optional[Path] = typer.Option(None, "--truth", help="Write the ground truth (JSONL) here."),
    scale: float = typer.Option(1.0, "--scale", min=0.0001,
                                help="Multiply baseline volumes (1: the paper's 2017 figures)."),
    json_out: bool = typer.Option(False, "--json", help="Print the final summary as JSON (progress goes to stderr)."),
    prefix: str = typer.Option("", "--prefix", envvar="YRDBUS_TOPIC_PREFIX", help=PREFIX_HELP),
    metrics_port: Optional[int] = typer.Option(None, "--metrics-port", min=0, help=METRICS_PORT_HELP),
) -> None:
    """Publish the four regions' traffic, with scripted incidents (docs/scenarios.md) and their ground truth."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from connectors.publisher import StationPublisher
    from connectors.simulator import Options, Simulation, SimulationError, UnknownScenario
    from schemas import topics

    names = list(scenario or []) + ([s for s in scenarios.split(",") if s.strip()] if scenarios else [])
    region_list = [r.strip().upper() for r in regions.split(",") if r.strip()] if regions else None
    try:
        opts = Options(seed=seed, start=_parse_start(start), speed=speed, rate=rate, duration=duration,
                       span_hours=span, scenarios=names, scale=scale,
                       **({"regions": region_list} if region_list else {}))
        sim = Simulation(opts)
    except (SimulationError, UnknownScenario) as exc:
        fail(str(exc))
    settings = get_settings()
    _reachable(settings.bootstrap)
    topics.ensure(settings.bootstrap, prefix=prefix)
    err = Console(stderr=True)
    for name, why in sim.skipped.items():
        err.print(f"[yellow]scenario {name} skipped: it {why}[/yellow]")
    _serve_station_metrics(settings.station_metrics_port if metrics_port is None else metrics_port)
    publisher = StationPublisher(settings.bootstrap, topic_prefix=prefix, client_id="yrdbus-simulator")
    span_s = (sim.end - sim.start) / 1000 if sim.end is not None else None
    with Progress(TextColumn("[bold]simulating[/bold] {task.fields[at]}"), BarColumn(),
                  TextColumn("{task.fields[events]:>9,} events  {task.fields[rate]:>7,.0f}/s"), TimeElapsedColumn(),
                  console=err, transient=False) as bar:
        task = bar.add_task("sim", total=span_s, at=sim.o.start.isoformat(), events=0, rate=0.0)

        def progress(p: dict) -> None:
            bar.update(task, completed=max(0.0, p["simulated_seconds"]), at=p["event_time"], events=p["events"],
                       rate=p["events"] / p["wall_seconds"] if p["wall_seconds"] else 0.0)

        # SIGTERM (a supervisor stopping it) ends the run as Ctrl-C does: what was published is summed up and
        # the ground truth of the incidents it completed is still written; the event being handed over is
        # counted first (Simulation.interrupt)
        previous = {sig: signal.signal(sig, lambda signum, frame: sim.interrupt())
                    for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            summary = sim.run(publisher.publish, progress=progress)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        bar.update(task, completed=span_s if (span_s and not summary["stopped"]) else None, events=summary["events"])
    remaining = publisher.close()
    stats = publisher.stats()
    summary.update({"delivered": stats["delivered"], "failed": stats["failed"] + remaining,
                    "last_error": stats["last_error"], "prefix": prefix, "bootstrap": settings.bootstrap})
    if truth_file is not None:
        summary["truth"] = str(truth_file)
        summary["truth_rows"] = sim.write_truth(truth_file)
    if json_out:
        typer.echo(json.dumps(summary))
    else:
        _print_summary(summary, Console())
    if summary["failed"]:
        raise typer.Exit(2)


def _print_summary(s: dict, console) -> None:
    from rich.table import Table

    console.print(f"[bold]{s['events']:,}[/bold] events from {s['start']} to {s['end']} ({s['span_hours']} simulated h) "
                  f"in {s['wall_seconds']:.1f} s: {s['events_per_second'] or 0:,.0f} events/s; "
                  f"delivered {s['delivered']:,}, failed {s['failed']}" + (f" ({s['stopped']})" if s["stopped"] else ""))
    regions = sorted({r for v in s["by_kind_region"].values() for r in v})
    t = Table(title="events by kind and region")
    t.add_column("kind")
    for r in regions:
        t.add_column(r, justify="right")
    t.add_column("total", justify="right")
    for kind, per in s["by_kind_region"].items():
        t.add_row(kind, *[f"{per.get(r, 0):,}" for r in regions], f"{sum(per.values()):,}")
    console.print(t)
    if s["incidents"]:
        it = Table(title="scripted incidents")
        for col in ("id", "scenario", "expected derived alerts", "events", "complete"):
            it.add_column(col)
        for inc in s["incidents"]:
            it.add_row(inc["scenario_id"], inc["scenario"], ", ".join(inc["expected"]), str(inc["events"]),
                       "yes" if inc["complete"] else "[red]no[/red]")
        console.print(it)
    for name, why in s.get("skipped_scenarios", {}).items():
        console.print(f"skipped {name}: it {why}")
    if s.get("truth"):
        console.print(f"ground truth: {s['truth_rows']} rows in {s['truth']}")


def register(app: typer.Typer) -> None:
    """Add the stations' commands to the `yrdbus` app."""
    app.add_typer(topics_app, name="topics")
    app.command("publish")(publish)
    app.command("simulate")(simulate)
