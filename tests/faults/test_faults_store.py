"""Faults of the store: ClickHouse away, its disk nearly full.

What every fault test does, and how the result is checked: tests/faults/conftest.py.
"""
from __future__ import annotations

import re
import signal
import subprocess
import time

import pytest

from kit import faults

from .conftest import finish


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
        check = subprocess.run(faults.kit_argv("check-store", str(bus.store_dir)),
                               capture_output=True, text=True, timeout=120, env=faults.clean_env())
        assert check.returncode == 0, check.stdout + check.stderr
        result.details["check"] = check.stdout
    finally:
        bus.close()
        disk.unmount()
