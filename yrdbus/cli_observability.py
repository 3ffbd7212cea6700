"""Observability commands: `yrdbus prometheus exporter|config|station-hours|check` and `yrdbus report`."""
from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import List, Optional

import typer

from schemas.settings import get_settings
from yrdbus.cli_common import fail

prometheus_app = typer.Typer(
    help="Prometheus for the bus: the Kafka exporter, the scrape configuration, the alerting rules and their checks. "
         "`yrdbus stack up --with-prometheus` starts a Prometheus and the exporter.",
    no_args_is_help=True)


@prometheus_app.command("exporter")
def exporter(
    port: Optional[int] = typer.Option(None, "--port", help="Serve /metrics here (default: YRDBUS_KAFKA_EXPORTER_PORT, 9400)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    prefix: str = typer.Option("", "--prefix", envvar="YRDBUS_TOPIC_PREFIX",
                               help="Only topics with this prefix (a private copy of the bus) and their groups."),
    group: List[str] = typer.Option([], "--group", help="Only these consumer groups (repeatable; default: every group)."),
) -> None:
    """Export consumer lag per group and partition and records per topic, read from the broker at each scrape."""
    from yrdbus.observability import serve_exporter

    settings = get_settings()
    port = settings.kafka_exporter_port if port is None else port
    typer.echo(f"Kafka exporter of {settings.bootstrap} on http://{host}:{port}/metrics", err=True)
    try:
        serve_exporter(settings.bootstrap, port, host=host, prefix=prefix, groups=group or None)
    except OSError as exc:
        fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}")


@prometheus_app.command("config")
def config(
    workers: int = typer.Option(1, "--workers", min=1, max=8, help="Stream workers to scrape (as `yrdbus run --workers`)."),
) -> None:
    """Print the scrape configuration the stack's Prometheus runs with (targets from the settings)."""
    from yrdbus.observability import render_config

    typer.echo(render_config(get_settings(), workers=workers), nl=False)


@prometheus_app.command("station-hours")
def station_hours(
    write: bool = typer.Option(False, "--write", help="Write infra/prometheus/rules/station-hours.yml."),
) -> None:
    """The stations' operating hours (recording rules for StationSilent), from the traffic profile."""
    from yrdbus.observability import STATION_HOURS_FILE, station_hours_rules, write_station_hours

    if write:
        changed = write_station_hours()
        typer.echo(f"{STATION_HOURS_FILE}: {'written' if changed else 'already up to date'}")
    else:
        typer.echo(station_hours_rules(), nl=False)


@prometheus_app.command("check")
def check(json_out: bool = typer.Option(False, "--json", help="Print the results as JSON.")) -> None:
    """promtool check config, check rules and test rules on infra/prometheus/."""
    from yrdbus.observability import ObservabilityError, check as run_check

    try:
        results = run_check()
    except ObservabilityError as exc:
        fail(str(exc))
    if json_out:
        typer.echo(json.dumps(results))
    else:
        for r in results:
            typer.secho(f"{'ok  ' if r['ok'] else 'FAIL'} {r['step']}", fg=typer.colors.GREEN if r["ok"] else typer.colors.RED)
            if not r["ok"]:
                typer.echo(r["output"])
    if not all(r["ok"] for r in results):
        raise typer.Exit(1)


def _parse_time(value: str | None, name: str) -> datetime | None:
    if value is None:
        return None
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise typer.BadParameter(f"{name}: expected an ISO time such as 2017-06-05T00:00Z, got {value!r}") from None
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


def report(
    out: Path = typer.Option(..., "--out", "-o", file_okay=False, help="Folder to write the PNG files (and report.json) into."),
    start: Optional[str] = typer.Option(None, "--from", help="Start of the period (ISO, UTC if no zone). "
                                        "Default: a day before --to; without --to, the hour of the earliest event stored "
                                        "(crossing, derived alert, case or trend), at most 31 days before the newest."),
    end: Optional[str] = typer.Option(None, "--to", help="End of the period. Default: the hour after the newest event stored."),
    panel: List[str] = typer.Option([], "--panel", help="Only panels whose title contains this (repeatable)."),
    region: List[str] = typer.Option([], "--region", help="Only this region's data, as the dashboards' region "
                                     "variable (repeatable; default all: SH, JS, ZJ, AH)."),
    baseline_scale: Optional[float] = typer.Option(
        None, "--baseline-scale", min=0.0001,
        help="Multiply the flow baseline (the 2017 volume) by this in the ports and flow panels, and their ratio "
             "with it. Default: the --scale of the last `yrdbus run` on this store (0.1 unless given), else 1."),
    width: int = typer.Option(1000, "--width", min=300, max=4000, help="Image width in pixels (Grafana's interval follows it)."),
    json_out: bool = typer.Option(False, "--json", help="Print what was written as JSON."),
    lang: str = typer.Option("zh-CN", "--lang", envvar="YRDBUS_LANG",
                             help="Language of the charts and index.html: zh-CN (Simplified Chinese, the default; needs "
                                  "a font with Chinese glyphs, Debian fonts-wqy-microhei) or en. Times are Beijing "
                                  "time either way; report.json keeps UTC."),
    database: Optional[str] = typer.Option(None, "--database", help="Database of the store (default: the bus's, yrdbus)."),
    user: str = typer.Option("default", "--user", envvar="YRDBUS_QUERY_USER", help="Query endpoint user."),
    password: str = typer.Option("", "--password", envvar="YRDBUS_QUERY_PASSWORD", help="Query endpoint password."),
) -> None:
    """Render the dashboards' main panels to PNG with the dashboards' own SQL, for people without Grafana.

    Runs through the live query endpoint when a running bus owns the store, else on the store directly.
    """
    from yrdbus.cli_store import query_client
    from yrdbus.run import MARKER

    try:
        client, where = query_client(user, password)
    except Exception as exc:
        fail(f"cannot open the store: {exc}")
    if database:
        client.database = database
    marker = get_settings().var_dir / "run" / MARKER
    if baseline_scale is None and marker.is_file() and not database:
        # the store holds what the last `yrdbus run` simulated, at its --scale of the volume the baseline stands for
        try:
            baseline_scale = float(json.loads(marker.read_text())["scale"])
        except (ValueError, KeyError, TypeError):
            baseline_scale = None
        if baseline_scale is not None and baseline_scale != 1.0:
            typer.echo(f"the flow baseline x {baseline_scale:g}: the volume the last `yrdbus run` simulated ({marker}); "
                       f"--baseline-scale 1 compares with the full 2017 volume", err=True)
    _report(client, where, out, start, end, panel, width, json_out, region,
            1.0 if baseline_scale is None else baseline_scale, lang)


