"""The live side of the gateway: one Kafka consumer fanned out to every connected subscriber.

One consumer (no group, every partition of the five alert topics assigned)
reads from the end of the log when the gateway starts and hands each decoded
alert to the bounded queue of every subscriber whose selection matches.
Handing over never waits: when a subscriber's queue is full, that
subscriber alone is cut off with a ``lagged`` signal carrying the cursor to
resume from, and everyone else carries on.

Resumption seeks the broker, it keeps no history in memory: a subscriber that
comes back with a cursor (or a time) gets a reader of its own that replays
``[cursor, live position)`` from Kafka, while live alerts from the live
position on queue up behind it. Attaching a subscriber reads the live
position and registers it in one step of the event loop, so the replay ends
exactly where the live delivery begins: nothing missed, nothing twice.
Resumption therefore reaches back as far as the topics' retention; a cursor
older than that gets a ``gap`` event naming what was deleted.

A subscriber whose connection stops taking bytes is disconnected by its stream's ``WriteGuard``
(``guard.py``), which calls ``Feed.cut``: detached at once, its queue emptied, no event more.
"""
from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict, defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import AsyncIterator, Optional

from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition

from schemas import topics
from schemas.codec import get_codec
from schemas.errors import EventError
from schemas.kafka_config import aiokafka_security, kafka_security
from schemas.settings import Settings

from connectors.gateway.metrics import GatewayMetrics
from connectors.gateway.selection import (
    BadRequest, Item, Position, Selection, TopicNames, format_cursor, make_item, parse_cursor, version_key)

log = logging.getLogger("yrdbus.gateway")

LAGGED = object()
CLOSING = object()
CUT = object()        # the connection was aborted (it stopped reading): the stream ends without a word


def decode_item(names: TopicNames, metrics: GatewayMetrics, record) -> Optional[Item]:
    event = "disposition" if record.topic == names.dispositions else "alert"
    try:
        _, alert = get_codec().decode(record.value, kind="disposition" if event == "disposition" else "derived_alert")
    except EventError as exc:
        metrics.undecodable.labels(record.topic).inc()
        log.warning("%s[%d]@%d skipped: %s (%s)", record.topic, record.partition, record.offset, exc, exc.reason)
        return None
    return make_item(record.topic, record.partition, record.offset, record.key, record.value, alert,
                     names.region_of(record.topic), event)


# --------------------------------------------------------------------------- one subscriber
class Subscriber:
    """A connected SSE or WebSocket client: its selection and its bounded queue."""

    def __init__(self, kind: str, selection: Selection, queue_size: int, metrics: GatewayMetrics):
        self.kind = kind
        self.selection = selection
        self.queue: asyncio.Queue = asyncio.Queue(maxsize=queue_size)
        self.start: dict[Position, int] = {}
        self.lagged = False
        self._metrics = metrics

    def offer(self, item: Item) -> bool:
        """Queue the item if it is for this subscriber; False when this cut it off (lagged)."""
        if self.lagged or item.offset < self.start.get((item.topic, item.partition), 0):
            return True
        if not self.selection.matches(item):
            return True
        try:
            self.queue.put_nowait(item)
            return True
        except asyncio.QueueFull:
            self.lagged = True
            self._metrics.lagged.labels(self.kind).inc()
            self._replace_queue_with(LAGGED)
            return False

    def _replace_queue_with(self, marker) -> None:
        while not self.queue.empty():
            self.queue.get_nowait()
        self.queue.put_nowait(marker)


