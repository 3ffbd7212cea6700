"""Every workaround of Faust's internals (faust-streaming 0.15.3, pinned in pyproject.toml) in one place.

Each names what it works around and has a test that fails if the pinned version changes the behaviour it
relies on (tests/test_faust_workarounds.py):

- ``Turns``: records Faust skipped after a rebalance are read again and processed in their turn (below);
  ``Turns.reread_stalled``: the same when nothing follows the skipped run. (Upstream: records skipped or
  reordered around a rebalance's seek and queue emptying, faust-streaming/faust#216 and #221; their fixes
  are in 0.15.3, and the skip is still seen with tables, below.) It counts only the ticks with nothing waiting in
  the worker: ``records_waiting`` reads the stream queues (``app.topics``) and the producer's buffer, as Faust has
  no public count of records in flight (no upstream issue found).
- ``commit_past_known_gaps``: ``Consumer._new_offset`` stops committing after a repeated offset
  (robinhood/faust#625).
- ``flush_before_commit``: ``ProducerBuffer.flush`` gives up once no record left its buffer for 0.1 s, so a
  commit can go out before the table writes it holds (no upstream issue found).
- ``SubjectTable``: ``Table.use_partitioner`` asks the producer's metadata synchronously and fails while a
  new changelog topic's metadata is not cached (no upstream issue found; the partition is a pure function
  of the key, so the table computes it).

Records the stream worker's consumer skipped, read again so that they are processed in their turn.

Faust (0.15.3) can deliver a partition's records from past a run of them just after a rebalance. A worker
that recovers its tables resumes the flow to read the changelogs; then it resumes the stages' partitions and
seeks each to its committed offset, asking for those offsets one partition at a time (0.3-0.4 s under load).
Meanwhile the stages read: a partition sought early is read again from its committed offset into its agent's
queue, and that queue is emptied when recovery resumes the flow at the end, while the partition's position
stays past the records emptied. Faust takes the jump for a gap (as in a compacted topic) and, once the record
after it is processed, counts the records in between as processed: they are never read, and their offsets
are committed.

When the dropped records had already passed Faust's read offset, Faust sees no jump at all: the record after
them is acknowledged, but its commit logic (``Consumer._new_offset``) will not commit past offsets that were
neither acknowledged nor a known gap, and the partition's committed offset never moves again (a stall of the
stage's commits, not of its processing).

The stages' topics have no gaps (not compacted, no transactions), so a jump is records not delivered. The
agents notice it (the record after the one last processed is not the next offset, ``Turns``), read the
missing records here with a plain consumer, process them before the record that came, and tell Faust's
consumer that their offsets are done: the outputs are those of a run without the skip, and the commit goes
past them, whether or not Faust saw the jump.
"""
from __future__ import annotations

import asyncio
import functools
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable

import faust
from aiokafka.partitioner import murmur2
from confluent_kafka import Consumer, KafkaException, TopicPartition


@dataclass
class Message:
    """The parts of a Faust message the stages read."""
    topic: str
    partition: int
    offset: int
    timestamp: float | None    # seconds, as Faust gives it
    tp: object = None


@dataclass
class Event:
    """A record read here, shaped as the Faust event the stages' handlers take."""
    message: Message
    key: bytes | None
    value: bytes | None
    headers: list = field(default_factory=list)


class CatchUpError(RuntimeError):
    pass


log = logging.getLogger(__name__)


