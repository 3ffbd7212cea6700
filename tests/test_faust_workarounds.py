"""streams.faust_workarounds.Turns against Faust's own consumer: records skipped after a rebalance are processed in their
turn, counted as done by Faust's commit logic, and a record delivered twice is not processed twice.

The consumer is Faust's real (aiokafka) consumer object, not started: its commit bookkeeping (`_acked`,
`_gap`, `_committed_offset`, `_new_offset`) is plain code and needs no broker. Reading the skipped records
from a real broker is `test_records_a_worker_was_not_delivered_are_read_again_in_order_with_their_headers`
(tests/test_streams_worker.py); here the reader is a stand-in with the same signature."""
from __future__ import annotations

import asyncio

import faust
import pytest
from faust.types import TP

from streams import faust_workarounds as catchup

pytestmark = pytest.mark.unit   # no Java, Kafka or ClickHouse: `make unit`

TOPIC = "t.streams.subjects"
TP1 = TP(TOPIC, 1)


def event(offset: int, tp=TP1) -> catchup.Event:
    return catchup.Event(catchup.Message(tp.topic, tp.partition, offset, 1.5e9, tp), f"k{offset}".encode(),
                         f"v{offset}".encode())


def faust_consumer():
    return faust.App(f"catchup-test-{id(object())}", broker="kafka://127.0.0.1:1", store="memory://").consumer


def acked_by_faust(consumer, *offsets: int, tp=TP1) -> None:
    """What Faust's stream does once an agent is done with a record it delivered (Consumer.ack)."""
    for o in offsets:
        consumer._acked_index[tp].add(o)
        consumer._acked[tp].append(o)


class Reader:
    """Stands in for read_range: the records asked for, from a partition's contents; notes each call."""

    def __init__(self):
        self.calls = []

    def __call__(self, conf, tp, first, end):
        self.calls.append((tp, first, end))
        return [event(o, tp) for o in range(first, end)]


def run(coro):
    return asyncio.run(coro)


def test_a_run_faust_skipped_without_noticing_is_processed_first_and_lets_the_commit_move_on():
    consumer, reader, seen = faust_consumer(), Reader(), []
    consumer._committed_offset[TP1] = 98      # what perform_seek found after the rebalance
    turns = catchup.Turns(lambda: consumer, {"bootstrap.servers": "-"}, read=reader)

    async def handler(e):
        seen.append(e.message.offset)

    # 98..101 went into an agent's queue and were dropped when the flow resumed; 102 is the first delivered
    run(turns(event(102), handler))
    assert seen == [98, 99, 100, 101, 102]
    assert reader.calls == [(TP1, 98, 102)]
    acked_by_faust(consumer, 102)
    assert consumer._new_offset(TP1) == 103

    # the same acknowledgements without the catch-up: Faust never commits this partition again
    bare = faust_consumer()
    bare._committed_offset[TP1] = 98
    acked_by_faust(bare, 102, 103, 104)
    assert bare._new_offset(TP1) is None


def test_records_in_order_need_no_reading_and_a_record_delivered_again_is_not_processed_twice():
    consumer, reader, seen = faust_consumer(), Reader(), []
    consumer._committed_offset[TP1] = 10
    turns = catchup.Turns(lambda: consumer, {}, read=reader)

    async def handler(e):
        seen.append(e.message.offset)

    async def go():
        for o in (10, 11, 12, 11, 9, 13):
            await turns(event(o), handler)
    run(go())
    assert seen == [10, 11, 12, 13]
    assert reader.calls == []
    assert turns.next_offset(TP1) == 14

    # a partition assigned again starts from its committed offset, whatever was processed of it before
    consumer._committed_offset[TP1] = 20
    turns.forget([TP1])
    assert turns.next_offset(TP1) == 20
    run(turns(event(22), handler))
    assert seen[-3:] == [20, 21, 22] and reader.calls == [(TP1, 20, 22)]


