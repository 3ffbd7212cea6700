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
"""
from __future__ import annotations

import unicodedata
import uuid
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


def heightened_event(entry: TokenEntry, body, now: datetime | None = None) -> dict:
    """The ControlEvent a command-centre token's request declares; ControlError when it may not or is malformed."""
    if not entry.scope.all:
        raise ControlError(403, "forbidden", f"token {entry.id!r} ({entry.scope.text()}) may not declare heightened "
                                             f"mode: only a command-centre token (scope all) may")
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
    now = now or datetime.now(timezone.utc)
    now = now.replace(microsecond=now.microsecond // 1000 * 1000)
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
            "issued_by": entry.id}