def read_range(conf: dict, tp, first: int, end: int, timeout: float = 60.0) -> list[Event]:
    """Records ``first`` .. ``end - 1`` of partition ``tp`` (a Faust TP: topic, partition), in order.

    ``conf``: the worker's librdkafka connection settings (bootstrap, security). Raises ``CatchUpError``
    when they cannot all be read within ``timeout`` seconds (the caller must not go on without them)."""
    consumer = Consumer({**conf, "group.id": "yrdbus-streams-catchup", "enable.auto.commit": False,
                         "enable.partition.eof": False})
    out: list[Event] = []
    try:
        consumer.assign([TopicPartition(tp.topic, tp.partition, first)])
        deadline = time.monotonic() + timeout
        nxt = first
        while nxt < end:
            if time.monotonic() > deadline:
                raise CatchUpError(f"{tp.topic}[{tp.partition}]: read {nxt - first} of the {end - first} "
                                   f"records {first}..{end - 1} in {timeout:.0f} s")
            for m in consumer.consume(num_messages=min(500, end - nxt), timeout=1.0):
                if m.error() is not None:
                    raise CatchUpError(f"{tp.topic}[{tp.partition}]: {m.error()}")
                if m.offset() < nxt:
                    continue
                if m.offset() >= end:
                    nxt = end
                    break
                kind, ts = m.timestamp()
                out.append(Event(Message(m.topic(), m.partition(), m.offset(), ts / 1000 if ts and ts > 0 else None,
                                         tp), m.key(), m.value(), list(m.headers() or [])))
                nxt = m.offset() + 1
    except KafkaException as exc:
        raise CatchUpError(f"{tp.topic}[{tp.partition}]: {exc}") from exc
    finally:
        consumer.close()
    return out


def read_committed(conf: dict, group: str, tps: list, timeout: float = 30.0) -> dict:
    """Where consumer group ``group`` starts reading partitions ``tps``, asked of the broker: {tp: offset}, the
    committed offset, or for a partition with nothing committed its earliest offset (the workers read from the
    earliest). A plain consumer asks (it joins no group).

    Nothing committed is not "no record to wait for": a worker that joins while another has read a sparse
    partition without committing yet (an alert or case partition) can be delivered its second record first, the
    first one fetched before the rebalance and dropped; taken as it came, the first record was lost and Faust's
    commit went past it (seen in the scale-out test: the first case of border.SH.case[3] never forwarded)."""
    consumer = Consumer({**conf, "group.id": group, "enable.auto.commit": False})
    try:
        got = consumer.committed([TopicPartition(tp.topic, tp.partition) for tp in tps], timeout=timeout)
        out = {}
        for tp, c in zip(tps, got):
            if c.offset >= 0:
                out[tp] = c.offset
            else:
                low, _ = consumer.get_watermark_offsets(TopicPartition(tp.topic, tp.partition), timeout=timeout)
                if low >= 0:
                    out[tp] = low
    except KafkaException as exc:
        raise CatchUpError(f"committed offsets of {group}: {exc}") from exc
    finally:
        consumer.close()
    return out


# ticks more than a stall takes before a partition nothing is fetched of is asked for again (``_fetch_again``)
UNFETCHED_TICKS = 2


def records_waiting(consumer) -> bool:
    """Records Faust has handed to the worker that no stage has taken yet: an event in a stream's queue (the
    conductor's channels, ``app.topics``), or table writes in the producer's buffer (once it holds more than
    ``max_messages``, Faust's conductor holds the next record until a hundred have left or it is empty). While
    either holds, a partition that does not move may be queued behind the work in hand, not dropped: a worker
    short of CPU (a backlog beside other processes) showed dozens of partitions "stalled" for 6 s at a time, and
    seeking them back made it read everything again, slower still. False for a consumer without Faust's app (a
    test's stand-in)."""
    app = getattr(consumer, "app", None)
    conductor = getattr(app, "topics", None)
    if conductor is None or not hasattr(conductor, "_topic_name_index"):
        return False
    for channel in list(conductor):
        queue = getattr(channel, "_queue", None)
        if queue is not None and queue.qsize():
            return True
    producer = getattr(app, "_producer", None)
    buffer = getattr(producer, "buffer", None)
    return buffer is not None and buffer.size > 0