def test_a_partition_whose_committed_offset_is_not_known_yet_is_taken_as_it_comes():
    consumer, reader, seen = faust_consumer(), Reader(), []
    turns = catchup.Turns(lambda: consumer, {}, read=reader)

    async def handler(e):
        seen.append(e.message.offset)

    run(turns(event(40), handler))
    run(turns(event(41), handler))
    assert seen == [40, 41] and reader.calls == []


def test_records_fetched_before_a_rebalance_and_delivered_before_faust_knows_the_committed_offset_come_in_turn():
    """Just after an assignment, before Faust's seek, the consumer delivers what it fetched before the rebalance,
    from past the committed offset: the committed offset is asked of the broker (once), the records between are
    read again and processed first, and Faust's commit then goes past them (it commits nothing while the first
    offset acknowledged is past the committed one)."""
    consumer, reader, seen, asked = faust_consumer(), Reader(), [], []
    tp2 = TP(TOPIC, 2)

    def committed(conf, group, tps):
        asked.append((group, sorted(tps)))
        return {TP1: 5, tp2: 1}             # nothing committed of tp2: its earliest offset (read_committed)

    turns = catchup.Turns(lambda: consumer, {"bootstrap.servers": "-"}, read=reader, group="g", committed=committed)

    async def handler(e):
        seen.append((e.message.partition, e.message.offset))

    for e in (event(8), event(9), event(3, tp2), event(4, tp2)):
        run(turns(e, handler))
    # tp2's first records, fetched before the rebalance and dropped, are read before the one delivered first
    assert seen == [(1, o) for o in range(5, 10)] + [(2, o) for o in range(1, 5)]
    assert reader.calls == [(TP1, 5, 8), (tp2, 1, 3)] and asked == [("g", [TP1]), ("g", [tp2])]
    # Faust learns the committed offset, acknowledges what it delivered: its commit goes to the end
    consumer._committed_offset[TP1] = 5
    acked_by_faust(consumer, 8, 9)
    assert consumer._new_offset(TP1) == 10
    # reassigned: asked again
    turns.forget([TP1])
    consumer._committed_offset.pop(TP1)
    run(turns(event(10), handler))
    assert len(asked) == 3 and seen[-1] == (1, 10)


def test_skipped_records_that_cannot_be_read_stop_the_worker_rather_than_being_lost(monkeypatch):
    consumer, seen, skipped = faust_consumer(), [], []
    consumer._committed_offset[TP1] = 5

    def unreadable(conf, tp, first, end):
        raise catchup.CatchUpError(f"{tp.topic}[{tp.partition}]: read 0 of the {end - first} records")

    exits = []

    def exit_(code):
        exits.append(code)
        raise SystemExit(code)
    monkeypatch.setattr(catchup.os, "_exit", exit_)
    turns = catchup.Turns(lambda: consumer, {}, on_skip=lambda topic, n: skipped.append((topic, n)),
                          read=unreadable)

    async def handler(e):
        seen.append(e.message.offset)

    with pytest.raises(SystemExit):
        run(turns(event(9), handler))
    assert exits == [75] and seen == [] and skipped == [(TOPIC, 4)]


def test_a_known_gap_over_offsets_already_acknowledged_lets_the_commit_go_to_its_end():
    """After a rebalance a partition can be read again over offsets Faust also holds as a known gap: Faust's own
    step puts them in its acknowledged offsets twice, and each commit then moves on by one record."""
    from faust.transport.consumer import Consumer as FaustConsumer

    catchup.commit_past_known_gaps()
    catchup.commit_past_known_gaps()     # applied once, however often the app is built
    assert FaustConsumer._new_offset.__wrapped__.__name__ == "_new_offset"
    assert not getattr(FaustConsumer._new_offset.__wrapped__, "_yrdbus", False)

    def consumer():
        c = faust_consumer()
        c._committed_offset[TP1] = 99
        acked_by_faust(c, *range(100, 106))    # 100..105 processed and acknowledged
        c._gap[TP1].addi(100, 110)             # 100..109 also a known gap
        return c

    def commits(c, step, n=3):
        out = []
        for _ in range(n):
            out.append(step(c, TP1))
            if out[-1] is not None:
                c._committed_offset[TP1] = out[-1]     # as Consumer._commit_offsets records it
        return out

    assert commits(consumer(), FaustConsumer._new_offset.__wrapped__) == [101, 102, 103]
    fixed = consumer()
    assert commits(fixed, FaustConsumer._new_offset) == [110, None, None]
    assert not fixed._gap[TP1]

    # a repeat from anywhere else does not end the run either
    c = faust_consumer()
    c._committed_offset[TP1] = 99
    acked_by_faust(c, 100, 101, 101, 102)
    assert c._new_offset(TP1) == 103


