"""Faults survived with nothing lost and nothing doubled, on the real broker and the real engine.

Each test publishes the same known events (``kit.faults.workload``: the scripted incidents a-j inside
84 hours of background traffic) through the station publisher while ``yrdbus worker`` and ``yrdbus sink``
run as processes on a private copy of the bus, injects one fault while the stations publish, and then
reads ClickHouse back: every published event id stored exactly once and no other row, and the derived
alerts exactly the ground truth's (``streams.evaluate``: every expected alert found under one id, no
other alert). ``YRDBUS_FAULTS=full`` (``make faults``) runs them with more events and longer outages.

Fixtures of the fault suite: the scale, the known workload, private buses and brokers, the result table.

Every test records one ``FaultResult``; at the end of the session the table of all of them is printed
(``make faults``, ``make test``) and written as JSON lines to ``var/faults/results-<scale>.jsonl``.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict
from pathlib import Path

import pytest

from kit import faults
from schemas.settings import Settings
from yrdbus.stack import KafkaStack

from conftest import RESULTS_ENV   # tests/conftest.py names the run's results file

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def scale() -> faults.Scale:
    return faults.current_scale()


@pytest.fixture(scope="session")
def wl(scale) -> faults.Workload:
    """The known events every fault test publishes (same seed: same events, same expected alerts)."""
    return faults.workload(scale.background_per_hour, scale.pvg_per_hour)


@pytest.fixture
def record():
    """Keep a test's result for the table (a line in the run's results file: the tests may run in several
    pytest-xdist workers, and the table is printed by the process that reports, tests/conftest.py)."""
    def keep(result: faults.FaultResult) -> faults.FaultResult:
        path = Path(os.environ[RESULTS_ENV])
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as f:
            f.write(json.dumps(asdict(result), default=str) + "\n")
        return result
    return keep


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"report_{report.when}", report)


@pytest.fixture
def buses(tmp_path, request):
    """Make ``Bus`` objects (a private copy of the bus); their processes are stopped at the end of the test,
    and the last lines of their logs printed when it failed (CI keeps no temporary folder)."""
    made: list[faults.Bus] = []

    def make(bootstrap: str, name: str, **kwargs) -> faults.Bus:
        bus = faults.Bus(bootstrap, tmp_path / name, name, **kwargs)
        made.append(bus)
        return bus
    yield make
    failed = getattr(getattr(request.node, "report_call", None), "failed", False)
    for bus in made:
        if failed:
            for p in (bus.worker, bus.sink):
                print(f"--- {bus.prefix} {p.name}, last lines:\n{p.tail(60)}")
        bus.close()


@pytest.fixture
def private_stack(tmp_path):
    """Start a private embedded Kafka cluster of N brokers on free ports; stopped at the end of the test."""
    made: list[KafkaStack] = []

    def make(brokers: int = 1) -> KafkaStack:
        port = faults.free_port_run(brokers)
        controller = faults.free_port_run(brokers, avoid=range(port, port + brokers))
        settings = Settings(var_dir=tmp_path / f"kafka-{brokers}", kafka_bootstrap=None, kafka_port=port,
                            kafka_controller_port=controller, kafka_heap="512m", kafka_brokers=brokers)
        stack = KafkaStack(settings)
        made.append(stack)
        stack.up(brokers=brokers, echo=lambda m: None)
        return stack
    yield make
    for stack in made:
        stack.down(echo=lambda m: None, timeout_s=10)


def alive(*procs: faults.Proc):
    """A check for ``Bus.wait_complete``: fail at once, with its last lines, if one of ``procs`` died."""
    def check() -> None:
        for p in procs:
            if p.proc is not None and not p.alive:
                pytest.fail(f"{p.name} exited with {p.proc.returncode}:\n{p.tail(40)}")
    return check


def finish(bus: faults.Bus, wl: faults.Workload, scale: faults.Scale, stations: faults.Stations, fault: str,
           started: float, record, *procs: faults.Proc, notes: str = "") -> faults.FaultResult:
    """Every event confirmed by the broker, the bus caught up, the store read back and the result recorded."""
    stats = stations.join()
    published = time.monotonic()
    assert stats["failed"] == 0 and stats["unconfirmed"] == 0, stats
    progress = bus.wait_complete(wl, scale.timeout_s, check=alive(*(procs or (bus.worker, bus.sink))))
    result = bus.verify(wl, fault, started=started, notes=notes)
    result.details.update(progress=progress, stations=stats,
                          timing={"published_s": round(published - started, 1),
                                  "complete_s": round(time.monotonic() - started, 1)})
    record(result)
    assert result.ok, result.describe() + "\n--- worker:\n" + bus.worker.tail() + "\n--- sink:\n" + bus.sink.tail()
    return result