# --------------------------------------------------------------------------- the hub
class Hub:
    def __init__(self, bootstrap: str, names: TopicNames, metrics: GatewayMetrics, *, queue_size: int = 256,
                 settings: Settings | None = None):
        self.bootstrap = bootstrap
        # the gateway principal's security options, for librdkafka (admin) and aiokafka (consumers)
        self.kafka_config = kafka_security(settings)
        self.kafka_options = aiokafka_security(settings)
        self.names = names
        self.metrics = metrics
        self.queue_size = queue_size
        self.partitions: dict[str, int] = {}
        self.live: dict[Position, int] = {}
        self._subs: dict[str, set[Subscriber]] = defaultdict(set)
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task | None = None
        self.ready = asyncio.Event()

    async def start(self) -> None:
        live = self.names.all_alert_topics() + [self.names.dispositions]
        # and what the gateway writes: webhook dead letters, the console's control events
        wanted = live + [self.names.webhook_dead_letters, self.names.prefix + topics.CONTROL]
        counts = await asyncio.to_thread(topics.create_missing, self.bootstrap, wanted, self.names.prefix, 30.0,
                                         self.kafka_config)
        self.partitions = {t: counts[t] for t in live}
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap, group_id=None, enable_auto_commit=False,
            client_id="yrdbus-gateway-live", auto_offset_reset="latest", **self.kafka_options,
            # aiokafka keeps one fetch in flight per broker, and a partition whose records were just
            # handed over is not in the fetch already waiting for the others: a short wait bounds how long
            # the next alert on it can sit at the broker (250 ms gave a p99 of ~330 ms in bench/gateway.py).
            fetch_max_wait_ms=50, isolation_level="read_committed")
        await self._consumer.start()
        tps = [TopicPartition(t, p) for t, n in self.partitions.items() for p in range(n)]
        self._consumer.assign(tps)
        ends = await self._consumer.end_offsets(tps)
        for tp in tps:
            self._consumer.seek(tp, ends[tp])
            self.live[(tp.topic, tp.partition)] = ends[tp]
        # ready only once every partition's position is settled at its end: an alert published after
        # /healthz says ok is delivered (on a topic just created, the first offset lookups can fail over)
        for tp in tps:
            await self._consumer.position(tp)
        self._task = asyncio.create_task(self._run(), name="gateway-live")
        self.ready.set()

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
        self.close_subscribers()
        if self._consumer:
            await self._consumer.stop()

    def close_subscribers(self) -> None:
        """End every stream with a ``closing`` event carrying its cursor (the server is stopping)."""
        for sub in {s for subs in self._subs.values() for s in subs}:
            sub._replace_queue_with(CLOSING)
            self.detach(sub)

    async def _run(self) -> None:
        assert self._consumer is not None
        while True:
            try:
                batch = await self._consumer.getmany(timeout_ms=1000, max_records=200)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the broker going away is retried; the gateway stays up
                log.warning("live consumer: %s; retrying", exc)
                await asyncio.sleep(1.0)
                continue
            for tp, records in batch.items():
                for record in records:
                    item = decode_item(self.names, self.metrics, record)
                    if item is not None:
                        for sub in tuple(self._subs.get(record.topic, ())):
                            if not sub.offer(item):
                                self.detach(sub)
                    self.live[(tp.topic, tp.partition)] = record.offset + 1
                    # One alert per turn of the loop: the senders drain between two hand-overs, so a burst
                    # the size of a fetch does not overflow a subscriber that keeps up.
                    await asyncio.sleep(0)

    # ----------------------------------------------------------------- subscribers
    def attach(self, sub: Subscriber, start: dict[Position, int | None]) -> dict[Position, tuple[int, int]]:
        """Register ``sub`` for live delivery and return the ranges it must replay from the broker.

        Synchronous on purpose: the live positions read here and the registration happen
        in one step of the event loop, so no alert falls between replay and live.
        ``start[p] is None`` means: from the live position.
        """
        ranges: dict[Position, tuple[int, int]] = {}
        sub.start = {}
        for pos in self.positions_of(sub.selection):
            live = self.live[pos]
            begin = start.get(pos)
            begin = live if begin is None else begin
            sub.start[pos] = begin
            if begin < live:
                ranges[pos] = (begin, live)
        for topic in sub.selection.topics:
            self._subs[topic].add(sub)
        self.metrics.subscribers.labels(sub.kind).inc()
        return ranges

    def detach(self, sub: Subscriber) -> None:
        found = False
        for topic in sub.selection.topics:
            subs = self._subs.get(topic)
            if subs and sub in subs:
                subs.discard(sub)
                found = True
        if found:
            self.metrics.subscribers.labels(sub.kind).dec()

    def positions_of(self, selection: Selection) -> list[Position]:
        return [(t, p) for t in selection.topics for p in range(self.partitions[t])]

    # ----------------------------------------------------------------- replay
    def reader(self) -> "Reader":
        return Reader(self)


