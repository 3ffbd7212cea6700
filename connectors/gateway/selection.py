"""What one subscriber reads: which topics, which alerts of them, and where it stands (the cursor).

A region-scoped subscriber is served from its region's routed topic
(``alerts.to.AH``) only, so an alert that the stream layer did not route to
Anhui cannot reach an Anhui console whatever the filters say. Only a token
scoped to ``all`` (the regional command centre) reads ``alerts.derived``.

A cursor is the position reached in every partition the stream reads,
``<topic>:<partition>:<next offset>`` joined by commas, e.g.
``alerts.to.AH:0:43,alerts.to.AH:1:12``: everything before offset 43 of
partition 0 was delivered (or filtered out). It is the SSE ``id:`` of every
event, so a browser's ``Last-Event-ID`` resumes exactly there.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from datetime import datetime, timezone
from typing import Iterable, Optional

from schemas import contract, reference
from schemas import topics
from schemas.reference import REGIONS

from connectors.gateway.access import SEVERITIES, Forbidden, Scope

SEVERITY_RANK = {s: i for i, s in enumerate(SEVERITIES)}


@lru_cache(maxsize=1)
def alert_kinds() -> list[str]:
    """The symbols of ``yrd.border.DerivedAlertKind``, from the contract."""
    return list(json.loads((contract.AVSC_DIR / "yrd.border.DerivedAlertKind.avsc").read_text())["symbols"])


class BadRequest(ValueError):
    """400: a parameter breaks its rule; the message names the parameter."""


# --------------------------------------------------------------------------- topics
@dataclass(frozen=True)
class TopicNames:
    """The gateway's topics; ``prefix`` lets a staging gateway share a cluster (and tests share a broker)."""

    prefix: str = ""

    def routed(self, region: str) -> str:
        return self.prefix + topics.routed_alerts(region)

    @property
    def derived(self) -> str:
        return self.prefix + topics.DERIVED_ALERTS

    @property
    def dispositions(self) -> str:
        return self.prefix + topics.DISPOSITIONS

    @property
    def webhook_dead_letters(self) -> str:
        return topics.dead_letter(self.prefix + "webhooks")

    def all_alert_topics(self) -> list[str]:
        return [self.routed(r) for r in REGIONS] + [self.derived]

    def region_of(self, topic: str) -> str | None:
        for r in REGIONS:
            if topic == self.routed(r):
                return r
        return None


