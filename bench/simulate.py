"""The simulator and the station publisher: how fast four regions' traffic gets onto a real broker.

* the issue's "done when" command, as a user runs it:
  ``yrdbus simulate --seed 7 --speed 3600 --duration 30 --scenarios all --truth t.jsonl``;
* the same span as fast as the publisher goes (``--rate 1000000 --span 30``);
* generation alone (no encoding, no Kafka) and generation + encoding, in this process;
* the publisher's compression: lz4 against zstd and none, same records (bytes on the wire, CPU).

A private single-node broker on free ports, started and stopped here. Medians of 3 runs.
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import bench
from kit.faults import free_port
from schemas.settings import Settings
from yrdbus.stack import KafkaStack

RUNS = 3
YRDBUS = str(Path(sys.executable).with_name("yrdbus"))


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _cli(bootstrap: str, args: list[str], prefix: str) -> tuple[dict, float, float]:
    env = {**os.environ, "YRDBUS_KAFKA_BOOTSTRAP": bootstrap}
    cpu0, t0 = _children_cpu(), time.perf_counter()
    out = subprocess.run([YRDBUS, "simulate", *args, "--json", "--prefix", prefix], env=env,
                         capture_output=True, text=True, timeout=600)
    wall, cpu = time.perf_counter() - t0, _children_cpu() - cpu0
    if out.returncode != 0:
        raise RuntimeError(f"yrdbus simulate failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout), wall, cpu


def _in_process() -> dict:
    from connectors.simulator import Options, Simulation
    from schemas.codec import get_codec

    gen, enc = [], []
    for _ in range(RUNS):
        sim = Simulation(Options(seed=7, span_hours=30, scenarios=["all"]))
        t0 = time.process_time()
        events = list(sim.events())
        gen.append(len(events) / (time.process_time() - t0))
        codec = get_codec()
        t0 = time.process_time()
        for _t, _s, kind, record in events:
            codec.encode(kind, record)
        enc.append(len(events) / (time.process_time() - t0))
    return {"events": len(events), "generate": bench.median(gen), "encode": bench.median(enc)}


def _compression(bootstrap: str) -> list[dict]:
    from confluent_kafka import Producer

    from connectors.publisher import PRODUCER_CONFIG
    from connectors.simulator import Options, Simulation
    from schemas import topics
    from schemas.codec import get_codec

    codec = get_codec()
    events = [(e[3], codec.encode(e[2], e[3])) for e in Simulation(Options(seed=3, span_hours=12)).events()
              if e[2] == "clearance"][:100_000]
    rows = []
    for comp in ("lz4", "zstd", "none"):
        runs = []
        for i in range(RUNS):
            prefix = f"bench-{comp}-{i}-{os.getpid()}."
            topics.apply(bootstrap, prefix=prefix)
            stats: list[dict] = []
            conf = {**PRODUCER_CONFIG, "bootstrap.servers": bootstrap, "compression.type": comp,
                    "statistics.interval.ms": 500, "stats_cb": lambda s: stats.append(json.loads(s))}
            p = Producer(conf)
            t0, c0 = time.perf_counter(), time.process_time()
            for record, value in events:
                while True:
                    try:
                        p.produce(f"{prefix}border.{record['region']}.clearance", value, record["subject"].encode())
                        break
                    except BufferError:
                        p.poll(0.05)
            p.flush(60)
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            time.sleep(0.7)
            p.poll(0)
            last = stats[-1]
            runs.append({"wall": wall, "cpu": cpu, "ratio": last["txmsg_bytes"] / max(1, last["tx_bytes"])})
        rows.append({"compression": comp, "events": len(events),
                     "rate": len(events) / bench.median([r["wall"] for r in runs]),
                     "cpu_us": 1e6 * bench.median([r["cpu"] for r in runs]) / len(events),
                     "ratio": bench.median([r["ratio"] for r in runs])})
    return rows


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="yrdbus-bench-sim-") as tmp:
        settings = Settings(var_dir=Path(tmp), kafka_bootstrap=None, kafka_port=free_port(),
                            kafka_controller_port=free_port(), kafka_heap="768m")
        stack = KafkaStack(settings)
        stack.up(echo=lambda m: None)
        try:
            bootstrap = settings.bootstrap
            done_when, fastest = [], []
            for i in range(RUNS):
                s, wall, cpu = _cli(bootstrap, ["--seed", "7", "--speed", "3600", "--duration", "30",
                                                "--scenarios", "all", "--truth", str(Path(tmp) / "t.jsonl")],
                                    f"bench-dw-{i}.")
                done_when.append({**s, "process_wall": wall, "process_cpu": cpu})
                print(f"  done-when run {i + 1}: {s['events']:,} events in {s['wall_seconds']:.1f} s", flush=True)
            for i in range(RUNS):
                s, wall, cpu = _cli(bootstrap, ["--seed", "7", "--rate", "1000000", "--span", "30",
                                                "--scenarios", "all"], f"bench-max-{i}.")
                fastest.append({**s, "process_wall": wall, "process_cpu": cpu})
                print(f"  fastest run {i + 1}: {s['events_per_second']:,.0f} events/s", flush=True)
            local = _in_process()
            comp = _compression(bootstrap)
        finally:
            stack.down(echo=lambda m: None)

    def med(runs, key):
        return bench.median([r[key] for r in runs])

    dw = done_when[0]
    text = f"""## Simulator and station publisher: four regions' traffic onto the broker

