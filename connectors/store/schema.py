"""Versioned, idempotent schema migrations, for one node and for a cluster, from the same files.

``migrations/NNNN_name.sql`` hold ClickHouse DDL with a few placeholders:

- ``{{db}}``: the database (``yrdbus``);
- ``{{on_cluster}}``: empty on one node, ``ON CLUSTER <name>`` on a cluster;
- ``{{table:X}}``: where table ``X`` stores its rows (``db.X``; on a cluster ``db.X_local`` for a
  sharded table, under a ``Distributed`` table named ``db.X``);
- ``{{engine:E}}``: a MergeTree-family engine, ``ReplicatedE(...)`` on a cluster;
- ``{{ttl:column}}``: the table's TTL from ``YRDBUS_CLICKHOUSE_TTL_DAYS`` (nothing when 0).

A comment line ``-- distribute: <sharding key>`` before a ``CREATE TABLE`` makes the table sharded on a
cluster; ``-- everywhere`` makes it replicated to every node unsharded (reference data, the sink's batch
log). ``-- backfill`` before a ``CREATE MATERIALIZED VIEW ... TO {{table:T}} AS SELECT ...`` also runs its
SELECT over the rows already stored (``INSERT INTO db.T SELECT ...``, through the Distributed tables on a
cluster): a view sees only what is inserted after it. Applied migrations are recorded in
``db.schema_migrations`` with the checksum of their file.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
MIGRATIONS_DIR = HERE / "migrations"
DEFAULT_DATABASE = "yrdbus"

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_PLACEHOLDER = re.compile(r"\{\{\s*([a-z_]+)(?::([^}]*))?\s*\}\}")
_TABLE_REF = re.compile(r"\{\{\s*table:([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
_DISTRIBUTE = re.compile(r"^--\s*distribute:\s*(.+?)\s*$", re.MULTILINE)
_EVERYWHERE = re.compile(r"^--\s*everywhere\s*$", re.MULTILINE)
_BACKFILL = re.compile(r"^--\s*backfill\s*$", re.MULTILINE)
_VIEW_TO = re.compile(r"\s*CREATE\s+MATERIALIZED\s+VIEW\s+.*?\s+TO\s+\{\{\s*table:(\w+)\s*\}\}\s+AS\s+(.*)$",
                      re.IGNORECASE | re.DOTALL)
_STATEMENT_END = re.compile(r";[ \t]*$", re.MULTILINE)


class MigrationError(RuntimeError):
    pass


@dataclass(frozen=True)
class Statement:
    text: str                       # template text with placeholders
    distribute: str | None = None   # sharding key when the CREATE TABLE is sharded on a cluster
    everywhere: bool = False        # replicated to every node, unsharded
    backfill: str | None = None     # ``-- backfill``: the view's SELECT as an INSERT over the rows already stored

    @property
    def created_table(self) -> str | None:
        m = re.match(r"\s*CREATE\s+TABLE\s+IF\s+NOT\s+EXISTS\s+\{\{\s*table:(\w+)\s*\}\}", _strip_comments(self.text),
                     re.IGNORECASE)
        return m.group(1) if m else None


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    path: Path
    checksum: str
    statements: tuple[Statement, ...]


@dataclass
class Target:
    """Where and how to render: one node, or a cluster with Keeper-replicated tables."""
    database: str = DEFAULT_DATABASE
    cluster: str | None = None
    ttl_days: int = 0
    zk_prefix: str = "/clickhouse/tables"

    def __post_init__(self):
        for label, value in (("database", self.database), ("cluster", self.cluster)):
            if value is not None and not _IDENT.match(value):
                raise MigrationError(f"{label} {value!r}: expected a plain identifier (letters, digits, _)")
        if self.ttl_days < 0:
            raise MigrationError(f"ttl_days {self.ttl_days}: expected 0 (keep for ever) or a number of days")


def _strip_comments(sql: str) -> str:
    return "\n".join(line for line in sql.splitlines() if not line.lstrip().startswith("--"))


def load(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """Every migration file, in version order."""
    out: list[Migration] = []
    seen: dict[int, Path] = {}
    for path in sorted(directory.glob("*.sql")):
        m = _FILE.match(path.name)
        if not m:
            raise MigrationError(f"{path.name}: a migration file is named NNNN_name.sql")
        version = int(m.group(1))
        if version in seen:
            raise MigrationError(f"{path.name}: version {version} is also {seen[version].name}")
        seen[version] = path
        text = path.read_text()
        out.append(Migration(version, m.group(2), path, hashlib.sha256(text.encode()).hexdigest(),
                             tuple(_split(text))))
    return out


def _split(text: str) -> list[Statement]:
    statements: list[Statement] = []
    pos = 0
    for m in _STATEMENT_END.finditer(text):
        chunk = text[pos:m.start()]
        pos = m.end()
        if not _strip_comments(chunk).strip():
            continue
        dist = _DISTRIBUTE.search(chunk)
        copy = None
        if _BACKFILL.search(chunk):
            view = _VIEW_TO.match(_strip_comments(chunk))
            if view is None:
                raise MigrationError("-- backfill: expected CREATE MATERIALIZED VIEW ... TO {{table:T}} AS SELECT ...")
            copy = f"INSERT INTO {{{{table:{view.group(1)}}}}}\n{view.group(2)}"
        statements.append(Statement(chunk.strip(), dist.group(1) if dist else None, bool(_EVERYWHERE.search(chunk)),
                                    copy))
    if _strip_comments(text[pos:]).strip():
        raise MigrationError("the last statement of a migration file must end with ';'")
    return statements


def table_layout(migrations: list[Migration]) -> dict[str, str]:
    """Every table the migrations create -> 'sharded', 'everywhere' or 'plain'."""
    layout: dict[str, str] = {}
    for mig in migrations:
        for st in mig.statements:
            name = st.created_table
            if name:
                layout[name] = "sharded" if st.distribute else "everywhere" if st.everywhere else "plain"
    return layout


def render_statement(st: Statement, target: Target, layout: dict[str, str]) -> list[str]:
    """The SQL of one statement for ``target`` (a sharded table on a cluster renders two statements)."""
    db, cluster = target.database, target.cluster
    created = st.created_table

    def storage_name(name: str) -> str:
        if cluster and layout.get(name) == "sharded":
            return f"{name}_local"
        return name

    def replace(m: re.Match, whole: bool = False) -> str:
        """One placeholder's text; ``whole``: a table is named as a whole (its Distributed table on a cluster),
        not as one node's storage."""
        key, arg = m.group(1), (m.group(2) or "").strip()
        if key == "db":
            return db
        if key == "on_cluster":
            return f"ON CLUSTER {cluster}" if cluster else ""
        if key == "table":
            if arg not in layout:
                raise MigrationError(f"{{{{table:{arg}}}}}: no migration creates table {arg!r}")
            return f"{db}.{arg if whole else storage_name(arg)}"
        if key == "ttl":
            if not target.ttl_days:
                return ""
            return f"TTL toDateTime({arg}) + toIntervalDay({int(target.ttl_days)})"
        if key == "engine":
            if not cluster:
                return arg
            if not created:
                raise MigrationError(f"{{{{engine:{arg}}}}} outside a CREATE TABLE {{{{table:...}}}} statement")
            em = re.match(r"^(\w+)(?:\((.*)\))?$", arg, re.DOTALL)
            if not em or not em.group(1).endswith("MergeTree"):
                raise MigrationError(f"{{{{engine:{arg}}}}}: expected a MergeTree-family engine")
            shard = "all" if layout.get(created) != "sharded" else "{shard}"
            path = f"'{target.zk_prefix}/{shard}/{db}/{storage_name(created)}', '{{replica}}'"
            args = f"{path}, {em.group(2)}" if em.group(2) else path
            return f"Replicated{em.group(1)}({args})"
        raise MigrationError(f"unknown placeholder {m.group(0)}")

    def tidy(sql: str) -> str:
        return "\n".join(line.rstrip() for line in sql.splitlines() if line.strip())

    out = [tidy(_PLACEHOLDER.sub(replace, st.text))]
    if cluster and created and layout.get(created) == "sharded":
        out.append(f"CREATE TABLE IF NOT EXISTS {db}.{created} ON CLUSTER {cluster} AS {db}.{created}_local\n"
                   f"ENGINE = Distributed({cluster}, {db}, {created}_local, {st.distribute})")
    if st.backfill:
        # the view's SELECT over the rows already stored: all of them, not one node's shard
        out.append(tidy(_PLACEHOLDER.sub(lambda m: replace(m, whole=True), st.backfill)))
    return out