# --------------------------------------------------------------------------- one alert
@dataclass
class Item:
    """One alert read from Kafka, decoded once and shared by every subscriber."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    raw: bytes
    alert: dict
    view: dict              # JSON-ready: what SSE, WebSocket and webhooks send
    severity: int
    emitted_at: float       # seconds since the epoch
    event: str = "alert"    # alert, or disposition (an officer's answer to one: its record is ``alert``)


def _iso(value: datetime) -> str:
    return value.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def json_ready(record: dict) -> dict:
    """A decoded record as the gateway sends it: times as ISO 8601 UTC with milliseconds."""
    return {k: (_iso(v) if isinstance(v, datetime) else v) for k, v in record.items()}


def version_key(alert: dict) -> tuple[str, str]:
    """What tells two copies of an alert apart when deduplicating: its id, its status and what changed it. The
    copies routed to several topics (and a re-emission) are one; the version that withdraws it (same id, status
    WITHDRAWN) is another, and must reach whoever saw the raised one; so is a version whose content the command
    centre changed (``details.changed_by``: the control event that did, e.g. a heightened window ended early). A
    disposition is told apart by its own id."""
    if "disposition_id" in alert:
        return alert["disposition_id"], "DISPOSITION"
    status = alert.get("status") or "RAISED"
    changed = (alert.get("details") or {}).get("changed_by")
    return alert.get("alert_id"), f"{status}:{changed}" if changed else status


def delivery_id(alert: dict) -> str:
    """The id a receiver deduplicates deliveries by: the alert id for the raised alert (as before statuses),
    ``<alert id>:WITHDRAWN`` for the version that withdraws it, ``<alert id>:RAISED:<control id>`` for a version
    the command centre changed."""
    aid, status = version_key(alert)
    return aid if status == "RAISED" else f"{aid}:{status}"


def make_item(topic: str, partition: int, offset: int, key: bytes | None, raw: bytes, alert: dict,
              routed_to: str | None, event: str = "alert") -> Item:
    view = json_ready(alert)
    if event == "alert":
        view["routed_to"] = routed_to
    view["position"] = {"topic": topic, "partition": partition, "offset": offset}
    emitted = alert.get("emitted_at") or alert.get("decided_at")
    return Item(topic=topic, partition=partition, offset=offset, key=key, raw=raw, alert=alert, view=view,
                severity=SEVERITY_RANK.get(alert.get("severity"), 0),
                emitted_at=emitted.timestamp() if isinstance(emitted, datetime) else 0.0, event=event)


# --------------------------------------------------------------------------- the selection
@dataclass(frozen=True)
class Source:
    topic: str
    region: str | None               # None: alerts.derived (or the dispositions)
    stations: frozenset[str] | None  # None: the whole topic; else only these stations' alerts
    #: the dispositions topic: only dispositions of alerts for these regions (must act or informed); None: all
    regions: frozenset[str] | None = None
    dispositions: bool = False


@dataclass(frozen=True)
class Selection:
    sources: tuple[Source, ...]
    min_severity: int = 0
    kinds: frozenset[str] | None = None
    stations: frozenset[str] | None = None   # the subscriber's own station filter

    @property
    def topics(self) -> list[str]:
        return [s.topic for s in self.sources]

    def matches(self, item: Item) -> bool:
        if item.severity < self.min_severity:
            return False
        a = item.alert
        if self.kinds is not None and a.get("kind") not in self.kinds:
            return False
        if self.stations is not None and not _concerns(a, self.stations):
            return False
        for s in self.sources:
            if s.topic == item.topic:
                if s.dispositions:
                    return s.regions is None or bool(s.regions & (set(a["must_act"]) | set(a["inform"])))
                return s.stations is None or _concerns(a, s.stations)
        return False

    def describe(self) -> dict:
        return {
            "topics": [s.topic for s in self.sources if not s.dispositions],
            "dispositions": any(s.dispositions for s in self.sources),
            "min_severity": SEVERITIES[self.min_severity],
            "kinds": sorted(self.kinds) if self.kinds is not None else None,
            "stations": sorted(self.stations) if self.stations is not None else None,
        }


def _concerns(alert: dict, stations: frozenset[str]) -> bool:
    """An alert concerns a station when it names the station, or a port the station serves."""
    if alert.get("station_id") in stations:
        return True
    port = alert.get("port_code")
    if port is None:
        return False
    p = reference.ports().get(port)
    return p is not None and p.station_id in stations


def _split(values: Iterable[str] | None) -> list[str]:
    out: list[str] = []
    for v in values or []:
        out.extend(x.strip() for x in v.split(",") if x.strip())
    return out


def select(scope: Scope, token_id: str, names: TopicNames, *, regions: Iterable[str] | None = None,
           stations: Iterable[str] | None = None, min_severity: Optional[str] = None,
           kinds: Iterable[str] | None = None, dispositions: bool = False) -> Selection:
    """The topics and filters for a subscriber with ``scope`` asking for these parameters; with
    ``dispositions``, also the officers' dispositions of the alerts it reads (of its regions' alerts; none for a
    subscriber to stations only, whose alerts a disposition does not name).

    Raises BadRequest for a malformed parameter, Forbidden for one outside the scope.
    """
    region_list = [r.upper() for r in _split(regions)]
    station_list = _split(stations)
    kind_list = [k.upper() for k in _split(kinds)]
    for r in region_list:
        if r not in REGIONS:
            raise BadRequest(f"parameter `region`: {r!r} is not a region ({', '.join(REGIONS)})")
    known = reference.stations()
    for s in station_list:
        if s not in known:
            raise BadRequest(f"parameter `station`: {s!r} is not a station (see schemas/reference/stations.json)")
    valid_kinds = alert_kinds()
    for k in kind_list:
        if k not in valid_kinds:
            raise BadRequest(f"parameter `kind`: {k!r} is not an alert kind ({', '.join(valid_kinds)})")
    rank = 0
    if min_severity:
        sev = min_severity.upper()
        if sev not in SEVERITY_RANK:
            raise BadRequest(f"parameter `min_severity`: {min_severity!r} is not one of {', '.join(SEVERITIES)}")
        rank = SEVERITY_RANK[sev]

    readable = scope.readable_regions()
    for r in region_list:
        if r not in readable:
            raise Forbidden(f"token {token_id!r} is scoped to {scope.text()}; it may not read region {r}",
                            token_id=token_id, scope=scope.describe(), region=r)
    for s in station_list:
        region = known[s]["region"]
        whole = scope.stations_in(region)
        if region not in readable or (whole is not None and s not in whole):
            raise Forbidden(f"token {token_id!r} is scoped to {scope.text()}; it may not read station {s}",
                            token_id=token_id, scope=scope.describe(), station=s)

    if not region_list and station_list:
        region_list = sorted({known[s]["region"] for s in station_list}, key=REGIONS.index)
    if region_list:
        sources = tuple(Source(names.routed(r), r, scope.stations_in(r)) for r in dict.fromkeys(region_list))
    elif scope.all:
        sources = (Source(names.derived, None, None),)
    else:
        sources = tuple(Source(names.routed(r), r, scope.stations_in(r)) for r in readable)
    if dispositions and not station_list and all(s.stations is None for s in sources):
        wanted = None if sources[0].region is None else frozenset(s.region for s in sources)
        sources += (Source(names.dispositions, None, None, regions=wanted, dispositions=True),)
    return Selection(sources=sources, min_severity=rank,
                     kinds=frozenset(kind_list) if kind_list else None,
                     stations=frozenset(station_list) if station_list else None)


# --------------------------------------------------------------------------- cursors
Position = tuple[str, int]


def format_cursor(positions: dict[Position, int]) -> str:
    return ",".join(f"{t}:{p}:{o}" for (t, p), o in sorted(positions.items()))


def parse_cursor(text: str, what: str = "cursor") -> dict[Position, int]:
    out: dict[Position, int] = {}
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        topic, _, rest = part.rpartition(":")
        topic, _, partition = topic.rpartition(":")
        try:
            p, o = int(partition), int(rest)
        except ValueError:
            raise BadRequest(f"{what} {text!r}: each part must be <topic>:<partition>:<offset>, got {part!r}") from None
        if not topic or p < 0 or o < 0:
            raise BadRequest(f"{what} {text!r}: each part must be <topic>:<partition>:<offset>, got {part!r}")
        out[(topic, p)] = o
    if not out:
        raise BadRequest(f"{what} is empty")
    return out
