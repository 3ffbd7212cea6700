"""ClickHouse clients: the embedded engine (``chdb://<folder>``) or a server (``http(s)://``).

Both are clickhouse-connect clients with the same surface, so every caller
writes the same SQL against either. chDB lets one process own a folder; the
client for a folder is therefore made once per process and shared.
"""
from __future__ import annotations

import threading
from pathlib import Path
from urllib.parse import urlparse, parse_qs

import clickhouse_connect

_lock = threading.Lock()
_embedded: dict[str, object] = {}


class StoreError(RuntimeError):
    pass


def is_embedded(url: str) -> bool:
    return url.startswith("chdb:")


def embedded_path(url: str) -> Path:
    """``chdb://./var/clickhouse`` and ``chdb:///abs/path`` name a folder; relative to the working directory."""
    rest = url[len("chdb://"):] if url.startswith("chdb://") else url[len("chdb:"):]
    rest = rest.split("?", 1)[0]
    if not rest:
        raise StoreError(f"ClickHouse URL {url!r}: chdb:// needs a folder, e.g. chdb://./var/clickhouse")
    return Path(rest).expanduser().resolve()


def get_client(url: str, **kwargs):
    """A clickhouse-connect client for ``url``. Embedded clients are shared within the process."""
    if is_embedded(url):
        path = embedded_path(url)
        key = str(path)
        with _lock:
            client = _embedded.get(key)
            if client is None and _embedded:
                raise StoreError(f"this process already runs the embedded ClickHouse engine on {next(iter(_embedded))}; "
                                 f"chDB runs one engine per process, so it cannot also open {path}.")
            if client is None:
                path.mkdir(parents=True, exist_ok=True)
                try:
                    client = clickhouse_connect.get_client(dsn=f"chdb://{path}", **kwargs)
                except Exception as exc:  # chDB raises its own types; say what it means here
                    if "Cannot lock file" in str(exc) or "already running" in str(exc):
                        raise StoreError(
                            f"the embedded ClickHouse store {path} is owned by another process "
                            f"(one process owns a chdb folder). Query it through that process's "
                            f"HTTP endpoint instead.") from exc
                    raise
                _embedded[key] = client
            return client
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https"):
        raise StoreError(f"ClickHouse URL {url!r}: expected chdb://<folder> or http(s)://host:port")
    query = {k: v[-1] for k, v in parse_qs(parsed.query).items()}
    return clickhouse_connect.get_client(
        host=parsed.hostname or "127.0.0.1",
        port=parsed.port or (8443 if parsed.scheme == "https" else 8123),
        username=parsed.username or query.pop("user", "default"),
        password=parsed.password or query.pop("password", ""),
        database=(parsed.path or "/").strip("/") or query.pop("database", "default"),
        secure=parsed.scheme == "https",
        **kwargs,
    )


def describe(url: str) -> str:
    """The URL without its password, for messages and logs."""
    if is_embedded(url):
        return f"chdb://{embedded_path(url)}"
    p = urlparse(url)
    netloc = p.hostname or ""
    if p.port:
        netloc += f":{p.port}"
    if p.username:
        netloc = f"{p.username}@{netloc}"
    return p._replace(netloc=netloc, query="").geturl()
