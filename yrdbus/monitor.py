"""What `yrdbus run` shows while the bus runs, read from the broker itself.

Event rates come from the high watermarks of the source topics, consumer lag
from the committed offsets of the bus's consumer groups, dead letters from the
`dlq.*` topics, and derived alerts from reading `alerts.derived`. Nothing here
depends on the internals of the processes it watches.
"""
from __future__ import annotations

import time
from collections import Counter, deque
from dataclasses import dataclass, field

from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

from schemas import topics
from schemas.codec import get_codec
from schemas.contract import SOURCE_KINDS
from schemas.kafka_config import kafka_security
from schemas.offsets import OffsetsReader
from schemas.reference import REGIONS
from streams.derived import is_live


@dataclass
class Snapshot:
    at: float
    source_offsets: dict[str, int]                     # topic -> sum of high watermarks
    dlq_total: int
    lag: dict[str, int]                                # group -> total lag
    alerts_by_kind: Counter = field(default_factory=Counter)
    newest_alerts: list[dict] = field(default_factory=list)

    def events(self, region: str | None = None, kind: str | None = None) -> int:
        return sum(n for t, n in self.source_offsets.items()
                   if (region is None or t.split(".")[1] == region) and (kind is None or t.split(".")[2] == kind))


class BusMonitor:
    def __init__(self, bootstrap: str, groups: list[str], newest: int = 8):
        self.bootstrap = bootstrap
        self.groups = groups
        self.admin = AdminClient({"bootstrap.servers": bootstrap, **kafka_security()})
        self._offsets = OffsetsReader({"bootstrap.servers": bootstrap, **kafka_security()}, timeout_s=5)
        self._alerts: Consumer | None = None
        self._alerts_assigned = False
        self.alerts_by_kind: Counter = Counter()        # alerts raised and not withdrawn, by kind
        self._counted: set[str] = set()
        self.withdrawn = 0
        self.newest: deque = deque(maxlen=newest)
        self._codec = get_codec()
        self.baseline: Snapshot | None = None
        self.last: Snapshot | None = None
        self.previous: Snapshot | None = None

    # ------------------------------------------------------------------ offsets
    def _partitions(self, topic_names: list[str]) -> list[TopicPartition]:
        md = self.admin.list_topics(timeout=5)
        return [TopicPartition(t, p) for t in topic_names if t in md.topics for p in md.topics[t].partitions]

    def _high_watermarks(self, topic_names: list[str]) -> dict[tuple[str, int], int]:
        """The high watermark of every partition of ``topic_names`` that answers: one ListOffsets request a
        broker (asked one partition at a time, the ~100 partitions of a snapshot each second were a hundred
        requests a second, the broker's most frequent)."""
        parts = self._partitions(topic_names)
        try:
            return self._offsets.ends([(tp.topic, tp.partition) for tp in parts], partial=True)
        except KafkaException:
            return {}

    def _lag(self, group: str, highs: dict) -> int:
        try:
            futures = self.admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)])
            result = futures[group].result(timeout=5)
        except Exception:
            return -1
        lag = 0
        for tp in result.topic_partitions or []:
            high = highs.get((tp.topic, tp.partition))
            if high is None:
                continue
            committed = tp.offset if tp.offset >= 0 else 0
            lag += max(0, high - committed)
        return lag

    # ------------------------------------------------------------------ alerts
    def _poll_alerts(self, max_messages: int = 2000) -> None:
        if self._alerts is None:
            self._alerts = Consumer({"bootstrap.servers": self.bootstrap, "group.id": "yrdbus-monitor-alerts",
                                     "enable.auto.commit": False, "auto.offset.reset": "earliest",
                                     **kafka_security()})
        if not self._alerts_assigned:
            parts = self._partitions([topics.DERIVED_ALERTS])
            if not parts:
                return
            start = [TopicPartition(tp.topic, tp.partition, self._start_offsets.get((tp.topic, tp.partition), 0))
                     for tp in parts]
            self._alerts.assign(start)
            self._alerts_assigned = True
        for msg in self._alerts.consume(num_messages=max_messages, timeout=0.2):
            if msg.error():
                continue
            try:
                _, alert = self._codec.decode(msg.value())
            except Exception:
                continue
            self.take(alert)

    def take(self, alert: dict) -> None:
        """Count a raised alert once; the version withdrawing it takes it off the count and replaces it among the
        newest (a re-emission changes nothing)."""
        aid = alert["alert_id"]
        if is_live(alert):
            if aid not in self._counted:
                self._counted.add(aid)
                self.alerts_by_kind[alert["kind"]] += 1
                self.newest.appendleft(alert)
            return
        if aid in self._counted:
            self._counted.discard(aid)
            self.alerts_by_kind[alert["kind"]] -= 1
            if not self.alerts_by_kind[alert["kind"]]:
                del self.alerts_by_kind[alert["kind"]]
        self.withdrawn += 1
        for i, shown in enumerate(self.newest):
            if shown["alert_id"] == aid:
                self.newest[i] = alert

    # ------------------------------------------------------------------ snapshots
    def snapshot(self) -> Snapshot:
        source = topics.source_topics()
        dlq = [topics.dead_letter(t) for t in source] + [topics.dead_letter(topics.DERIVED_ALERTS)]
        consumed = source + [topics.DERIVED_ALERTS, topics.TRENDS, topics.RISK_SCORES]
        highs = self._high_watermarks(sorted(set(source + dlq + consumed)))
        per_topic: Counter = Counter()
        for (t, _), high in highs.items():
            per_topic[t] += high
        if self.baseline is None:
            self._start_offsets = {k: v for k, v in highs.items() if k[0] == topics.DERIVED_ALERTS}
        self._poll_alerts()
        snap = Snapshot(
            at=time.monotonic(),
            source_offsets={t: per_topic.get(t, 0) for t in source},
            dlq_total=sum(per_topic.get(t, 0) for t in dlq),
            lag={g: self._lag(g, highs) for g in self.groups},
            alerts_by_kind=Counter(self.alerts_by_kind),
            newest_alerts=list(self.newest),
        )
        if self.baseline is None:
            self.baseline = snap
        self.previous, self.last = self.last, snap
        return snap

    def rates(self) -> dict[str, float]:
        """Events a second per region over the last interval."""
        if not self.previous or not self.last:
            return {r: 0.0 for r in REGIONS}
        dt = max(1e-6, self.last.at - self.previous.at)
        return {r: (self.last.events(region=r) - self.previous.events(region=r)) / dt for r in REGIONS}

    def since_start(self) -> dict:
        """Counts of this run: events per region and kind, dead letters."""
        b, s = self.baseline, self.last
        if not b or not s:
            return {}
        return {
            "events": {r: {k: s.events(r, k) - b.events(r, k) for k in SOURCE_KINDS} for r in REGIONS},
            "dead_letters": s.dlq_total - b.dlq_total,
            "alerts_by_kind": dict(s.alerts_by_kind),
        }

    def close(self) -> None:
        if self._alerts is not None:
            try:
                self._alerts.close()
            except RuntimeError:
                pass
