"""Live, read-only query access to the embedded store, over the ClickHouse HTTP interface conventions.

chDB lets one process own a store folder, so the process that owns it (the sink) also answers everyone
else's queries. It speaks enough of ClickHouse's HTTP interface that clickhouse-connect's HTTP client,
``curl 'http://127.0.0.1:8124/?query=SELECT+1'`` and Grafana's ClickHouse data source (HTTP mode) work
unchanged:

- the query in the ``query`` parameter, the POST body, or both (concatenated, as ClickHouse does);
- ``database``, ``default_format``, ``param_<name>`` (query parameters) and ClickHouse settings as URL
  parameters; the format of a trailing ``FORMAT`` clause wins, TabSeparated otherwise;
- credentials as HTTP basic auth, ``X-ClickHouse-User``/``X-ClickHouse-Key`` headers, or
  ``user``/``password`` parameters;
- answers carry ``X-ClickHouse-Format``, ``-Timezone``, ``-Query-Id``, ``-Summary`` and, on errors,
  ``X-ClickHouse-Exception-Code`` with ClickHouse's ``Code: N. DB::Exception: ...`` text;
- ``/ping`` answers ``Ok.``; ``/metrics`` is the process's Prometheus metrics.

Read-only: only SELECT, WITH, SHOW, DESCRIBE, EXISTS and EXPLAIN are accepted, table functions that read
outside the store (``file``, ``url``, ``s3`` ...) are refused, and the engine handles that run the
queries are themselves in ``readonly = 2`` mode. Each query has ``max_execution_time`` (the setting
``YRDBUS_QUERY_MAX_EXECUTION_TIME_S``; a client may ask for less, never more).

Functions that reach outside the store are refused wherever they stand, not only as table functions:
the scalar ``file('/path')`` reads any file the process can read, ``DESCRIBE url(...)`` makes the
process connect anywhere. Settings the endpoint fixes are checked on the query as ClickHouse itself
formats it (``formatQuery``), so a comment or odd spacing cannot hide them. Each user may have limits
of their own (``YRDBUS_QUERY_USERS``: ``{"name": {"hash": ..., "max_execution_time_s": 10,
"max_result_rows": 100000, "regions": ["SH"]}}``): a shorter time limit, a result size limit, and rows
of their regions only (``additional_table_filters`` on the event tables, the same conditions as the
server row policies of ``connectors.clickhouse.access``; table functions such as ``merge`` that would
read around them are refused to such a user).
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import queue
import re
import secrets
import threading
import time
import uuid
from pathlib import Path

log = logging.getLogger("yrdbus.queryserver")

ALLOWED_STATEMENTS = ("SELECT", "WITH", "SHOW", "DESCRIBE", "DESC", "EXISTS", "EXPLAIN")
ALLOWED_TABLE_FUNCTIONS = frozenset({"numbers", "numbers_mt", "zeros", "zeros_mt", "generate_series",
                                     "generateSeries", "values", "view", "merge", "null", "generateRandom"})
#: settings a client may not set at all (time limit, result limits, row filters and read-only mode are the server's)
PROTECTED_SETTINGS = ("readonly", "max_execution_time", "timeout_overflow_mode", "max_execution_time_leaf",
                      "allow_ddl", "allow_introspection_functions", "max_result_rows", "max_result_bytes",
                      "result_overflow_mode", "additional_table_filters", "additional_result_filter")
#: functions that read or connect outside the store, refused anywhere in a query (scalar or table function)
OUTSIDE_FUNCTIONS = frozenset({
    "file", "fileCluster", "url", "urlCluster", "s3", "s3Cluster", "gcs", "hdfs", "hdfsCluster", "azureBlobStorage",
    "azureBlobStorageCluster", "remote", "remoteSecure", "cluster", "clusterAllReplicas", "mysql", "postgresql",
    "mongodb", "redis", "sqlite", "jdbc", "odbc", "executable", "executablePool", "input", "iceberg", "icebergS3",
    "deltaLake", "hudi", "dictionary", "loop", "fuzzJSON", "fuzzQuery", "arrowFlight", "ytsaurus", "paimon"})
#: table functions a region-scoped user may not use: they read tables around the row filters
REGION_BYPASS_FUNCTIONS = frozenset({"merge", "view", "viewIfPermitted", "viewExplain", "mergeTreeIndex",
                                     "mergeTreeAnalyzeIndexes", "mergeTreeProjection"})
#: HTTP-transport parameters of ClickHouse clients; never engine settings
TRANSPORT_PARAMS = frozenset({"query", "database", "default_format", "user", "password", "query_id", "session_id",
                              "session_timeout", "session_check", "compress", "decompress", "buffer_size",
                              "wait_end_of_query", "client_protocol_version", "quota_key", "role",
                              "send_progress_in_http_headers", "http_headers_progress_interval_ms",
                              "enable_http_compression", "http_zlib_compression_level", "output_format_json_quote_64bit_integers_in_response"})
_SETTING_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_TRAILING_FORMAT = re.compile(r"\bFORMAT\s+([A-Za-z0-9_]+)\s*;?\s*$", re.IGNORECASE)
_CONTENT_TYPES = {"JSON": "application/json; charset=UTF-8", "JSONCompact": "application/json; charset=UTF-8",
                  "JSONEachRow": "application/x-ndjson; charset=UTF-8", "CSV": "text/csv; charset=UTF-8",
                  "CSVWithNames": "text/csv; charset=UTF-8"}
VERSION_TEXT = "yrdbus query endpoint (ClickHouse HTTP interface)"


class QueryRefused(Exception):
    """A request the endpoint does not run; ``code`` is the ClickHouse error code it answers with."""

    def __init__(self, message: str, code: int = 164, status: int = 403):
        super().__init__(message)
        self.code = code
        self.status = status


# --------------------------------------------------------------------------- passwords
def hash_password(password: str, *, n: int = 2 ** 14, r: int = 8, p: int = 1) -> str:
    """A salted scrypt hash for the ``query_users`` setting: ``scrypt$n$r$p$salt$hash`` (hex)."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, dklen=32)
    return f"scrypt${n}${r}${p}${salt.hex()}${digest.hex()}"


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
    except ValueError:
        return False
    if scheme != "scrypt":
        return False
    got = hashlib.scrypt(password.encode(), salt=bytes.fromhex(salt), n=int(n), r=int(r), p=int(p),
                         dklen=len(bytes.fromhex(digest)))
    return hmac.compare_digest(got.hex(), digest)


