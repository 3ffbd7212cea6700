"""`yrdbus db ...`, `yrdbus sink`, `yrdbus serve-queries`, `yrdbus query`, `yrdbus sql`: the ClickHouse side."""
from __future__ import annotations

import csv
import io
import json
import logging
import signal
import sys
import time
from datetime import date, datetime
from decimal import Decimal
from typing import List, Optional

import typer

from schemas.settings import get_settings
from yrdbus.cli_common import fail

db_app = typer.Typer(help="The ClickHouse schema: versioned migrations, one node or a cluster.", no_args_is_help=True)


def _database_of(url: str, given: str | None) -> str:
    from urllib.parse import urlparse

    from connectors.store import DEFAULT_DATABASE

    if given:
        return given
    if url.startswith(("http://", "https://")):
        path = urlparse(url).path.strip("/")
        if path:
            return path
    return DEFAULT_DATABASE


# --------------------------------------------------------------------------- db
@db_app.command("migrate")
def db_migrate(
    cluster: Optional[str] = typer.Option(None, "--cluster", help="Render for this ClickHouse cluster: "
                                          "ReplicatedMergeTree tables under Distributed ones, ON CLUSTER DDL."),
    print_only: bool = typer.Option(False, "--print", help="Print the SQL instead of applying it."),
    database: Optional[str] = typer.Option(None, "--database", help="Database (default: yrdbus)."),
    json_out: bool = typer.Option(False, "--json", help="Print what was done as JSON."),
) -> None:
    """Apply the schema migrations not yet applied (idempotent), reconcile the TTL, reload reference data."""
    from connectors.store import MigrationError, Target, migrate, render_script
    from connectors.store import client as store

    s = get_settings()
    try:
        target = Target(database=_database_of(s.clickhouse_url, database), cluster=cluster,
                        ttl_days=s.clickhouse_ttl_days)
    except MigrationError as exc:
        fail(str(exc))
    if print_only:
        typer.echo(render_script(target), nl=False)
        return
    if cluster and store.is_embedded(s.clickhouse_url):
        fail("--cluster applies to a ClickHouse cluster; the embedded store is one node. "
              "Use --print to see the cluster DDL, or set YRDBUS_CLICKHOUSE_URL to a server of the cluster.")
    try:
        client = store.get_client(s.clickhouse_url)
        result = migrate(client, target, echo=(lambda m: typer.echo(m, err=True)) if json_out else typer.echo)
    except (store.StoreError, MigrationError) as exc:
        fail(str(exc))
    if json_out:
        typer.echo(json.dumps(result.as_dict()))
    else:
        typer.echo(f"{store.describe(s.clickhouse_url)} database {result.database}: "
                   f"{len(result.applied)} migration(s) applied, {len(result.already)} already there"
                   + (f"; TTL set to {s.clickhouse_ttl_days} days on {len(result.ttl_changed)} table(s)"
                      if result.ttl_changed else ""))


@db_app.command("hash-password")
def db_hash_password(
    password: str = typer.Option(..., prompt=True, hide_input=True, confirmation_prompt=True,
                                 help="The password (prompted when not given)."),
) -> None:
    """Print the hash of a password for YRDBUS_QUERY_USERS (the query endpoint's users)."""
    from connectors.store.queryserver import hash_password

    typer.echo(hash_password(password))


# --------------------------------------------------------------------------- serving
def _serve(sink: bool, duration: float | None, no_serve: bool, group: str | None, prefix: str,
           idle_exit: float | None, port: int | None, migrate_first: bool) -> int:
    from connectors.store import Target, migrate
    from connectors.store import client as store
    from connectors.store.queryserver import QueryServer, state_file

    s = get_settings()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    database = _database_of(s.clickhouse_url, None)
    try:
        client = store.get_client(s.clickhouse_url)
    except store.StoreError as exc:
        fail(str(exc))
    if migrate_first:
        migrate(client, Target(database=database, ttl_days=s.clickhouse_ttl_days))
    server = None
    if not no_serve and store.is_embedded(s.clickhouse_url):
        server = QueryServer(str(store.embedded_path(s.clickhouse_url)), host=s.query_host,
                             port=port or s.query_port, users=s.query_users,
                             max_execution_time=s.query_max_execution_time_s, state_file=state_file(s.var_dir),
                             database=database, max_memory_usage=s.query_max_memory_bytes,
                             max_result_bytes=s.query_max_result_bytes,
                             max_concurrent_per_user=s.query_max_concurrent_per_user)
        try:
            server.start()
        except RuntimeError as exc:
            fail(str(exc))
        typer.echo(f"query endpoint: {server.url} (ClickHouse HTTP interface, read-only; /metrics)", err=True)
    registry = _serve_registry(s, prefix) if sink and not no_serve else None
    stopper = {"stop": None}

    def on_signal(signum, frame):
        if stopper["stop"]:
            stopper["stop"]()
        else:
            raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        if sink:
            from connectors.store.sink import Sink
            from schemas.eventtime import EventTimeBounds

            worker = Sink(bootstrap=s.bootstrap, client=client, database=database,
                          embedded=store.is_embedded(s.clickhouse_url), group=group or s.sink_group,
                          prefix=prefix, batch_rows=s.sink_batch_rows, batch_age_s=s.sink_batch_age_s,
                          registry_url=s.schema_registry_url, event_time=EventTimeBounds.from_settings(s),
                          rejoin_s=s.sink_rejoin_s)
            stopper["stop"] = worker.stop
            typer.echo(f"sink: {s.bootstrap} -> {store.describe(s.clickhouse_url)} database {database}, "
                       f"group {group or s.sink_group}", err=True)
            stats = worker.run(duration=duration, idle_exit_s=idle_exit)
            typer.echo(json.dumps({"sink": stats}))
        else:
            deadline = time.monotonic() + duration if duration else None
            done = {"flag": False}
            stopper["stop"] = lambda: done.update(flag=True)
            while not done["flag"] and (deadline is None or time.monotonic() < deadline):
                time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        if server is not None:
            server.stop()
        if registry is not None:
            registry.stop()
    return 0


