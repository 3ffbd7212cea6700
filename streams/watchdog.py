"""The worker's watchdog: a worker that holds records to process and commits nothing for a while starts again.

A stream worker can wedge without dying: a client library's task that never wakes after a broker outage, an
await on an acknowledgement that never comes, an event loop held by a blocking call. Its process lives, its
group membership may live, and nothing moves; no supervisor notices, because nothing exited. Kafka Streams
and Flink answer this the same way: a task that cannot go on is failed and started again from its last
checkpoint. Here the checkpoint is what Kafka already holds (the committed offsets and the tables'
changelogs), so starting again changes no alert: the kill-and-restart variant of the order suite shows it.

The watchdog is a thread with its own Kafka client, so it sees a wedge of the event loop as well as of a
task in it. Every ``interval_s`` it asks the broker for the group's committed offsets and the end offsets of
the partitions the worker holds (the ones the group commits: sources, control, the stages' topics). The
worker is **stalled** when, for ``stall_s`` running:

- the broker answered every probe (an outage is not a stall: the worker is waiting for the broker, as it should),
- the worker was not recovering its tables from their changelogs (that may take long, and commits nothing),
- one of its partitions held records past its committed offset, and that offset did not move, and
- its assignment did not change.

(Per partition: the worker's own ticks keep the offsets of its internal topics moving while a source partition
may be stuck.)

A stalled worker writes every thread's stack and every asyncio task's to its log and executes itself again
(``os.execv``: same process id, same command line and environment, so a supervisor, a systemd unit or a test
harness sees one process that went on). Its old group membership expires after the session timeout and its
partitions go to the new one. ``YRDBUS_WORKER_STALL_S`` (``--stall-s``) sets the time; 0 turns it off.
"""
from __future__ import annotations

import asyncio
import faulthandler
import logging
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional

log = logging.getLogger("yrdbus.streams.watchdog")

TP = tuple[str, int]


@dataclass
class Probe:
    """What the broker said in one probe: ``None`` when it did not answer."""

    committed: dict[TP, int]        # the group's committed offset per partition (-1: none yet, read from the start)
    ends: dict[TP, int]             # the end offset (high watermark) per partition
    starts: dict[TP, int] = field(default_factory=dict)  # the first offset still in the log (for "none yet")

    def waiting(self) -> list[TP]:
        """The partitions with records past their committed offsets."""
        out = []
        for tp, end in self.ends.items():
            done = self.committed.get(tp, -1)
            if done < 0:
                done = self.starts.get(tp, 0)
            if end > done:
                out.append(tp)
        return sorted(out)


class StallClock:
    """The watchdog's decision, free of Kafka and threads: fed the probes in turn, it says when the worker has been
    stalled for ``stall_s`` (see the module's text for what counts)."""

    def __init__(self, stall_s: float):
        self.stall_s = stall_s
        self._since: dict[TP, float] = {}        # per waiting partition: since when its committed offset stands
        self._committed: dict[TP, int] = {}
        self._assigned: frozenset = frozenset()
        self.waiting: list[TP] = []              # the partitions stalled (after a stall), or waiting

    def observe(self, now: float, assigned: Iterable[TP], probe: Optional[Probe], recovering: bool) -> bool:
        """One probe's outcome at ``now``; True when a partition of the worker's has had records waiting past a
        committed offset that did not move for ``stall_s``."""
        assigned = frozenset(assigned)
        if probe is None or recovering or assigned != self._assigned:
            self._assigned = assigned
            if probe is not None:
                self._committed = dict(probe.committed)
            self._since, self.waiting = {}, []
            return False
        waiting = [tp for tp in probe.waiting() if tp in assigned]
        since = {}
        for tp in waiting:
            if tp in self._since and probe.committed.get(tp) == self._committed.get(tp):
                since[tp] = self._since[tp]
            elif probe.committed.get(tp) == self._committed.get(tp):
                since[tp] = now                  # the first probe that finds it standing
        self._since, self._committed = since, dict(probe.committed)
        stalled = sorted(tp for tp, t in since.items() if now - t >= self.stall_s)
        self.waiting = stalled or waiting
        return bool(stalled)