class StalledConsumer:
    """The parts of Faust's consumer ``reread_stalled`` uses: committed offsets, positions, a seek."""

    def __init__(self, committed: dict, positions: dict, earliest: dict | None = None):
        self._committed_offset, self.positions, self._read_offset, self.seeks = committed, positions, {}, []
        self.earliest = earliest or {}

    async def earliest_offsets(self, *tps):
        return {tp: self.earliest.get(tp, 0) for tp in tps}

    async def position(self, tp):
        return self.positions[tp]

    async def seek_wait(self, offsets: dict) -> None:
        self.seeks.append(dict(offsets))
        self.positions.update(offsets)


def test_the_dropped_last_records_of_a_partition_are_read_again_once_nothing_moves_for_three_ticks():
    """The skip ``__call__`` catches needs a record after it; the last records of a partition dropped (the end
    of the input) have none. A partition whose position is past the next offset to process, with neither
    moving for three ticks, is sought back to that offset; one that moves is left alone."""
    tp2 = TP(TOPIC, 2)
    consumer = StalledConsumer({TP1: 3, tp2: 0}, {TP1: 9, tp2: 12})
    skipped = []
    turns = catchup.Turns(lambda: consumer, {}, on_skip=lambda topic, n: skipped.append((topic, n)))
    seen = []

    async def handle(e):
        seen.append(e.message.offset)

    async def scenario():
        await turns(event(3), handle)
        await turns(event(4), handle)            # TP1: processed to 4, read to 9: 5..8 dropped
        for o in range(0, 4):
            await turns(event(o, tp2), handle)
        await turns.reread_stalled([TP1, tp2])
        await turns(event(4, tp2), handle)       # tp2 moves on: not stalled
        await turns.reread_stalled([TP1, tp2])
        assert consumer.seeks == []
        await turns(event(5, tp2), handle)
        await turns.reread_stalled([TP1, tp2])
        assert consumer.seeks == [{TP1: 5}] and consumer._read_offset == {TP1: 5}
        assert skipped == [(TOPIC, 4)]
        # read again: delivered in order from 5, processed once each
        for o in range(5, 9):
            await turns(event(o), handle)
        for _ in range(3):
            await turns.reread_stalled([TP1])
        assert consumer.seeks == [{TP1: 5}]      # nothing to read any more: position 9 is the next offset

    run(scenario())
    assert seen[:2] == [3, 4] and seen[-4:] == [5, 6, 7, 8]


def test_a_partition_nothing_was_processed_of_is_read_again_from_its_committed_offset():
    consumer = StalledConsumer({TP1: 7}, {TP1: 20})
    turns = catchup.Turns(lambda: consumer, {})

    async def scenario():
        for _ in range(3):
            await turns.reread_stalled([TP1])

    run(scenario())
    assert consumer.seeks == [{TP1: 7}] and consumer._read_offset == {TP1: 7}


