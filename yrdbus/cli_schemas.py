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


def kcat_frames(stream):
    """The records of kcat's ``-f '%R%s'`` output: each value after its length, a big-endian 32-bit signed integer
    (-1: a null value, yielded as None). Raises ValueError on a cut record."""
    n = 0
    while True:
        head = stream.read(4)
        if not head:
            return
        n += 1
        if len(head) < 4:
            raise ValueError(f"record {n}: the stream ends inside its 4-byte length")
        size = int.from_bytes(head, "big", signed=True)
        if size < 0:
            yield None
            continue
        body = stream.read(size)
        if len(body) < size:
            raise ValueError(f"record {n}: {size} bytes announced, the stream ends after {len(body)}")
        yield body


@codec_app.command("decode")
def codec_decode(
    kind: str = typer.Option(None, "--kind", "-k", help="Expected kind (default: whatever the schema id says)."),
    with_kind: bool = typer.Option(False, "--with-kind", help='Print {"kind": ..., "event": {...}} instead of the event.'),
    framing: str = typer.Option(
        "one", "--framing",
        help="one: stdin is one record (a JSON document out); kcat: records as `kcat -C -f '%R%s'` writes them, "
             "each after its length; base64: one record per line, base64 (`kcat -C -f '%s' | base64 -w0` per "
             "record, or any tool). kcat and base64 write one JSON object per line (JSON Lines)."),
) -> None:
    """Read framed Avro bytes on stdin; write the event as JSON on stdout (a stream of them: JSON Lines).

    kcat -C -b BROKER -t border.SH.clearance -e -f '%R%s' | yrdbus codec decode --framing kcat
    """
    import base64
    import binascii

    from schemas import jsonform
    from schemas.errors import EventError

    if kind is not None:
        _check_kind(kind)
    if framing not in ("one", "kcat", "base64"):
        fail(f"--framing {framing!r}: expected one, kcat or base64", 2)
    codec = _codec()
    if framing == "one":
        data = sys.stdin.buffer.read()
        try:
            got, record = codec.decode(data, kind)
        except EventError as exc:
            fail(str(exc.at("stdin") if exc.source is None else exc))
        out = jsonform.to_json(got, record)
        typer.echo(json.dumps({"kind": got, "event": out} if with_kind else out, indent=2, ensure_ascii=False))
        return

    def records():
        if framing == "kcat":
            yield from kcat_frames(sys.stdin.buffer)
            return
        for n, line in enumerate(sys.stdin.buffer, start=1):
            if line.strip():
                try:
                    yield base64.b64decode(line.strip(), validate=True)
                except binascii.Error as exc:
                    raise ValueError(f"line {n}: not base64 ({exc})") from None

    bad = 0
    try:
        for n, data in enumerate(records(), start=1):
            if data is None:
                typer.echo("null")
                continue
            try:
                got, record = codec.decode(data, kind)
            except EventError as exc:   # said, and the rest of the stream read
                bad += 1
                typer.echo(f"error: record {n}: {exc}", err=True)
                continue
            out = jsonform.to_json(got, record)
            typer.echo(json.dumps({"kind": got, "event": out} if with_kind else out, ensure_ascii=False))
    except ValueError as exc:
        fail(f"stdin: {exc}")
    if bad:
        raise typer.Exit(1)


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


@schemas_app.command("serve")
def schemas_serve(
    port: int = typer.Option(None, "--port", help="Port (YRDBUS_SCHEMA_REGISTRY_PORT, default 8081)."),
    prefix: str = typer.Option("", "--prefix", help="Prefix of the topic names (subjects are <topic>-value)."),
    duration: float = typer.Option(None, "--duration", help="Stop after this many seconds (default: Ctrl-C)."),
) -> None:
    """Serve the read-only schema registry (the Confluent API over schemas/ids.json) alone; the sink serves it too."""
    import time

    from connectors.registry import RegistryServer
    from schemas.settings import get_settings

    s = get_settings()
    try:
        server = RegistryServer(host=s.query_host, port=port or s.schema_registry_port, prefix=prefix).start()
    except RuntimeError as exc:
        fail(str(exc))
    typer.echo(f"schema registry: {server.url} (Confluent API, read-only)", err=True)
    deadline = time.monotonic() + duration if duration else None
    try:
        while deadline is None or time.monotonic() < deadline:
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


def register(app: typer.Typer) -> None:
    app.add_typer(codec_app, name="codec")
    app.add_typer(schemas_app, name="schemas")
