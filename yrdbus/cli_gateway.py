"""`yrdbus gateway` (the alert gateway and its tokens) and `yrdbus alerts tail` (alerts in a terminal)."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import List, Optional

import typer

from schemas.settings import get_settings
from yrdbus.cli_common import fail
from yrdbus.words import LANGUAGES, Words

gateway_app = typer.Typer(
    help="The alert gateway: SSE, WebSocket and webhooks for subscribers, and the live alert wall.",
    invoke_without_command=True)
alerts_app = typer.Typer(help="Real-time derived alerts, through the gateway.", no_args_is_help=True)

SEVERITY_STYLE = {"CRITICAL": "bold white on red", "HIGH": "bold red", "MEDIUM": "yellow", "LOW": "cyan"}


# --------------------------------------------------------------------------- gateway
@gateway_app.callback(invoke_without_command=True)
def gateway(
    ctx: typer.Context,
    host: Optional[str] = typer.Option(None, "--host", help="Listen address (default: YRDBUS_GATEWAY_HOST, 127.0.0.1)."),
    port: Optional[int] = typer.Option(None, "--port", help="Listen port (default: YRDBUS_GATEWAY_PORT, 8090)."),
    tokens_file: Optional[Path] = typer.Option(
        None, "--tokens-file", help="Access file with hashed tokens and webhooks (default: YRDBUS_GATEWAY_TOKENS_FILE)."),
    topic_prefix: str = typer.Option("", "--prefix", "--topic-prefix", envvar="YRDBUS_TOPIC_PREFIX",
                                     help="Read <prefix>alerts.to.<R> and <prefix>alerts.derived: a private copy "
                                          "of the bus, as `yrdbus topics --prefix`."),
    log_level: str = typer.Option("info", "--log-level", help="uvicorn log level: debug, info, warning, error."),
) -> None:
    """Run the alert gateway (until Ctrl-C). Subcommands: hash-token."""
    if ctx.invoked_subcommand is not None:
        return
    import logging

    from connectors.gateway import serve
    from connectors.gateway.access import AccessFileError

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = get_settings()
    try:
        serve(settings, host=host, port=port, tokens_file=tokens_file, topic_prefix=topic_prefix,
              log_level=log_level)
    except AccessFileError as exc:
        fail(str(exc))


@gateway_app.command("hash-token")
def hash_token(
    token_id: Optional[str] = typer.Option(None, "--id", help="Token id (letters, digits, - and _): a new random token "
                                           "<id>.<secret> is made and shown once."),
    stdin: bool = typer.Option(False, "--stdin", help="Hash a token read from standard input (<id>.<secret>) instead."),
    regions: List[str] = typer.Option([], "--regions", "--region", help="Scope: a region (repeat, or SH,JS)."),
    stations: List[str] = typer.Option([], "--stations", "--station", help="Scope: a station id (repeat, or a,b)."),
    everything: bool = typer.Option(False, "--all", help="Scope: every region (the regional command centre)."),
    json_out: bool = typer.Option(False, "--json", help="Print {id, token, hash, toml} as JSON."),
) -> None:
    """Make (or hash) a bearer token and print its entry (a tokens table) for the access file.

    Only the scrypt hash goes in the file; the token is printed once, to standard error.
    """
    from connectors.gateway.access import AccessFileError, hash_token as make_hash, new_token, parse_scope, token_id_of

    if stdin:
        token = sys.stdin.readline().strip()
        tid = token_id_of(token)
        if not tid:
            fail("the token on standard input must look like <id>.<secret>")
        if token_id and token_id != tid:
            fail(f"--id {token_id!r} differs from the token's own id {tid!r}")
    else:
        if not token_id:
            fail("give --id NAME (a new token is made) or --stdin (hash an existing one)")
        try:
            token = new_token(token_id)
        except ValueError as exc:
            fail(str(exc))
        tid = token_id
    split = lambda values: [x.strip() for v in values for x in v.split(",") if x.strip()]  # noqa: E731
    entry = {"all": everything, "regions": [r.upper() for r in split(regions)], "stations": split(stations)}
    try:
        parse_scope(entry, "the scope options")
    except AccessFileError as exc:
        fail(str(exc).replace("field `", "option `--"))
    hashed = make_hash(token)
    lines = ["[[tokens]]", f'id = "{tid}"', f'hash = "{hashed}"']
    if everything:
        lines.append("all = true")
    if entry["regions"]:
        lines.append("regions = [" + ", ".join(f'"{r}"' for r in entry["regions"]) + "]")
    if entry["stations"]:
        lines.append("stations = [" + ", ".join(f'"{s}"' for s in entry["stations"]) + "]")
    toml = "\n".join(lines) + "\n"
    if json_out:
        typer.echo(json.dumps({"id": tid, "token": None if stdin else token, "hash": hashed, "toml": toml}))
        return
    typer.echo(toml)
    if not stdin:
        typer.secho(f"token (shown once, give it to the subscriber): {token}", err=True, fg=typer.colors.YELLOW)


# --------------------------------------------------------------------------- alerts tail
def _token(token_file: Optional[Path]) -> str:
    if token_file is not None:
        try:
            value = token_file.read_text().strip()
        except OSError as exc:
            fail(f"--token-file {token_file}: {exc.strerror}", 2)
        if not value:
            fail(f"--token-file {token_file} is empty", 2)
        return value
    secret = get_settings().gateway_token
    if secret is None or not secret.get_secret_value():
        fail("no token: set YRDBUS_GATEWAY_TOKEN or pass --token-file FILE", 2)
    return secret.get_secret_value()


def _line(alert: dict, words: Words):
    from rich.text import Text

    sev = alert.get("severity", "?")
    where = alert.get("station_id") or alert.get("port_code") or "-"
    region = words.region_list([alert["routed_to"]] if alert.get("routed_to") else alert.get("must_act"))
    status = alert.get("status") or "RAISED"
    gone = status == "WITHDRAWN"
    text = Text()
    text.append(f"{words.beijing(alert.get('occurred_at', ''))} ", style="dim")
    text.append(words(f"sev.{sev}"), style="dim" if gone else SEVERITY_STYLE.get(sev, ""))
    text.append(f" {words(f'status_value.{status}')}", style="bold" if gone else "dim")
    text.append(f" {region} {words('kind.' + str(alert.get('kind', '?')))} {where} ")
    text.append(str(alert.get("summary", "")), style="strike" if gone else "")
    if gone:
        text.append(f"  ({words('withdrawn')}: {alert.get('status_reason') or words('no_reason')})")
    text.append(f"  {alert.get('alert_id', '')}", style="dim")
    return text


def _disposition_line(d: dict, words: Words) -> str:
    who = words.regions.get(d["region"], d["region"]) if d.get("region") else words("cc")
    return (f"{words.beijing(d['decided_at'])} {d['alert_id'][:8]} {who}: {words('outcome.' + d['outcome'])} "
            f"({d['officer']})" + (f" {d['note']}" if d.get("note") else ""))


@alerts_app.command("tail")
def tail(
    region: List[str] = typer.Option([], "--region", help="Only this region (repeat for several); must be in scope."),
    station: List[str] = typer.Option([], "--station", help="Only alerts for this station."),
    min_severity: Optional[str] = typer.Option(None, "--min-severity", help="LOW, MEDIUM, HIGH or CRITICAL."),
    kind: List[str] = typer.Option([], "--kind", help="Only this alert kind (repeat for several)."),
    json_out: bool = typer.Option(False, "--json", help="One JSON object per line (the alert, its status and status_reason included), for scripts."),
    url: Optional[str] = typer.Option(None, "--url", help="Gateway URL (default: YRDBUS_GATEWAY_URL or "
                                      "http://YRDBUS_GATEWAY_HOST:YRDBUS_GATEWAY_PORT)."),
    token_file: Optional[Path] = typer.Option(None, "--token-file", help="File holding the bearer token "
                                              "(default: the YRDBUS_GATEWAY_TOKEN environment variable)."),
    since: Optional[str] = typer.Option(None, "--since", help="Resume from this cursor (an event id)."),
    from_time: Optional[str] = typer.Option(None, "--from-time", help="Start at this ISO 8601 time (e.g. 2025-03-01T08:00Z)."),
    count: Optional[int] = typer.Option(None, "--count", min=1, help="Exit after this many alerts."),
    lang: str = typer.Option("zh-CN", "--lang", envvar="YRDBUS_LANG",
                             help="Language of the lines: zh-CN (Simplified Chinese, the default) or en. Times are "
                                  "Beijing time with the date either way; --json keeps the API's UTC."),
) -> None:
    """Print alerts as they arrive, one line each (coloured by severity), reconnecting without loss.

    Each line shows the alert's status: RAISED, or WITHDRAWN with the reason (a later version of an alert
    already printed, same id: events read later disproved it). Officers' dispositions of the alerts in scope
    (acknowledged, confirmed, false alarm, no action) are printed as they come too; with --json, as objects
    with "event": "disposition".
    """
    import httpx2
    from rich.console import Console

    if lang not in LANGUAGES:
        fail(f"--lang {lang!r}: expected one of {', '.join(LANGUAGES)}")
    words = Words(lang)
    token = _token(token_file)
    base = _gateway_base(url)
    params: list[tuple[str, str]] = [("region", r) for r in region] + [("station", s) for s in station]
    params += [("kind", k) for k in kind]
    if min_severity:
        params.append(("min_severity", min_severity))
    if from_time and not since:
        params.append(("from_time", from_time))
    console = Console(highlight=False, soft_wrap=True)
    err = Console(stderr=True, highlight=False)
    cursor = since
    shown = 0
    backoff = 1.0
    timeout = httpx2.Timeout(connect=5.0, read=45.0, write=5.0, pool=5.0)   # the gateway pings every 15 s
    try:
        with httpx2.Client(timeout=timeout) as client:
            while True:
                headers = {"Authorization": f"Bearer {token}"}
                if cursor:
                    headers["Last-Event-ID"] = cursor
                try:
                    with client.sse(f"{base}/alerts/stream", params=params, headers=headers) as source:
                        response = source.response
                        if response.status_code != 200:
                            response.read()
                            try:
                                message = response.json().get("message", response.text)
                            except ValueError:
                                message = response.text
                            fail(f"{base} answered {response.status_code}: {message}", 2)
                        backoff = 1.0
                        for event in source:
                            if event.event == "alert":
                                cursor = event.id or cursor
                                alert = event.json()
                                if json_out:
                                    sys.stdout.write(json.dumps(alert, ensure_ascii=False) + "\n")
                                    sys.stdout.flush()
                                else:
                                    console.print(_line(alert, words))
                                shown += 1
                                if count is not None and shown >= count:
                                    return
                            elif event.event == "disposition":
                                cursor = event.id or cursor
                                d = event.json()
                                if json_out:
                                    sys.stdout.write(json.dumps({"event": "disposition", **d}, ensure_ascii=False)
                                                     + "\n")
                                    sys.stdout.flush()
                                else:
                                    console.print(_disposition_line(d, words), markup=False)
                            elif event.event == "hello":
                                cursor = event.id or cursor
                            elif event.event in ("lagged", "closing"):
                                cursor = event.json().get("cursor") or cursor
                                err.print(f"[yellow]{event.event}: resuming from {cursor}[/]")
                                break
                            elif event.event == "gap":
                                err.print(f"[red]gap: {event.json()}[/]")
                except (httpx2.TransportError, httpx2.SSEError) as exc:
                    err.print(f"[yellow]connection to {base} lost ({type(exc).__name__}); retrying in {backoff:g} s[/]")
                    time.sleep(backoff)
                    backoff = min(backoff * 2, 10.0)
    except KeyboardInterrupt:
        return


def _gateway_base(url: Optional[str]) -> str:
    """--url, else YRDBUS_GATEWAY_URL, else http://YRDBUS_GATEWAY_HOST:YRDBUS_GATEWAY_PORT."""
    settings = get_settings()
    return (url or settings.gateway_url or f"http://{settings.gateway_host}:{settings.gateway_port}").rstrip("/")