class UserLimits:
    """What one endpoint user may do beyond reading: a time limit, a result size limit, its regions."""

    __slots__ = ("max_execution_time", "max_result_rows", "regions")

    def __init__(self, max_execution_time: float | None = None, max_result_rows: int | None = None,
                 regions: tuple[str, ...] | None = None):
        self.max_execution_time = max_execution_time
        self.max_result_rows = max_result_rows
        self.regions = regions

    @classmethod
    def parse(cls, name: str, spec) -> tuple[str, "UserLimits"]:
        """(password hash, limits) of one ``query_users`` entry: a hash, or an object with ``hash`` and limits."""
        if isinstance(spec, str):
            return spec, cls()
        if not isinstance(spec, dict) or not isinstance(spec.get("hash"), str):
            raise ValueError(f"YRDBUS_QUERY_USERS, user {name!r}: expected a password hash or an object with "
                             f"`hash` (and `max_execution_time_s`, `max_result_rows`, `regions`)")
        unknown = set(spec) - {"hash", "max_execution_time_s", "max_result_rows", "regions"}
        if unknown:
            raise ValueError(f"YRDBUS_QUERY_USERS, user {name!r}: unknown field(s) {sorted(unknown)}")
        from schemas.reference import REGIONS

        regions = spec.get("regions")
        if regions is not None and (not isinstance(regions, list) or not regions
                                    or any(r not in REGIONS for r in regions)):
            raise ValueError(f"YRDBUS_QUERY_USERS, user {name!r}, field `regions`: expected a list of "
                             f"{', '.join(REGIONS)}, got {regions!r}")
        t, rows = spec.get("max_execution_time_s"), spec.get("max_result_rows")
        if t is not None and (not isinstance(t, (int, float)) or isinstance(t, bool) or t <= 0):
            raise ValueError(f"YRDBUS_QUERY_USERS, user {name!r}, field `max_execution_time_s`: a positive number")
        if rows is not None and (not isinstance(rows, int) or isinstance(rows, bool) or rows <= 0):
            raise ValueError(f"YRDBUS_QUERY_USERS, user {name!r}, field `max_result_rows`: a positive integer")
        return spec["hash"], cls(float(t) if t is not None else None, rows,
                                 tuple(regions) if regions is not None else None)


