"""Faults survived with nothing lost and nothing doubled, on the real broker and the real engine.

Each test publishes the same known events (``yrdbus.faults.workload``: the scripted incidents a-j inside
84 hours of background traffic) through the station publisher while ``yrdbus worker`` and ``yrdbus sink``
run as processes on a private copy of the bus, injects one fault while the stations publish, and then
reads ClickHouse back: every published event id stored exactly once and no other row, and the derived
alerts exactly the ground truth's (``streams.evaluate``: every expected alert found under one id, no
other alert). ``YRDBUS_FAULTS=full`` (``make faults``) runs them with more events and longer outages.
"""
from __future__ import annotations

import re
import signal
import subprocess
import sys
import time

import pytest

from yrdbus import faults

from .conftest import alive


def finish(bus: faults.Bus, wl: faults.Workload, scale: faults.Scale, stations: faults.Stations, fault: str,
           started: float, record, *procs: faults.Proc, notes: str = "") -> faults.FaultResult:
    """Every event confirmed by the broker, the bus caught up, the store read back and the result recorded."""
    stats = stations.join()
    published = time.monotonic()
    assert stats["failed"] == 0 and stats["unconfirmed"] == 0, stats
    progress = bus.wait_complete(wl, scale.timeout_s, check=alive(*(procs or (bus.worker, bus.sink))))
    result = record(bus.verify(wl, fault, started=started, notes=notes))
    result.details.update(progress=progress, stations=stats,
                          timing={"published_s": round(published - started, 1),
                                  "complete_s": round(time.monotonic() - started, 1)})
    assert result.ok, result.describe() + "\n--- worker:\n" + bus.worker.tail() + "\n--- sink:\n" + bus.sink.tail()
    return result


def test_broker_stopped_and_restarted_while_stations_publish_loses_and_doubles_nothing(wl, scale, private_stack,
                                                                                         buses, record):
    started = time.monotonic()
    stack = private_stack(1)
    bus = buses(stack.bootstrap(), "broker-restart")
    bus.apply_topics()
    bus.worker.start()
    bus.sink.start()
    faults.wait_for(lambda: faults.group_ready(bus.bootstrap, bus.app_id), 90, "the worker to join its group")
    stations = bus.stations(wl, scale.publish_s).start()
    stations.wait_fraction(0.3)
    stack.down(echo=lambda m: None)          # SIGTERM: the broker's controlled shutdown
    assert not stack.status()["kafka"]["running"]
    time.sleep(scale.broker_outage_s)
    stack.up(echo=lambda m: None)
    finish(bus, wl, scale, stations, f"broker stopped {scale.broker_outage_s:.0f} s and restarted", started,
           record)


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
    bus.sink.start("--crash-after-inserts", "3")
    stations = bus.stations(wl, scale.publish_s).start()
    assert bus.sink.wait(scale.timeout_s) == -signal.SIGKILL, bus.sink.tail()
    # 2. restarted, it is killed from outside while the stations still publish
    bus.sink.start()
    faults.wait_for(lambda: bus.progress()["events"] >= 600, scale.timeout_s, "600 events stored after the restart")
    assert bus.sink.kill() == -signal.SIGKILL
    # 3. restarted again, it replays its logged batches and finishes
    bus.sink.start()
    finish(bus, wl, scale, stations, "sink SIGKILLed mid-batch x2 and restarted", started, record)


