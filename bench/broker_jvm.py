"""The embedded broker's CPU with the JVM's default compilers and with the client compiler only.

``YRDBUS_KAFKA_JVM_OPTIONS`` (default ``-XX:TieredStopAtLevel=1``) is given to every embedded broker. This
measures what it saves: one broker started on free ports (wall time until it answers, CPU of the JVM until
then), then 20 topics of 4 partitions created and 60,000 records of 300 bytes produced (acks=all) and
consumed back by one group (the broker's CPU over that work). The two option sets alternate over ``RUNS``
runs in the same session; each figure is a median.
"""
from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import bench
from bench._harness import free_ports

RUNS = 3
RECORDS = 60_000
TOPICS = 20
OPTIONS = {"JVM defaults (tiered C1 + C2)": "", "client compiler only (the default)": "-XX:TieredStopAtLevel=1"}


def cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def one_run(options: str) -> tuple[float, float, float]:
    """(seconds until the broker answers, its CPU seconds until then, its CPU seconds for the round trip)."""
    from confluent_kafka import Consumer, Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    from schemas.settings import Settings
    from yrdbus.stack import KafkaStack

    (bench.ROOT / "var").mkdir(exist_ok=True)
    var = Path(tempfile.mkdtemp(prefix="bench-jvm-", dir=bench.ROOT / "var"))
    settings = Settings(var_dir=var, kafka_bootstrap=None, kafka_port=free_ports(1),
                        kafka_controller_port=free_ports(1), kafka_heap="512m", kafka_jvm_options=options)
    stack = KafkaStack(settings)
    started = time.monotonic()
    stack.up(echo=lambda m: None)
    try:
        up = time.monotonic() - started
        pids = [p for p in (n.pid() for n in stack.nodes()) if p]
        cpu_up = cpu_seconds(pids)
        bootstrap = stack.bootstrap()
        admin = AdminClient({"bootstrap.servers": bootstrap})
        for fut in admin.create_topics([NewTopic(f"t{i}", 4, 1) for i in range(TOPICS)]).values():
            fut.result()
        producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "acks": "all"})
        for i in range(RECORDS):
            producer.produce(f"t{i % TOPICS}", b"x" * 300, key=str(i).encode())
            if i % 1000 == 0:
                producer.poll(0)
        producer.flush(60)
        consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench", "auto.offset.reset": "earliest"})
        consumer.subscribe([f"t{i}" for i in range(TOPICS)])
        got, deadline = 0, time.monotonic() + 120
        while got < RECORDS and time.monotonic() < deadline:
            msg = consumer.poll(1)
            if msg is not None and not msg.error():
                got += 1
        consumer.close()
        if got < RECORDS:
            raise RuntimeError(f"read back {got} of {RECORDS} records")
        return up, cpu_up, cpu_seconds(pids) - cpu_up
    finally:
        stack.down(echo=lambda m: None, timeout_s=20)
        shutil.rmtree(var, ignore_errors=True)


def main() -> None:
    results: dict[str, list[tuple[float, float, float]]] = {name: [] for name in OPTIONS}
    for run in range(RUNS):
        for name, options in OPTIONS.items():
            results[name].append(one_run(options))
            up, cpu_up, cpu_work = results[name][-1]
            print(f"run {run + 1}/{RUNS} {name}: up {up:.1f} s, start-up CPU {cpu_up:.1f} s, "
                  f"round-trip CPU {cpu_work:.1f} s", flush=True)
    base = {k: statistics.median(r[i] for r in results[next(iter(OPTIONS))]) for i, k in enumerate("usw")}
    rows = []
    for name, runs in results.items():
        med = [statistics.median(r[i] for r in runs) for i in range(3)]
        rows.append(f"| {name} | {med[0]:.1f} | {med[1]:.1f} ({med[1] / base['s']:.0%}) | "
                    f"{med[2]:.1f} ({med[2] / base['w']:.0%}) |")
    text = f"""## Embedded broker: CPU with the client compiler only

Command: `python -m bench broker_jvm` (module `bench/broker_jvm.py`). Machine: {bench.machine()}.
One embedded broker (heap 512 MB) per run, the two JVM option sets alternating over {RUNS} runs; medians.
Start-up: until the broker answers a metadata request. Round trip: {TOPICS} topics of 4 partitions created,
{RECORDS:,} records of 300 bytes produced (acks=all) and consumed back by one group; the broker's CPU only.

| JVM options | start-up s | start-up CPU s (vs defaults) | round-trip CPU s (vs defaults) |
|---|---:|---:|---:|
""" + "\n".join(rows) + """

Why it matters: `make test` starts many brokers (one per test process, private clusters of one and
three, restarts) on two cores, where the C2 compiler's threads compete with everything else; an embedded
broker's traffic never runs long enough for C2's code to pay back. A production cluster is external
(`YRDBUS_KAFKA_BOOTSTRAP`) and untouched by this setting.
"""
    print(text)
    bench.write_section("broker_jvm", text)