class Users:
    """Who may query. No users configured: ``default`` with an empty password, as a fresh ClickHouse."""

    def __init__(self, users: dict | None = None):
        self.users: dict[str, str] = {}
        self.limits: dict[str, UserLimits] = {}
        for name, spec in (users or {}).items():
            self.users[name], self.limits[name] = UserLimits.parse(name, spec)
        self._ok: set[tuple[str, str]] = set()  # verified (user, sha256(password)): scrypt once per password
        self._lock = threading.Lock()

    def check(self, user: str, password: str) -> bool:
        if not self.users:
            return user == "default" and password == ""
        stored = self.users.get(user)
        if stored is None:
            return False
        key = (user, hashlib.sha256(password.encode()).hexdigest())
        with self._lock:
            if key in self._ok:
                return True
        if verify_password(password, stored):
            with self._lock:
                self._ok.add(key)
            return True
        return False


# --------------------------------------------------------------------------- statements
def strip_leading_comments(sql: str) -> str:
    s = sql.lstrip()
    while True:
        if s.startswith("--"):
            nl = s.find("\n")
            s = "" if nl < 0 else s[nl + 1:].lstrip()
        elif s.startswith("/*"):
            end = s.find("*/")
            s = "" if end < 0 else s[end + 2:].lstrip()
        elif s.startswith("("):
            s = s[1:].lstrip()
        else:
            return s


def statement_kind(sql: str) -> str:
    m = re.match(r"[A-Za-z]+", strip_leading_comments(sql))
    return m.group(0).upper() if m else ""


def check_read_only(sql: str) -> None:
    """Refuse what is not a read (the engine's readonly mode refuses writes again)."""
    kind = statement_kind(sql)
    if kind not in ALLOWED_STATEMENTS:
        raise QueryRefused(f"this endpoint is read-only: {kind or 'an empty query'} is not allowed "
                           f"(allowed: {', '.join(ALLOWED_STATEMENTS)})")
    lowered = sql.lower()
    for name in PROTECTED_SETTINGS:
        if re.search(rf"\b{name}\b\s*=", lowered):
            raise QueryRefused(f"setting {name} is fixed by the endpoint and cannot be changed in a query")


def functions(explain_ast: str) -> set[str]:
    """Names of every function (scalar, aggregate or table function) in an ``EXPLAIN AST`` text."""
    return set(re.findall(r"^\s*Function (\w+)", explain_ast, re.MULTILINE))


def table_functions(explain_ast: str) -> list[str]:
    """Names of the table functions in an ``EXPLAIN AST`` text."""
    lines = explain_ast.splitlines()
    out = []
    for i, line in enumerate(lines):
        if line.strip().startswith("TableExpression") and i + 1 < len(lines):
            m = re.match(r"\s*Function (\w+)", lines[i + 1])
            if m:
                out.append(m.group(1))
    return out