class Turns:
    """The stages' partitions' next offsets to process, and the catch-up of the runs the consumer skipped.

    ``consumer()``: the worker's Faust consumer (its committed offsets, and its gaps: the offsets it may commit
    past; asked for when needed, as the app makes it once running); ``conf``: librdkafka settings for
    ``read_range``; ``on_skip(topic, n)``: told of every skipped run (a metric); ``read``: ``read_range`` or a
    stand-in with its signature."""

    def __init__(self, consumer: Callable[[], object], conf: dict,
                 on_skip: Callable[[str, int], None] = lambda topic, n: None,
                 read: Callable[..., list] = read_range, group: str | None = None,
                 committed: Callable[..., dict] = read_committed):
        self.consumer, self.conf, self.on_skip, self.read = consumer, conf, on_skip, read
        self.group, self.committed = group, committed
        self.done: dict = {}   # partition -> the offset last processed here
        self._suspects: dict = {}   # partition -> (next offset to process, calls in a row it was the same)
        self._asked: dict = {}      # partition -> where its group starts at the broker (read_committed), once asked
        self._uncommitted: dict = {}  # partition -> (its committed offset, calls in a row it was the same)

    def forget(self, tps) -> None:
        """Partitions (re)assigned: their next offset is the committed one again."""
        for tp in tps:
            self.done.pop(tp, None)
            self._asked.pop(tp, None)

    def next_offset(self, tp):
        """The next offset of ``tp`` to process: after the last one processed here, or (none yet) the committed
        one; not the consumer's read offset, which runs ahead into its buffers. None when not known."""
        return self.done[tp] + 1 if tp in self.done else self.consumer()._committed_offset.get(tp)

    async def _first(self, tp):
        """The next offset of ``tp`` to process, its committed offset asked of the broker when Faust does not know
        it yet. Just after an assignment, before Faust's seek, the consumer can deliver records it fetched before
        the rebalance, from past the committed offset: taken as they came, the records between were never
        processed in this assignment, Faust's commit waits for them for ever (it commits nothing while the first
        offset acknowledged is past the committed one), and a partition read to its end shows no stall. Asked
        once per assignment, for every partition Faust does not know yet in one request."""
        first = self.next_offset(tp)
        if first is not None or self.group is None:
            return first
        if tp not in self._asked:
            consumer = self.consumer()
            try:
                assigned = list(consumer.assignment())
            except Exception:  # noqa: BLE001 - not running (a test's consumer): this partition alone
                assigned = []
            tps = [t for t in assigned if t not in self._asked and t not in self.done
                   and consumer._committed_offset.get(t) is None]
            if tp not in tps:
                tps.append(tp)
            try:
                got = await asyncio.to_thread(self.committed, self.conf, self.group, tps)
            except CatchUpError as exc:
                log.critical("cannot read the committed offsets, stopping the worker: %s", exc)
                os._exit(75)
            for t in tps:
                self._asked[t] = got.get(t)
        return self._asked.get(tp)

    async def __call__(self, event, handler: Callable[[object], Awaitable[None]]) -> None:
        """``handler(event)``, after the records of its partition the consumer skipped when the record is past
        the next offset to process, and not at all when it is before it; each record handled is noted. If the
        skipped records cannot be read, the worker exits (75): going on would lose them, and a restart reads the
        partition from its committed offset."""
        msg = event.message
        first, end = await self._first(msg.tp), msg.offset
        if first is not None and end < first:
            # delivered again (a seek back): processed here already, or committed; twice would double its outputs
            log.info("%s[%d]: record %d was processed before; not again", msg.topic, msg.partition, end)
            return
        if first is not None and end > first:
            log.warning("%s[%d]: records %d..%d were not delivered before %d; reading them again", msg.topic,
                        msg.partition, first, end - 1, end)
            self.on_skip(msg.topic, end - first)
            try:
                missed = await asyncio.to_thread(self.read, self.conf, msg.tp, first, end)
            except CatchUpError as exc:
                log.critical("cannot read the skipped records, stopping the worker: %s", exc)
                os._exit(75)
            for e in missed:
                self.done[msg.tp] = e.message.offset
                await handler(e)
            # Faust may not know these offsets were skipped (they passed its read offset before being dropped):
            # a gap is what its commit counts as done without an acknowledgement
            await self.consumer()._add_gap(msg.tp, first, end - 1)
        self.done[msg.tp] = msg.offset
        await handler(event)

    async def reread_stalled(self, behind, ticks: int = 3) -> None:
        """The same skip as ``__call__`` catches, when nothing follows it: the last records of a partition dropped
        (the end of the input, a partition that falls quiet). A partition with records to process (``behind``)
        whose next offset to process here has not moved over ``ticks`` calls in a row (the worker's 2 s tick)
        while its consumer position is past it had them dropped: it is sought back to that offset and read
        again. Records that were only slow to come (an agent's queue held up) are then delivered twice, and
        the second delivery is not processed (``__call__``). The positions are asked of the consumer's thread
        only for partitions that have not moved, which are none while a worker makes progress."""
        consumer = self.consumer()
        # a partition is looked at only once its next offset has not moved for ``ticks`` calls: a worker catching up
        # on a backlog moves on every partition, and asks the consumer's thread (or the broker) nothing. A call
        # while records wait in the worker counts for none (``records_waiting``): they may be this partition's
        quiet = not records_waiting(consumer)
        seen, stalled = {}, []
        for tp in behind:
            key = self.next_offset(tp)
            last, count = self._suspects.get(tp, (None, 0))
            count = (count + quiet if last == key else int(quiet))
            seen[tp] = (key, count)
            if count >= ticks:
                stalled.append(tp)
        self._suspects = seen
        again = {}
        for tp in stalled:
            nxt = seen[tp][0]
            if nxt is None:
                # nothing committed and nothing processed here: the next offset is the partition's first (the
                # worker reads from the earliest). Faust's seek after a recovery leaves such partitions where they
                # are (aiokafka seeks to committed offsets above 0 only), so records fetched before the queues
                # were emptied are dropped there with nothing to bring them back (seen in the scale-out test:
                # sparse alert and case partitions never committed after a worker joined)
                try:
                    nxt = (await consumer.earliest_offsets(tp)).get(tp)
                except Exception:  # revoked meanwhile
                    continue
                if nxt is None:
                    continue
            try:
                position = await consumer.position(tp)
            except Exception:  # revoked meanwhile
                continue
            if position is not None and position > nxt:
                again[tp] = (nxt, position)
            elif position == nxt and seen[tp][1] >= ticks + UNFETCHED_TICKS:
                # (a position below it is a partition read again from further back: it comes)
                await self._fetch_again(consumer, tp, nxt, seen[tp][1])
        if again:
            for tp, (nxt, pos) in again.items():
                log.warning("%s[%d]: read to %d but nothing processed from %d on: reading it again from there",
                            tp.topic, tp.partition, pos, nxt)
                self.on_skip(tp.topic, pos - nxt)
                self._suspects.pop(tp, None)
            if not await _seek(consumer, {tp: nxt for tp, (nxt, _) in again.items()}):
                return
            for tp, (nxt, _) in again.items():
                # Faust drops a record below its read offset as one already delivered: read from here again
                consumer._read_offset[tp] = nxt


    async def reread_uncommitted(self, ticks: int = 10) -> None:
        """A partition processed here past its committed offset whose commit has not moved for ``ticks`` ticks: Faust
        commits only a run of acknowledged offsets that starts at the committed one, and the head of that run is
        missing. Seen (``tests/test_order_suite_broker.py`` e, streams.regional[0] committed at 99 while processed to
        3,666): records processed before a rebalance, not committed, and not delivered again after it, because the
        next offset taken then was past them. The partition is sought back to its committed offset: the records
        are delivered again, not processed again (``__call__``), and acknowledged, and the commit moves on."""
        consumer = self.consumer()
        app = getattr(consumer, "app", None)
        if getattr(app, "in_recovery", False):
            return
        try:
            assigned = set(consumer.assignment())
        except Exception:  # noqa: BLE001 - not running (a test's consumer): every partition processed here
            assigned = set(self.done)
        paused = getattr(consumer, "_paused_partitions", ())
        quiet = not records_waiting(consumer)   # the records acknowledging the head of the run may be waiting
        seen, again = {}, {}
        for tp, done in list(self.done.items()):
            if tp not in assigned or tp in paused:
                continue
            committed = consumer._committed_offset.get(tp)
            if committed is None or committed > done:
                continue
            last, count = self._uncommitted.get(tp, (None, 0))
            count = (count + quiet if last == committed else int(quiet))
            seen[tp] = (committed, count)
            if count >= ticks:
                again[tp] = committed
        self._uncommitted = seen
        if not again:
            return
        for tp, committed in again.items():
            log.warning("%s[%d]: processed to %d but committed at %d for %d ticks: reading it again from there, "
                        "so that the records between are acknowledged", tp.topic, tp.partition, self.done[tp],
                        committed, ticks)
            self._uncommitted.pop(tp, None)
        if not await _seek(consumer, again):
            return
        for tp, committed in again.items():
            consumer._read_offset[tp] = committed

    async def _fetch_again(self, consumer, tp, nxt: int, count: int) -> None:
        """A partition with records to process of which nothing was fetched past the next offset to process for
        ``count`` ticks: not paused by Faust (a recovery resumes its own), yet never delivered. Seen after a worker
        joined mid-stream (``tests/test_scaleout.py``): a clearance partition's committed offset stayed at 127 of
        307 for four minutes, its position with it, and nothing said why. Faust fetches only the partitions in
        ``Consumer._active_partitions`` and takes one out of them while its stream buffer is full, until the buffer
        drains: one left out of them is put back. Either way the partition is sought to its next offset, which
        makes the fetcher ask for it again. The warning says which it was."""
        app = getattr(consumer, "app", None)
        if getattr(app, "in_recovery", False) or tp in getattr(consumer, "_paused_partitions", ()):
            return
        active = consumer._get_active_partitions() if hasattr(consumer, "_get_active_partitions") else None
        left_out = active is not None and tp not in active
        log.warning("%s[%d]: nothing fetched from %d on for %d ticks%s: fetching it again from there", tp.topic,
                    tp.partition, nxt, count, " (left out of the consumer's active partitions)" if left_out else "")
        if left_out:
            consumer.resume_partitions([tp])
        self._suspects.pop(tp, None)
        if await _seek(consumer, {tp: nxt}):
            consumer._read_offset[tp] = nxt


