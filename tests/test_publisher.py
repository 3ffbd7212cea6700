"""The station publisher on the real broker: keyed, ordered, counted, and nothing lost through a restart."""
from __future__ import annotations

import threading
import time
from collections import Counter, defaultdict

import pytest
from confluent_kafka import Consumer, KafkaException, TopicPartition
from prometheus_client import CollectorRegistry

from conftest import embedded_settings
from connectors.publisher import StationPublisher
from connectors.simulator import Options, Simulation
from schemas import topics
from schemas.codec import get_codec
from yrdbus.stack import KafkaStack


def high_watermark(consumer, tp, tries: int = 50) -> int:
    """The end offset of ``tp``; a just-created topic may answer 'not leader' for a moment."""
    for _ in range(tries):
        try:
            return consumer.get_watermark_offsets(tp, timeout=10)[1]
        except KafkaException:
            time.sleep(0.2)
    return consumer.get_watermark_offsets(tp, timeout=10)[1]


def consume_all(bootstrap: str, names: list[str], timeout: float = 10) -> dict[str, list]:
    """Every message of ``names`` from the beginning to the current end of each partition."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "unused", "enable.auto.commit": False})
    md = c.list_topics(timeout=10)
    parts = [TopicPartition(t, p, 0) for t in names if t in md.topics for p in md.topics[t].partitions]
    ends = {(tp.topic, tp.partition): high_watermark(c, tp) for tp in parts}
    c.assign(parts)
    out: dict[str, list] = defaultdict(list)
    left = {k for k, v in ends.items() if v > 0}
    while left:
        msg = c.poll(timeout)
        assert msg is not None, f"no message within {timeout} s; still waiting for {sorted(left)[:3]}"
        assert not msg.error(), msg.error()
        out[msg.topic()].append(msg)
        if msg.offset() + 1 >= ends[(msg.topic(), msg.partition())]:
            left.discard((msg.topic(), msg.partition()))
    c.close()
    return out


def source_names(prefix: str) -> list[str]:
    return [prefix + topics.source(r, k) for r in ("SH", "JS", "ZJ", "AH") for k in ("clearance", "alert", "case")]


def sample(seed: int = 1, hours: float = 6, regions=("AH", "JS"), scenarios=(), scale: float = 1.0):
    """(kind, record) of a seeded simulation."""
    sim = Simulation(Options(seed=seed, span_hours=hours, regions=list(regions), scenarios=list(scenarios),
                             scale=scale))
    return [(e[2], e[3]) for e in sim.events()]


def test_published_events_decode_to_what_was_sent_on_their_region_topic_keyed_per_subject(kafka, unique):
    prefix = f"{unique}."
    topics.apply(kafka.bootstrap, prefix=prefix)
    events = sample(hours=8, regions=("SH",), scenarios=("j",), scale=0.1) + sample(seed=2, hours=12, regions=("AH",))
    registry = CollectorRegistry()
    with StationPublisher(kafka.bootstrap, topic_prefix=prefix, registry=registry) as pub:
        for kind, record in events:
            pub.publish(kind, record)
    assert (pub.produced, pub.delivered, pub.failed) == (len(events), len(events), 0)

    got = consume_all(kafka.bootstrap, source_names(prefix) + [prefix + topics.CONTROL])
    codec = get_codec()
    sent = {r["event_id"]: (k, r) for k, r in events}
    received = {}
    order = defaultdict(list)
    for topic, msgs in got.items():
        for m in msgs:
            kind, record = codec.decode(m.value())
            received[record["event_id"]] = (kind, record)
            assert record == sent[record["event_id"]][1]
            expected_key = {"clearance": record.get("subject"), "case": record.get("case_id"),
                            "control": record.get("event_id")}.get(kind) or record.get("subject") or record.get("conveyance_id")
            assert m.key() == expected_key.encode()
            assert topic == (prefix + topics.CONTROL if kind == "control" else prefix + topics.source(record["region"], kind))
            order[(topic, m.key())].append((m.partition(), m.offset(), record["occurred_at"]))
    assert received.keys() == sent.keys()
    assert any(k == "control" for k, _ in received.values())
    for key, seq in order.items():       # one key, one partition, offsets in the order the events happened
        assert len({p for p, _, _ in seq}) == 1
        assert [t for _, _, t in sorted(seq)] == sorted(t for _, _, t in seq)

    # the metrics count the deliveries per region, station and kind, and time each one
    per = Counter((r.get("region") or "ALL", r.get("station_id") or "ALL", k) for k, r in events)
    assert {s for _, s, _ in per} > {"ALL"}
    for (region, station, kind), n in per.items():
        assert registry.get_sample_value("yrdbus_station_published_total",
                                         {"region": region, "station": station, "kind": kind}) == n
    assert registry.get_sample_value("yrdbus_station_delivery_latency_seconds_count") == len(events)
    assert registry.get_sample_value("yrdbus_station_publish_failed_total",
                                     {"region": "SH", "station": "SH-PVG", "kind": "clearance"}) == 0


def test_the_stream_layer_s_client_reads_the_publisher_s_compressed_batches(kafka, unique):
    """aiokafka (under Faust) must decompress lz4 batches: without its codec a worker dies on the first one."""
    import asyncio

    from aiokafka import AIOKafkaConsumer

    prefix = f"{unique}."
    topics.apply(kafka.bootstrap, prefix=prefix)
    events = [(k, r) for k, r in sample(seed=6, hours=2, regions=("AH",)) if k == "clearance"]
    with StationPublisher(kafka.bootstrap, topic_prefix=prefix, registry=CollectorRegistry()) as pub:
        for kind, record in events:
            pub.publish(kind, record)

    async def read() -> list[str]:
        consumer = AIOKafkaConsumer(prefix + topics.source("AH", "clearance"), bootstrap_servers=kafka.bootstrap,
                                    group_id=unique, auto_offset_reset="earliest")
        await consumer.start()
        ids: list[str] = []
        try:
            while len(ids) < len(events):
                batches = await asyncio.wait_for(consumer.getmany(timeout_ms=1000), 30)
                ids += [get_codec().decode(m.value)[1]["event_id"] for msgs in batches.values() for m in msgs]
        finally:
            await consumer.stop()
        return ids

    assert sorted(asyncio.run(read())) == sorted(r["event_id"] for _, r in events)


def test_a_full_local_queue_is_waited_out_and_nothing_is_dropped(kafka, unique):
    prefix = f"{unique}."
    topics.apply(kafka.bootstrap, prefix=prefix)
    events = sample(seed=3, hours=3, regions=("JS",))
    assert len(events) > 1000
    pub = StationPublisher(kafka.bootstrap, topic_prefix=prefix, registry=CollectorRegistry(),
                           config={"queue.buffering.max.messages": 20, "linger.ms": 5})
    for kind, record in events:
        pub.publish(kind, record)
    assert pub.close() == 0
    assert (pub.delivered, pub.failed) == (len(events), 0)
    got = consume_all(kafka.bootstrap, source_names(prefix))
    assert sum(len(v) for v in got.values()) == len(events)


def test_publishing_a_record_that_breaks_the_contract_raises_and_sends_nothing(kafka, unique):
    from schemas.errors import EventError

    (kind, record), *_ = sample(seed=4, hours=1, regions=("AH",))
    pub = StationPublisher(kafka.bootstrap, topic_prefix=f"{unique}.", registry=CollectorRegistry())
    with pytest.raises(EventError, match="direction"):
        pub.publish("clearance", {**record, "direction": "IN"})
    assert pub.produced == 0
    pub.close()


def test_a_broker_restart_during_publishing_loses_nothing_and_doubles_nothing(tmp_path):
    settings = embedded_settings(tmp_path / "var")
    stack = KafkaStack(settings)
    stack.up(echo=lambda m: None)
    try:
        bootstrap = settings.bootstrap
        topics.apply(bootstrap)
        events = sample(seed=5, hours=10, regions=("JS", "AH"))
        pub = StationPublisher(bootstrap, registry=CollectorRegistry())
        killed, restarted = threading.Event(), threading.Event()

        def restart() -> None:
            stack.kill(1)                    # SIGKILL: no controlled shutdown
            killed.set()
            time.sleep(1.0)
            stack.up(echo=lambda m: None)
            restarted.set()

        restarter = None
        for i, (kind, record) in enumerate(events):
            pub.publish(kind, record)
            if i == len(events) // 3:
                pub.flush(30)                # a third is certainly on the broker before it dies
                delivered_before = pub.delivered
                restarter = threading.Thread(target=restart)
                restarter.start()
                assert killed.wait(30)       # the rest is published while the broker is down or restarting
            if i % 200 == 0:
                time.sleep(0.02)
        # events produced since the kill still wait for the broker: they ride through the restart
        assert pub.produced - pub.delivered > 0 and delivered_before > 0
        restarter.join(120)
        assert restarted.is_set()
        assert pub.close(120) == 0
        assert (pub.delivered, pub.failed) == (len(events), 0), pub.last_error

        got = consume_all(bootstrap, source_names(""), timeout=30)
        ids = [get_codec().decode(m.value())[1]["event_id"] for msgs in got.values() for m in msgs]
        assert len(ids) == len(set(ids)) == len(events)
        assert set(ids) == {r["event_id"] for _, r in events}
    finally:
        stack.down(echo=lambda m: None)