Command: `{bench.command()}` (module `bench/simulate.py`). Machine: {bench.machine()}.
A private single-node broker (KRaft, heap 768m) on the same machine; publisher settings of
`connectors/publisher.py` (idempotent, acks=all, lz4, linger 20 ms, batches up to 256 KiB). Medians of {RUNS} runs.

**Done-when command** `yrdbus simulate --seed 7 --speed 3600 --duration 30 --scenarios all --truth t.jsonl`:
{dw['span_hours']:g} simulated hours ({dw['start']} to {dw['end']}), {med(done_when, 'events'):,.0f} events
({dw['by_kind'].get('clearance', 0):,} clearances, {dw['by_kind'].get('alert', 0)} alerts,
{dw['by_kind'].get('case', 0)} case events, {dw['by_kind'].get('control', 0)} control event),
all {len(dw['incidents'])} incidents complete, {dw['truth_rows']} ground-truth rows.

| run | events | delivered | failed | publishing wall s | whole process wall s | process CPU s | events/s |
|---|---:|---:|---:|---:|---:|---:|---:|
""" + "".join(
        f"| done-when {i + 1} | {r['events']:,} | {r['delivered']:,} | {r['failed']} | {r['wall_seconds']:.1f} | "
        f"{r['process_wall']:.1f} | {r['process_cpu']:.1f} | {r['events_per_second']:,.0f} |\n"
        for i, r in enumerate(done_when)) + "".join(
        f"| as fast as it goes {i + 1} | {r['events']:,} | {r['delivered']:,} | {r['failed']} | {r['wall_seconds']:.1f} | "
        f"{r['process_wall']:.1f} | {r['process_cpu']:.1f} | {r['events_per_second']:,.0f} |\n"
        for i, r in enumerate(fastest)) + f"""
The done-when run is paced by `--speed` (an hour of event time a second): it publishes at the pace of
the traffic, {med(done_when, 'events_per_second'):,.0f} events/s on average, and keeps up (median largest lag
behind the pace {med(done_when, 'max_lag_seconds'):.2f} s). Unpaced, the same span goes out at
**{med(fastest, 'events_per_second'):,.0f} events/s** (median), i.e. the whole 30 hours in
{med(fastest, 'wall_seconds'):.1f} s: the publisher has {med(fastest, 'events_per_second') / med(done_when, 'events_per_second'):.1f}x headroom
over the done-when pace, with the broker on the same two cores.

In this process, without Kafka: generating the 30 hours ({local['events']:,} events, tokens and ids
included) runs at {local['generate']:,.0f} events/s of CPU; encoding them (`Codec.encode`, validation
included) at {local['encode']:,.0f} events/s. Generation is the larger cost of a published event.

**Compression** (the same {comp[0]['events']:,} encoded clearances, producer settings as above but
the compression; bytes ratio = message bytes / bytes sent to the broker, from librdkafka's statistics):

| compression | events/s | producer CPU per event (µs) | bytes ratio |
|---|---:|---:|---:|
""" + "".join(f"| {r['compression']} | {r['rate']:,.0f} | {r['cpu_us']:.1f} | {r['ratio']:.2f} |\n" for r in comp) + """
lz4 is the publisher's choice: the broker, the stream workers and the stations share two cores, so the CPU
a codec costs on both ends matters more than the last bytes it saves.
"""
    path = bench.write_section("simulate", text)
    print(f"  written to {path}")


if __name__ == "__main__":
    main()
