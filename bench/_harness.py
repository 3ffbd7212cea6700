"""Pieces the end-to-end benchmark, its peer and its ceiling share: a private broker, the publisher,
consumer-group progress, and per-process CPU and memory."""
from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench import ROOT

YRDBUS = str(Path(sys.executable).with_name("yrdbus"))


def free_ports(n: int) -> int:
    """The first of ``n`` consecutive free ports on 127.0.0.1 (kit.faults.free_port_run)."""
    from kit.faults import free_port_run

    return free_port_run(n)


def private_broker(brokers: int = 1, heap: str = "1g"):
    """A private embedded Kafka cluster on free ports in a temporary folder; yields its Settings.
    ``YRDBUS_KAFKA_BOOTSTRAP`` set: that cluster instead."""
    from schemas.settings import Settings
    from yrdbus.stack import KafkaStack

    external = os.environ.get("YRDBUS_KAFKA_BOOTSTRAP")
    if external:
        yield Settings(kafka_bootstrap=external)
        return
    (ROOT / "var").mkdir(exist_ok=True)
    var = Path(tempfile.mkdtemp(prefix="bench-", dir=ROOT / "var"))
    settings = Settings(var_dir=var, kafka_bootstrap=None, kafka_port=free_ports(brokers),
                        kafka_controller_port=free_ports(brokers), kafka_heap=heap, kafka_brokers=brokers)
    stack = KafkaStack(settings)
    stack.up(brokers=brokers, echo=lambda m: None)
    try:
        yield settings
    finally:
        stack.down(echo=lambda m: None)
        shutil.rmtree(var, ignore_errors=True)


def broker_pids(settings) -> list[int]:
    from yrdbus.stack import KafkaStack

    if not settings.embedded_kafka:
        return []
    return [p for p in (n.pid() for n in KafkaStack(settings).nodes()) if p]


def producer(bootstrap: str, **extra):
    from confluent_kafka import Producer

    # the station publisher's settings (connectors/publisher.py): idempotent, acks=all, lz4, 20 ms linger,
    # Kafka's murmur2 partitioner
    conf = {"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all",
            "compression.type": "lz4", "linger.ms": 20, "batch.size": 256 * 1024, "partitioner": "murmur2_random",
            "queue.buffering.max.messages": 500_000}
    conf.update(extra)
    return Producer(conf)


def produce(p, topic: str, key: bytes, value: bytes) -> None:
    while True:
        try:
            p.produce(topic, key=key, value=value)
            return
        except BufferError:
            p.poll(0.05)


def publish_all(bootstrap: str, messages, prefix: str = "") -> float:
    """Every message, as fast as it goes; returns the wall seconds."""
    p = producer(bootstrap)
    t0 = time.perf_counter()
    for i, (topic, key, value) in enumerate(messages):
        produce(p, prefix + topic, key, value)
        if i % 5000 == 0:
            p.poll(0)
    left = p.flush(120)
    if left:
        raise RuntimeError(f"{left} messages not delivered")
    return time.perf_counter() - t0


def end_offsets(bootstrap: str, topic_names: list[str]) -> dict[tuple[str, int], int]:
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-offsets", "enable.auto.commit": False})
    try:
        out = {}
        md = c.list_topics(timeout=10).topics
        for t in topic_names:
            if t not in md:
                continue
            for p in md[t].partitions:
                out[(t, p)] = c.get_watermark_offsets(TopicPartition(t, p), timeout=10)[1]
        return out
    finally:
        c.close()


class GroupProgress:
    """Committed offsets of one consumer group on a set of topics, summed (a consumer of its own, reused)."""

    def __init__(self, bootstrap: str, group: str, topic_names: list[str]):
        from confluent_kafka import Consumer, TopicPartition

        self.c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
        md = self.c.list_topics(timeout=10).topics
        self.tps = [TopicPartition(t, p) for t in topic_names if t in md for p in md[t].partitions]

    def committed(self) -> int:
        try:
            return sum(max(0, tp.offset) for tp in self.c.committed(self.tps, timeout=10))
        except Exception:
            return 0

    def ends(self) -> int:
        from confluent_kafka import TopicPartition

        return sum(self.c.get_watermark_offsets(TopicPartition(tp.topic, tp.partition), timeout=10)[1]
                   for tp in self.tps)

    def close(self) -> None:
        self.c.close()


class ProcSampler:
    """CPU (share of one core) and RSS of named processes, sampled every ``interval`` s on a thread."""

    def __init__(self, interval: float = 1.0):
        self.interval = interval
        self.procs: dict[str, list] = {}
        self.samples: dict[str, list[tuple[float, float, float]]] = {}   # name -> (t, cpu %, rss MB)
        self._stop = threading.Event()
        self._thread = None

    def watch(self, name: str, pid: int) -> None:
        import psutil

        try:
            p = psutil.Process(pid)
            p.cpu_percent(None)
        except psutil.Error:
            return
        self.procs.setdefault(name, []).append(p)
        self.samples.setdefault(name, [])

    def unwatch(self, name: str) -> None:
        self.procs.pop(name, None)

    def start(self) -> "ProcSampler":
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        import psutil

        while not self._stop.wait(self.interval):
            now = time.monotonic()
            for name, procs in list(self.procs.items()):
                cpu = rss = 0.0
                for p in procs:
                    try:
                        with p.oneshot():
                            cpu += p.cpu_percent(None)
                            rss += p.memory_info().rss / 2**20
                            for ch in p.children(recursive=True):
                                rss += ch.memory_info().rss / 2**20
                    except psutil.Error:
                        continue
                self.samples[name].append((now, cpu, rss))

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(5)

    def between(self, name: str, t0: float, t1: float) -> tuple[float, float]:
        """(mean CPU % of one core, peak RSS MB) of ``name`` between two monotonic times."""
        got = [(c, r) for t, c, r in self.samples.get(name, []) if t0 <= t <= t1]
        if not got:
            return float("nan"), float("nan")
        return statistics.fmean(c for c, _ in got), max(r for _, r in got)


def percentile(values, q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.1f} / {five:.1f} / {fifteen:.1f}"


def spawn(args: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
    fh = open(log, "w")
    return subprocess.Popen(args, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            env={**os.environ, **(env or {})}, start_new_session=True)


def stop(proc: subprocess.Popen | None, timeout: float = 20.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
