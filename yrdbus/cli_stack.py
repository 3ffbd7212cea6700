"""`yrdbus stack ...` (the local Kafka stack) and `yrdbus run` (the whole bus on its embedded default)."""
from __future__ import annotations

import json
import sys

import typer

from schemas.settings import get_settings
from yrdbus.cli_common import fail
from yrdbus.stack import KafkaStack, StackError

stack_app = typer.Typer(help="The local stack: a real Apache Kafka broker (KRaft) started by the project.",
                        no_args_is_help=True)


# --------------------------------------------------------------------------- stack
@stack_app.command("up")
def stack_up(
    brokers: int = typer.Option(None, "--brokers", min=1, max=5,
                                help="Number of brokers (default: YRDBUS_KAFKA_BROKERS, 1)."),
    json_out: bool = typer.Option(False, "--json", help="Print the status as JSON when up."),
    with_prometheus: bool = typer.Option(False, "--with-prometheus",
                                         help="Also start Prometheus (Debian's package) and the Kafka exporter, "
                                              "scraping the local processes with infra/prometheus/."),
    workers: int = typer.Option(1, "--workers", min=1, max=8,
                                help="With --with-prometheus: stream workers to scrape (as `yrdbus run --workers`)."),
    secure: bool = typer.Option(False, "--secure", help="A new cluster is secured: SCRAM-SHA-512 over TLS, ACLs, "
                                                       "one principal per station and service (docs/security.md)."),
    tls: bool = typer.Option(True, "--tls/--no-tls", help="With --secure: SASL_SSL (default) or SASL_PLAINTEXT."),
) -> None:
    """Start the Kafka broker (formats storage on first start) and wait until it answers."""
    stack = KafkaStack(get_settings())
    try:
        status = stack.up(brokers=brokers, echo=(lambda m: typer.echo(m, err=True)) if json_out else typer.echo,
                          secure=True if secure else None, tls=tls)
    except StackError as exc:
        fail(str(exc))
    if with_prometheus:
        from yrdbus.observability import ObservabilityError, PrometheusStack

        try:
            status["prometheus"] = PrometheusStack(get_settings()).up(
                workers=workers, echo=(lambda m: typer.echo(m, err=True)) if json_out else typer.echo)
        except ObservabilityError as exc:
            fail(str(exc))
    if json_out:
        typer.echo(json.dumps(status))


@stack_app.command("jars")
def stack_jars(json_out: bool = typer.Option(False, "--json", help="Print the folder as JSON.")) -> None:
    """Fetch the pinned Kafka jars with Maven, once (`stack up` does it too); print their folder."""
    from yrdbus.stack import ensure_kafka_jars

    try:
        lib = ensure_kafka_jars(quiet=json_out, settings=get_settings())
    except StackError as exc:
        fail(str(exc))
    typer.echo(json.dumps({"kafka_lib_dir": str(lib)}) if json_out else str(lib))


@stack_app.command("down")
def stack_down() -> None:
    """Stop the Kafka broker cleanly (and the stack's Prometheus). Nothing running is not an error; data is kept."""
    from yrdbus.observability import PrometheusStack

    PrometheusStack(get_settings()).down(echo=typer.echo)
    try:
        KafkaStack(get_settings()).down(echo=typer.echo)
    except StackError as exc:
        fail(str(exc))


@stack_app.command("status")
def stack_status(json_out: bool = typer.Option(False, "--json", help="Print JSON for scripts.")) -> None:
    """Whether the broker runs, where, and its pid."""
    from yrdbus.observability import PrometheusStack

    status = KafkaStack(get_settings()).status()
    status["prometheus"] = PrometheusStack(get_settings()).status()
    if json_out:
        typer.echo(json.dumps(status))
        return
    k = status["kafka"]
    state = "running" if k["running"] else "stopped"
    where = "external cluster" if k.get("external") else f"pid {k['pid']}" if k["pid"] else "embedded"
    typer.echo(f"kafka: {state} at {k['bootstrap']} ({where})")
    p = status["prometheus"]
    if p["running"]:
        typer.echo(f"prometheus: running at {p['url']} (pid {p['pid']}); kafka exporter: "
                   + (f"{p['kafka_exporter']['url']} (pid {p['kafka_exporter']['pid']})"
                      if p["kafka_exporter"]["running"] else "stopped"))


@stack_app.command("reset")
def stack_reset(yes: bool = typer.Option(False, "--yes", help="Really delete the broker's data.")) -> None:
    """Delete the embedded broker's data (topics, offsets). The broker must be down."""
    if not yes:
        fail("this deletes every topic of the embedded broker; pass --yes to confirm.")
    try:
        KafkaStack(get_settings()).reset()
    except StackError as exc:
        fail(str(exc))
    typer.echo("Kafka data deleted.")


# --------------------------------------------------------------------------- run
def run(
    duration: float = typer.Option(None, "--duration", envvar="DURATION", min=10,
                                   help="Publish for about this many seconds, drain (a worker behind is waited for, at most "
                                        "5 min more), then print the summary (default: until Ctrl-C)."),
    simulate: bool = typer.Option(True, "--simulate/--no-simulate",
                                  help="Run the simulator with its scripted incidents; --no-simulate runs the bus alone, for real stations."),
    workers: int = typer.Option(1, "--workers", min=1, max=8, help="Stream workers sharing the partitions."),
    speed: float = typer.Option(3600.0, "--speed", min=1, help="Simulated seconds a wall second (3600: an hour a second)."),
    scale: float = typer.Option(0.1, "--scale", min=0.0001,
                                help="Simulated volume as a multiple of the region's 2017 traffic (1: 156,000 crossings a day)."),
    seed: int = typer.Option(7, "--seed", help="Simulator seed: same seed, same events."),
    scenarios: str = typer.Option("all", "--scenarios", help="Scripted incidents: 'all' or a comma-separated list (a-j)."),
    keep_data: bool = typer.Option(False, "--keep-data", help="Keep the previous simulated run's topics and store."),
    json_out: bool = typer.Option(False, "--json", help="Print the final summary as JSON."),
    check: bool = typer.Option(False, "--check", help="Only bring the broker up and check a Kafka round trip and a ClickHouse write/read."),
    lang: str = typer.Option("zh-CN", "--lang", envvar="YRDBUS_LANG",
                             help="Language of the live view and the summary: zh-CN (Simplified Chinese, the default: "
                                  "alert kinds and regions by their Chinese names) or en. --json is not translated."),
) -> None:
    """Bring the whole bus up on its embedded default: stations (simulated), stream workers, sink, query access, gateway."""
    from yrdbus.run import RunOptions, run_bus, self_check
    from yrdbus.words import LANGUAGES

    if lang not in LANGUAGES:
        fail(f"--lang {lang!r}: expected one of {', '.join(LANGUAGES)}", 2)
    settings = get_settings()
    try:
        if check:
            KafkaStack(settings).up(echo=typer.echo)
            result = self_check(settings)
            sys.exit(0 if result["kafka_received"] == result["kafka_sent"] == result["clickhouse_rows"] else 1)
        sys.exit(run_bus(settings, RunOptions(duration=duration, simulate=simulate, workers=workers, speed=speed,
                                              scale=scale, seed=seed, scenarios=scenarios, keep_data=keep_data,
                                              json_summary=json_out, lang=lang)))
    except StackError as exc:
        fail(str(exc))


def register(app: typer.Typer) -> None:
    app.add_typer(stack_app, name="stack")
    app.command("run")(run)
