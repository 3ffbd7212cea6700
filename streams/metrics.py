"""Prometheus metrics of a stream worker (served on ``--metrics-port`` / ``YRDBUS_WORKER_METRICS_PORT``)."""
from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

EVENTS_IN = Counter("yrdbus_streams_events_in_total", "Events read by the stream layer, per topic and stage: "
                    "rekey (source records forwarded to a stage topic), clearances (clearances the subject stage "
                    "read in their source topic), subjects, regional (events each stage processed).",
                    ["topic", "stage"])
DERIVED = Counter("yrdbus_streams_derived_alerts_total", "Derived alerts emitted, per kind and recipient region.",
                  ["kind", "region"])
OUTPUTS = Counter("yrdbus_streams_outputs_total", "Records emitted, per output kind (derived_alert, trend, risk).",
                  ["kind"])
EMIT_LAG = Histogram("yrdbus_streams_emit_lag_seconds",
                     "Wall-clock emission time minus the event time of the evidence that completed the output.",
                     ["kind"], buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600, 86400, float("inf")))
UNDELIVERED = Counter("yrdbus_streams_undelivered_records_total",
                      "Records the consumer skipped after a rebalance, read again by the worker (streams.faust_workarounds).",
                      ["topic"])
TICKS = Counter("yrdbus_streams_ticks_total", "Tick records a stage read (its clock and its upstreams' idleness, "
                "not events): with events_in, every record of the stage's topic.", ["stage"])
LATE = Counter("yrdbus_streams_late_events_total", "Events older than the watermark when they arrived.", ["stage"])
BEYOND_DELAY = Counter("yrdbus_streams_beyond_delay_events_total",
                       "Events older than a stage's watermark minus the allowed delay ([event_time] "
                       "allowed_delay_hours): stored and counted, they judge no window again. Per stage and detector "
                       "section (flow: the subject stage's hourly counts and the regional stage's surges).",
                       ["stage", "section"])
DEAD = Counter("yrdbus_streams_dead_letters_total", "Records sent to a dead-letter topic.", ["topic", "reason"])
TABLE = Gauge("yrdbus_streams_table_entries", "Entries in the worker's state, per table.", ["table"])
WATERMARK = Gauge("yrdbus_streams_watermark_timestamp_seconds", "Current watermark (event time, epoch seconds), per stage.",
                  ["stage"])

_started: set[int] = set()
_children: dict = {}


def labelled(metric, *values):
    """``metric.labels(*values)``, kept: ``labels`` validates, hashes and locks on every call, and the stages
    count several times an event."""
    key = (metric, values)
    child = _children.get(key)
    if child is None:
        child = _children[key] = metric.labels(*values)
    return child


def serve(port: int | None, host: str = "127.0.0.1") -> None:
    """Serve this process's metrics on ``host:port`` (once; no port: not at all)."""
    if port and port not in _started:
        start_http_server(port, addr=host)
        _started.add(port)
