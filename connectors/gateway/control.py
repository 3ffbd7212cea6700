"""Heightened mode declared from the command centre's console.

``POST /control/heightened`` with a command-centre token (scope ``all``, and only that scope) puts a
``ControlEvent`` of kind HEIGHTENED_MODE on the ``control`` topic, exactly as the simulator's scripted windows
go there: the stream layer lowers the trend and flow thresholds of those regions inside the window by its
multiplier and broadcasts their alerts of ``[heightened_mode] broadcast_min_severity`` to every region
(``streams/heightened.py``), and announces the window itself as a HEIGHTENED_MODE derived alert that every
wall in scope shows. The body::

    {"regions": ["SH"], "starts_at": "2026-11-05T00:00:00+08:00", "ends_at": "2026-11-10T24:00:00+08:00",
     "threshold_multiplier": 0.5, "reason": "China International Import Expo"}

``starts_at`` defaults to now; times need a zone; the window is at most 31 days; the multiplier is in
(0, 1] (a window lowers thresholds, it never raises them); the reason is at most 200 characters.

``POST /control/heightened/{window}/end`` (the window's id, or its announcement's alert id), body
``{"ends_at": ...}`` or empty for now, ends a window early: a control event of the same window
(``window_id``) with the earlier end, its regions, start and multiplier unchanged. The end is not in the past
and is before the window's end; a window not yet begun is cancelled (it ends where it starts), and the stream
layer withdraws its announcement. The stream layer then judges the hours no longer covered again with the usual
thresholds, and withdraws the broadcasts and the alerts of lowered thresholds that no longer hold.
"""
from __future__ import annotations

import unicodedata
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from schemas.reference import REGIONS

from connectors.gateway.access import TokenEntry

MAX_WINDOW = timedelta(days=31)
MAX_REASON = 200
FIELDS = {"regions", "starts_at", "ends_at", "threshold_multiplier", "reason"}


class ControlError(Exception):
    def __init__(self, status: int, error: str, message: str):
        super().__init__(message)
        self.status = status
        self.error = error


def _bad(message: str) -> ControlError:
    return ControlError(400, "bad_request", message)


def _time(body: dict, name: str, default: datetime | None = None) -> datetime:
    value = body.get(name)
    if value is None:
        if default is None:
            raise _bad(f"field `{name}`: required (ISO 8601 with a zone, e.g. 2026-11-05T00:00:00+08:00)")
        return default
    if not isinstance(value, str):
        raise _bad(f"field `{name}`: expected an ISO 8601 time, got {type(value).__name__}")
    try:
        t = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise _bad(f"field `{name}`: {value!r} is not an ISO 8601 time") from None
    if t.tzinfo is None:
        raise _bad(f"field `{name}`: {value!r} has no time zone; add Z or +08:00")
    return t.astimezone(timezone.utc)


def _command_centre(entry: TokenEntry, what: str) -> None:
    if not entry.scope.all:
        raise ControlError(403, "forbidden", f"token {entry.id!r} ({entry.scope.text()}) may not {what} heightened "
                                             f"mode: only a command-centre token (scope all) may")


def _now(now: datetime | None) -> datetime:
    now = now or datetime.now(timezone.utc)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


@dataclass(frozen=True)
class Window:
    """A heightened window as its announcement (the HEIGHTENED_MODE derived alert's newest version) says."""

    window_id: str
    alert_id: str
    regions: tuple[str, ...]
    starts_at: datetime
    ends_at: datetime
    threshold_multiplier: float
    reason: str
    withdrawn: bool

    @classmethod
    def of(cls, alert: dict) -> "Window":
        d = alert.get("details") or {}
        start = alert["occurred_at"]
        end = datetime.fromtimestamp(int(d["ends_at"]) / 1000, timezone.utc) if d.get("ends_at") else start
        return cls(d.get("window_id") or alert["evidence"][0], alert["alert_id"], tuple(alert["must_act"]), start,
                   end, float(d.get("threshold_multiplier") or 1.0), d.get("reason", ""),
                   alert.get("status") == "WITHDRAWN")


