"""Who may read which alerts: bearer tokens stored as salted hashes, their scopes, and stream tickets.

A token is presented as ``Authorization: Bearer <id>.<secret>``. The access
file keeps, for each token id, only an scrypt hash of the whole token (salt
and cost parameters included), so the file can be read by operators without
giving anyone a token. The id in front lets the gateway check one hash per
request instead of trying every entry.

The file (TOML, or JSON when its name ends in ``.json``) also holds the
webhook subscriptions; ``connectors.gateway.webhooks`` reads those. A webhook
``url`` must be http(s) and reach a public address; a receiver on loopback or
inside the network is allowed only by name, with ``allow_private = true`` on
that webhook's entry (``connectors.gateway.egress`` has the rules)::

    [[webhooks]]
    name = "cc-internal"
    url = "http://hooks.internal:8080/alerts"
    allow_private = true
    regions = ["AH"]
    secret_file = "/etc/yrdbus/cc-internal.secret"

Browsers' ``EventSource`` and ``WebSocket`` cannot send an Authorization
header, so the wall trades its token for a *ticket*: a short-lived (60 s by
default) HMAC-signed string naming the token id, good only for opening a
stream. The token itself never goes into a URL.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import threading
import time
import tomllib
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional

from schemas import reference
from schemas.reference import REGIONS

# scrypt cost: n=2^14, r=8, p=1 is the interactive setting (about 16 MiB, tens of ms).
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
SEVERITIES = ("LOW", "MEDIUM", "HIGH", "CRITICAL")


class AccessFileError(ValueError):
    """The access file is unreadable or breaks its format; the message names file, entry and field."""


class Unauthorized(Exception):
    """401: no token, a malformed one, or one that matches no entry."""


class Forbidden(Exception):
    """403: a valid token asking for something outside its scope."""

    def __init__(self, message: str, *, token_id: str, scope: dict, region: str | None = None,
                 station: str | None = None):
        super().__init__(message)
        self.token_id = token_id
        self.scope = scope
        self.region = region
        self.station = station


# --------------------------------------------------------------------------- hashing
def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def hash_token(token: str, *, n: int = SCRYPT_N, r: int = SCRYPT_R, p: int = SCRYPT_P) -> str:
    """``scrypt$<n>$<r>$<p>$<salt>$<hash>`` of ``token`` with a fresh 16-byte salt."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(token.encode(), salt=salt, n=n, r=r, p=p, maxmem=256 * 1024 * 1024, dklen=32)
    return f"scrypt${n}${r}${p}${_b64(salt)}${_b64(digest)}"


def verify_token(token: str, stored: str) -> bool:
    try:
        algo, n, r, p, salt, digest = stored.split("$")
        if algo != "scrypt":
            return False
        got = hashlib.scrypt(token.encode(), salt=_unb64(salt), n=int(n), r=int(r), p=int(p),
                             maxmem=256 * 1024 * 1024, dklen=len(_unb64(digest)))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, _unb64(digest))


def new_token(token_id: str) -> str:
    """A fresh random token ``<id>.<secret>`` (256 bits of secret)."""
    _check_id(token_id, "id")
    return f"{token_id}.{secrets.token_urlsafe(32)}"


def token_id_of(token: str) -> str | None:
    head, dot, secret = token.partition(".")
    return head if dot and head and secret else None


def _check_id(value: str, what: str) -> None:
    if not value or not all(c.isalnum() or c in "-_" for c in value):
        raise ValueError(f"{what} {value!r} must be letters, digits, '-' or '_' (it is the part before the '.')")


# --------------------------------------------------------------------------- scope
@dataclass(frozen=True)
class Scope:
    """What a token (or a webhook) may read: everything, some regions, some stations."""

    all: bool = False
    regions: frozenset[str] = frozenset()
    stations: frozenset[str] = frozenset()

    def describe(self) -> dict:
        if self.all:
            return {"all": True}
        out: dict = {}
        if self.regions:
            out["regions"] = sorted(self.regions)
        if self.stations:
            out["stations"] = sorted(self.stations)
        return out

    def text(self) -> str:
        if self.all:
            return "all regions"
        parts = []
        if self.regions:
            parts.append("regions " + ", ".join(sorted(self.regions)))
        if self.stations:
            parts.append("stations " + ", ".join(sorted(self.stations)))
        return " and ".join(parts) or "nothing"

    def readable_regions(self) -> list[str]:
        """Regions whose routed topic this scope may read (wholly, or for some of its stations)."""
        if self.all:
            return list(REGIONS)
        station_regions = {reference.stations()[s]["region"] for s in self.stations}
        return [r for r in REGIONS if r in self.regions or r in station_regions]

    def stations_in(self, region: str) -> frozenset[str] | None:
        """None: the whole region may be read; else only alerts for these stations of it."""
        if self.all or region in self.regions:
            return None
        return frozenset(s for s in self.stations if reference.stations()[s]["region"] == region)