def _serve_registry(s, prefix: str):
    """The read-only schema registry (connectors/registry.py) beside the query endpoint, unless the settings name a
    registry of their own; a port already taken is said, not fatal (another process of the bus serves it)."""
    if s.schema_registry_url or not s.schema_registry_port:
        return None
    from connectors.registry import RegistryServer

    try:
        registry = RegistryServer(host=s.query_host, port=s.schema_registry_port, prefix=prefix).start()
    except RuntimeError as exc:
        typer.echo(f"warning: schema registry not served: {exc}", err=True)
        return None
    typer.echo(f"schema registry: {registry.url} (Confluent API, read-only, schemas/ids.json)", err=True)
    return registry


def register(app: typer.Typer) -> None:
    """Add the store's commands to the main ``yrdbus`` app."""
    app.add_typer(db_app, name="db")

    @app.command("sink")
    def sink_cmd(
        duration: Optional[float] = typer.Option(None, "--duration", help="Stop after this many seconds."),
        no_serve: bool = typer.Option(False, "--no-serve", help="Do not serve the live query endpoint."),
        port: Optional[int] = typer.Option(None, "--port", help="Port of the query endpoint (YRDBUS_QUERY_PORT)."),
        group: Optional[str] = typer.Option(None, "--group", help="Consumer group (YRDBUS_SINK_GROUP)."),
        prefix: str = typer.Option("", "--prefix", help="Topic name prefix (a private copy of the topics, tests)."),
        idle_exit: Optional[float] = typer.Option(None, "--idle-exit", help="Stop after this many seconds "
                                                   "without a record."),
        no_migrate: bool = typer.Option(False, "--no-migrate", help="Do not apply the schema migrations first."),
    ) -> None:
        """Store every event, derived output and dead letter in ClickHouse; serve the store read-only over HTTP."""
        sys.exit(_serve(True, duration, no_serve, group, prefix, idle_exit, port, not no_migrate))

    @app.command("serve-queries")
    def serve_queries_cmd(
        duration: Optional[float] = typer.Option(None, "--duration", help="Stop after this many seconds."),
        port: Optional[int] = typer.Option(None, "--port", help="Port (YRDBUS_QUERY_PORT, default 8124)."),
    ) -> None:
        """Serve the embedded store read-only over the ClickHouse HTTP interface, without sinking."""
        sys.exit(_serve(False, duration, False, None, "", None, port, True))

    @app.command("query")
    def query_cmd(
        name: Optional[str] = typer.Argument(None, help="Name of a query of the library (see --list)."),
        param: List[str] = typer.Option([], "--param", "-p", help="A parameter, name=value (repeatable)."),
        fmt: str = typer.Option("table", "--format", "-f", help="table, json or csv."),
        list_: bool = typer.Option(False, "--list", help="List the queries and their parameters."),
        json_out: bool = typer.Option(False, "--json", help="Same as --format json."),
        user: str = typer.Option("default", "--user", envvar="YRDBUS_QUERY_USER", help="Endpoint user."),
        password: str = typer.Option("", "--password", envvar="YRDBUS_QUERY_PASSWORD", help="Endpoint password."),
    ) -> None:
        """Run a named analyst query (connectors/store/queries/NAME.sql) on the store."""
        from connectors.store import queries

        if list_ or not name:
            lib = queries.library()
            if json_out or fmt == "json":
                typer.echo(json.dumps([{"name": q.name, "title": q.title, "description": q.description,
                                        "params": [{"name": p.name, "type": p.type, "default": p.default,
                                                    "help": p.help} for p in q.params]} for q in lib.values()]))
                return
            for q in lib.values():
                typer.echo(f"{q.name}: {q.title}")
                for p in q.params:
                    typer.echo(f"    --param {p.name}=<{p.type}>" + (" (required)" if p.required else
                                                                      f" (default {p.default!r})") + f"  {p.help}")
            return
        try:
            q = queries.get(name)
            bound = q.bind(queries.parse_params(param))
        except queries.QueryError as exc:
            fail(str(exc))
        _run_and_print(q.sql, bound, "json" if json_out else fmt, user, password)

    @app.command("sql")
    def sql_cmd(
        sql: str = typer.Argument(..., help="A read-only statement: SELECT, WITH, SHOW, DESCRIBE, EXISTS, EXPLAIN."),
        param: List[str] = typer.Option([], "--param", "-p", help="A query parameter, name=value ({name:Type})."),
        fmt: str = typer.Option("table", "--format", "-f", help="table, json or csv."),
        json_out: bool = typer.Option(False, "--json", help="Same as --format json."),
        user: str = typer.Option("default", "--user", envvar="YRDBUS_QUERY_USER", help="Endpoint user."),
        password: str = typer.Option("", "--password", envvar="YRDBUS_QUERY_PASSWORD", help="Endpoint password."),
    ) -> None:
        """Run ad-hoc read-only SQL on the store (through the live endpoint when a running bus owns it)."""
        from connectors.store import queries

        try:
            params = queries.parse_params(param)
        except queries.QueryError as exc:
            fail(str(exc))
        _run_and_print(sql, params, "json" if json_out else fmt, user, password, judge=True)


