"""`yrdbus run`: bring the bus up on the embedded default and run its main job."""
from __future__ import annotations

import time
import uuid
from datetime import datetime, timezone

import typer

from yrdbus.settings import Settings
from yrdbus.stack import KafkaStack
from yrdbus import store


def self_check(settings: Settings, echo=typer.echo) -> dict:
    """A publish/consume round trip on the broker and a write/read on ClickHouse."""
    from confluent_kafka import Consumer, Producer

    run_id = uuid.uuid4().hex[:8]
    topic = "yrdbus.selfcheck"
    n = 100
    producer = Producer({"bootstrap.servers": settings.bootstrap, "enable.idempotence": True, "acks": "all"})
    t0 = time.perf_counter()
    for i in range(n):
        producer.produce(topic, key=f"{run_id}-{i}".encode(), value=f"{run_id} message {i}".encode())
    remaining = producer.flush(30)
    if remaining:
        raise RuntimeError(f"{remaining} self-check messages were not delivered within 30 s")
    consumer = Consumer({"bootstrap.servers": settings.bootstrap, "group.id": f"yrdbus-selfcheck-{run_id}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([topic])
    seen = 0
    deadline = time.monotonic() + 30
    while seen < n and time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is None or msg.error():
            continue
        if msg.value().startswith(run_id.encode()):
            seen += 1
    consumer.close()
    kafka_ms = (time.perf_counter() - t0) * 1000
    echo(f"Kafka round trip: {n} messages produced to '{topic}' and consumed back: {seen}/{n} ({kafka_ms:.0f} ms)")

    client = store.get_client(settings.clickhouse_url)
    now = datetime.now(timezone.utc)
    client.command("CREATE DATABASE IF NOT EXISTS yrdbus")
    client.command("CREATE TABLE IF NOT EXISTS yrdbus.selfcheck (run_id String, n UInt32, at DateTime64(3, 'UTC')) "
                   "ENGINE = MergeTree ORDER BY (run_id, n)")
    client.insert("yrdbus.selfcheck", [[run_id, i, now] for i in range(n)],
                  column_names=["run_id", "n", "at"])
    rows = client.query("SELECT count() FROM yrdbus.selfcheck WHERE run_id = {r:String}",
                        parameters={"r": run_id}).result_rows[0][0]
    echo(f"ClickHouse write/read at {store.describe(settings.clickhouse_url)}: {n} rows written, {rows} read back")
    return {"kafka_sent": n, "kafka_received": seen, "clickhouse_rows": rows}


def run_bus(settings: Settings, duration: float | None = None) -> int:
    KafkaStack(settings).up(echo=typer.echo)
    result = self_check(settings)
    ok = result["kafka_received"] == result["kafka_sent"] == result["clickhouse_rows"]
    typer.echo("The broker keeps running; stop it with `yrdbus stack down` (data stays in ./var).")
    return 0 if ok else 1
