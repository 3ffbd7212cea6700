"""The station publisher: a confluent-kafka producer that never loses an event.

Every source event goes to ``border.<REGION>.<kind>``, keyed so that one
traveller's events stay in order on one partition: the subject token for
clearances and alerts (the conveyance id for an alert about a conveyance
only), the case id for case events. Control events go to ``control``, keyed by
their event id (the topic is compacted by it).

The producer is idempotent with ``acks=all``: a retry after a lost response
or a broker restart writes nothing twice and keeps per-partition order. A full
local queue is waited out (``poll``), never dropped. Delivery reports are
counted; ``close()`` flushes and says how many were not delivered.
"""
from __future__ import annotations

import threading
import time
from collections import deque

from confluent_kafka import KafkaError, Producer
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram

from schemas import reference
from schemas import topics
from schemas.codec import get_codec
from schemas.kafka_config import kafka_security

#: Producer settings, each on purpose.
PRODUCER_CONFIG = {
    # Idempotence: retries after a lost ack or a broker restart neither duplicate nor reorder (KIP-98);
    # it implies acks=all and max.in.flight <= 5, written out here so nobody has to know that.
    "enable.idempotence": True,
    "acks": "all",
    "max.in.flight.requests.per.connection": 5,
    # lz4 rather than zstd: the broker, the stream workers and the stations share two cores. Measured on
    # clearance batches (docs/benchmarks.md, "Simulator and station publisher"): lz4 sends 1.5x fewer bytes
    # than none; zstd sends 2.4x fewer, but the producer manages about half lz4's rate with it.
    # Bytes are cheap on one machine's loopback; the throughput is what the stations need.
    "compression.type": "lz4",
    # A station's events are small (~250 bytes) and come in bursts (a flight's passengers). 20 ms of linger
    # lets a burst fill a batch per partition (better compression, fewer requests) and is invisible next to
    # the seconds an alert may take; batches up to 256 KiB keep one busy partition from building a request
    # that holds the others back (librdkafka's default is 1 MB).
    "linger.ms": 20,
    "batch.size": 256 * 1024,
    # Room for about 15 s of the whole region's peak traffic before produce() has to wait.
    "queue.buffering.max.messages": 200_000,
    "queue.buffering.max.kbytes": 256 * 1024,
    # How long librdkafka keeps retrying one message (through a broker restart, a leader election) before it
    # reports a failure. Five minutes covers a rolling restart; a failure after that is counted and reported.
    "message.timeout.ms": 300_000,
    # Kafka's own partitioner (the Java client's default; librdkafka's is CRC32): a clearance keyed by its
    # subject lands in the partition the stream layer keeps that subject's state in, so the subject stage
    # reads it where it is instead of forwarding it to streams.subjects first (streams/app.py). Keyless
    # records still go to a random partition.
    "partitioner": "murmur2_random",
}


# --------------------------------------------------------------------------- metrics
class PublisherMetrics:
    """The station publisher's Prometheus metrics in one registry (the default one unless given)."""

    _by_registry: dict[int, "PublisherMetrics"] = {}
    _lock = threading.Lock()

    def __init__(self, registry: CollectorRegistry):
        # station: one of the 19 reference stations ("ALL" for control events, "other" for an unknown id), so
        # a silent station can be told apart from a silent region; never anything unbounded such as a subject
        self.published = Counter("yrdbus_station_published_total",
                                 "Events the broker acknowledged, by region, station and kind.",
                                 ["region", "station", "kind"], registry=registry)
        self.failed = Counter("yrdbus_station_publish_failed_total",
                              "Events whose delivery failed after every retry, by region, station and kind.",
                              ["region", "station", "kind"], registry=registry)
        self.latency = Histogram("yrdbus_station_delivery_latency_seconds",
                                 "Time from produce() to the broker's acknowledgement, in seconds.",
                                 buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300),
                                 registry=registry)

    @classmethod
    def of(cls, registry: CollectorRegistry | None = None) -> "PublisherMetrics":
        """The metrics of ``registry``: created once per registry, so several publishers can share it."""
        registry = registry if registry is not None else REGISTRY
        with cls._lock:
            m = cls._by_registry.get(id(registry))
            if m is None:
                m = cls._by_registry[id(registry)] = cls(registry)
            return m


def station_label(record: dict) -> str:
    """The ``station`` label of an event: its reference station, ``ALL`` without one, ``other`` if unknown."""
    station = record.get("station_id")
    if not station:
        return "ALL"
    return station if station in _STATIONS else "other"


_STATIONS = frozenset(reference.stations())


class PublishError(RuntimeError):
    """Events were not delivered; the message says how many and the last reason."""