def _post(path: str, body: dict, url: Optional[str], token_file: Optional[Path]) -> dict:
    """POST ``body`` to the gateway with the bearer token; its JSON answer, or exit 4 (unreachable) or 2 (refused,
    with the gateway's message)."""
    import httpx2

    base = _gateway_base(url)
    try:
        r = httpx2.post(base + path, json=body, headers={"Authorization": f"Bearer {_token(token_file)}"}, timeout=30)
    except httpx2.TransportError as exc:
        fail(f"cannot reach the gateway at {base}: {exc} (is `yrdbus gateway serve` running?)", 4)
    try:
        answer = r.json()
    except ValueError:
        answer = {"message": r.text}
    if not 200 <= r.status_code < 300:
        fail(f"{base} answered {r.status_code}: {answer.get('message', answer)}", 2)
    return answer


def _dispose(alert_id: str, outcome: str, note: str, url: Optional[str], token_file: Optional[Path],
             json_out: bool) -> None:
    body = _post(f"/alerts/{alert_id}/dispositions", {"outcome": outcome, "note": note}, url, token_file)
    if json_out:
        typer.echo(json.dumps(body, ensure_ascii=False))
        return
    for d in body["dispositions"]:
        typer.echo(f"{d['alert_id']}: {d['outcome']} for {d['region'] or 'the command centre'} by {d['officer']} "
                   f"at {d['decided_at']}" + (f" ({d['note']})" if d.get("note") else ""))
    if not body["recorded"]:
        typer.echo("(already recorded: nothing new)")


