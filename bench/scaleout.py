"""Scale-out: one and two stream workers, on one broker and on a three-broker cluster; a worker joining mid-stream.

``python -m bench scaleout`` (``make bench BENCH=scaleout``). For each cluster (a private one-node KRaft broker,
then three nodes as ``yrdbus stack up --brokers 3`` starts them, replication 3 for every topic), ``RUNS`` runs
in which the side-by-side input of the end-to-end benchmark (``bench/_workload.py``) is read once by one
``yrdbus worker`` and once by two with the same ``--app-id`` (the order rotated each run). The workers are
started and assigned their partitions (each has read a tick) before the input is published, so that the figure
is the group's pace, not its start. Rate = input events / seconds from the first record read by any worker to
the last record of both stages processed (their Prometheus counters, summed); CPU = the workers' own CPU
seconds over that time, summed. Then, on the three-node cluster: one worker reads the input and a second is
started when a third of it is read (a rebalance mid-stream); the cross-region hits found, and how many
records of them ``alerts.derived`` holds (a hit emitted twice would show there).

Settings: ``BENCH_SCALEOUT_RUNS`` (3), ``BENCH_SCALEOUT_EVENTS`` (60,000), ``BENCH_SCALEOUT_BROKERS`` ("1,3").
Writes the section ``scaleout`` of docs/benchmarks.md.
"""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import bench
from bench import _harness as H
from bench import _workload as W
from bench import e2e
from kit.faults import free_port

RUNS = int(os.environ.get("BENCH_SCALEOUT_RUNS", 3))
EVENTS = int(os.environ.get("BENCH_SCALEOUT_EVENTS", 60_000))
CLUSTERS = [int(x) for x in os.environ.get("BENCH_SCALEOUT_BROKERS", "1,3").split(",") if x]


