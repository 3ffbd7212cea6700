"""Dead letters on the real broker: the original bytes and the reason arrive on dlq.<source topic>."""
from __future__ import annotations

import time

from confluent_kafka import Consumer, Producer

from schemas import topics
from schemas.codec import get_codec
from schemas.deadletter import dead_letter, read_headers
from schemas.errors import EventError
from schemas.examples import example


def test_bad_events_arrive_on_the_dead_letter_topic_with_reason_headers_and_original_bytes(kafka, unique):
    codec = get_codec(None)
    source = topics.source("SH", f"clearance_{unique}")
    good = codec.encode("clearance", example("clearance"))
    truncated = bytes(good[:-3])
    unknown_id = b"\x00\x00\x00\xff\xff" + good[5:]
    producer = Producer({"bootstrap.servers": kafka.bootstrap, "enable.idempotence": True, "acks": "all"})
    sent = []
    for offset, raw in enumerate([truncated, unknown_id, b"not avro at all"]):
        try:
            codec.decode(raw)
        except EventError as exc:
            topic = dead_letter(producer, source, raw, exc, partition=2, offset=100 + offset, key=b"k%d" % offset)
            sent.append((raw, exc))
    # a record that decodes but breaks a rule: a port of another region
    record = dict(example("clearance"), port_code="NKG")
    try:
        codec.encode("clearance", record)
    except EventError as exc:
        dead_letter(producer, source, b"{json line 7}", exc, partition=0, offset=7)
        sent.append((b"{json line 7}", exc))
    assert producer.flush(30) == 0
    assert topic == f"dlq.{source}" and len(sent) == 4

    consumer = Consumer({"bootstrap.servers": kafka.bootstrap, "group.id": unique, "auto.offset.reset": "earliest"})
    consumer.subscribe([topic])
    got = []
    deadline = time.monotonic() + 30
    while len(got) < len(sent) and time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is not None and not msg.error():
            got.append(msg)
    consumer.close()
    assert len(got) == len(sent)
    by_value = {m.value(): m for m in got}
    for raw, exc in sent:
        msg = by_value[raw]  # the original bytes, unchanged
        h = read_headers(msg.headers())
        assert h["reason"] == exc.reason and h["error"] == str(exc)
        assert h["source_topic"] == source
        assert h["field"] == (exc.field or "")
    h = read_headers(by_value[truncated].headers())
    assert (h["reason"], h["source_partition"], h["source_offset"]) == ("undecodable", "2", "100")
    assert by_value[truncated].key() == b"k0"
    assert read_headers(by_value[unknown_id].headers())["reason"] == "unknown_schema_id"
    h = read_headers(by_value[b"{json line 7}"].headers())
    assert (h["reason"], h["field"], h["source_offset"]) == ("port_not_in_region", "port_code", "7")
    assert "port NKG is a port of JS, not of SH" in h["error"]
