"""Live, read-only query access to the embedded store, over the ClickHouse HTTP interface conventions.

chDB lets one process own a store folder, so the process that owns it (the sink) also answers everyone
else's queries. It speaks enough of ClickHouse's HTTP interface that clickhouse-connect's HTTP client,
``curl 'http://127.0.0.1:8124/?query=SELECT+1'`` and Grafana's ClickHouse data source (HTTP mode, through its
Go driver clickhouse-go) work unchanged:

- the query in the ``query`` parameter, the POST body, or both (concatenated, as ClickHouse does);
- ``Native`` answers in the layout of the client's ``client_protocol_version`` (``connectors.store.native``):
  clickhouse-go asks for 54460 (block info and the custom-serialization flag), clickhouse-connect for 54405;
- ``enable_http_compression=1`` with ``Accept-Encoding: gzip`` or ``deflate`` compresses the answer;
  ``compress=1`` (ClickHouse's own block compression, clickhouse-go's LZ4/ZSTD over HTTP) is refused by name;
- ``database``, ``default_format``, ``param_<name>`` (query parameters) and ClickHouse settings as URL
  parameters; the format of a trailing ``FORMAT`` clause wins, TabSeparated otherwise;
- credentials as HTTP basic auth, ``X-ClickHouse-User``/``X-ClickHouse-Key`` headers, or
  ``user``/``password`` parameters;
- answers carry ``X-ClickHouse-Format``, ``-Timezone``, ``-Query-Id``, ``-Summary`` and, on errors,
  ``X-ClickHouse-Exception-Code`` with ClickHouse's ``Code: N. DB::Exception: ...`` text;
- ``/ping`` answers ``Ok.``; ``/metrics`` is the process's Prometheus metrics.

Read-only and nothing outside the store: every statement is judged by ``connectors.store.query_policy`` (parsed
by ClickHouse's own parser; statement kinds, output formats, settings, table functions and system tables
from allow-lists; no ``INTO OUTFILE``; functions that reach files, hosts or processes refused) and the
canonical text it admitted is what runs, on engine handles that are themselves in ``readonly = 2`` mode.

Limits, fixed by the endpoint: a time limit (``YRDBUS_QUERY_MAX_EXECUTION_TIME_S``; a client may ask for
less, never more), a memory limit and a result size limit per query (``YRDBUS_QUERY_MAX_MEMORY_BYTES``,
``YRDBUS_QUERY_MAX_RESULT_BYTES``), and at most ``YRDBUS_QUERY_MAX_CONCURRENT_PER_USER`` queries of one user
at a time (code 202, HTTP 429 beyond). Checks and queries run off the event loop, checks on handles of
their own, so ``/ping`` and other users' checks answer while long queries run. Each user may have limits
of their own (``YRDBUS_QUERY_USERS``: ``{"name": {"hash": ..., "max_execution_time_s": 10,
"max_result_rows": 100000, "max_memory_usage_bytes": 500000000, "max_concurrent_queries": 1,
"regions": ["SH"]}}``): a region-scoped user sees the rows of their regions only
(``additional_table_filters`` keyed by the store's own database, whatever database the client names;
the same conditions as the server row policies of ``connectors.store.access``) and reads no table
outside the store's regional and reference tables.
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

from connectors.store import native
from connectors.store.query_policy import LOWER_ONLY, Admitted, Policy, QueryRefused, check_format, check_setting

log = logging.getLogger("yrdbus.queryserver")

#: HTTP-transport parameters of ClickHouse clients; never engine settings
TRANSPORT_PARAMS = frozenset({"query", "database", "default_format", "user", "password", "query_id", "session_id",
                              "session_timeout", "session_check", "compress", "decompress", "buffer_size",
                              "wait_end_of_query", "client_protocol_version", "quota_key", "role",
                              "send_progress_in_http_headers", "http_headers_progress_interval_ms",
                              "enable_http_compression", "http_zlib_compression_level", "stacktrace",
                              "close_session", "cancel_http_readonly_queries_on_client_close",
                              "http_response_buffer_size", "http_wait_end_of_query", "http_write_exception_in_output_format",
                              "output_format_json_quote_64bit_integers_in_response"})
_SETTING_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_CONTENT_TYPES = {"JSON": "application/json; charset=UTF-8", "JSONCompact": "application/json; charset=UTF-8",
                  "JSONEachRow": "application/x-ndjson; charset=UTF-8", "CSV": "text/csv; charset=UTF-8",
                  "CSVWithNames": "text/csv; charset=UTF-8"}
VERSION_TEXT = "yrdbus query endpoint (ClickHouse HTTP interface)"
#: the largest statement the endpoint reads (ClickHouse's own max_query_size is 256 KiB)
MAX_QUERY_BYTES = 1 << 20
TOO_MANY_SIMULTANEOUS_QUERIES = 202


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
    """What one endpoint user may do beyond reading: time, result size, memory, concurrency, its regions."""

    __slots__ = ("max_execution_time", "max_result_rows", "max_memory_usage", "max_concurrent", "regions")
    FIELDS = {"hash", "max_execution_time_s", "max_result_rows", "max_memory_usage_bytes", "max_concurrent_queries",
              "regions"}

    def __init__(self, max_execution_time: float | None = None, max_result_rows: int | None = None,
                 regions: tuple[str, ...] | None = None, max_memory_usage: int | None = None,
                 max_concurrent: int | None = None):
        self.max_execution_time = max_execution_time
        self.max_result_rows = max_result_rows
        self.max_memory_usage = max_memory_usage
        self.max_concurrent = max_concurrent
        self.regions = regions

    @classmethod
    def parse(cls, name: str, spec) -> tuple[str, "UserLimits"]:
        """(password hash, limits) of one ``query_users`` entry: a hash, or an object with ``hash`` and limits."""
        if isinstance(spec, str):
            return spec, cls()
        if not isinstance(spec, dict) or not isinstance(spec.get("hash"), str):
            raise ValueError(f"YRDBUS_QUERY_USERS, user {name!r}: expected a password hash or an object with "
                             f"`hash` (and {', '.join(sorted(cls.FIELDS - {'hash'}))})")
        unknown = set(spec) - cls.FIELDS
        if unknown:
            raise ValueError(f"YRDBUS_QUERY_USERS, user {name!r}: unknown field(s) {sorted(unknown)}")
        from schemas.reference import REGIONS

        regions = spec.get("regions")
        if regions is not None and (not isinstance(regions, list) or not regions
                                    or any(r not in REGIONS for r in regions)):
            raise ValueError(f"YRDBUS_QUERY_USERS, user {name!r}, field `regions`: expected a list of "
                             f"{', '.join(REGIONS)}, got {regions!r}")
        t = spec.get("max_execution_time_s")
        if t is not None and (not isinstance(t, (int, float)) or isinstance(t, bool) or t <= 0):
            raise ValueError(f"YRDBUS_QUERY_USERS, user {name!r}, field `max_execution_time_s`: a positive number")
        ints = {}
        for f in ("max_result_rows", "max_memory_usage_bytes", "max_concurrent_queries"):
            v = spec.get(f)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v <= 0):
                raise ValueError(f"YRDBUS_QUERY_USERS, user {name!r}, field `{f}`: a positive integer")
            ints[f] = v
        return spec["hash"], cls(float(t) if t is not None else None, ints["max_result_rows"],
                                 tuple(regions) if regions is not None else None,
                                 ints["max_memory_usage_bytes"], ints["max_concurrent_queries"])


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


# --------------------------------------------------------------------------- engine
class Engine:
    """A pool of read-only handles to the process's chDB engine.

    One request holds one handle from its checks to its answer: the endpoint's fixed settings (time,
    memory and result limits, the user's region filters) are set on it first, so that what ClickHouse
    evaluates while analysing a statement (a scalar subquery in ``EXPLAIN QUERY TREE``) is bounded and
    filtered like the statement itself.
    """

    def __init__(self, path: str, size: int = 8, max_execution_time: float = 30.0, *,
                 max_memory_usage: int = 1 << 30, max_result_bytes: int = 512 << 20,
                 max_threads: int | None = None, database: str = "yrdbus", max_concurrent_per_user: int = 2):
        import chdb

        self.path = os.path.realpath(path)
        self.database = database
        self.max_execution_time = float(max_execution_time)
        self.max_memory_usage = int(max_memory_usage)
        self.max_result_bytes = int(max_result_bytes)
        self.max_threads = int(max_threads or os.cpu_count() or 2)
        self.max_concurrent_per_user = int(max_concurrent_per_user)
        # what every handle holds between requests; a request's own settings are set back to these (or to the
        # engine's defaults) when it ends
        self._baseline = {"readonly": "2", "max_memory_usage": str(self.max_memory_usage),
                          "max_result_bytes": str(self.max_result_bytes), "result_overflow_mode": "'throw'",
                          "max_threads": str(self.max_threads)}
        self._pool: queue.Queue = queue.Queue()
        for _ in range(size):
            conn = chdb.connect(self.path)
            conn.query("SET " + ", ".join(f"{k} = {v}" for k, v in self._baseline.items()), "TabSeparated")
            self._pool.put(conn)
        conn = self._pool.get()
        try:
            self.version = conn.query("SELECT version()", "TabSeparated").bytes().decode().strip()
            self.timezone = conn.query("SELECT timezone()", "TabSeparated").bytes().decode().strip() or "UTC"
        finally:
            self._pool.put(conn)

    def limit_of(self, name: str, limits: "UserLimits") -> float:
        """The endpoint's value of a setting a client may only lower."""
        if name == "max_execution_time":
            return min(self.max_execution_time, limits.max_execution_time or self.max_execution_time)
        return self.max_threads

    def execute(self, sql: str, params: dict[str, str], fmt: str, database: str, settings: dict[str, str],
                limits: "UserLimits", wait_s: float) -> tuple[bytes, dict, Admitted]:
        """Judge ``sql`` on a handle with the endpoint's limits set, then run the admitted text."""
        try:
            conn = self._pool.get(timeout=wait_s)
        except queue.Empty:
            raise QueryRefused(f"the endpoint is busy: no query handle free within {wait_s:.0f} s; try again "
                               f"(TOO_MANY_SIMULTANEOUS_QUERIES)", TOO_MANY_SIMULTANEOUS_QUERIES, 429) from None
        assign: dict[str, str] = {}   # this request's settings (name -> ClickHouse literal), set in one statement

        try:
            conn.query(f"USE `{database.replace('`', '')}`", "TabSeparated")
            asked = settings.pop("max_execution_time", None)
            limit = self.limit_of("max_execution_time", limits)
            if asked is not None:
                limit = min(limit, float(asked))
            for name, value in settings.items():
                assign[name] = _literal(value)
            assign["max_execution_time"] = _literal(limit)
            if limits.max_memory_usage and limits.max_memory_usage < self.max_memory_usage:
                assign["max_memory_usage"] = str(limits.max_memory_usage)
            if limits.max_result_rows:
                assign["max_result_rows"] = str(limits.max_result_rows)
            if limits.regions:
                from connectors.store.access import table_filters

                assign["additional_table_filters"] = _map_literal(table_filters(self.database, limits.regions))
            conn.query("SET " + ", ".join(f"{k} = {v}" for k, v in assign.items()), "TabSeparated")

            def ask(q: str, p: dict) -> str:
                return conn.query(q, "TabSeparatedRaw", params=p or {}).bytes().decode()

            admitted = Policy(ask, self.database).admit(sql, params, database, limits.regions)
            for name, value in admitted.settings:
                if name in LOWER_ONLY:
                    _lower_only(name, value, self.limit_of(name, limits))
            started = time.perf_counter()
            result = conn.query(admitted.sql, admitted.format or fmt, params=params or {})
            body = result.bytes() or b""
            summary = {"read_rows": str(_safe(result.rows_read)), "read_bytes": str(_safe(result.bytes_read)),
                       "written_rows": "0", "written_bytes": "0", "total_rows_to_read": "0",
                       "result_rows": "0", "result_bytes": str(len(body)),
                       "elapsed_ns": str(int((time.perf_counter() - started) * 1e9))}
            return body, summary, admitted
        finally:
            self._reset(conn, assign)
            self._pool.put(conn)

    def _reset(self, conn, assign: dict[str, str]) -> None:
        """Set a request's settings back to the handle's baseline (or the engine's default)."""
        back = [f"{name} = {self._baseline.get(name, 'DEFAULT')}" for name in assign]
        if not back:
            return
        try:
            conn.query("SET " + ", ".join(back), "TabSeparated")
        except Exception:  # one of them unknown to the engine (the request failed on it too): one at a time
            for one in back:
                try:
                    conn.query(f"SET {one}", "TabSeparated")
                except Exception:
                    pass