def end_event(entry: TokenEntry, window: Window | None, name: str, body, now: datetime | None = None) -> dict:
    """The ControlEvent that ends ``window`` early (``body``: optional ``ends_at``, default now)."""
    _command_centre(entry, "end")
    if body is None:
        body = {}
    if not isinstance(body, dict):
        raise _bad("the body must be a JSON object, empty or with `ends_at`")
    unknown = sorted(set(body) - {"ends_at"})
    if unknown:
        raise _bad(f"unknown field(s) {', '.join(unknown)}: expected only `ends_at`")
    if window is None:
        raise ControlError(404, "unknown_window", f"window {name!r}: no heightened window (or its announcement) "
                                                  f"has this id")
    now = _now(now)
    if window.withdrawn or window.ends_at <= now:
        raise ControlError(409, "ended", f"window {window.window_id}: already ended at "
                                         f"{window.ends_at.isoformat()}")
    ends = _time(body, "ends_at", now)
    if ends < now - timedelta(minutes=1):
        raise _bad(f"field `ends_at`: {ends.isoformat()} is past; a window is ended from now on, not before")
    if ends >= window.ends_at:
        raise _bad(f"field `ends_at`: {ends.isoformat()} is not before the window's end "
                   f"{window.ends_at.isoformat()}; declare a new window to extend one")
    return {"event_id": str(uuid.uuid4()), "kind": "HEIGHTENED_MODE", "regions": list(window.regions),
            "starts_at": window.starts_at, "ends_at": max(ends, window.starts_at),
            "threshold_multiplier": window.threshold_multiplier, "reason": window.reason, "occurred_at": now,
            "issued_by": entry.id, "window_id": window.window_id}


def heightened_event(entry: TokenEntry, body, now: datetime | None = None) -> dict:
    """The ControlEvent a command-centre token's request declares; ControlError when it may not or is malformed."""
    _command_centre(entry, "declare")
    if not isinstance(body, dict):
        raise _bad("the body must be a JSON object with `regions`, `ends_at` and optionally `starts_at`, "
                   "`threshold_multiplier`, `reason`")
    unknown = sorted(set(body) - FIELDS)
    if unknown:
        raise _bad(f"unknown field(s) {', '.join(unknown)}: expected {', '.join(sorted(FIELDS))}")
    regions = body.get("regions")
    if isinstance(regions, str):
        regions = [r.strip() for r in regions.split(",") if r.strip()]
    if not isinstance(regions, list) or not regions or not all(isinstance(r, str) for r in regions):
        raise _bad(f"field `regions`: expected a non-empty list of regions ({', '.join(REGIONS)})")
    regions = [r.upper() for r in regions]
    wrong = [r for r in regions if r not in REGIONS]
    if wrong:
        raise _bad(f"field `regions`: {', '.join(wrong)} not a region ({', '.join(REGIONS)})")
    regions = [r for r in REGIONS if r in regions]
    now = _now(now)
    starts = _time(body, "starts_at", now)
    ends = _time(body, "ends_at")
    if ends <= starts:
        raise _bad(f"field `ends_at`: {ends.isoformat()} is not after starts_at {starts.isoformat()}")
    if ends - starts > MAX_WINDOW:
        raise _bad(f"field `ends_at`: a window is at most {MAX_WINDOW.days} days, this one {ends - starts}")
    if ends <= now:
        raise _bad(f"field `ends_at`: {ends.isoformat()} is already past")
    mult = body.get("threshold_multiplier", 0.5)
    if isinstance(mult, bool) or not isinstance(mult, (int, float)) or not 0 < mult <= 1:
        raise _bad(f"field `threshold_multiplier`: expected a number in (0, 1] (a window lowers thresholds), "
                   f"got {mult!r}")
    reason = body.get("reason", "")
    if not isinstance(reason, str) or len(reason) > MAX_REASON \
            or any(unicodedata.category(c) == "Cc" for c in reason):
        raise _bad(f"field `reason`: text of at most {MAX_REASON} characters without control characters")
    return {"event_id": str(uuid.uuid4()), "kind": "HEIGHTENED_MODE", "regions": regions, "starts_at": starts,
            "ends_at": ends, "threshold_multiplier": float(mult), "reason": reason.strip(), "occurred_at": now,
            "issued_by": entry.id, "window_id": None}