def test_a_partition_with_nothing_committed_whose_records_were_dropped_is_read_again_from_its_first_offset():
    """Faust seeks a recovered worker's partitions to their committed offsets and leaves those with nothing
    committed where they are: records fetched there before the queues were emptied are dropped, the position past
    them. With nothing committed and nothing processed, the next offset is the partition's first."""
    consumer = StalledConsumer({}, {TP1: 5}, earliest={TP1: 2})
    turns = catchup.Turns(lambda: consumer, {})
    seen = []

    async def handle(e):
        seen.append(e.message.offset)

    async def scenario():
        for _ in range(3):
            await turns.reread_stalled([TP1])
        assert consumer.seeks == [{TP1: 2}] and consumer._read_offset == {TP1: 2}
        for o in range(2, 5):
            await turns(event(o), handle)
        for _ in range(3):
            await turns.reread_stalled([TP1])

    run(scenario())
    assert consumer.seeks == [{TP1: 2}] and seen == [2, 3, 4]


class BusyConsumer(StalledConsumer):
    """A stalled consumer of a real Faust app whose stage has (or has not) records waiting in its stream's queue."""

    def __init__(self, committed: dict, positions: dict):
        super().__init__(committed, positions)
        self.app = faust.App(f"busy-test-{id(object())}", broker="kafka://127.0.0.1:1", store="memory://")
        self.stream = self.app.topic("t.streams.subjects").__aiter__()   # what an agent's stream iterates

    def wait(self, n: int) -> None:
        self.stream.queue.put_nowait(f"record {n}")

    def take(self) -> None:
        self.stream.queue.get_nowait()


def test_a_partition_that_does_not_move_while_records_wait_in_the_worker_is_not_read_again():
    """A worker short of CPU leaves a partition unprocessed for many ticks while its stream's queue is full:
    those ticks count for nothing; the partition is read again only after three ticks with nothing waiting. The
    same holds for a commit that does not move (``reread_uncommitted``)."""
    consumer = BusyConsumer({TP1: 3}, {TP1: 9})
    turns = catchup.Turns(lambda: consumer, {})

    async def scenario():
        consumer.wait(1)
        assert catchup.records_waiting(consumer)
        for _ in range(20):
            await turns.reread_stalled([TP1])
        assert consumer.seeks == []
        consumer.take()
        assert not catchup.records_waiting(consumer)
        for _ in range(2):
            await turns.reread_stalled([TP1])
        assert consumer.seeks == []
        await turns.reread_stalled([TP1])
        assert consumer.seeks == [{TP1: 3}]

    run(scenario())

    consumer = BusyConsumer({TP1: 3}, {TP1: 9})
    consumer._paused_partitions = set()
    consumer.assignment = lambda: {TP1}
    turns = catchup.Turns(lambda: consumer, {})
    turns.done[TP1] = 8        # processed to 8, committed at 3

    async def uncommitted():
        consumer.wait(1)
        for _ in range(30):
            await turns.reread_uncommitted()
        assert consumer.seeks == []
        consumer.take()
        for _ in range(10):
            await turns.reread_uncommitted()
        assert consumer.seeks == [{TP1: 3}]

    run(uncommitted())


def test_records_waiting_reads_the_stream_queues_and_the_producer_buffer_of_the_pinned_faust():
    """What ``records_waiting`` relies on in the pinned Faust: an iterated topic is among ``app.topics`` with its
    queue in ``_queue``; the producer's buffer has a ``size``; over ``max_messages`` the conductor waits before it
    delivers the next record, until a hundred have left the buffer or it is empty."""
    import inspect

    from faust.transport import conductor
    from faust.transport.producer import ProducerBuffer

    async def scenario():
        app = faust.App(f"waiting-test-{id(object())}", broker="kafka://127.0.0.1:1", store="memory://")
        consumer = type("C", (), {"app": app})()
        stream = app.topic("t.streams.regional").__aiter__()
        assert stream in list(app.topics)
        assert not catchup.records_waiting(consumer)
        stream.queue.put_nowait("a record")
        assert stream._queue is stream.queue and catchup.records_waiting(consumer)
        stream.queue.get_nowait()
        assert not catchup.records_waiting(consumer)
        buffer = app.producer.buffer
        assert buffer.max_messages == 100 and buffer.size == 0
        buffer.pending.put_nowait("a table write")
        assert buffer.size == 1 and catchup.records_waiting(consumer)

    run(scenario())
    assert "wait_until_producer_ebb" in inspect.getsource(conductor)
    assert "self.size > self.max_messages" in inspect.getsource(ProducerBuffer.wait_until_ebb)
    assert "self.size != 0" in inspect.getsource(ProducerBuffer.flush_atmost)