def query_client(user: str = "default", password: str = ""):
    """(client, where): the live endpoint of a running bus that owns the store, else the store itself."""
    import clickhouse_connect

    from connectors.store import client as store
    from connectors.store.queryserver import running_endpoint

    s = get_settings()
    database = _database_of(s.clickhouse_url, None)
    if store.is_embedded(s.clickhouse_url):
        state = running_endpoint(s.var_dir, str(store.embedded_path(s.clickhouse_url)))
        if state:
            client = clickhouse_connect.get_client(host=state["host"], port=state["port"], username=user,
                                                   password=password, database=state.get("database", database))
            return client, state["url"]
    client = store.get_client(s.clickhouse_url)
    client.database = database
    return client, store.describe(s.clickhouse_url)


def _jsonable(v):
    if isinstance(v, (datetime, date)):
        return v.isoformat()
    if isinstance(v, Decimal):
        return float(v)
    if isinstance(v, (bytes, bytearray)):
        return v.decode("utf-8", "replace")
    if isinstance(v, float) and v != v:
        return None
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if v is None or isinstance(v, (str, int, float, bool)):
        return v
    return str(v)


def _run_and_print(sql: str, params: dict, fmt: str, user: str, password: str, judge: bool = False) -> None:
    """Run ``sql`` and print it; ``judge``: ad-hoc SQL, held to the live endpoint's rules also when the
    store is opened directly (the endpoint judges it itself when a running bus serves it)."""
    if fmt not in ("table", "json", "csv"):
        fail(f"--format {fmt!r}: expected table, json or csv")
    from connectors.store import client as store
    from connectors.store.query_policy import Policy, QueryRefused

    try:
        client, where = query_client(user, password)
        if judge and not where.startswith("http"):
            def ask(q: str, p: dict) -> str:
                return client.raw_query(q, parameters=p or None, fmt="TabSeparatedRaw").decode()

            sql = Policy(ask, client.database).admit(sql, params, client.database, None).sql
        result = client.query(sql, parameters=params or None)
    except QueryRefused as exc:
        fail(str(exc))
    except store.StoreError as exc:
        fail(str(exc))
    except Exception as exc:  # the engine's message says what is wrong with the SQL
        fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    names = list(result.column_names)
    rows = result.result_rows
    if fmt == "json":
        typer.echo(json.dumps([{n: _jsonable(v) for n, v in zip(names, r)} for r in rows], ensure_ascii=False))
    elif fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(names)
        for r in rows:
            w.writerow(["" if v is None else _jsonable(v) for v in r])
        typer.echo(buf.getvalue(), nl=False)
    else:
        from rich.console import Console
        from rich.table import Table

        table = Table(*names, caption=f"{len(rows)} row(s) from {where}")
        for r in rows:
            table.add_row(*["" if v is None else str(_jsonable(v)) for v in r])
        Console().print(table)