async def _seek(consumer, offsets: dict) -> bool:
    """Seek partitions; False (and a warning) when one was revoked meanwhile (aiokafka's IllegalStateError: seen
    crash a worker when a second one left the group between the look at a partition and the seek). The next
    assignment starts those partitions from their committed offsets anyway."""
    try:
        await consumer.seek_wait(offsets)
        return True
    except Exception as exc:  # noqa: BLE001
        log.warning("could not seek %s: %s", ", ".join(f"{tp.topic}[{tp.partition}]" for tp in offsets), exc)
        return False


def commit_past_known_gaps() -> None:
    """Keep Faust's record of acknowledged offsets free of repeats, so that commits go on after a rebalance.

    ``Consumer._new_offset`` (faust-streaming 0.15.3) commits up to the end of the first run of consecutive
    offsets in a partition's acknowledged offsets, after adding to them every known gap (skipped offsets) below
    the largest. A gap that overlaps offsets already acknowledged (a partition sought back and read again after
    a rebalance, a catch-up here) puts them in twice, and a repeat ends the run: each commit then moves the
    partition's committed offset on by one record (seen after a worker joined mid-stream: 24,000 source records
    left uncommitted two minutes after the input was processed, ``bench/scaleout.py``; robinhood/faust#625).
    Here the gaps below the largest acknowledged offset are added without repeats, and repeats from anywhere
    else dropped, before Faust's own step, which then finds no gap to add and one run to commit."""
    from faust.transport.consumer import Consumer as FaustConsumer

    original = FaustConsumer._new_offset
    if getattr(original, "_yrdbus", False):
        return

    def _new_offset(self, tp):
        acked = self._acked[tp]
        if acked:
            top = max(acked)
            gaps = self._gap.get(tp)
            below = gaps.overlap(0, top) if gaps else ()
            offsets = set(acked).union(*(range(iv.begin, iv.end) for iv in below))
            if below:
                gaps.chop(0, max(max(iv.end for iv in below), top + 1))
            if len(offsets) != len(acked):
                acked[:] = sorted(offsets)
        return original(self, tp)

    _new_offset._yrdbus = True
    _new_offset.__wrapped__ = original
    FaustConsumer._new_offset = _new_offset