def parse_scope(entry: dict, where: str) -> Scope:
    """Read ``all`` / ``regions`` / ``stations`` of one entry of the access file."""
    everything = entry.get("all", False)
    if not isinstance(everything, bool):
        raise AccessFileError(f"{where}, field `all`: expected true or false, got {everything!r}")
    regions = _string_list(entry, "regions", where)
    stations = _string_list(entry, "stations", where)
    for r in regions:
        if r not in REGIONS:
            raise AccessFileError(f"{where}, field `regions`: {r!r} is not a region ({', '.join(REGIONS)})")
    known = reference.stations()
    for s in stations:
        if s not in known:
            raise AccessFileError(f"{where}, field `stations`: {s!r} is not a station of schemas/reference/stations.json")
    if not everything and not regions and not stations:
        raise AccessFileError(f"{where}: no scope; give `all = true`, `regions = [...]` or `stations = [...]`")
    if everything and (regions or stations):
        raise AccessFileError(f"{where}: `all = true` already covers every region; drop `regions`/`stations`")
    return Scope(all=everything, regions=frozenset(regions), stations=frozenset(stations))


def _string_list(entry: dict, key: str, where: str) -> list[str]:
    value = entry.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise AccessFileError(f"{where}, field `{key}`: expected a list of strings, got {value!r}")
    return value


# --------------------------------------------------------------------------- the access file
@dataclass(frozen=True)
class TokenEntry:
    id: str
    hash: str
    scope: Scope
    note: str = ""


@dataclass
class AccessFile:
    path: Path
    tokens: dict[str, TokenEntry] = field(default_factory=dict)
    webhooks: list[dict] = field(default_factory=list)

    @classmethod
    def load(cls, path: Path) -> "AccessFile":
        path = Path(path)
        try:
            text = path.read_text()
        except FileNotFoundError:
            raise AccessFileError(
                f"{path}: the gateway's access file does not exist; create it with "
                f"`yrdbus gateway hash-token --id NAME --regions AH >> {path}` (see README)") from None
        try:
            data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
        except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
            raise AccessFileError(f"{path}: not valid {'JSON' if path.suffix == '.json' else 'TOML'}: {exc}") from None
        unknown = set(data) - {"tokens", "webhooks"}
        if unknown:
            raise AccessFileError(f"{path}: unknown section(s) {sorted(unknown)}; expected `tokens` and `webhooks`")
        out = cls(path=path)
        for i, entry in enumerate(data.get("tokens", [])):
            where = f"{path}, tokens[{i}]"
            if not isinstance(entry, dict):
                raise AccessFileError(f"{where}: expected a table, got {entry!r}")
            tid = entry.get("id")
            if not isinstance(tid, str):
                raise AccessFileError(f"{where}, field `id`: required, a string")
            try:
                _check_id(tid, "id")
            except ValueError as exc:
                raise AccessFileError(f"{where}, field `id`: {exc}") from None
            where = f"{path}, tokens[{i}] (id {tid!r})"
            if tid in out.tokens:
                raise AccessFileError(f"{where}, field `id`: {tid!r} is given twice")
            stored = entry.get("hash")
            if not isinstance(stored, str) or not stored.startswith("scrypt$") or stored.count("$") != 5:
                raise AccessFileError(
                    f"{where}, field `hash`: expected scrypt$n$r$p$salt$hash from `yrdbus gateway hash-token`; "
                    f"a token in clear is never accepted")
            extra = set(entry) - {"id", "hash", "all", "regions", "stations", "note"}
            if extra:
                raise AccessFileError(f"{where}: unknown field(s) {sorted(extra)}")
            out.tokens[tid] = TokenEntry(id=tid, hash=stored, scope=parse_scope(entry, where),
                                         note=str(entry.get("note", "")))
        hooks = data.get("webhooks", [])
        if not isinstance(hooks, list):
            raise AccessFileError(f"{path}, `webhooks`: expected an array of tables")
        out.webhooks = hooks
        return out