_URL_HELP = "Gateway URL (default: YRDBUS_GATEWAY_URL or http://YRDBUS_GATEWAY_HOST:YRDBUS_GATEWAY_PORT)."
_TOKEN_HELP = "File holding the bearer token (default: the YRDBUS_GATEWAY_TOKEN environment variable)."


@alerts_app.command("ack")
def ack(
    alert_id: str = typer.Argument(..., help="The derived alert's id (alert_id)."),
    note: str = typer.Option("", "--note", help="A short note (at most 500 characters)."),
    url: Optional[str] = typer.Option(None, "--url", help=_URL_HELP),
    token_file: Optional[Path] = typer.Option(None, "--token-file", help=_TOKEN_HELP),
    json_out: bool = typer.Option(False, "--json", help="Print the gateway's answer as JSON."),
) -> None:
    """Acknowledge a derived alert for your token's region: seen, being dealt with.

    Exit status 0 when recorded (or already so), 2 when the gateway refuses (the message says why), 4 when
    it cannot be reached.
    """
    _dispose(alert_id, "ACKNOWLEDGED", note, url, token_file, json_out)


@alerts_app.command("settle")
def settle(
    alert_id: str = typer.Argument(..., help="The derived alert's id (alert_id)."),
    outcome: str = typer.Option(..., "--outcome", help="confirmed (the alert was right), false-alarm, or no-action "
                                                       "(right, nothing for this region to do)."),
    note: str = typer.Option("", "--note", help="A short note (at most 500 characters)."),
    url: Optional[str] = typer.Option(None, "--url", help=_URL_HELP),
    token_file: Optional[Path] = typer.Option(None, "--token-file", help=_TOKEN_HELP),
    json_out: bool = typer.Option(False, "--json", help="Print the gateway's answer as JSON."),
) -> None:
    """Settle a derived alert for your token's region (acknowledging it too if it was not).

    A settlement is not changed once recorded: settling again the same way is a no-op, another way is refused.
    """
    _dispose(alert_id, outcome.strip().upper().replace("-", "_"), note, url, token_file, json_out)


