"""Records the stream worker's consumer skipped, read again so that they are processed in their turn.

Faust (0.15.3) can deliver a partition's records from past a run of them just after a rebalance. A worker
that recovers its tables resumes the flow to read the changelogs; then it resumes the stages' partitions and
seeks each to its committed offset, asking for those offsets one partition at a time (0.3-0.4 s under load).
Meanwhile the stages read: a partition sought early is read again from its committed offset into its agent's
queue, and that queue is emptied when recovery resumes the flow at the end, while the partition's position
stays past the records emptied. Faust takes the jump for a gap (as in a compacted topic) and, once the record
after it is processed, counts the records in between as processed: they are never read, and their offsets
are committed.

The stages' topics have no gaps (not compacted, no transactions), so a jump is records not delivered. The
agents notice it (the record after the one last processed is not the next offset), read the missing records
here with a plain consumer, and process them before the record that came: the outputs are those of a run
without the skip, and Faust's commit past them is then right.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

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
