"""Faust's own floor: a Faust agent that only decodes each record of the benchmark's input.

The stream worker's framework with nothing of the worker: one agent over the source topics, each value's Avro
body read with fastavro as the bare-client ceiling reads it (``bench/ceiling.py``), no state, no output, on
the worker's event loop (uvloop) and Faust's default fetch size (4 MB a partition: the worker's 256 KB, which
keeps partitions interleaved for its watermarks, leaves this agent waiting on fetches at 5,500 events/s with
the same CPU an event). Between the ceiling and the worker, it says what Faust itself costs an event on this
machine: no Faust worker, whatever its rules, goes faster.

Measured by ``bench.e2e`` side by side with the ceiling, the peer and the stream worker (``python -m bench
e2e``). ``python -m bench faust_floor`` alone only says so; the agent runs as ``python -m bench.faust_floor
--bootstrap B --topics T1,T2 --expect N`` and prints its figures as JSON.
"""
from __future__ import annotations

import json
import os
import resource
import sys
import tempfile
import time
import uuid


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)   # every thread of the process: the consumer's too
    return r.ru_utime + r.ru_stime


def run(bootstrap: str, topic_names: list[str], expect: int, timeout: float = 300.0) -> None:
    import mode.loop

    mode.loop.use("uvloop")
    import faust

    from bench.ceiling import framed_reader

    read = framed_reader()
    app = faust.App(f"bench-floor-{uuid.uuid4().hex[:8]}", broker=f"kafka://{bootstrap}", store="memory://",
                    datadir=tempfile.mkdtemp(prefix="bench-floor-"), web_enabled=False, topic_disable_leader=True,
                    consumer_auto_offset_reset="earliest",
                    key_serializer="raw", value_serializer="raw")
    source = app.topic(*topic_names, key_type=bytes, value_type=bytes)
    st = {"n": 0, "first": None, "cpu0": 0.0}

    def finish() -> None:
        wall = time.perf_counter() - st["first"] if st["first"] is not None else float("nan")
        # Faust's worker sends print() to its log: the figures go to the process's own standard output
        os.write(1, (json.dumps({"records": st["n"], "expected": expect, "seconds": wall,
                                 "rate": st["n"] / wall if wall else 0.0,
                                 "cpu_seconds": _cpu() - st["cpu0"]}) + "\n").encode())
        os._exit(0)   # the figures are out; Faust's orderly shutdown would only add seconds

    @app.agent(source)
    async def floor(stream):
        async for event in stream.events():
            if st["first"] is None:
                st["first"], st["cpu0"] = time.perf_counter(), _cpu()
            read(event.value)
            st["n"] += 1
            if st["n"] >= expect:
                finish()

    @app.timer(1.0)
    async def give_up():
        if time.perf_counter() - started > timeout:
            finish()

    from faust import Worker

    started = time.perf_counter()
    sys.argv = sys.argv[:1]
    worker = Worker(app, loglevel="warning", quiet=True)
    worker.spinner = None
    worker.execute_from_commandline()


def main() -> None:
    print("Faust's floor is measured by bench.e2e, side by side with the bare client, the peer and the stream "
          "worker on the same broker and input: python -m bench e2e")


if __name__ == "__main__":
    from bench.ceiling import reader_args

    a = reader_args(__doc__)
    run(a.bootstrap, a.topics.split(","), a.expect, a.timeout)