control_app = typer.Typer(help="The command centre's controls of the stream layer, through the gateway.",
                          no_args_is_help=True)


@control_app.command("heightened")
def heightened(
    regions: List[str] = typer.Option([], "--regions", "--region", help="Regions (repeat, or SH,JS)."),
    until: Optional[str] = typer.Option(None, "--until", help="End of the window (ISO 8601 with a zone, e.g. "
                                        "2026-11-11T00:00+08:00); with --end: the new end (default: now)."),
    start: Optional[str] = typer.Option(None, "--from", help="Start of the window (default: now)."),
    multiplier: float = typer.Option(0.5, "--multiplier", help="Trend and flow thresholds inside the window are "
                                     "multiplied by this (0 < m <= 1)."),
    reason: str = typer.Option("", "--reason", help="Why, e.g. 'China International Import Expo'."),
    end: Optional[str] = typer.Option(None, "--end", metavar="WINDOW", help="End this window early instead (its "
                                      "event id, as declaring it printed, or its announcement's alert id)."),
    url: Optional[str] = typer.Option(None, "--url", help=_URL_HELP),
    token_file: Optional[Path] = typer.Option(None, "--token-file", help=_TOKEN_HELP),
    json_out: bool = typer.Option(False, "--json", help="Print the control event as JSON."),
) -> None:
    """Declare heightened mode for regions and a window, or end one early (a command-centre token only).

    Inside the window the stream layer lowers those regions' trend and flow thresholds by the multiplier and
    broadcasts their HIGH and CRITICAL alerts to every region; every wall in scope shows the window. Ended early
    (--end), the hours it no longer covers are judged again with the usual thresholds, and what they no longer
    raise (broadcasts among it) is withdrawn.
    """
    if end is not None:
        if regions or start:
            fail("--end takes only --until (the new end, default now): the window keeps its regions and start", 2)
        answer = _post(f"/control/heightened/{end.strip()}/end", {"ends_at": until} if until else {}, url, token_file)
    else:
        if not regions or not until:
            fail("declaring a window needs --regions and --until (or --end WINDOW to end one)", 2)
        body = {"regions": [x.strip() for r in regions for x in r.split(",") if x.strip()], "ends_at": until,
                "threshold_multiplier": multiplier, "reason": reason}
        if start:
            body["starts_at"] = start
        answer = _post("/control/heightened", body, url, token_file)
    if json_out:
        typer.echo(json.dumps(answer, ensure_ascii=False))
    elif end is not None:
        typer.echo(f"heightened mode for {', '.join(answer['regions'])} (window {answer['window_id']}) now ends at "
                   f"{answer['ends_at']} (event {answer['event_id']})")
    else:
        typer.echo(f"heightened mode for {', '.join(answer['regions'])} from {answer['starts_at']} to "
                   f"{answer['ends_at']}, thresholds x{answer['threshold_multiplier']:g} (event {answer['event_id']})")


def register(app: typer.Typer) -> None:
    app.add_typer(gateway_app, name="gateway")
    app.add_typer(alerts_app, name="alerts")
    app.add_typer(control_app, name="control")