# --------------------------------------------------------------------------- engine
class Engine:
    """A small pool of read-only handles to the process's chDB engine."""

    def __init__(self, path: str, size: int = 4, max_execution_time: float = 30.0):
        import chdb

        self.path = os.path.realpath(path)
        self.max_execution_time = float(max_execution_time)
        self._pool: queue.Queue = queue.Queue()
        for _ in range(size):
            conn = chdb.connect(self.path)
            conn.query("SET readonly = 2", "TabSeparated")
            self._pool.put(conn)
        conn = self._pool.get()
        try:
            self.version = conn.query("SELECT version()", "TabSeparated").bytes().decode().strip()
            self.timezone = conn.query("SELECT timezone()", "TabSeparated").bytes().decode().strip() or "UTC"
        finally:
            self._pool.put(conn)

    def run(self, sql: str, fmt: str, database: str | None, settings: dict[str, str],
            params: dict[str, str], limits: UserLimits | None = None) -> tuple[bytes, dict]:
        conn = self._pool.get()
        applied = []
        limits = limits or UserLimits()
        try:
            conn.query(f"USE `{(database or 'default').replace('`', '')}`", "TabSeparated")
            limit = min(self.max_execution_time, limits.max_execution_time or self.max_execution_time)
            fixed: list[tuple[str, object]] = []
            if limits.max_result_rows:
                fixed += [("max_result_rows", limits.max_result_rows), ("result_overflow_mode", "throw")]
            if limits.regions:
                from connectors.clickhouse.access import table_filters

                fixed.append(("additional_table_filters",
                              _map_literal(table_filters(database or "yrdbus", limits.regions))))
            asked = settings.pop("max_execution_time", None)
            try:
                if asked is not None and 0 < float(asked) < limit:
                    limit = float(asked)
            except ValueError:
                pass
            for name, value in list(settings.items()) + [("max_execution_time", limit)]:
                conn.query(f"SET {name} = {_literal(value)}", "TabSeparated")
                applied.append(name)
            for name, value in fixed:   # already a ClickHouse literal when it is a map
                conn.query(f"SET {name} = {value if name == 'additional_table_filters' else _literal(value)}",
                           "TabSeparated")
                applied.append(name)
            started = time.perf_counter()
            result = conn.query(sql, fmt, params=params or {})
            body = result.bytes() or b""
            summary = {"read_rows": str(_safe(result.rows_read)), "read_bytes": str(_safe(result.bytes_read)),
                       "written_rows": "0", "written_bytes": "0", "total_rows_to_read": "0",
                       "result_rows": "0", "result_bytes": str(len(body)),
                       "elapsed_ns": str(int((time.perf_counter() - started) * 1e9))}
            return body, summary
        finally:
            for name in applied:
                try:
                    conn.query(f"SET {name} = DEFAULT", "TabSeparated")
                except Exception:  # a setting that cannot be reset leaves the handle as it is
                    pass
            self._pool.put(conn)

    def format_query(self, sql: str) -> str:
        """The query as ClickHouse formats it (comments gone, spacing canonical); raises on a syntax error."""
        conn = self._pool.get()
        try:
            core = _TRAILING_FORMAT.sub("", sql.rstrip().rstrip(";"))
            return conn.query(f"SELECT formatQuery({_literal(core)})", "TabSeparatedRaw").bytes().decode()
        finally:
            self._pool.put(conn)

    def explain_ast(self, sql: str, database: str | None, params: dict[str, str]) -> str:
        conn = self._pool.get()
        try:
            conn.query(f"USE `{(database or 'default').replace('`', '')}`", "TabSeparated")
            core = _TRAILING_FORMAT.sub("", sql.rstrip().rstrip(";"))
            return conn.query(f"EXPLAIN AST {core}", "TabSeparated", params=params or {}).bytes().decode()
        finally:
            self._pool.put(conn)


def _safe(fn):
    try:
        return fn()
    except Exception:
        return 0


def _map_literal(mapping: dict[str, str]) -> str:
    return "{" + ", ".join(f"{_literal(k)}: {_literal(v)}" for k, v in mapping.items()) + "}"


