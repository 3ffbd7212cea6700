"""Alert delivery latency through the gateway, p50 and p99, under a background load of 5,000 events a second.

What is measured (the gateway leg): a DerivedAlert is published to ``alerts.to.AH`` on a real broker
(acks=all, idempotent, as the stream layer publishes) and timed until an SSE client connected to
``yrdbus gateway`` with an AH token has parsed it. The station -> stream layer leg is not in these
figures (the stream layer is measured on its own); add its latency to get station publish -> screen.

Set-up: a private single-node broker (or ``YRDBUS_KAFKA_BOOTSTRAP``), ``yrdbus gateway`` as its own
process, the background load from another process (ClearanceEvents, Avro, to ``border.SH.clearance``
at 5,000 a second, paced in 10 ms steps), alerts at 20 a second from this process, the SSE client on
a thread of this process. Everything on the one machine, so the figures include its contention.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import bench
from kit.faults import free_port

RUNS = int(os.environ.get("BENCH_GATEWAY_RUNS", 3))
SECONDS = int(os.environ.get("BENCH_GATEWAY_SECONDS", 20))
ALERT_RATE = 20          # alerts a second
LOAD_RATE = 5_000        # background events a second
YRDBUS = str(Path(sys.executable).with_name("yrdbus"))


def _load(bootstrap: str, topic: str, rate: int, stop_at: float, out) -> None:
    """Publish pre-encoded ClearanceEvents at ``rate`` a second until ``stop_at``; report the count."""
    from confluent_kafka import Producer

    from bench.codec import clearances
    from schemas.codec import get_codec

    codec = get_codec()
    values = [codec.encode("clearance", r) for r in clearances(2_000)]
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "compression.type": "lz4",
                         "enable.idempotence": True, "acks": "all"})
    step, sent, start = 0.01, 0, time.monotonic()
    while time.monotonic() < stop_at:
        due = int((time.monotonic() - start) * rate)
        while sent < due:
            try:
                producer.produce(topic, value=values[sent % len(values)], key=str(sent % 977).encode())
                sent += 1
            except BufferError:
                producer.poll(0.01)
        producer.poll(0)
        time.sleep(step)
    producer.flush(30)
    out.put((sent, time.monotonic() - start))


def _alert(i: int) -> dict:
    now = datetime.now(timezone.utc)
    now = now.replace(microsecond=now.microsecond // 1000 * 1000)
    return {"alert_id": str(uuid.uuid4()), "kind": "CROSS_REGION_HIT", "severity": "HIGH",
            "rule_id": "cross_region_watchlist_hit", "rule_set_version": "bench", "must_act": ["AH"], "inform": [],
            "station_id": "AH-HFE", "port_code": "HFE", "subject": "sub_" + uuid.uuid4().hex[:24],
            "conveyance_id": "MU5411/2025-03-01", "pattern": None,
            "evidence": [str(uuid.uuid4()), str(uuid.uuid4())], "occurred_at": now - timedelta(seconds=1),
            "emitted_at": now, "summary": f"bench alert {i}", "details": {"hits": "2"}}


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def one_run(bootstrap: str, gateway_url: str, token: str, prefix: str, load: bool) -> dict:
    import httpx2
    from confluent_kafka import Producer

    from schemas.codec import get_codec

    codec = get_codec()
    received: dict[str, float] = {}
    connected = threading.Event()
    stop = threading.Event()

    held: list = []

    def listen() -> None:
        try:
            with httpx2.Client(timeout=httpx2.Timeout(5.0, read=None)) as client:
                with client.sse(gateway_url + "/alerts/stream?region=AH",
                                headers={"Authorization": f"Bearer {token}"}) as source:
                    held.append(source.response)
                    for event in source:
                        if event.event == "hello":
                            connected.set()
                        elif event.event == "alert":
                            received[json.loads(event.data)["alert_id"]] = time.perf_counter()
        except Exception:
            if not stop.is_set():
                raise

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    if not connected.wait(30):
        raise RuntimeError("the SSE client did not connect")
    spawn = multiprocessing.get_context("spawn")   # a fresh process: no threads of this one in the child
    queue = spawn.Queue()
    loader = None
    if load:
        loader = spawn.Process(target=_load, args=(bootstrap, f"{prefix}border.SH.clearance", LOAD_RATE,
                                                             time.monotonic() + SECONDS + 3, queue))
        loader.start()
        time.sleep(2)    # the load is running before the first alert
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0, "enable.idempotence": True, "acks": "all"})
    topic = f"{prefix}alerts.to.AH"
    # Warm-up (not timed): the producer's id and connections, the gateway's first fetches.
    warm = [_alert(-1) for _ in range(5)]
    for record in warm:
        producer.produce(topic, value=codec.encode("derived_alert", record), key=record["alert_id"].encode())
    producer.flush(30)
    deadline = time.monotonic() + 30
    while not all(r["alert_id"] in received for r in warm) and time.monotonic() < deadline:
        time.sleep(0.05)
    sent: dict[str, float] = {}
    started = time.monotonic()
    i = 0
    while time.monotonic() - started < SECONDS:
        record = _alert(i)
        value = codec.encode("derived_alert", record)
        sent[record["alert_id"]] = time.perf_counter()
        producer.produce(topic, value=value, key=record["alert_id"].encode())
        producer.poll(0)
        i += 1
        time.sleep(max(0.0, started + i / ALERT_RATE - time.monotonic()))
    producer.flush(30)
    deadline = time.monotonic() + 10
    while len(received) < len(sent) and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    for response in held:
        response.close()
    listener.join(10)
    load_rate = None
    if loader is not None:
        count, elapsed = queue.get(timeout=60)
        loader.join(30)
        load_rate = count / elapsed
    latencies = [received[a] - t for a, t in sent.items() if a in received]
    return {"sent": len(sent), "received": len(latencies), "p50": _percentile(latencies, 0.50),
            "p99": _percentile(latencies, 0.99), "max": max(latencies), "load_rate": load_rate}


def main() -> None:
    from connectors.gateway.access import hash_token, new_token
    from schemas.settings import Settings
    from yrdbus.stack import KafkaStack

    work = Path(tempfile.mkdtemp(prefix="yrdbus-bench-gateway-"))
    stack = None
    bootstrap = os.environ.get("YRDBUS_KAFKA_BOOTSTRAP")
    if not bootstrap:
        settings = Settings(var_dir=work / "var", kafka_bootstrap=None, kafka_port=free_port(),
                            kafka_controller_port=free_port(), kafka_heap="768m")
        stack = KafkaStack(settings)
        stack.up(echo=lambda m: None)
        bootstrap = settings.bootstrap
    token = new_token("bench-ah")
    tokens_file = work / "gateway.toml"
    tokens_file.write_text(f'[[tokens]]\nid = "bench-ah"\nhash = "{hash_token(token)}"\nregions = ["AH"]\n')
    prefix = f"bench{int(time.time())}."
    port = free_port()
    env = {**os.environ, "YRDBUS_KAFKA_BOOTSTRAP": bootstrap}
    gateway = subprocess.Popen([YRDBUS, "gateway", "--port", str(port), "--tokens-file", str(tokens_file),
                                "--prefix", prefix, "--log-level", "warning"], env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        import httpx2

        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx2.get(url + "/healthz", timeout=2).status_code == 200:
                    break
            except httpx2.TransportError:
                pass
            if time.monotonic() > deadline or gateway.poll() is not None:
                raise RuntimeError("yrdbus gateway did not start")
            time.sleep(0.2)
        quiet = one_run(bootstrap, url, token, prefix, load=False)
        print(f"no load: p50 {quiet['p50'] * 1000:.1f} ms, p99 {quiet['p99'] * 1000:.1f} ms", flush=True)
        runs = []
        for n in range(RUNS):
            r = one_run(bootstrap, url, token, prefix, load=True)
            runs.append(r)
            print(f"run {n + 1}: {r['received']}/{r['sent']} alerts, p50 {r['p50'] * 1000:.1f} ms, "
                  f"p99 {r['p99'] * 1000:.1f} ms, max {r['max'] * 1000:.1f} ms, "
                  f"load {r['load_rate']:,.0f} events/s", flush=True)
    finally:
        gateway.terminate()
        gateway.wait(30)
        if stack is not None:
            stack.down(echo=lambda m: None)

    p50 = bench.median([r["p50"] for r in runs])
    p99 = bench.median([r["p99"] for r in runs])
    rows = "\n".join(
        f"| {i + 1} | {r['received']}/{r['sent']} | {r['p50'] * 1000:.1f} | {r['p99'] * 1000:.1f} | "
        f"{r['max'] * 1000:.1f} | {r['load_rate']:,.0f} |" for i, r in enumerate(runs))
    text = f"""## Gateway: alert published to `alerts.to.AH` -> SSE client receipt, under 5,000 events/s

Command: `{bench.command()}` (module `bench/gateway.py`). Machine: {bench.machine()}.
**What this measures: the gateway leg only** (alert on `alerts.to.AH` -> `yrdbus gateway` -> an SSE client
with an AH token has parsed it), not station publish -> stream layer -> screen: the stream layer's own
latency adds to it. One real single-node broker, the gateway as its own process, a background load of
{LOAD_RATE:,} ClearanceEvents a second to `border.SH.clearance` from another process, {ALERT_RATE} alerts a
second for {SECONDS} s per run (acks=all, idempotent), all on this one machine.

| run | alerts received | p50 ms | p99 ms | max ms | background events/s achieved |
|---|---:|---:|---:|---:|---:|
{rows}

Median of {RUNS} runs: **p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms** (goal p99 < 1000 ms:
**{'met' if p99 < 1.0 else 'NOT met'}**). Without the background load: p50 {quiet['p50'] * 1000:.1f} ms,
p99 {quiet['p99'] * 1000:.1f} ms.
"""
    bench.write_section("gateway", text)
    print(text)