def _lower_only(name: str, value: str, limit: float) -> None:
    try:
        v = float(value.strip("'"))
    except ValueError:
        raise QueryRefused(f"setting {name}: expected a number, got {value}", 164) from None
    if not 0 < v <= limit:
        raise QueryRefused(f"setting {name} may be lowered on this endpoint, not raised: at most {limit:g}, "
                           f"got {value}", 164)


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


def _http_encoding(params, accept: str) -> str | None:
    """The answer's Content-Encoding: as ClickHouse, only when ``enable_http_compression=1`` asks for one."""
    if params.get("enable_http_compression") != "1":
        return None
    offered = {part.split(";")[0].strip().lower() for part in accept.split(",")}
    return next((e for e in ("gzip", "deflate") if e in offered), None)


def _compress(data: bytes, encoding: str) -> bytes:
    import gzip
    import zlib

    return gzip.compress(data, compresslevel=3) if encoding == "gzip" else zlib.compress(data, 3)


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

    running: dict[str, int] = {}   # user -> queries in flight (touched on the event loop only)

    async def query(request: Request) -> Response:
        query_id = request.query_params.get("query_id") or str(uuid.uuid4())
        user, password = credentials(request)
        if not await run_in_threadpool(users.check, user, password):
            return error(f"{user}: Authentication failed: password is incorrect, or there is no user with such "
                         f"name. (AUTHENTICATION_FAILED)", 516, 401, query_id)
        params = request.query_params
        raw = b""
        if request.method == "POST":
            async for chunk in request.stream():
                raw += chunk
                if len(raw) + len(params.get("query", "")) > MAX_QUERY_BYTES:
                    return error(f"the statement is over {MAX_QUERY_BYTES} bytes (QUERY_IS_TOO_LARGE)", 393, 413,
                                 query_id)
        sql = "\n".join(part for part in (params.get("query", ""), raw.decode("utf-8", "replace")) if part.strip())
        if not sql.strip():
            return PlainTextResponse("Ok.\n")
        database = request.headers.get("x-clickhouse-database") or params.get("database") or "default"
        fmt = request.headers.get("x-clickhouse-format") or params.get("default_format") or "TabSeparated"
        bind = {k[len("param_"):]: v for k, v in params.items() if k.startswith("param_")}
        revision = params.get("client_protocol_version", "0")
        if not revision.isdigit():
            return error(f"client_protocol_version: expected a protocol revision (a whole number), got {revision!r} "
                         f"(CANNOT_PARSE_INPUT_ASSERTION_FAILED)", 27, 400, query_id)
        revision = int(revision)
        if params.get("compress") == "1":
            return error("compress=1 (ClickHouse's own block compression of answers) is not served by this endpoint; "
                         "use HTTP compression (enable_http_compression=1 with Accept-Encoding: gzip or deflate) or "
                         "none (NOT_IMPLEMENTED)", 48, 400, query_id)
        limits = users.limits.get(user) or UserLimits()
        settings = {}
        try:
            fmt = check_format(fmt, where="default_format")
            for k, v in params.items():
                if k in TRANSPORT_PARAMS or k.startswith("param_"):
                    continue
                if not _SETTING_NAME.match(k):
                    raise QueryRefused(f"{k!r} is neither a setting nor a parameter of the HTTP interface", 115, 400)
                check_setting(k, where="URL parameter")
                if k in LOWER_ONLY:
                    _lower_only(k, v, engine.limit_of(k, limits))
                settings[k] = v
        except QueryRefused as exc:
            return refused(exc, query_id)
        allowed = limits.max_concurrent or engine.max_concurrent_per_user
        if running.get(user, 0) >= allowed:
            return error(f"{user} has {allowed} queries running, the most this endpoint runs at once for one user "
                         f"(TOO_MANY_SIMULTANEOUS_QUERIES)", TOO_MANY_SIMULTANEOUS_QUERIES, 429, query_id)
        running[user] = running.get(user, 0) + 1
        try:
            started = time.perf_counter()
            data, summary, admitted = await run_in_threadpool(
                engine.execute, sql, bind, fmt, database, settings, limits, engine.max_execution_time)
            fmt = admitted.format or fmt
            if fmt == "Native" and revision:
                data = await run_in_threadpool(native.at_revision, data, revision)
            log.info("user=%s ms=%.1f bytes=%d %s", user, (time.perf_counter() - started) * 1000, len(data),
                     " ".join(admitted.sql.split())[:200])
        except QueryRefused as exc:
            return refused(exc, query_id)
        except native.NativeError as exc:
            return error(f"{exc} (NOT_IMPLEMENTED)", 48, 400, query_id)
        except Exception as exc:  # the engine's own error text, as ClickHouse sends it
            message = str(exc)
            idx = message.find("Code:")
            message = message[idx:] if idx >= 0 else message
            code = _error_code(message)
            return error(message, code, _status_for(code), query_id)
        finally:
            running[user] -= 1
            if not running[user]:
                del running[user]
        headers = {"X-ClickHouse-Format": fmt, "X-ClickHouse-Timezone": engine.timezone,
                   "X-ClickHouse-Query-Id": query_id, "X-ClickHouse-Summary": json.dumps(summary),
                   "X-ClickHouse-Server-Display-Name": "yrdbus"}
        encoding = _http_encoding(params, request.headers.get("accept-encoding", ""))
        if encoding and data:
            data = await run_in_threadpool(_compress, data, encoding)
            headers["Content-Encoding"] = encoding
        return Response(data, media_type=_CONTENT_TYPES.get(fmt, "text/plain; charset=UTF-8" if fmt.startswith(
            ("TabSeparated", "TSV", "Pretty", "Vertical", "Markdown")) else "application/octet-stream"),
            headers=headers)

    def refused(exc: QueryRefused, query_id: str) -> Response:
        names = {164: "READONLY", 497: "ACCESS_DENIED", 62: "SYNTAX_ERROR", 202: "TOO_MANY_SIMULTANEOUS_QUERIES"}
        text = str(exc) if str(exc).rstrip().endswith(")") else f"{exc} ({names.get(exc.code, 'REFUSED')})"
        return error(text, exc.code, exc.status, query_id)

    routes = [Route("/ping", ping, methods=["GET", "HEAD"]),
              Route("/", query, methods=["GET", "POST"])]
    if metrics:
        routes.append(Route("/metrics", metrics_endpoint, methods=["GET"]))
    return Starlette(routes=routes)


class QueryServer:
    """Serves ``build_app`` with uvicorn in a background thread of the process that owns the store."""

    def __init__(self, store_path: str, *, host: str = "127.0.0.1", port: int = 8124,
                 users: dict | None = None, max_execution_time: float = 30.0,
                 state_file: Path | None = None, database: str = "yrdbus", max_memory_usage: int = 1 << 30,
                 max_result_bytes: int = 512 << 20, max_concurrent_per_user: int = 2, handles: int = 8):
        self.engine = Engine(store_path, handles, max_execution_time, max_memory_usage=max_memory_usage,
                             max_result_bytes=max_result_bytes, database=database,
                             max_concurrent_per_user=max_concurrent_per_user)
        self.users = Users(users)
        self.app = build_app(self.engine, self.users)
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