class LeftOutConsumer(StalledConsumer):
    """A stalled consumer with Faust's record of the partitions it fetches (``_active_partitions``) and pauses."""

    def __init__(self, committed: dict, positions: dict, active: set, paused: set = frozenset(),
                 in_recovery: bool = False):
        super().__init__(committed, positions)
        self._active_partitions, self._paused_partitions = set(active), set(paused)
        self.app = type("App", (), {"in_recovery": in_recovery})()

    def _get_active_partitions(self):
        return self._active_partitions

    def resume_partitions(self, tps):
        self._active_partitions.update(tps)
        self._paused_partitions.difference_update(tps)


def test_a_partition_with_records_to_read_of_which_nothing_is_fetched_is_put_back_and_fetched_again():
    """Behind, not moving, and its position at the next offset to process (nothing fetched past it): after
    ``ticks + UNFETCHED_TICKS`` ticks it is put back among the partitions the consumer fetches, and sought to
    that offset; not before."""
    consumer = LeftOutConsumer({TP1: 127}, {TP1: 127}, active=set())
    turns = catchup.Turns(lambda: consumer, {})

    async def scenario():
        for _ in range(3 + catchup.UNFETCHED_TICKS - 1):
            await turns.reread_stalled([TP1])
        assert consumer.seeks == [] and TP1 not in consumer._active_partitions
        await turns.reread_stalled([TP1])

    run(scenario())
    assert consumer.seeks == [{TP1: 127}] and consumer._read_offset == {TP1: 127}
    assert TP1 in consumer._active_partitions


@pytest.mark.parametrize("why", ["paused", "in recovery"])
def test_a_partition_faust_holds_back_itself_is_left_to_faust(why):
    consumer = LeftOutConsumer({TP1: 127}, {TP1: 127}, active=set(), paused={TP1} if why == "paused" else set(),
                               in_recovery=why == "in recovery")
    turns = catchup.Turns(lambda: consumer, {})

    async def scenario():
        for _ in range(10):
            await turns.reread_stalled([TP1])

    run(scenario())
    assert consumer.seeks == [] and TP1 not in consumer._active_partitions


def test_faust_fetches_only_its_active_partitions_and_resume_partitions_puts_one_back():
    """What ``Turns._fetch_again`` relies on in the pinned Faust: a partition taken out of the active ones (a full
    stream buffer) is not fetched until put back, and ``resume_partitions`` puts it back."""
    c = faust_consumer()
    c._set_active_tps({TP1})
    assert TP1 in c._get_active_partitions()
    c.on_buffer_full(TP1)
    assert TP1 not in c._get_active_partitions() and TP1 in c._buffered_partitions
    c.resume_partitions([TP1])
    assert TP1 in c._get_active_partitions() and TP1 not in c._paused_partitions


class SlowChannel:
    """Stands in for a topic: each record takes ``seconds`` to reach the producer (a busy event loop)."""

    def __init__(self, seconds: float):
        self.seconds, self.published = seconds, []

    async def publish_message(self, fut, wait=False):
        await asyncio.sleep(self.seconds)
        self.published.append(fut.n)


class Pending:
    def __init__(self, channel, n):
        self.message, self.n = type("M", (), {"channel": channel})(), n