class Reader:
    """A private consumer that replays ranges of the alert topics for one resuming subscriber."""

    def __init__(self, hub: Hub):
        self.hub = hub
        self._consumer: AIOKafkaConsumer | None = None

    async def __aenter__(self) -> "Reader":
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self.hub.bootstrap, group_id=None, enable_auto_commit=False,
            client_id="yrdbus-gateway-replay", auto_offset_reset="earliest", isolation_level="read_committed",
            **self.hub.kafka_options,
            fetch_max_wait_ms=100)
        await self._consumer.start()
        return self

    async def __aexit__(self, *exc) -> None:
        if self._consumer:
            await self._consumer.stop()

    async def offsets_at(self, positions: list[Position], when: datetime) -> dict[Position, int | None]:
        """The first offset at or after ``when`` in each partition; None where nothing is that recent."""
        assert self._consumer is not None
        ms = int(when.timestamp() * 1000)
        found = await self._consumer.offsets_for_times({TopicPartition(t, p): ms for t, p in positions})
        return {(tp.topic, tp.partition): (v.offset if v is not None else None) for tp, v in found.items()}

    async def earliest(self, positions: list[Position]) -> dict[Position, int]:
        assert self._consumer is not None
        found = await self._consumer.beginning_offsets([TopicPartition(t, p) for t, p in positions])
        return {(tp.topic, tp.partition): o for tp, o in found.items()}

    async def replay(self, ranges: dict[Position, tuple[int, int]]) -> AsyncIterator[tuple[Position, int, Optional[Item]]]:
        """Yield ``(position, offset, item or None)`` for every record in the ranges, in order per partition."""
        assert self._consumer is not None
        c = self._consumer
        tps = {TopicPartition(t, p): (t, p) for t, p in ranges}
        c.assign(list(tps))
        for tp, pos in tps.items():
            c.seek(tp, ranges[pos][0])
        remaining = set(tps)
        while remaining:
            batch = await c.getmany(*remaining, timeout_ms=500, max_records=500)
            for tp, records in batch.items():
                pos = tps[tp]
                stop = ranges[pos][1]
                for record in records:
                    if record.offset >= stop:
                        break
                    yield pos, record.offset, decode_item(self.hub.names, self.hub.metrics, record)
            for tp in list(remaining):
                if await c.position(tp) >= ranges[tps[tp]][1]:
                    remaining.discard(tp)
                    c.pause(tp)


# --------------------------------------------------------------------------- one subscriber's stream
@dataclass
class Event:
    kind: str                    # hello, alert, disposition, gap, lagged, closing
    id: str                      # the cursor after this event
    data: dict
    item: Optional[Item] = None


