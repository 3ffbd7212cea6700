"""Faults of the bus's processes: the stream worker and the sink SIGKILLed and restarted.

What every fault test does, and how the result is checked: tests/faults/conftest.py.
"""
from __future__ import annotations

import signal
import time


from kit import faults

from .conftest import finish


def test_stream_worker_killed_by_sigkill_recovers_its_state_and_derives_each_alert_once(kafka, wl, scale, buses,
                                                                                       record):
    started = time.monotonic()
    bus = buses(kafka.bootstrap, "worker-kill")
    bus.apply_topics()
    bus.worker.start()
    bus.sink.start()
    faults.wait_for(lambda: faults.group_ready(bus.bootstrap, bus.app_id), 90, "the worker to join its group")
    stations = bus.stations(wl, scale.publish_s).start()
    derived = bus.prefix + "alerts.derived"
    stages = [bus.prefix + "streams.subjects", bus.prefix + "streams.regional"]
    kills = [2] if scale.name == "short" else [2, 7]
    for n in kills:
        # killed with state in its tables (transit stays, flags and fraud patterns seen, incidents pending),
        # while both of its stages are at work
        faults.wait_for(lambda: faults.topic_records(bus.bootstrap, derived) >= n
                        and faults.group_ready(bus.bootstrap, bus.app_id, topics=stages), scale.timeout_s,
                        f"{n} derived alerts and both stages assigned before the kill", interval=0.1)
        assert bus.worker.kill() == -signal.SIGKILL
        bus.worker.start()
    assert stations.fraction < 1.0 or scale.name == "short", "the kills should come while the stations publish"
    finish(bus, wl, scale, stations, f"stream worker SIGKILLed x{len(kills)} and restarted", started, record)


def test_sink_killed_by_sigkill_mid_batch_and_restarted_stores_each_event_once(kafka, wl, scale, buses, record):
    started = time.monotonic()
    bus = buses(kafka.bootstrap, "sink-kill", sink_batch_rows=200)
    bus.apply_topics()
    bus.worker.start()
    # 1. the sink dies by SIGKILL right after its third insert, before it commits that batch's offsets
    bus.sink.start(argv=faults.kit_argv("sink", "--crash-after-inserts", "3", "--") + bus.sink_cmd)
    stations = bus.stations(wl, scale.publish_s).start()
    assert bus.sink.wait(scale.timeout_s) == -signal.SIGKILL, bus.sink.tail()
    # 2. restarted, it is killed from outside while the stations still publish
    bus.sink.start()
    faults.wait_for(lambda: bus.progress()["events"] >= 600, scale.timeout_s, "600 events stored after the restart")
    assert bus.sink.kill() == -signal.SIGKILL
    # 3. restarted again, it replays its logged batches and finishes
    bus.sink.start()
    finish(bus, wl, scale, stations, "sink SIGKILLed mid-batch x2 and restarted", started, record)