def test_a_flush_before_a_commit_waits_for_the_table_writes_faust_s_buffer_held_when_it_began():
    catchup.flush_before_commit()
    from faust.transport.producer import ProducerBuffer

    async def flushed(flush, later: int = 0) -> tuple[int, int]:
        app = faust.App(f"flush-test-{id(object())}", broker="kafka://127.0.0.1:1", store="memory://")
        buf = app.producer.buffer
        channel = SlowChannel(0.25)
        await buf.start()
        try:
            for n in range(4):
                buf.put(Pending(channel, n))
            flushing = asyncio.ensure_future(flush(buf))
            await asyncio.sleep(0)
            for n in range(4, 4 + later):      # written while the flush waits (a backlog goes on)
                buf.put(Pending(channel, n))
            await flushing
            return len(channel.published), buf.size
        finally:
            for _ in range(200):    # (what is left goes out before the buffer stops, which raises otherwise)
                if len(channel.published) == 4 + later:
                    break
                await asyncio.sleep(0.05)
            await buf.stop()

    # Faust's own flush gives up after 0.1 s without a record sent: writes are left queued when it returns
    # (the commit that follows would cover records whose table writes are not in Kafka yet)
    sent, left = run(flushed(ProducerBuffer.flush.__wrapped__))
    assert sent < 4 and left > 0
    sent, left = run(flushed(ProducerBuffer.flush))
    assert (sent, left) == (4, 0)
    # and it waits for those only, not for what is written while it waits
    sent, left = run(flushed(ProducerBuffer.flush, later=4))
    assert 4 <= sent < 8 and left > 0


def test_a_partition_processed_past_a_commit_that_does_not_move_is_read_again_from_its_commit():
    """Records processed before a rebalance, not committed, and not delivered again after it: Faust's commit waits
    for them for ever. After ten ticks without the commit moving the partition is sought back to its committed
    offset; the records come again and are not processed again (``__call__``)."""
    consumer = StalledConsumer({TP1: 99}, {TP1: 3667})
    turns = catchup.Turns(lambda: consumer, {})
    seen = []

    async def handle(e):
        seen.append(e.message.offset)

    async def scenario():
        turns.done[TP1] = 134          # what the worker processed before the rebalance
        await turns(event(135), handle)   # processed on from there, the commit still at 99
        for _ in range(9):
            await turns.reread_uncommitted()
        assert consumer.seeks == []
        await turns.reread_uncommitted()
        assert consumer.seeks == [{TP1: 99}] and consumer._read_offset == {TP1: 99}
        for o in (99, 100, 134):          # delivered again: not processed again
            await turns(event(o), handle)
        consumer._committed_offset[TP1] = 136   # the commit moved on
        for _ in range(12):
            await turns.reread_uncommitted()

    run(scenario())
    assert seen == [135] and consumer.seeks == [{TP1: 99}]


def test_a_partition_whose_commit_keeps_up_is_not_read_again():
    consumer = StalledConsumer({TP1: 10}, {TP1: 10})
    turns = catchup.Turns(lambda: consumer, {})

    async def scenario():
        for o in range(10, 20):
            await turns(event(o), lambda e: asyncio.sleep(0))
            consumer._committed_offset[TP1] = o + 1     # Faust committed what was processed
            await turns.reread_uncommitted()

    run(scenario())
    assert consumer.seeks == []


def test_a_partition_revoked_between_the_look_and_the_seek_does_not_stop_the_worker():
    """aiokafka refuses a seek on a partition no longer assigned (IllegalStateError): seen to crash a worker when a
    second one left the group between ``reread_stalled``'s look at a partition and its seek."""
    from aiokafka.errors import IllegalStateError

    class Revoked(StalledConsumer):
        async def seek_wait(self, offsets):
            raise IllegalStateError(f"No current assignment for partition {next(iter(offsets))}")

    consumer = Revoked({TP1: 7}, {TP1: 20})
    turns = catchup.Turns(lambda: consumer, {})

    async def scenario():
        for _ in range(3):
            await turns.reread_stalled([TP1])
        turns.done[TP1] = 30
        for _ in range(10):
            await turns.reread_uncommitted()

    run(scenario())
    assert consumer._read_offset == {}