def _report(client, where, out, start, end, panel, width, json_out, region=(), baseline_scale=1.0,
            lang: str = "zh-CN") -> None:
    from rich.console import Console
    from rich.progress import Progress

    from yrdbus import report as rep
    from yrdbus.words import LANGUAGES, Words

    if lang not in LANGUAGES:
        fail(f"--lang {lang!r}: expected one of {', '.join(LANGUAGES)}", 2)
    if lang != "en" and rep.cjk_font() is None:
        typer.echo("no font with Chinese glyphs on this machine (Debian: apt-get install fonts-wqy-microhei): the "
                   "report is in English", err=True)
        lang = "en"
    words = Words(lang)

    t_from, t_to = _parse_time(start, "--from"), _parse_time(end, "--to")
    err = Console(stderr=True)
    try:
        period = rep.default_period(client, t_from, t_to)
        panels = rep.main_panels(only=panel)
    except rep.ReportError as exc:
        fail(str(exc))
    regions = [r.strip().upper() for r in region]
    unknown = sorted(set(regions) - set(rep.VARIABLES["region"]))
    if unknown:
        fail(f"--region {', '.join(unknown)}: not a region of the bus (one of {', '.join(rep.VARIABLES['region'])})")
    if not panels:
        fail(f"no panel title contains {', '.join(map(repr, panel))}")
    written = []
    with Progress(console=err, transient=json_out) as bar:
        task = bar.add_task(f"rendering {len(panels)} panels from {where}", total=len(panels))
        for p in panels:
            try:
                written.append(rep.render_panel(client, p, period.start, period.end, out, width=width,
                                                variables={"region": regions} if regions else None,
                                                baseline_scale=baseline_scale, words=words))
            except rep.ReportError as exc:
                fail(str(exc))
            bar.advance(task)
    summary = rep.write_index(out, written, period, where, baseline_scale, words)
    if json_out:
        typer.echo(json.dumps(summary, default=str, ensure_ascii=False))
    else:
        for w in written:
            typer.echo(f"{w['file']}: {w['shown_title']} ({w['rows']} rows)")
        typer.echo(f"{len(written)} panels from {period.start.isoformat()} to {period.end.isoformat()} "
                   f"({period.reason}) in {out}")


dashboards_app = typer.Typer(help="The Grafana dashboards: their Chinese edition (dashboards/zh-CN).",
                             no_args_is_help=True)


@dashboards_app.command("build")
def dashboards_build(
    check: bool = typer.Option(False, "--check", help="Change nothing; exit 1 when the edition is not what the "
                               "dashboards and the catalogue make."),
    json_out: bool = typer.Option(False, "--json", help="Print the files written (or differing) as JSON."),
) -> None:
    """Write dashboards/zh-CN/ from dashboards/json/ and the message catalogue: titles, descriptions, columns and
    the region variable in Simplified Chinese, codes (alert kinds, regions, ports) by name, Beijing time."""
    from yrdbus import dashboards

    try:
        differ = dashboards.build("zh-CN", check=check)
    except dashboards.DashboardTextError as exc:
        fail(str(exc))
    names = [str(p.relative_to(dashboards.ROOT)) for p in differ]
    if json_out:
        typer.echo(json.dumps({"check": check, "differ" if check else "written": names}))
    elif check:
        typer.echo("dashboards/zh-CN is up to date" if not names else
                   "dashboards/zh-CN differs from what `yrdbus dashboards build` makes: " + ", ".join(names))
    else:
        typer.echo(f"{len(names)} file(s) written: {', '.join(names) or 'none (up to date)'}")
    if check and names:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.add_typer(prometheus_app, name="prometheus")
    app.add_typer(dashboards_app, name="dashboards")
    app.command("report")(report)