def _literal(v) -> str:
    s = str(v)
    if re.fullmatch(r"-?\d+(\.\d+)?", s):
        return s
    return "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _error_code(message: str) -> int:
    m = re.search(r"Code:\s*(\d+)", message)
    return int(m.group(1)) if m else 1000


def _status_for(code: int) -> int:
    if code in (62,):           # SYNTAX_ERROR
        return 400
    if code in (60, 81):        # UNKNOWN_TABLE, UNKNOWN_DATABASE
        return 404
    if code in (164, 497, 516):  # READONLY, ACCESS_DENIED, AUTHENTICATION_FAILED
        return 403
    if code == 1000:            # no ClickHouse code: something went wrong here, not in the query
        return 500
    # Any other ClickHouse error is about the query (unknown function, bad types, a limit reached ...):
    # the client's to fix, said with the engine's own message.
    return 400


# --------------------------------------------------------------------------- HTTP
def build_app(engine: Engine, users: Users, *, metrics: bool = True):
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse, Response
    from starlette.routing import Route

    def error(message: str, code: int, status: int, query_id: str) -> Response:
        text = message if message.startswith("Code:") else f"Code: {code}. DB::Exception: {message}."
        return PlainTextResponse(text.rstrip() + "\n", status_code=status,
                                 headers={"X-ClickHouse-Exception-Code": str(code), "X-ClickHouse-Query-Id": query_id,
                                          "X-ClickHouse-Server-Display-Name": "yrdbus"})

    def credentials(request: Request) -> tuple[str, str]:
        q = request.query_params
        user = request.headers.get("x-clickhouse-user") or q.get("user")
        password = request.headers.get("x-clickhouse-key") or q.get("password")
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("basic ") and user is None:
            try:
                user, _, password = base64.b64decode(auth[6:]).decode().partition(":")
            except Exception:
                user, password = "", ""
        return user or "default", password or ""

    async def ping(request: Request) -> Response:
        return PlainTextResponse("Ok.\n")

    async def metrics_endpoint(request: Request) -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    async def query(request: Request) -> Response:
        query_id = request.query_params.get("query_id") or str(uuid.uuid4())
        user, password = credentials(request)
        if not await run_in_threadpool(users.check, user, password):
            return error(f"{user}: Authentication failed: password is incorrect, or there is no user with such "
                         f"name. (AUTHENTICATION_FAILED)", 516, 401, query_id)
        params = request.query_params
        body = (await request.body()).decode("utf-8", "replace") if request.method == "POST" else ""
        sql = "\n".join(part for part in (params.get("query", ""), body) if part.strip())
        if not sql.strip():
            return PlainTextResponse("Ok.\n")
        database = request.headers.get("x-clickhouse-database") or params.get("database") or "default"
        fmt_default = request.headers.get("x-clickhouse-format") or params.get("default_format") or "TabSeparated"
        bind = {k[len("param_"):]: v for k, v in params.items() if k.startswith("param_")}
        settings = {}
        for k, v in params.items():
            if k in TRANSPORT_PARAMS or k.startswith("param_") or not _SETTING_NAME.match(k):
                continue
            if k.lower() in PROTECTED_SETTINGS and k != "max_execution_time":
                return error(f"setting {k} is fixed by this endpoint (READONLY)", 164, 403, query_id)
            settings[k] = v
        m = _TRAILING_FORMAT.search(sql)
        fmt = m.group(1) if m else fmt_default
        limits = users.limits.get(user)
        try:
            check_read_only(sql)
            # the protected settings again, on the query as the engine reads it (comments cannot hide them)
            check_read_only(await run_in_threadpool(engine.format_query, sql))
            if statement_kind(sql) in ("SELECT", "WITH", "EXPLAIN", "DESCRIBE", "DESC"):
                ast = await run_in_threadpool(engine.explain_ast, sql, database, bind)
                outside = sorted(functions(ast) & OUTSIDE_FUNCTIONS)
                if outside:
                    raise QueryRefused(f"function {outside[0]} is not allowed on this endpoint (it reads or "
                                       f"connects outside the store)", code=497)
                bad = [f for f in table_functions(ast) if f not in ALLOWED_TABLE_FUNCTIONS
                       or (limits is not None and limits.regions and f in REGION_BYPASS_FUNCTIONS)]
                if bad:
                    raise QueryRefused(f"table function {bad[0]} is not allowed on this endpoint (it reads "
                                       f"outside the store, or around the user's region filter)", code=497)
            started = time.perf_counter()
            data, summary = await run_in_threadpool(engine.run, sql, fmt, database, settings, bind, limits)
            log.info("user=%s ms=%.1f bytes=%d %s", user, (time.perf_counter() - started) * 1000, len(data),
                     " ".join(sql.split())[:200])
        except QueryRefused as exc:
            return error(f"{exc} (READONLY)" if exc.code == 164 else f"{exc} (ACCESS_DENIED)", exc.code,
                         exc.status, query_id)
        except Exception as exc:  # the engine's own error text, as ClickHouse sends it
            message = str(exc)
            idx = message.find("Code:")
            message = message[idx:] if idx >= 0 else message
            code = _error_code(message)
            return error(message, code, _status_for(code), query_id)
        headers = {"X-ClickHouse-Format": fmt, "X-ClickHouse-Timezone": engine.timezone,
                   "X-ClickHouse-Query-Id": query_id, "X-ClickHouse-Summary": json.dumps(summary),
                   "X-ClickHouse-Server-Display-Name": "yrdbus"}
        return Response(data, media_type=_CONTENT_TYPES.get(fmt, "text/plain; charset=UTF-8" if fmt.startswith(
            ("TabSeparated", "TSV", "Pretty", "Vertical", "Markdown")) else "application/octet-stream"),
            headers=headers)

    routes = [Route("/ping", ping, methods=["GET", "HEAD"]),
              Route("/", query, methods=["GET", "POST"])]
    if metrics:
        routes.append(Route("/metrics", metrics_endpoint, methods=["GET"]))
    return Starlette(routes=routes)