def flush_before_commit() -> None:
    """Make the producer's flush before a commit wait for the table writes Faust's buffer held when it began.

    A table's writes (``table[key] = value``) go to its changelog through ``ProducerBuffer``, a queue a task
    hands to the Kafka producer one record at a time. Before a commit Faust flushes that buffer, but
    ``ProducerBuffer.flush`` (faust-streaming 0.15.3) returns as soon as no record has left it for 0.1 s, which
    a busy event loop easily makes happen: the offsets are committed while writes of the records they cover are
    still queued, and a SIGKILL then loses those writes for good (the records are not read again). Here the
    flush waits until every record put in the buffer before it began has been handed to the producer (not for
    those put meanwhile: the offsets being committed were taken before, and under a backlog the buffer is never
    empty); the Kafka producer's own flush follows. A buffer that is not running (stopping) is flushed as Faust
    does."""
    from faust.transport.producer import ProducerBuffer

    if getattr(ProducerBuffer.flush, "_yrdbus", False):
        return
    original, put, send_pending = ProducerBuffer.flush, ProducerBuffer.put, ProducerBuffer._send_pending

    def _put(self, fut) -> None:
        self._yrdbus_put = getattr(self, "_yrdbus_put", 0) + 1
        put(self, fut)

    async def _send_pending(self, fut) -> None:
        try:
            await send_pending(self, fut)
        finally:
            self._yrdbus_sent = getattr(self, "_yrdbus_sent", 0) + 1

    async def flush(self) -> None:
        if self.app is not None and self.app.conf.producer_threaded:
            return await original(self)     # (not used here: the records go to the producer's thread)
        target = getattr(self, "_yrdbus_put", 0)
        while getattr(self, "_yrdbus_sent", 0) < target:
            if self.state != "running":
                return await original(self)     # stopping: as Faust does
            self.message_sent.clear()
            try:
                await asyncio.wait_for(self.message_sent.wait(), timeout=1.0)
            except asyncio.TimeoutError:
                pass        # slow, not gone: the records are still to be sent, and the commit waits for them

    flush._yrdbus = True
    flush.__wrapped__, _put.__wrapped__, _send_pending.__wrapped__ = original, put, send_pending
    ProducerBuffer.flush, ProducerBuffer.put, ProducerBuffer._send_pending = flush, _put, _send_pending


@functools.lru_cache(maxsize=1 << 16)
def subject_partition(key: bytes, partitions: int) -> int:
    """The partition of a subject's key among ``partitions``: Kafka's murmur2 partitioner, as the stations' producer
    (librdkafka's ``murmur2_random``) and the Java client place a keyed record. Cached: the worker asks it at least
    twice for each record (read in place or forwarded, then the subject table's write), and aiokafka's murmur2 is
    pure Python (about 17 us a key, 8 % of a stage-level order test's time)."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


class SubjectTable(faust.Table):
    """A table whose changelog partition is the key's partition in the subject topic (Kafka's murmur2
    partitioner, as the producer chose it), not the partition of the event being processed.

    Faust's own ``use_partitioner`` asks the producer's metadata synchronously and fails while a new
    changelog topic's metadata is not yet cached; the partition is a pure function of the key anyway.
    """

    def partition_for_key(self, key):
        return subject_partition(key.encode() if isinstance(key, str) else key, self.partitions)