def migrations_table_sql(target: Target) -> str:
    engine = "MergeTree"
    on_cluster = ""
    if target.cluster:
        engine = (f"ReplicatedMergeTree('{target.zk_prefix}/all/{target.database}/schema_migrations', "
                  f"'{{replica}}')")
        on_cluster = f" ON CLUSTER {target.cluster}"
    return (f"CREATE TABLE IF NOT EXISTS {target.database}.schema_migrations{on_cluster}\n"
            f"(\n    version UInt32,\n    name String,\n    checksum String,\n"
            f"    applied_at DateTime64(3, 'UTC')\n)\nENGINE = {engine}\nORDER BY version")


def render(target: Target, migrations: list[Migration] | None = None) -> list[tuple[Migration | None, str]]:
    """Every statement of the schema for ``target``, in order: (migration or None for the preamble, SQL)."""
    migrations = load() if migrations is None else migrations
    layout = table_layout(migrations)
    on_cluster = f" ON CLUSTER {target.cluster}" if target.cluster else ""
    out: list[tuple[Migration | None, str]] = [
        (None, f"CREATE DATABASE IF NOT EXISTS {target.database}{on_cluster}"),
        (None, migrations_table_sql(target)),
    ]
    for mig in migrations:
        for st in mig.statements:
            for sql in render_statement(st, target, layout):
                out.append((mig, sql))
    return out