class QueryServer:
    """Serves ``build_app`` with uvicorn in a background thread of the process that owns the store."""

    def __init__(self, store_path: str, *, host: str = "127.0.0.1", port: int = 8124,
                 users: dict | None = None, max_execution_time: float = 30.0,
                 state_file: Path | None = None, database: str = "yrdbus"):
        self.engine = Engine(store_path, max_execution_time=max_execution_time)
        self.app = build_app(self.engine, Users(users))
        self.host, self.port = host, port
        self.state_file = state_file
        self.database = database
        self._server = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 10.0) -> "QueryServer":
        import uvicorn

        config = uvicorn.Config(self.app, host=self.host, port=self.port, log_level="warning", access_log=False,
                                lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="query-endpoint", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the query endpoint could not listen on {self.host}:{self.port} "
                                   f"(port in use? set YRDBUS_QUERY_PORT)")
            time.sleep(0.02)
        if self.state_file:
            self.state_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.state_file.with_suffix(".tmp")
            tmp.write_text(json.dumps({"url": self.url, "host": self.host, "port": self.port, "pid": os.getpid(),
                                       "store": self.engine.path, "database": self.database}))
            tmp.replace(self.state_file)
        return self

    def stop(self) -> None:
        if self.state_file:
            try:
                state = json.loads(self.state_file.read_text())
                if state.get("pid") == os.getpid():
                    self.state_file.unlink()
            except (OSError, ValueError):
                pass
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)


def state_file(var_dir: Path) -> Path:
    return Path(var_dir) / "run" / "query.json"


def running_endpoint(var_dir: Path, store_path: str | None = None) -> dict | None:
    """The endpoint of a running process that owns the store, from its state file; None if none runs."""
    path = state_file(var_dir)
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    pid = state.get("pid")
    try:
        os.kill(int(pid), 0)
    except (OSError, TypeError, ValueError):
        return None
    if store_path and os.path.realpath(store_path) != state.get("store"):
        return None
    return state