class AccessControl:
    """Checks bearer tokens against the access file (re-read when it changes) and mints stream tickets."""

    def __init__(self, path: Path, *, ticket_key: bytes | None = None, ticket_ttl_s: float = 60.0):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._mtime: float | None = None
        self._file = self._reload()
        # Verified tokens, keyed by a digest of the token (never the token itself): reconnecting
        # consoles should not pay an scrypt each time. Dropped whenever the file changes.
        self._verified: dict[bytes, str] = {}
        # Recently refused tokens (digests): a client retrying a bad token does not cost an scrypt each time.
        self._refused: OrderedDict[bytes, None] = OrderedDict()
        self.ticket_key = ticket_key or secrets.token_bytes(32)
        self.ticket_ttl_s = ticket_ttl_s

    @property
    def file(self) -> AccessFile:
        return self._file

    def _reload(self) -> AccessFile:
        file = AccessFile.load(self.path)
        self._mtime = self.path.stat().st_mtime
        return file

    def _fresh(self) -> AccessFile:
        try:
            mtime = self.path.stat().st_mtime
        except FileNotFoundError:
            return self._file
        if mtime != self._mtime:
            with self._lock:
                if mtime != self._mtime:
                    try:
                        self._file = self._reload()
                        self._verified = {}
                        self._refused = OrderedDict()
                    except AccessFileError:
                        # A half-written file keeps the previous one in force; the next change retries.
                        self._mtime = mtime
        return self._file

    def authenticate(self, token: Optional[str]) -> TokenEntry:
        """The entry of a bearer token, or Unauthorized with a message that says why."""
        if not token:
            raise Unauthorized("no bearer token: send `Authorization: Bearer <token>` (or a ticket from POST /auth/ticket)")
        file = self._fresh()
        tid = token_id_of(token)
        entry = file.tokens.get(tid) if tid else None
        if entry is None:
            raise Unauthorized("the bearer token is not valid for this gateway")
        key = hashlib.sha256(token.encode()).digest()
        if self._verified.get(key) == entry.id:
            return entry
        if key in self._refused or not verify_token(token, entry.hash):
            self._refused[key] = None
            if len(self._refused) > 4096:
                self._refused.popitem(last=False)
            raise Unauthorized("the bearer token is not valid for this gateway")
        self._verified[key] = entry.id
        return entry

    def needs_hashing(self, token: Optional[str]) -> bool:
        """Whether ``authenticate(token)`` would run scrypt (tens of ms): then call it off the event loop."""
        if not token:
            return False
        key = hashlib.sha256(token.encode()).digest()
        return key not in self._verified and key not in self._refused

    # ----------------------------------------------------------------- tickets
    def mint_ticket(self, entry: TokenEntry) -> tuple[str, float]:
        expires = time.time() + self.ticket_ttl_s
        body = _b64(json.dumps({"t": entry.id, "e": round(expires, 3)}, separators=(",", ":")).encode())
        sig = _b64(hmac.new(self.ticket_key, body.encode(), hashlib.sha256).digest())
        return f"{body}.{sig}", expires

    def redeem_ticket(self, ticket: str) -> TokenEntry:
        body, _, sig = ticket.partition(".")
        good = _b64(hmac.new(self.ticket_key, body.encode(), hashlib.sha256).digest())
        # compared as bytes: compare_digest refuses str with non-ASCII characters (a hostile ticket has them)
        if not sig or not hmac.compare_digest(sig.encode("utf-8", "replace"), good.encode()):
            raise Unauthorized("the ticket is not valid for this gateway (tickets do not survive a gateway restart)")
        try:
            claims = json.loads(_unb64(body))
            tid, expires = claims["t"], float(claims["e"])
        except (ValueError, KeyError, TypeError):
            raise Unauthorized("the ticket is malformed") from None
        if time.time() > expires:
            raise Unauthorized("the ticket has expired; get a new one from POST /auth/ticket")
        entry = self._fresh().tokens.get(tid)
        if entry is None:
            raise Unauthorized("the ticket's token has been removed from the access file")
        return entry


def check_names(values: Iterable[str], allowed: Iterable[str], what: str) -> list[str]:
    allowed = list(allowed)
    out = []
    for v in values:
        if v not in allowed:
            raise ValueError(f"{what} {v!r} is not one of {', '.join(allowed)}")
        out.append(v)
    return out


def secret_from(entry: dict, where: str) -> bytes:
    """A webhook's HMAC secret from ``secret_env`` (an environment variable) or ``secret_file``."""
    env, path = entry.get("secret_env"), entry.get("secret_file")
    if bool(env) == bool(path):
        raise AccessFileError(f"{where}: give exactly one of `secret_env` or `secret_file` (the secret never goes in this file)")
    if env:
        value = os.environ.get(env)
        if not value:
            raise AccessFileError(f"{where}, field `secret_env`: the environment variable {env} is not set")
        return value.encode()
    try:
        value = Path(path).read_text().strip()
    except OSError as exc:
        raise AccessFileError(f"{where}, field `secret_file`: cannot read {path}: {exc.strerror}") from None
    if not value:
        raise AccessFileError(f"{where}, field `secret_file`: {path} is empty")
    return value.encode()