class Group:
    """Workers of one app id on one private copy of the bus, their counters read together."""

    def __init__(self, boot: str, prefix: str, replication: int, tmp: Path, sampler: H.ProcSampler):
        self.boot, self.prefix, self.replication, self.tmp, self.sampler = boot, prefix, replication, tmp, sampler
        self.procs: list = []
        self.ports: list[int] = []
        self.names: list[str] = []

    def add(self) -> None:
        name = f"worker-{self.prefix.strip('.')}-{len(self.procs)}"
        port = free_port()
        proc = e2e.start_worker(self.boot, self.prefix, self.prefix + "w", self.tmp, port, name, self.replication)
        self.procs.append(proc)
        self.ports.append(port)
        self.names.append(name)
        self.sampler.watch(name, proc.pid)

    def check(self) -> None:
        for name, proc in zip(self.names, self.procs):
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited: {(self.tmp / f'{name}.log').read_text()[-800:]}")

    def _summed(self, read) -> dict[str, float]:
        out: dict[str, float] = {}
        for port in self.ports:
            for k, v in read(port).items():
                out[k] = out.get(k, 0.0) + v
        return out

    def counts(self) -> dict[str, float]:
        """Events in by stage, summed over the workers."""
        return self._summed(e2e.worker_counts)

    def ticks(self) -> dict[str, float]:
        """Ticks read by stage, summed over the workers."""
        return self._summed(e2e.worker_ticks)

    def finished(self, n: int, events: dict[str, float]) -> bool:
        return e2e.stages_done(self.boot, self.prefix, n, events, self.ticks)

    def settled(self, timeout: float = 180) -> None:
        """Every worker has read a tick of its own stages: the group has assigned it partitions."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check()
            if all(sum(e2e.worker_ticks(port).values()) > 0 for port in self.ports):
                return
            time.sleep(0.5)
        raise RuntimeError(f"the workers of {self.prefix} were not all assigned partitions in {timeout:.0f} s")

    def cpu(self) -> float:
        return sum(e2e.cpu_seconds(p.pid) for p in self.procs)

    def stop(self) -> None:
        for name, proc in zip(self.names, self.procs):
            H.stop(proc)
            self.sampler.unwatch(name)


def _hit_records(boot: str, topic: str) -> tuple[int, int]:
    """Cross-region hits on ``topic``: distinct alert ids, and records."""
    hits = e2e.cross_region_hit_records(boot, topic)
    return len(set(hits)), len(hits)


def measure(boot: str, replication: int, prefix: str, wl: W.Workload, workers: int, tmp: Path,
            sampler: H.ProcSampler) -> dict:
    from schemas import topics

    topics.apply(boot, prefix=prefix)
    group = Group(boot, prefix, replication, tmp, sampler)
    try:
        for _ in range(workers):
            group.add()
        for port, proc in zip(group.ports, group.procs):
            e2e.wait_http(port, "/metrics", 120, proc)
        group.settled()
        H.publish_all(boot, wl.messages, prefix)
        n = len(wl)
        first = None
        cpu0 = 0.0
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            group.check()
            events = group.counts()
            now = time.monotonic()
            if first is None and e2e.source_read(events) > 0:
                first, cpu0 = now, group.cpu()
            if first is not None and group.finished(n, events):
                done, cpu1 = now, group.cpu()
                break
            time.sleep(0.25)
        else:
            raise RuntimeError(f"{workers} worker(s) did not finish the input in 900 s")
        broker = sampler.between("broker", first, done)[0]
    finally:
        group.stop()
    distinct, records = _hit_records(boot, prefix + "alerts.derived")
    return {"workers": workers, "rate": n / (done - first), "cpu_us": (cpu1 - cpu0) / n * 1e6,
            "broker_cpu": broker, "hits": distinct, "hit_records": records}


def join(boot: str, replication: int, prefix: str, wl: W.Workload, tmp: Path, sampler: H.ProcSampler) -> dict:
    """One worker on the input, a second started when a third of it is read."""
    from schemas import topics

    topics.apply(boot, prefix=prefix)
    H.publish_all(boot, wl.messages, prefix)
    group = Group(boot, prefix, replication, tmp, sampler)
    n = len(wl)
    try:
        group.add()
        t0 = time.monotonic()
        joined_at = None
        deadline = t0 + 900
        while time.monotonic() < deadline:
            group.check()
            events = group.counts()
            if joined_at is None and e2e.source_read(events) >= n / 3:
                joined_at = e2e.source_read(events)
                group.add()
            if joined_at is not None and group.finished(n, events):
                break
            time.sleep(0.25)
        else:
            raise RuntimeError("the joined group did not finish the input in 900 s")
        seconds = time.monotonic() - t0
        # After a rebalance the counters overstate: records processed but not committed before it are processed
        # again by their new owner. Done is the group's committed offsets at the end of every source topic,
        # then the hits no longer changing.
        progress = H.GroupProgress(boot, prefix + "w", [prefix + t for t in wl.topics()])
        try:
            settle = time.monotonic() + 120
            while progress.committed() < progress.ends() and time.monotonic() < settle:
                group.check()
                time.sleep(1)
            committed, ends = progress.committed(), progress.ends()
        finally:
            progress.close()
        hits, last_change = _hit_records(boot, prefix + "alerts.derived"), time.monotonic()
        while hits[0] < len(wl.triggers) and time.monotonic() - last_change < 15:
            time.sleep(3)
            now = _hit_records(boot, prefix + "alerts.derived")
            if now != hits:
                hits, last_change = now, time.monotonic()
        per_worker = [e2e.worker_counts(port).get("subjects", 0) for port in group.ports]
    finally:
        group.stop()
    return {"joined_at": joined_at, "seconds": seconds, "subjects_per_worker": per_worker, "hits": hits[0],
            "hit_records": hits[1], "committed": committed, "ends": ends}


def main() -> None:
    wl_all = W.load(EVENTS)
    wl = W.Workload(wl_all.messages[:EVENTS], {i: e for i, e in wl_all.triggers.items() if i < EVENTS},
                    0, 1, {}, 0)
    expected = len(wl.triggers)
    tmp = Path(tempfile.mkdtemp(prefix="bench-scaleout-", dir=bench.ROOT / "var"))
    load_before = H.load_average()
    results: dict[int, list[dict]] = {}
    joined: dict | None = None
    for brokers in CLUSTERS:
        replication = min(3, brokers)
        print(f"   {brokers} broker(s)", flush=True)
        with H.private_broker(brokers=brokers, heap="1g" if brokers == 1 else "512m") as settings:
            boot = settings.bootstrap
            sampler = H.ProcSampler().start()
            for pid in H.broker_pids(settings):
                sampler.watch("broker", pid)
            got = results.setdefault(brokers, [])
            try:
                for run in range(RUNS):
                    for workers in ((1, 2) if run % 2 == 0 else (2, 1)):
                        prefix = f"so{brokers}b{run}w{workers}."
                        r = measure(boot, replication, prefix, wl, workers, tmp, sampler)
                        r.update(run=run + 1, load=H.load_average())
                        got.append(r)
                        print(f"   run {run + 1}, {workers} worker(s): {r['rate']:,.0f} events/s, "
                              f"{r['cpu_us']:.0f} us CPU an event, hits {r['hits']}/{expected}", flush=True)
                if brokers == max(CLUSTERS):
                    joined = join(boot, replication, f"so{brokers}bjoin.", wl, tmp, sampler)
                    joined["brokers"] = brokers
                    print(f"   joined mid-stream: {joined}", flush=True)
            finally:
                sampler.stop()
    text = report(results, joined, expected, len(wl), load_before, H.load_average())
    print(text)
    bench.write_section("scaleout", text)


def report(results: dict[int, list[dict]], joined: dict | None, expected: int, n: int, load_before: str,
           load_after: str) -> str:
    med = bench.median
    out = ["## Scale-out: one and two stream workers, one broker and three", "",
           f"Command: `{bench.command()}` (module `bench/scaleout.py`). Machine: {bench.machine()}. Every broker and "
           f"worker on these cores. Load average (1/5/15 min) before: {load_before}; after: {load_after}.", "",
           f"Input: the end-to-end benchmark's side-by-side input ({n:,} events, {expected} planted cross-region "
           "hits), published after the workers of a run were started and assigned their partitions. One and two "
           "workers with one `--app-id`, alternated; rate from the first record read to the last processed.", "",
           "| brokers | workers | runs (events/s) | median events/s | workers' CPU an event (median) "
           "| broker CPU (median, % of a core) | hits found (records) |",
           "|---:|---:|---|---:|---:|---:|---|"]
    ratios = []
    for brokers, rs in results.items():
        by = {w: [r for r in rs if r["workers"] == w] for w in (1, 2)}
        for w, runs in by.items():
            if not runs:
                continue
            rates = ", ".join(f"{r['rate']:,.0f}" for r in runs)
            hits = ", ".join(f"{r['hits']}/{expected} ({r['hit_records']})" for r in runs)
            out.append(f"| {brokers} | {w} | {rates} | **{med([r['rate'] for r in runs]):,.0f}** "
                       f"| {med([r['cpu_us'] for r in runs]):.0f} µs | {med([r['broker_cpu'] for r in runs]):.0f} % "
                       f"| {hits} |")
        if by[1] and by[2]:
            ratios.append(f"{brokers} broker(s): two workers / one = "
                          f"{med([r['rate'] for r in by[2]]) / med([r['rate'] for r in by[1]]):.2f}")
    out += ["", "Throughput of two workers against one (medians, same cluster): " + "; ".join(ratios) + "."]
    if joined:
        out += ["", f"**A worker joining mid-stream** ({joined['brokers']} brokers): one worker read the input, "
                f"a second was started after {joined['joined_at']:,.0f} of {n:,} events; both finished in "
                f"{joined['seconds']:.1f} s from the first worker's start. Events each worker's subject stage "
                f"processed: {', '.join(f'{c:,.0f}' for c in joined['subjects_per_worker'])}. Cross-region hits: "
                f"{joined['hits']} of {expected} found, {joined['hit_records']} records of them on "
                f"`alerts.derived` (the group's committed offsets: {joined['committed']:,} of {joined['ends']:,} "
                "source records). `tests/test_scaleout.py` checks the same rebalance event by event: every alert "
                "and every stored row the same as with one worker."]
    return "\n".join(out)


if __name__ == "__main__":
    main()