@dataclass
class Feed:
    """One subscriber's stream of events: a ``hello``, the replay (if resuming), then live alerts."""

    hub: Hub
    sub: Subscriber
    ranges: dict[Position, tuple[int, int]]
    positions: dict[Position, int]
    gaps: list[dict] = field(default_factory=list)
    reader: Optional[Reader] = None
    _seen: OrderedDict = field(default_factory=OrderedDict)
    _cut: bool = False

    @classmethod
    async def open(cls, hub: Hub, kind: str, selection: Selection, *, cursor: str | None = None,
                   from_time: datetime | None = None) -> "Feed":
        """Validate the resume point, attach to the hub; BadRequest names what is wrong."""
        sub = Subscriber(kind, selection, hub.queue_size, hub.metrics)
        wanted = hub.positions_of(selection)
        start: dict[Position, int | None] = {}
        reader: Reader | None = None
        gaps: list[dict] = []
        if cursor:
            parsed = parse_cursor(cursor)
            for (topic, p), offset in parsed.items():
                if (topic, p) not in wanted:
                    raise BadRequest(
                        f"cursor {cursor!r}: {topic}:{p} is not read by this stream ({', '.join(selection.topics)}); "
                        f"a cursor resumes the same selection it came from")
                start[(topic, p)] = offset
        if cursor or from_time:
            reader = Reader(hub)
            await reader.__aenter__()
            try:
                if from_time and not cursor:
                    start = dict(await reader.offsets_at(wanted, from_time))
                behind = [pos for pos, o in start.items() if o is not None]
                if behind:
                    earliest = await reader.earliest(behind)
                    for pos in behind:
                        if start[pos] < earliest[pos]:
                            gaps.append({"topic": pos[0], "partition": pos[1], "from": start[pos],
                                         "to": earliest[pos], "reason": "deleted by the topic's retention"})
                            start[pos] = earliest[pos]
            except BaseException:
                await reader.__aexit__(None, None, None)
                raise
        ranges = hub.attach(sub, start)
        feed = cls(hub=hub, sub=sub, ranges=ranges, positions=dict(sub.start), gaps=gaps, reader=reader)
        if not ranges and reader is not None:
            await reader.__aexit__(None, None, None)
            feed.reader = None
        return feed

    @property
    def cursor(self) -> str:
        return format_cursor(self.positions)

    def _duplicate(self, item: Item) -> bool:
        """A subscriber reading several routed topics gets an alert routed to two of them once (and the version
        withdrawing it once: the key is the id and the status)."""
        if len(self.sub.selection.sources) < 2:
            return False
        key = version_key(item.alert)
        if key in self._seen:
            return True
        self._seen[key] = None
        if len(self._seen) > 10_000:
            self._seen.popitem(last=False)
        return False

    async def events(self) -> AsyncIterator[Event]:
        yield Event("hello", self.cursor, {"cursor": self.cursor, "selection": self.sub.selection.describe(),
                                           "replaying": bool(self.ranges)})
        for gap in self.gaps:
            yield Event("gap", self.cursor, gap)
        if self.reader is not None:
            try:
                async for pos, offset, item in self.reader.replay(self.ranges):
                    self.positions[pos] = offset + 1
                    if item is not None and self.sub.selection.matches(item) and not self._duplicate(item):
                        yield Event(item.event, self.cursor, item.view, item)
            finally:
                await self._close_reader()
        while True:
            got = await self.sub.queue.get()
            if got is LAGGED:
                yield Event("lagged", self.cursor, {
                    "cursor": self.cursor,
                    "reason": f"this subscriber fell {self.hub.queue_size} alerts behind; resume from the cursor"})
                return
            if got is CLOSING:
                yield Event("closing", self.cursor, {"cursor": self.cursor, "reason": "the gateway is stopping"})
                return
            if got is CUT:
                return
            item: Item = got
            self.positions[(item.topic, item.partition)] = item.offset + 1
            if not self._duplicate(item):
                yield Event(item.event, self.cursor, item.view, item)

    async def _close_reader(self) -> None:
        reader, self.reader = self.reader, None
        if reader is not None:
            # Shielded: aiokafka's stop() swallows a CancelledError that arrives while it waits for its own
            # tasks, which would leave a cancelled stream running on into the live loop.
            await asyncio.shield(reader.__aexit__(None, None, None))

    def cut(self) -> None:
        """The connection was aborted: detach now and drop what was queued (``events()`` ends silently)."""
        self._cut = True
        self.hub.detach(self.sub)
        self.sub._replace_queue_with(CUT)

    async def close(self) -> None:
        """Detach from the hub and end ``events()`` wherever it is (idempotent)."""
        self.hub.detach(self.sub)
        self.sub._replace_queue_with(CUT if self._cut else CLOSING)
        await self._close_reader()
