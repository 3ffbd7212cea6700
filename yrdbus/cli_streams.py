"""`yrdbus worker` (a stream-processing worker) and `yrdbus evaluate` (derived alerts against ground truth)."""
from __future__ import annotations

import json
import os
from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from yrdbus.settings import get_settings


def _fail(message: str, code: int = 1) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


class Loop(str, Enum):
    uvloop = "uvloop"
    asyncio = "asyncio"


def worker(
    partitions: int = typer.Option(4, "--partitions", min=1, envvar="YRDBUS_STREAMS_PARTITIONS",
                                   help="Partitions of the subject-keyed internal topic (fixed once created)."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", envvar="YRDBUS_STREAMS_DATA_DIR",
                                            help="This worker's own folder (default: <var_dir>/streams/<pid>)."),
    rules: Optional[Path] = typer.Option(None, "--rules", envvar="YRDBUS_RULES",
                                         help="Rule set file (default: streams/rules.toml)."),
    prefix: str = typer.Option("", "--prefix", envvar="YRDBUS_TOPIC_PREFIX",
                               help="Prefix of every topic name read and written (a private copy of the bus)."),
    app_id: str = typer.Option("yrdbus-streams", "--app-id", envvar="YRDBUS_STREAMS_APP_ID",
                               help="Consumer group and changelog prefix; workers with the same id share partitions."),
    metrics_port: Optional[int] = typer.Option(None, "--metrics-port", envvar="YRDBUS_WORKER_METRICS_PORT",
                                               help="Serve Prometheus /metrics on this port (default: none)."),
    replication: int = typer.Option(1, "--replication", min=1, help="Replication factor of internal topics."),
    loglevel: str = typer.Option("warning", "--loglevel", envvar="YRDBUS_WORKER_LOGLEVEL", help="Faust log level (debug, info, warning, error)."),
    loop: Loop = typer.Option(Loop.uvloop, "--loop", envvar="YRDBUS_WORKER_LOOP",
                              help="Event loop: uvloop (libuv) or asyncio (the standard library's)."),
) -> None:
    """Run one stream-processing worker (Faust). Start several with the same --app-id to share the partitions."""
    import sys

    if loop is Loop.uvloop:
        # before Faust makes its loops (the worker's, and its consumer thread's)
        import mode.loop

        mode.loop.use("uvloop")

    from streams import metrics
    from streams.app import StreamsConfig, build_app, ensure_topics
    from streams.ruleset import RuleSetError

    settings = get_settings()
    cfg = StreamsConfig(bootstrap=settings.bootstrap, app_id=app_id, prefix=prefix, partitions=partitions,
                        data_dir=data_dir or settings.var_dir / "streams" / str(os.getpid()),
                        rules=str(rules) if rules else None, replication=replication, metrics_port=metrics_port)
    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    from yrdbus.kafka_config import KafkaSecurityError, describe, faust_credentials, secured

    try:
        fapp = build_app(cfg)
    except RuleSetError as exc:
        _fail(str(exc))
    try:
        # the worker's principal (svc-streams on a secured cluster, docs/security.md)
        fapp.conf.broker_credentials = faust_credentials(settings)
    except KafkaSecurityError as exc:
        _fail(str(exc))
    try:
        ensure_topics(cfg, fapp)
    except Exception as exc:  # the admin client's errors name the topic and the broker's reason
        # On a secured cluster only admin creates the bus's topics; a principal without rights on the worker's
        # own topics is told so by Faust as it declares them.
        if not (secured(settings) and "AUTHORIZATION_FAILED" in str(exc)):
            _fail(f"cannot prepare the topics at {cfg.bootstrap}: {exc}")
    metrics.serve(metrics_port)
    typer.echo(f"stream worker {app_id} on {cfg.bootstrap} ({describe(settings)}, "
               f"rule set {fapp.yrd_rules.version}, prefix {prefix or '-'}, pid {os.getpid()})", err=True)
    from faust import Worker

    sys.argv = sys.argv[:1]
    fworker = Worker(fapp, loglevel=loglevel, quiet=True)
    # Faust's terminal spinner sets the root logger to DEBUG, so that every debug call of Faust and aiokafka
    # (several per record sent) builds a LogRecord: 7 % of a busy worker's time in a profile. No spinner.
    fworker.spinner = None
    fworker.execute_from_commandline()


def evaluate(
    truth: Path = typer.Option(..., "--truth", exists=True, dir_okay=False,
                               help="Ground-truth JSONL written by `yrdbus simulate --truth`."),
    alerts_file: Optional[Path] = typer.Option(None, "--alerts", exists=True, dir_okay=False,
                                               help="Read derived alerts from this JSONL file instead of the broker."),
    prefix: str = typer.Option("", "--prefix", envvar="YRDBUS_TOPIC_PREFIX", help="Topic prefix of the bus to read."),
    timeout: float = typer.Option(30.0, "--timeout", help="Seconds to wait for the broker."),
    json_out: bool = typer.Option(False, "--json", help="Print {precision, recall, scenarios, false_alerts} as JSON."),
) -> None:
    """Score the derived alerts (alerts.derived) against a ground-truth file: per scenario, detected or missed."""
    from streams.evaluate import TruthError, load_truth, read_alerts_file, read_alerts_topic, score
    from yrdbus import topics

    try:
        rows = load_truth(truth)
        if alerts_file:
            alerts = read_alerts_file(alerts_file)
        else:
            alerts = read_alerts_topic(get_settings().bootstrap, prefix + topics.DERIVED_ALERTS, timeout)
        result = score(rows, alerts)
    except TruthError as exc:
        _fail(str(exc))
    if json_out:
        typer.echo(json.dumps(result))
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=f"{len(result['scenarios'])} scenarios, {result['alerts']} derived alerts")
    for col in ("scenario", "incident", "result", "delay (s)"):
        table.add_column(col)
    for sc in result["scenarios"]:
        missed = [r["expected_alert_kind"] for r in sc["rows"] if not r["matched"]]
        table.add_row(sc["scenario_id"], sc["scenario"] or "",
                      "[green]detected[/]" if sc["detected"] else f"[red]missed[/] {', '.join(missed)}",
                      "" if sc["delay_s"] is None else f"{sc['delay_s']:.3f}")
    console.print(table)
    for a in result["false_alerts"]:
        console.print(f"[yellow]false alert[/] {a['kind']} {a['occurred_at']} {','.join(a['regions'])} "
                      f"{a['summary']}")
    console.print(f"precision {result['precision']:.3f}  recall {result['recall']:.3f}")
