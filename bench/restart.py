"""Both stages restarted from their tables mid-delivery, against the same delivery without restarts.

A worker killed and started again reads its tables back and the records read since its last commit again;
the subject stage then sends every passed hour's flow count again (it does not know what it sent after its
state was last written). This measures what the restarts cost in CPU, at the stages themselves (no Kafka):
the simulator's day (seed 11, 0.1 of the volume, incidents a-j with baseline traffic) in event-time order
through ``tests/stage_pipeline.py``, with three restarts (500 records read again each) and without.
"""
from __future__ import annotations

import random
import time

import bench

SEED, SCALE, RESTARTS, REPLAY, RUNS = 11, 0.1, 3, 500, 3


def measure() -> dict:
    from stage_pipeline import Pipeline
    from test_order_suite import in_event_time, simulate

    _, events = simulate(SEED, SCALE)
    delivery = in_event_time(events)
    points = sorted(random.Random(SEED * 100 + 90).sample(range(len(events)), RESTARTS))
    spent: dict[str, list[float]] = {"plain": [], "restarted": []}
    answers = set()
    for _ in range(RUNS):                     # the two alternate, so a slower spell of the host hits both
        for name, kw in (("plain", {}), ("restarted", {"restarts": points, "replay": REPLAY})):
            t = time.process_time()
            pipeline = Pipeline().deliver(delivery, **kw)
            spent[name].append(time.process_time() - t)
            answers.add(tuple(sorted(pipeline.live())))
    return {"events": len(events), "points": points, "same_answer": len(answers) == 1,
            **{name: bench.median(v) for name, v in spent.items()}}


def main() -> None:
    m = measure()
    ratio = m["restarted"] / m["plain"]
    goal = "met" if ratio <= 1.25 and m["same_answer"] else "NOT met"
    text = f"""## Stages restarted from their tables: CPU against the same delivery without restarts

Command: `{bench.command()}` (module `bench/restart.py`). Machine: {bench.machine()}.
The simulator's day (seed {SEED}, {SCALE} of the volume: {m['events']:,} events) in event-time order through both
stages without Kafka (`tests/stage_pipeline.py`), with {RESTARTS} restarts from the tables alone (before records
{', '.join(str(p) for p in m['points'])}, the {REPLAY} records before each read again) and without; process CPU
time, median of {RUNS} runs each, the two alternating. Same live alerts in every run: {m['same_answer']}.

| delivery | CPU s (median of {RUNS}) | vs without restarts |
|---|---:|---:|
| without restarts | {m['plain']:.2f} | 100 % |
| {RESTARTS} restarts | {m['restarted']:.2f} | {ratio:.0%} |

Goal (restarts cost at most 25 % more CPU, same answer): **{goal}**. Before the regional stage left out the
flow counts it already holds (a restarted subject stage sends every passed hour's count again: some 4,000
partials here, each a changelog write of the whole flow section), the restarted delivery took 8.84 s against
3.27 s (270 %) on the same machine.
"""
    path = bench.write_section("restart", text)
    print(text)
    print(f"(written to {path})")


if __name__ == "__main__":
    main()
