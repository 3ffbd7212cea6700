"""The worker's watchdog (streams/watchdog.py): when a worker that holds records and commits nothing is stalled,
against a real broker's offsets, and the restart that keeps the process id."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from streams.watchdog import Probe, StallClock, Watchdog

ROOT = Path(__file__).resolve().parents[1]
A, B = ("src", 0), ("src", 1)


def probe(committed: dict, ends: dict, starts: dict | None = None) -> Probe:
    return Probe(dict(committed), dict(ends), dict(starts or {}))


def test_records_waiting_and_no_commit_moving_for_the_stall_time_is_a_stall():
    clock = StallClock(30)
    seen = [clock.observe(t, [A, B], probe({A: 5, B: 9}, {A: 8, B: 9}), False) for t in (0, 10, 20, 35, 40)]
    assert seen == [False, False, False, False, True]      # the run begins at the second probe (t=10)
    assert clock.waiting == [A]


def test_one_partition_standing_is_a_stall_while_another_moves():
    clock = StallClock(30)
    seen = [clock.observe(t, [A, B], probe({A: 5, B: t}, {A: 8, B: 1000}), False) for t in range(0, 60, 10)]
    assert seen == [False, False, False, False, True, True] and clock.waiting == [A]


def test_a_commit_that_moves_an_unchanged_end_or_nothing_to_read_is_no_stall():
    clock = StallClock(30)
    for t in range(0, 300, 10):            # processing slowly: each probe one record further
        assert not clock.observe(t, [A], probe({A: t // 10}, {A: 1000}), False)
    idle = StallClock(30)
    for t in range(0, 300, 10):            # caught up: committed at the end
        assert not idle.observe(t, [A, B], probe({A: 8, B: -1}, {A: 8, B: 4}, {B: 4}), False)


def test_an_unanswering_broker_a_recovery_or_a_new_assignment_start_the_time_again():
    for interrupt in ("broker", "recovery", "assignment"):
        clock = StallClock(30)
        stuck = probe({A: 5}, {A: 8})
        assert not clock.observe(0, [A], stuck, False)
        assert not clock.observe(25, [A], stuck, False)
        assert not clock.observe(
            40, [A, B] if interrupt == "assignment" else [A],
            None if interrupt == "broker" else probe({A: 5, B: 0}, {A: 8, B: 0}) if interrupt == "assignment"
            else stuck, interrupt == "recovery")
        assigned = [A, B] if interrupt == "assignment" else [A]
        stuck = probe({A: 5, B: 0}, {A: 8, B: 0}) if interrupt == "assignment" else stuck
        # the time counts again from the first probe after the interruption
        assert [clock.observe(t, assigned, stuck, False) for t in (50, 70, 79, 81)] == [False, False, False, True]


def _topic(kafka, name: str, records: int) -> None:
    admin = AdminClient({"bootstrap.servers": kafka.bootstrap})
    admin.create_topics([NewTopic(name, 1, 1)])[name].result(30)
    p = Producer({"bootstrap.servers": kafka.bootstrap})
    for i in range(records):
        p.produce(name, value=b"%d" % i)
    assert p.flush(30) == 0


#: errors the protocol says to retry: the group's coordinator is loading or moving
_COORDINATOR_MOVING = {KafkaError.COORDINATOR_LOAD_IN_PROGRESS, KafkaError.COORDINATOR_NOT_AVAILABLE,
                       KafkaError.NOT_COORDINATOR}


def _commit(kafka, group: str, topic: str, offset: int) -> None:
    """The group's offset committed. A young broker answers "coordinator load in progress" (a retriable error)
    while it loads the offsets topic: the commit is asked again until the broker takes it."""
    c = Consumer({"bootstrap.servers": kafka.bootstrap, "group.id": group, "enable.auto.commit": False})
    deadline = time.monotonic() + 60
    try:
        while True:
            try:
                c.commit(offsets=[TopicPartition(topic, 0, offset)], asynchronous=False)
                return
            except KafkaException as exc:
                if exc.args[0].code() not in _COORDINATOR_MOVING or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
    finally:
        c.close()


def _watch(kafka, group: str, topic: str) -> tuple[Watchdog, threading.Event, list]:
    fired, seen = threading.Event(), []

    def on_stall(waiting, stall_s):
        seen.append(waiting)
        fired.set()
    dog = Watchdog({"bootstrap.servers": kafka.bootstrap}, group, 1.0, assigned=lambda: [(topic, 0)],
                   recovering=lambda: False, on_stall=on_stall, interval_s=0.2, timeout_s=10)
    return dog.start(), fired, seen


def test_against_the_broker_a_group_behind_with_a_still_offset_is_stalled_and_one_at_the_end_is_not(kafka, unique):
    behind, done = f"{unique}-behind", f"{unique}-done"
    _topic(kafka, behind, 5)
    _topic(kafka, done, 5)
    _commit(kafka, f"{unique}-g1", behind, 2)
    _commit(kafka, f"{unique}-g2", done, 5)
    stalled, fired, seen = _watch(kafka, f"{unique}-g1", behind)
    idle, idle_fired, _ = _watch(kafka, f"{unique}-g2", done)
    try:
        assert fired.wait(60), "the watchdog never saw the stalled group"
        assert seen == [[(behind, 0)]]
        deadline = time.monotonic() + 60       # as many probes as the stalled one needed, and more
        while idle.probes < max(stalled.probes, 10) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert idle.probes >= 10 and not idle_fired.is_set()
    finally:
        stalled.stop()
        idle.stop()


def test_a_probe_reads_the_committed_offsets_the_ends_and_the_starts_of_what_has_nothing_committed(kafka, unique):
    """One probe of several partitions against the broker: the ends of all of them, the starts only where the group
    has committed nothing, and the partitions with records past what is done."""
    some, none, empty = f"{unique}-some", f"{unique}-none", f"{unique}-empty"
    _topic(kafka, some, 7)
    _topic(kafka, none, 4)
    _topic(kafka, empty, 0)
    _commit(kafka, f"{unique}-g", some, 3)
    dog = Watchdog({"bootstrap.servers": kafka.bootstrap}, f"{unique}-g", 60.0, assigned=lambda: [],
                   recovering=lambda: False, on_stall=lambda *a: None)
    got = dog.probe([(some, 0), (none, 0), (empty, 0)])
    assert got is not None
    assert got.committed == {(some, 0): 3, (none, 0): -1001, (empty, 0): -1001}
    assert got.ends == {(some, 0): 7, (none, 0): 4, (empty, 0): 0}
    assert got.starts == {(none, 0): 0, (empty, 0): 0}
    assert got.waiting() == [(none, 0), (some, 0)]


def test_offsets_of_many_partitions_come_in_one_read_and_a_failed_read_leaves_its_client_behind(kafka, unique):
    """schemas.offsets: the ends and starts of several partitions at once; a partition that fails is raised, or left
    out when a partial answer will do, and the client that failed is not used again (librdkafka's admin client
    reconnects to a dead leader in a tight loop while a request for it waits)."""
    from schemas.offsets import OffsetsReader

    some, none = f"{unique}-some", f"{unique}-none"
    _topic(kafka, some, 5)
    _topic(kafka, none, 0)
    reader = OffsetsReader({"bootstrap.servers": kafka.bootstrap}, timeout_s=10)
    assert reader.ends([(some, 0), (none, 0)]) == {(some, 0): 5, (none, 0): 0}
    assert reader.starts([(some, 0)]) == {(some, 0): 0}
    first = reader._admin
    missing = (some, 7)                        # the topic has one partition
    with pytest.raises(KafkaException, match="UNKNOWN_PARTITION"):
        reader.ends([(some, 0), missing])
    assert reader._admin is None
    assert reader.ends([(some, 0), missing], partial=True) == {(some, 0): 5}
    assert reader.ends([(none, 0)]) == {(none, 0): 0}
    assert reader._admin is not None and reader._admin is not first


def test_starting_again_keeps_the_process_id_its_command_line_and_counts_the_restarts(tmp_path):
    code = ("import os, sys\n"
            "from streams.watchdog import start_again\n"
            "print(os.getpid(), os.environ.get('YRDBUS_WORKER_RESTARTS', '0'), sys.argv[1:], flush=True)\n"
            "if os.environ.get('YRDBUS_WORKER_RESTARTS', '0') == '0':\n"
            "    start_again('test')\n")
    script = tmp_path / "w.py"
    script.write_text(code)
    out = subprocess.run([sys.executable, str(script), "--flag", "x"], capture_output=True, text=True, timeout=60,
                         cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), "YRDBUS_WORKER_RESTARTS": "0"})
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 2
    first, second = (line.split(" ", 2) for line in lines)
    assert first[0] == second[0]                       # the same process
    assert (first[1], second[1]) == ("0", "1")
    assert first[2] == second[2] == "['--flag', 'x']"
    assert "test; starting again (restart 1" in out.stderr