# --------------------------------------------------------------------------- publisher
class StationPublisher:
    """Publishes events of every source kind (and control events) for the stations of any region.

    ``topic_prefix`` puts every topic name behind a prefix (tests give each test its own set).
    ``registry`` is the Prometheus registry of the metrics (default: the process's default registry).
    """

    def __init__(self, bootstrap: str, *, topic_prefix: str = "", registry: CollectorRegistry | None = None,
                 codec=None, client_id: str = "yrdbus-station", config: dict | None = None):
        self.bootstrap = bootstrap
        self.prefix = topic_prefix
        self.codec = codec or get_codec()
        self.metrics = PublisherMetrics.of(registry)
        conf = {"bootstrap.servers": bootstrap, "client.id": client_id, **PRODUCER_CONFIG,
                "on_delivery": self._on_delivery, **kafka_security()}
        conf.update(config or {})
        self._producer = Producer(conf)
        self.produced = 0          # handed to the producer
        self.delivered = 0         # acknowledged by the broker
        self.failed = 0            # failed after every retry
        self.last_error: str | None = None
        self.errors: deque[str] = deque(maxlen=20)
        self._labels: dict[tuple, object] = {}   # (topic, station) -> delivery report callback
        self._since_poll = 0
        self._closed = False

    # ------------------------------------------------------------------ naming
    def topic_for(self, kind: str, record: dict) -> str:
        if kind == "control":
            return self.prefix + topics.CONTROL
        return self.prefix + topics.source(record["region"], kind)

    @staticmethod
    def key_for(kind: str, record: dict) -> bytes | None:
        """The partitioning key: what must stay in order together."""
        if kind == "clearance":
            key = record["subject"]
        elif kind == "alert":
            key = record.get("subject") or record.get("conveyance_id")
        elif kind == "case":
            key = record["case_id"]
        elif kind == "control":
            key = record["event_id"]
        else:
            raise ValueError(f"stations publish clearance, alert, case and control events, not {kind!r}")
        return key.encode() if key else None

    def _children(self, topic: str, kind: str, region: str, station: str):
        """The delivery report callback that counts under these labels (one per topic and station)."""
        hit = self._labels.get((topic, station))
        if hit is None:
            children = (self.metrics.published.labels(region, station, kind),
                        self.metrics.failed.labels(region, station, kind))
            hit = self._labels[(topic, station)] = lambda err, msg: self._on_delivery(err, msg, children)
        return hit

    # ------------------------------------------------------------------ publishing
    def publish(self, kind: str, record: dict) -> str:
        """Encode ``record`` (a ``kind`` event) and hand it to the producer; returns the topic.

        Raises the codec's ``EventError`` for a record that breaks the contract (nothing is sent then).
        Delivery is asynchronous: see ``delivered``/``failed``, ``flush()`` and ``close()``.
        """
        value = self.codec.encode(kind, record)
        topic = self.topic_for(kind, record)
        report = self._children(topic, kind, record.get("region") or "ALL", station_label(record))
        self.produce(topic, value, self.key_for(kind, record), on_delivery=report)
        return topic

    def produce(self, topic: str, value: bytes, key: bytes | None, headers=None, on_delivery=None) -> None:
        """Hand bytes to the producer; a full local queue is waited out, never dropped."""
        if self._closed:
            raise PublishError("the publisher is closed")
        extra = {"on_delivery": on_delivery} if on_delivery is not None else {}
        if headers:
            extra["headers"] = headers
        while True:
            try:
                self._producer.produce(topic, value, key, **extra)
                break
            except BufferError:
                # The local queue is full: serve delivery reports until there is room again.
                self._producer.poll(0.05)
        self.produced += 1
        self._since_poll += 1
        if self._since_poll >= 256:
            self._since_poll = 0
            self._producer.poll(0)

    def dead_letter(self, source_topic: str, raw: bytes, error, key=None) -> str:
        """Send ``raw`` (unchanged) with the reason to ``dlq.<source_topic>``; counted like any delivery."""
        from schemas.deadletter import dead_letter

        topic = dead_letter(self._producer, source_topic, raw, error, key=key)
        self.produced += 1
        return topic

    def _on_delivery(self, err: KafkaError | None, msg, children: tuple | None = None) -> None:
        topic = msg.topic()
        if err is None:
            self.delivered += 1
            if children is not None:
                children[0].inc()
            latency = msg.latency()
            if latency is not None:
                self.metrics.latency.observe(latency)
        else:
            self.failed += 1
            self.last_error = f"{topic}: {err.str()}"
            self.errors.append(self.last_error)
            if children is not None:
                children[1].inc()

    # ------------------------------------------------------------------ delivery
    def poll(self, timeout: float = 0) -> int:
        return self._producer.poll(timeout)

    @property
    def pending(self) -> int:
        """Events handed to the producer and not yet reported (delivered or failed)."""
        return len(self._producer)

    def flush(self, timeout: float | None = None) -> int:
        """Wait for every pending delivery report; returns how many are still pending."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            remaining = self._producer.flush(1.0 if left is None else min(1.0, left))
            if remaining == 0 or (deadline is not None and time.monotonic() >= deadline):
                return remaining

    def close(self, timeout: float | None = None) -> int:
        """Flush and stop; returns the number of events not reported (0 when everything was confirmed)."""
        if self._closed:
            return 0
        remaining = self.flush(timeout)
        self._closed = True
        return remaining

    def stats(self) -> dict:
        return {"produced": self.produced, "delivered": self.delivered, "failed": self.failed,
                "pending": self.pending if not self._closed else 0, "last_error": self.last_error}

    def __enter__(self) -> "StationPublisher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
