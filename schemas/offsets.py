"""Offsets of many partitions at once: one ListOffsets request a broker, whatever the number of partitions.

Asked one partition at a time (``Consumer.get_watermark_offsets``), a watcher of a hundred partitions makes a
hundred requests each time it looks. ``OffsetsReader`` asks them all through one admin client.

A failure drops that client, and the next read makes a new one. librdkafka's admin client keeps a request for a
partition whose leader has died on that broker's queue, and while a request waits there it connects to the dead
broker again and again without backing off: some 400 refused ``connect()`` calls a second, 0.6-0.7 of a core,
for as long as requests keep coming (measured with a three-broker cluster and a broker SIGKILLed, a read every
0.5 s: 6.7 CPU-s in 10 s; with a new client after each failed read, none). A new client asks the cluster for the
partitions' current leaders.
"""
from __future__ import annotations

from typing import Iterable

TP = tuple[str, int]


class OffsetsReader:
    def __init__(self, conf: dict, timeout_s: float = 10.0):
        self.conf, self.timeout_s = conf, timeout_s
        self._admin = None

    def read(self, tps: Iterable[TP], spec, *, partial: bool = False) -> dict[TP, int]:
        """The offsets of ``tps`` at ``spec`` (a ``confluent_kafka.admin.OffsetSpec``): {(topic, partition): offset}.

        Raises the first failure, or with ``partial`` leaves the partitions that failed out; either way a failure
        drops the client."""
        from confluent_kafka import TopicPartition
        from confluent_kafka.admin import AdminClient

        tps = list(tps)
        if not tps:
            return {}
        if self._admin is None:
            self._admin = AdminClient({**self.conf, "log_level": 0})
        out: dict[TP, int] = {}
        try:
            futures = self._admin.list_offsets({TopicPartition(t, p): spec for t, p in tps},
                                               request_timeout=self.timeout_s)
        except Exception:
            self._admin = None
            raise
        failure = None
        for tp, future in futures.items():
            try:
                out[(tp.topic, tp.partition)] = future.result(timeout=self.timeout_s).offset
            except Exception as exc:  # noqa: BLE001 - kept, and raised or left out below
                failure = failure or exc
        if failure is not None:
            self._admin = None
            if not partial:
                raise failure
        return out

    def ends(self, tps: Iterable[TP], **kwargs) -> dict[TP, int]:
        """The high watermarks of ``tps``."""
        from confluent_kafka.admin import OffsetSpec

        return self.read(tps, OffsetSpec.latest(), **kwargs)

    def starts(self, tps: Iterable[TP], **kwargs) -> dict[TP, int]:
        """The earliest offsets of ``tps``."""
        from confluent_kafka.admin import OffsetSpec

        return self.read(tps, OffsetSpec.earliest(), **kwargs)