def test_clickhouse_away_while_stations_publish_sink_backs_off_and_catches_up(kafka, wl, scale, buses, record):
    started = time.monotonic()
    bus = buses(kafka.bootstrap, "store-outage", harness_sink=True)
    bus.apply_topics()
    bus.worker.start()
    bus.sink.start()
    stations = bus.stations(wl, max(scale.publish_s, scale.store_outage_s)).start()
    faults.wait_for(lambda: bus.progress()["events"] > 0, scale.timeout_s, "the first events stored")
    bus.sink.signal(signal.SIGUSR1)          # every table the sink writes is detached under it
    away = time.monotonic()
    faults.wait_for(lambda: "store away" in bus.sink.log_text(), 30, "the store to go away")
    faults.wait_for(lambda: len(re.findall(r"failed \(attempt \d+\)", bus.sink.log_text())) >= 2,
                    scale.store_outage_s + 30, "the sink to retry")
    time.sleep(max(0.0, scale.store_outage_s - (time.monotonic() - away)))
    assert bus.sink.alive, bus.sink.tail()
    bus.sink.signal(signal.SIGUSR2)
    attempts = len(re.findall(r"failed \(attempt \d+\)", bus.sink.log_text()))
    finish(bus, wl, scale, stations, f"ClickHouse away {scale.store_outage_s:.0f} s", started, record,
           notes=f"{attempts} refused insert attempts, backing off")


def test_three_broker_cluster_losing_a_broker_while_traffic_flows_loses_and_doubles_nothing(wl, scale,
                                                                                           private_stack, buses,
                                                                                           record):
    started = time.monotonic()
    stack = private_stack(3)
    assert len(stack.status()["kafka"]["brokers"]) == 3 and stack.status()["kafka"]["running"]
    bus = buses(stack.bootstrap(), "cluster", replication=3)
    bus.apply_topics()
    described = bus.describe_topics()
    assert {(t["replication"], t["configs"]["min.insync.replicas"]) for t in described} == {(3, "2")}, described
    bus.worker.start()
    bus.sink.start()
    faults.wait_for(lambda: faults.group_ready(bus.bootstrap, bus.app_id), 120, "the worker to join its group")
    stations = bus.stations(wl, scale.publish_s).start()
    stations.wait_fraction(0.4)
    victim = faults.busiest_leader(bus.bootstrap, [t["topic"] for t in described])
    stack.kill(victim)
    assert not stack.status()["kafka"]["brokers"][victim - 1]["running"]
    finish(bus, wl, scale, stations, f"3 brokers (RF 3, min ISR 2), broker {victim} SIGKILLed", started, record)


def test_store_disk_nearly_full_gives_a_clear_error_no_corruption_and_catches_up(wl, scale, buses, kafka, tmp_path,
                                                                                record):
    started = time.monotonic()
    disk = faults.SmallDisk(tmp_path / "disk", 96)
    try:
        disk.mount()
    except faults.FaultError as exc:
        pytest.skip(str(exc))
    bus = buses(kafka.bootstrap, "disk-full", store_dir=disk.path / "clickhouse")
    try:
        bus.apply_topics()
        bus.worker.start()
        bus.sink.start()
        stations = bus.stations(wl, scale.publish_s).start()
        faults.wait_for(lambda: bus.progress()["events"] > 0, scale.timeout_s, "the first events stored")
        disk.fill(leave_bytes=64 * 1024)
        failed = faults.wait_for(lambda: re.findall(r"insert into \w+ failed \(attempt \d+\).*", bus.sink.log_text()),
                                 60, "the sink to report the full disk")
        time.sleep(scale.disk_full_s)
        assert bus.sink.alive, bus.sink.tail()
        reads_while_full = bus.progress()
        disk.empty()
        result = finish(bus, wl, scale, stations, "store's disk full (64 KiB free)", started, record,
                        notes=failed[0][:120])
        assert reads_while_full["events"] >= 0, "the store should still answer reads while its disk is full"
        assert re.search(r"not enough space|No space left|NOT_ENOUGH_SPACE", failed[0], re.IGNORECASE), failed[0]
        assert bus.sink.stop() == 0
        check = subprocess.run([sys.executable, "-m", "yrdbus.faults", "check-store", str(bus.store_dir)],
                               capture_output=True, text=True, timeout=120, env=faults.clean_env())
        assert check.returncode == 0, check.stdout + check.stderr
        result.details["check"] = check.stdout
    finally:
        bus.close()
        disk.unmount()