class Watchdog:
    """The thread: probes the broker for the worker's group and calls ``on_stall`` once when it is stalled."""

    def __init__(self, conf: dict, group: str, stall_s: float, *, assigned: Callable[[], Iterable[TP]],
                 recovering: Callable[[], bool], on_stall: Callable[[list[TP], float], None],
                 interval_s: float = 5.0, timeout_s: float = 10.0):
        self.conf, self.group = conf, group
        self.clock = StallClock(stall_s)
        self.assigned, self.recovering, self.on_stall = assigned, recovering, on_stall
        self.interval_s, self.timeout_s = interval_s, timeout_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="yrdbus-watchdog", daemon=True)
        self._consumer = None
        self._offsets = None
        self.probes = 0          # probes decided so far
        self.failed = 0          # probes in a row the broker did not answer
        self._said_recovering = False     # the log says the worker recovers (and is not judged)

    def start(self) -> "Watchdog":
        log.info("watchdog: the worker starts again after %.0f s with records waiting and no commit", self.clock.stall_s)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def probe(self, tps: list[TP]) -> Optional[Probe]:
        """The group's committed offsets and the partitions' ends, or None when the broker does not answer.

        Three requests whatever the number of partitions: the committed offsets, the ends of all of them, and the
        starts of those with nothing committed (a watermark query a partition would be two requests each: some 24
        a second for a worker's sixty partitions, every five seconds for as long as it runs)."""
        from confluent_kafka import Consumer, TopicPartition

        from schemas.offsets import OffsetsReader

        if self._consumer is None:
            # The committed offsets through a consumer, not the admin client: librdkafka's admin requests to a
            # group coordinator abort the process when its connection drops (librdkafka issue #3663, fix proposed
            # in PR #5397); seen here as a worker killed by an assertion when a broker of three was killed.
            self._consumer = Consumer({**self.conf, "group.id": self.group, "enable.auto.commit": False,
                                       "log_level": 0})
            self._offsets = OffsetsReader(self.conf, self.timeout_s)
        try:
            committed = {(tp.topic, tp.partition): tp.offset
                         for tp in self._consumer.committed([TopicPartition(t, p) for t, p in tps],
                                                            timeout=self.timeout_s)}
            # the ends and starts through an admin client, made again after a failure (schemas/offsets.py: a
            # request left with a dead leader had the client reconnecting to it in a tight loop)
            ends = self._offsets.ends(tps)
            starts = self._offsets.starts([tp for tp in tps if committed.get(tp, -1) < 0])
            return Probe(committed, ends, starts)
        except Exception as exc:  # noqa: BLE001 - an unreachable broker is not a stall
            self.failed += 1
            if self.failed == 1 or self.failed % 12 == 0:
                log.info("watchdog: the broker did not answer the probe (%d in a row): %s", self.failed,
                         str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__)
            return None

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                tps = sorted(set(self.assigned()))
                probe = self.probe(tps) if tps else Probe({}, {})
                if probe is not None and self.failed:
                    log.info("watchdog: the broker answers the probe again after %d failed", self.failed)
                    self.failed = 0
                recovering = self.recovering()
                if (recovering and probe is not None) != self._said_recovering:
                    # a worker recovering its tables commits nothing and is not judged: say so, and when it ends
                    self._said_recovering = not self._said_recovering
                    log.info("watchdog: %s", "the worker recovers its tables; not judged meanwhile"
                             if self._said_recovering else "judging the worker's progress again")
                stalled = self.clock.observe(time.monotonic(), tps, probe, recovering)
                self.probes += 1
                if stalled:
                    self.on_stall(self.clock.waiting, self.clock.stall_s)
                    return
            except Exception:  # noqa: BLE001 - the watchdog must never be what stops a worker
                log.exception("watchdog probe failed")


def dump_stacks(loop: Optional[asyncio.AbstractEventLoop], file=None) -> None:
    """Every thread's stack, then every asyncio task's of ``loop``, to ``file`` (the process's own stderr: Faust's
    worker replaces ``sys.stderr`` with a logger that has no file descriptor)."""
    file = file or sys.__stderr__
    file.flush()
    try:
        faulthandler.dump_traceback(file=file, all_threads=True)
    except (ValueError, OSError, NotImplementedError) as exc:
        print(f"(no thread stacks: {exc})", file=file)
    if loop is None:
        return
    for _ in range(3):           # the task set may change while it is read from this thread
        try:
            tasks = list(asyncio.all_tasks(loop))
            break
        except RuntimeError:
            time.sleep(0.05)
    else:
        return
    for task in tasks:
        try:
            print(f"--- task {task.get_name()}", file=file)
            for where in awaiting(task.get_coro()):
                print(f"    {where}", file=file)
        except Exception:  # noqa: BLE001
            pass
    file.flush()


def awaiting(coro, depth: int = 40) -> list[str]:
    """Where a coroutine waits: each frame of its chain of awaits, outermost first (a task's own stack shows only
    the outermost)."""
    out = []
    while coro is not None and len(out) < depth:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None) or getattr(coro, "ag_frame", None)
        if frame is not None:
            out.append(f"{frame.f_code.co_filename}:{frame.f_lineno} in {frame.f_code.co_name}")
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None) or getattr(coro, "ag_await", None)
    return out


def start_again(reason: str) -> None:
    """Execute this process again with the command line and environment it started with (same pid)."""
    restarts = int(os.environ.get("YRDBUS_WORKER_RESTARTS", "0") or 0) + 1
    os.environ["YRDBUS_WORKER_RESTARTS"] = str(restarts)
    print(f"stream worker: {reason}; starting again (restart {restarts} of this process, pid {os.getpid()})",
          file=sys.__stderr__, flush=True)
    for handler in logging.getLogger().handlers:
        try:
            handler.flush()
        except Exception:  # noqa: BLE001
            pass
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001
            pass
    os.execv(sys.executable, sys.orig_argv)
