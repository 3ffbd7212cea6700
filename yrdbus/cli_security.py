"""`yrdbus security`: the bus's Kafka principals and ACLs, client settings, local certificates, ClickHouse access DDL."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from schemas.settings import get_settings
from yrdbus.cli_common import fail

security_app = typer.Typer(help="Kafka principals, SCRAM users and ACLs as code; TLS for a local stack; "
                                "ClickHouse analyst roles and row policies. See docs/security.md.",
                           no_args_is_help=True)


@security_app.command("principals")
def principals_cmd(json_out: bool = typer.Option(False, "--json", help="Print JSON for scripts.")) -> None:
    """Every Kafka principal of the bus: one per station, one per service, and admin."""
    from yrdbus.security import principals

    rows = [{"name": p.name, "role": p.role, "region": p.region, "purpose": p.purpose} for p in principals()]
    if json_out:
        typer.echo(json.dumps(rows))
        return
    for r in rows:
        typer.echo(f"{r['name']:22} {r['role']:8} {r['region'] or '-':3} {r['purpose']}")


@security_app.command("acls")
def acls_cmd(
    prefix: str = typer.Option("", "--prefix", help="Topic prefix of a private copy of the bus."),
    principal: Optional[str] = typer.Option(None, "--principal", help="Only this principal's ACLs."),
    json_out: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
) -> None:
    """The ACLs of the bus as code (ALLOW rules; everything else is denied by the authorizer)."""
    from dataclasses import asdict

    from yrdbus.security import grants

    rows = [g for g in grants(prefix) if principal is None or g.principal == principal]
    if json_out:
        typer.echo(json.dumps([asdict(g) for g in rows]))
        return
    for g in rows:
        typer.echo(f"{g.text()}    # {g.why}")


@security_app.command("apply")
def apply_cmd(
    prefix: str = typer.Option("", "--prefix", help="Topic prefix of a private copy of the bus."),
    passwords_dir: Optional[Path] = typer.Option(
        None, "--passwords-dir", help="One password file per principal (default: the local stack's, "
                                      "<var>/kafka/security/passwords). Missing files are created."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Make the cluster's SCRAM users and ACLs match the code (as admin; idempotent).

    On the local secured stack this runs by itself at `stack up`; against another cluster, set
    YRDBUS_KAFKA_BOOTSTRAP and the admin's YRDBUS_KAFKA_* settings and give --passwords-dir.
    """
    from schemas.kafka_config import KafkaSecurityError, client_config
    from yrdbus.security import PasswordStore, SecurityError, apply
    from yrdbus.stack import KafkaStack

    settings = get_settings()
    stack = KafkaStack(settings)
    try:
        if settings.embedded_kafka:
            if stack.security_protocol == "PLAINTEXT":
                fail("the local stack is not secured; start it with `yrdbus stack up --secure` "
                      "(after `yrdbus stack reset --yes` if it exists)")
            conf = {"bootstrap.servers": stack.bootstrap(), **stack.admin_config()}
            store = PasswordStore(passwords_dir) if passwords_dir else stack.passwords()
        else:
            if not passwords_dir:
                fail("--passwords-dir is needed for an external cluster")
            conf = client_config(settings)
            store = PasswordStore(passwords_dir)
        result = apply(conf, store, prefix)
    except (KafkaSecurityError, SecurityError) as exc:
        fail(str(exc))
    if json_out:
        typer.echo(json.dumps(result))
    else:
        typer.echo(f"{len(result['users'])} SCRAM users upserted; ACLs: {result['created']} created, "
                   f"{result['deleted']} removed, {result['kept']} already there.")


@security_app.command("env")
def env_cmd(
    principal: str = typer.Argument(..., help="A principal (see `yrdbus security principals`)."),
    json_out: bool = typer.Option(False, "--json", help="Print JSON instead of shell exports."),
) -> None:
    """The YRDBUS_KAFKA_* settings of a process acting as PRINCIPAL on the local secured stack.

    The password stays in its file (mode 600); the settings name the file. Use:
    eval "$(yrdbus security env svc-sink)".
    """
    from yrdbus.security import principal as lookup
    from yrdbus.stack import KafkaStack

    try:
        lookup(principal)
    except KeyError as exc:
        fail(str(exc.args[0]))
    stack = KafkaStack(get_settings())
    if stack.security_protocol == "PLAINTEXT":
        fail("the local stack is not secured; start it with `yrdbus stack up --secure`")
    env = stack.client_env(principal)
    if json_out:
        typer.echo(json.dumps(env))
        return
    for k, v in env.items():
        typer.echo(f"export {k}='{v}'")


@security_app.command("certs")
def certs_cmd(
    out: Path = typer.Option(None, "--dir", help="Where to write ca.pem, ca.key, broker.pem "
                                                 "(default: <var>/kafka/security)."),
    host: list[str] = typer.Option(["127.0.0.1", "localhost"], "--host", help="Names and addresses the broker "
                                                                             "certificate is good for (repeat)."),
    days: int = typer.Option(365, "--days", min=1, help="Validity of the broker certificate (the CA's: 5 times)."),
    force: bool = typer.Option(False, "--force", help="Replace existing files."),
) -> None:
    """Make a local CA and a broker certificate (for a local secured stack; never commit them)."""
    from yrdbus.security import make_certificates

    folder = out or (get_settings().var_dir / "kafka" / "security")
    files = make_certificates(folder, hosts=tuple(host), days=days, force=force)
    typer.echo(f"CA certificate (clients trust it): {files.ca_cert}\n"
               f"CA key (mode 600): {files.ca_key}\nbroker key and chain (mode 600): {files.broker}")


@security_app.command("clickhouse")
def clickhouse_cmd(
    database: str = typer.Option("yrdbus", "--database", help="The bus's database."),
    cluster: Optional[str] = typer.Option(None, "--cluster", help="Render ON CLUSTER DDL for this cluster."),
    max_execution_time: float = typer.Option(30.0, "--max-execution-time", help="Analysts' time limit (s)."),
    max_result_rows: int = typer.Option(1_000_000, "--max-result-rows", help="Analysts' result size limit."),
) -> None:
    """Print the analyst roles, their read-only grants, limits and region row policies for a ClickHouse server."""
    from connectors.store.access import render

    for statement in render(database, cluster=cluster, max_execution_time=max_execution_time,
                            max_result_rows=max_result_rows):
        typer.echo(statement + ";")


def register(app: typer.Typer) -> None:
    app.add_typer(security_app, name="security")