def render_script(target: Target) -> str:
    """The whole schema as one SQL script (``yrdbus db migrate --print``)."""
    parts = [f"-- yrdbus schema for {'cluster ' + target.cluster if target.cluster else 'one node'}, "
             f"database {target.database}, TTL {target.ttl_days or 'none'}"]
    current = None
    for mig, sql in render(target):
        if mig is not current and mig is not None:
            parts.append(f"\n-- migration {mig.version:04d} {mig.name}")
            current = mig
        parts.append(sql + ";")
    return "\n".join(parts) + "\n"


@dataclass
class MigrateResult:
    database: str
    applied: list[str] = field(default_factory=list)      # migrations applied now
    already: list[str] = field(default_factory=list)      # migrations applied before
    changed: list[str] = field(default_factory=list)      # applied before, file changed since (warning)
    ttl_changed: list[str] = field(default_factory=list)  # tables whose TTL was brought to the setting
    reference_rows: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"database": self.database, "applied": self.applied, "already": self.already,
                "changed": self.changed, "ttl_changed": self.ttl_changed, "reference_rows": self.reference_rows}


def applied_versions(client, database: str) -> dict[int, tuple[str, str]]:
    """version -> (name, checksum) of the migrations recorded in ``database``; empty when none."""
    exists = client.command(f"EXISTS TABLE {database}.schema_migrations")
    if str(exists).strip() != "1":
        return {}
    rows = client.query(f"SELECT version, name, checksum FROM {database}.schema_migrations").result_rows
    return {int(v): (n, c) for v, n, c in rows}


def migrate(client, target: Target, *, load_reference: bool = True, echo=None) -> MigrateResult:
    """Apply the migrations not yet applied (each statement is idempotent), reconcile the TTL, reload the
    reference data. Running it again changes nothing."""
    echo = echo or (lambda m: None)
    migrations = load()
    layout = table_layout(migrations)
    result = MigrateResult(target.database)
    preamble = render(target, [])
    for _, sql in preamble:
        client.command(sql)
    done = applied_versions(client, target.database)
    for mig in migrations:
        label = f"{mig.version:04d}_{mig.name}"
        if mig.version in done:
            result.already.append(label)
            if done[mig.version][1] != mig.checksum:
                result.changed.append(label)
                echo(f"warning: migration {label} changed after it was applied; write a new migration instead")
            continue
        for st in mig.statements:
            for sql in render_statement(st, target, layout):
                client.command(sql)
        client.insert(f"{target.database}.schema_migrations",
                      [[mig.version, mig.name, mig.checksum, datetime.now(timezone.utc)]],
                      column_names=["version", "name", "checksum", "applied_at"])
        result.applied.append(label)
        echo(f"applied {label}")
    result.ttl_changed = reconcile_ttl(client, target, migrations)
    if load_reference:
        from connectors.store.reference import load_reference as _load_reference

        result.reference_rows = _load_reference(client, target.database, cluster=target.cluster)
    return result


def ttl_columns(migrations: list[Migration] | None = None) -> dict[str, str]:
    """table -> the column its TTL counts from, for every table with a ``{{ttl:...}}`` clause."""
    out = {}
    for mig in load() if migrations is None else migrations:
        for st in mig.statements:
            m = re.search(r"\{\{\s*ttl:(\w+)\s*\}\}", st.text)
            if m and st.created_table:
                out[st.created_table] = m.group(1)
    return out


def reconcile_ttl(client, target: Target, migrations: list[Migration]) -> list[str]:
    """Bring each table's TTL to ``target.ttl_days`` (tables created earlier with another setting)."""
    layout = table_layout(migrations)
    changed = []
    rows = dict(client.query("SELECT name, engine_full FROM system.tables WHERE database = {db:String}",
                             parameters={"db": target.database}).result_rows)
    on_cluster = f" ON CLUSTER {target.cluster}" if target.cluster else ""
    for table, column in ttl_columns(migrations).items():
        name = f"{table}_local" if target.cluster and layout.get(table) == "sharded" else table
        engine_full = rows.get(name)
        if engine_full is None:
            continue
        m = re.search(r"\bTTL\s+toDateTime\(\w+\)\s*\+\s*toIntervalDay\((\d+)\)", engine_full)
        current = int(m.group(1)) if m else 0
        if current == target.ttl_days:
            continue
        if target.ttl_days:
            client.command(f"ALTER TABLE {target.database}.{name}{on_cluster} MODIFY TTL toDateTime({column}) + "
                           f"toIntervalDay({int(target.ttl_days)})", settings={"materialize_ttl_after_modify": 0})
        else:
            client.command(f"ALTER TABLE {target.database}.{name}{on_cluster} REMOVE TTL")
        changed.append(name)
    return changed
