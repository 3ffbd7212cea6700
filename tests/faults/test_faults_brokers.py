"""Faults of the brokers: the single broker stopped and restarted, a broker of three SIGKILLed.

What every fault test does, and how the result is checked: tests/faults/conftest.py.
"""
from __future__ import annotations

import time

from kit import faults

from .conftest import finish


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
