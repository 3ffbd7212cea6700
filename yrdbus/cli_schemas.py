"""`yrdbus codec ...` and `yrdbus schemas ...`: the event contract on the command line."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from yrdbus.cli_common import fail

codec_app = typer.Typer(help="Encode and decode events: JSON form <-> Avro in the Confluent framing.",
                        no_args_is_help=True)
schemas_app = typer.Typer(help="The Avro contract: compatibility of every version, registration of new ones.",
                          no_args_is_help=True)

KIND_HELP = "Event kind: clearance, alert, case, control, derived_alert, trend, risk."


def _codec():
    from schemas.codec import get_codec

    return get_codec()


def _check_kind(kind: str) -> str:
    from schemas import contract

    try:
        contract.full_name(kind)
    except contract.UnknownKind as exc:
        fail(str(exc), 2)
    return kind


# --------------------------------------------------------------------------- codec
@codec_app.command("example")
def codec_example(
    kind: str = typer.Option("clearance", "--kind", "-k", help="clearance, alert or case."),
) -> None:
    """Print a valid example event as JSON (fictitious identities, pseudonymous tokens)."""
    from schemas import jsonform
    from schemas.examples import EXAMPLE_KINDS, example
    from schemas.pseudonym import DEMO_KEY, Pseudonymizer, SubjectKeyError, load_key
    from schemas.settings import get_settings

    if kind not in EXAMPLE_KINDS:
        fail(f"no example for kind {kind!r}; choose one of {', '.join(EXAMPLE_KINDS)}", 2)
    try:
        key = load_key(get_settings())
    except SubjectKeyError:
        typer.echo("note: no subject key configured; the example's tokens use the public demo key", err=True)
        key = DEMO_KEY
    record = example(kind, pseudonymizer=Pseudonymizer(key))
    typer.echo(json.dumps(jsonform.to_json(kind, record), indent=2, ensure_ascii=False))


@codec_app.command("encode")
def codec_encode(
    kind: str = typer.Option(..., "--kind", "-k", help=KIND_HELP),
    no_validate: bool = typer.Option(False, "--no-validate",
                                     help="Skip the reference-data and event-time checks (the schema still applies)."),
) -> None:
    """Read one event as JSON on stdin; write its framed Avro bytes on stdout."""
    from schemas import jsonform
    from schemas.errors import EventError

    _check_kind(kind)
    text = sys.stdin.read()
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        fail(f"stdin, line {exc.lineno} column {exc.colno}: not JSON: {exc.msg}")
    try:
        record = jsonform.from_json(kind, obj)
        data = _codec().encode(kind, record, validate=not no_validate)
    except EventError as exc:
        fail(str(exc.at("stdin") if exc.source is None else exc))
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


@codec_app.command("decode")
def codec_decode(
    kind: str = typer.Option(None, "--kind", "-k", help="Expected kind (default: whatever the schema id says)."),
    with_kind: bool = typer.Option(False, "--with-kind", help='Print {"kind": ..., "event": {...}} instead of the event.'),
) -> None:
    """Read framed Avro bytes on stdin; write the event as JSON on stdout."""
    from schemas import jsonform
    from schemas.errors import EventError

    if kind is not None:
        _check_kind(kind)
    data = sys.stdin.buffer.read()
    try:
        got, record = _codec().decode(data, kind)
    except EventError as exc:
        fail(str(exc.at("stdin") if exc.source is None else exc))
    out = jsonform.to_json(got, record)
    typer.echo(json.dumps({"kind": got, "event": out} if with_kind else out, indent=2, ensure_ascii=False))


# --------------------------------------------------------------------------- schemas
@schemas_app.command("check")
def schemas_check(
    folder: Path = typer.Option(None, "--dir", help="A schemas folder with avsc/ and history/ (default: the installed one)."),
    json_out: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
) -> None:
    """Check every earlier version of every schema against the current one, backward and forward.

    Fails (exit 1) naming the schema, the version and the field that breaks compatibility.
    """
    from schemas import evolution

    compared, problems = evolution.check(folder)
    pending = evolution.unregistered(folder)
    if json_out:
        typer.echo(json.dumps({"ok": not problems, "compared": len(compared),
                               "problems": [p.as_dict() for p in problems], "unregistered": pending}))
    else:
        for p in problems:
            typer.secho(f"INCOMPATIBLE {p}", fg=typer.colors.RED, err=True)
        if pending:
            typer.echo(f"not yet registered (run `yrdbus schemas register`): {', '.join(pending)}")
        state = "ok" if not problems else f"{len(problems)} problem(s)"
        typer.echo(f"{len(compared)} version(s) of {len({c.schema for c in compared})} schema(s) checked "
                   f"both ways: {state}")
    if problems:
        raise typer.Exit(1)


@schemas_app.command("register")
def schemas_register(
    folder: Path = typer.Option(None, "--dir", help="A schemas folder with avsc/, history/, ids.json (default: the installed one)."),
    json_out: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
) -> None:
    """Append each changed current schema as a new version to schemas/history and schemas/ids.json.

    Refuses when `schemas check` fails: an incompatible version never gets an id.
    """
    from schemas import contract, evolution

    _, problems = evolution.check(folder)
    if problems:
        for p in problems:
            typer.secho(f"INCOMPATIBLE {p}", fg=typer.colors.RED, err=True)
        fail("not registering: the current schemas break compatibility (see above)")
    before = {r["id"] for r in contract.load_ids(folder)}
    rows = [contract.register_local(kind, folder) for kind in contract.KINDS]
    added = [r for r in rows if r["id"] not in before]
    if json_out:
        typer.echo(json.dumps({"added": added, "schemas": rows}))
        return
    for r in added:
        typer.echo(f"registered {r['name']} v{r['version']} as id {r['id']} ({r['file']})")
    if not added:
        typer.echo("every current schema is already registered")


def register(app: typer.Typer) -> None:
    app.add_typer(codec_app, name="codec")
    app.add_typer(schemas_app, name="schemas")
