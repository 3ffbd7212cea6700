"""The simulator's scripted incidents and baseline through a real `yrdbus worker`, scored by `yrdbus evaluate`.

Both runs use the session's broker under a private topic prefix, at a reduced volume (``--scale``) so the
worker keeps up on this machine; the scenarios and the baseline's guarantees are those of docs/scenarios.md.
"""
from __future__ import annotations

import pytest

import json
import os
import subprocess
import uuid

from streams.evaluate import read_alerts_topic
from test_hostile_worker import _metrics
from test_streams_worker import YRDBUS, wait_for, workers  # noqa: F401 (fixture)
from kit.faults import CaughtUp
from schemas import topics


def simulate(kafka, prefix: str, *args: str) -> dict:
    env = {**os.environ, "YRDBUS_KAFKA_BOOTSTRAP": kafka.bootstrap}
    out = subprocess.run([YRDBUS, "simulate", "--prefix", prefix, "--json", *args], env=env, capture_output=True,
                         text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout)


def evaluate(kafka, prefix: str, truth) -> dict:
    env = {**os.environ, "YRDBUS_KAFKA_BOOTSTRAP": kafka.bootstrap}
    out = subprocess.run([YRDBUS, "evaluate", "--truth", str(truth), "--prefix", prefix, "--json"], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout)


def test_simulated_incidents_a_to_j_are_all_detected_with_precision(kafka, workers, tmp_path):
    from conftest import free_port

    prefix = f"s{uuid.uuid4().hex[:6]}."
    truth = tmp_path / "t.jsonl"
    port = free_port()
    w = workers(prefix, f"{prefix}w", metrics_port=port)
    w.start()
    summary = simulate(kafka, prefix, "--seed", "7", "--speed", "3600", "--duration", "30", "--scale", "0.1",
                       "--scenarios", "all", "--truth", str(truth))
    assert summary["truth_rows"] >= 10
    wait_for(lambda: evaluate(kafka, prefix, truth)["recall"] == 1.0, 300, "every simulated incident", w,
             lambda: [s["scenario_id"] for s in evaluate(kafka, prefix, truth)["scenarios"] if not s["detected"]])
    # a false alert would come with the last judgements: after the whole input is judged and committed
    everything_judged(kafka, prefix, summary, port, w)
    result = evaluate(kafka, prefix, truth)
    listening = listening_on(port)
    w.stop()
    assert result["recall"] == 1.0
    assert result["precision"] >= 0.95, result["false_alerts"]
    assert listening == {"127.0.0.1"}, f"the worker's /metrics listens on {listening} (YRDBUS_METRICS_HOST)"


def listening_on(port: int) -> set[str]:
    """The addresses a TCP socket of this machine listens on at ``port`` (/proc/net/tcp and tcp6)."""
    import ipaddress

    found = set()
    for table, size in (("/proc/net/tcp", 4), ("/proc/net/tcp6", 16)):
        with open(table) as fh:
            for line in fh.readlines()[1:]:
                local, state = line.split()[1], line.split()[3]
                addr, hexport = local.split(":")
                if state == "0A" and int(hexport, 16) == port:      # 0A: LISTEN
                    raw = bytes.fromhex(addr)
                    # the kernel writes each 32-bit word in host (little-endian) order
                    raw = b"".join(raw[i:i + 4][::-1] for i in range(0, size, 4))
                    found.add(str(ipaddress.ip_address(raw)))
    return found


def regional_watermark(port: int) -> float | None:
    """The worker's regional watermark gauge (event time, epoch seconds), None before it is exported."""
    return _metrics(port).get("wm:regional")


def everything_judged(kafka, prefix: str, summary: dict, port: int, w) -> None:
    """Wait for the worker to have processed and committed every input, for its regional watermark to reach the
    run's end (what is judged once the upstreams go idle, global_idle_seconds, comes after the commit; less the
    regional lateness and the last, sparse hour), then for what that judgement sent to be committed."""
    from datetime import datetime

    from streams import ruleset

    sources = [prefix + t for t in topics.source_topics()]
    internal = [f"{prefix}streams.subjects", f"{prefix}streams.regional"]
    wait_for(CaughtUp(kafka.bootstrap, f"{prefix}w", sources, internal), 300, "the input to be processed", w)
    lateness_s = ruleset.default().minutes_ms("event_time", "global_lateness_minutes") / 1000
    end_s = datetime.fromisoformat(summary["end"].replace("Z", "+00:00")).timestamp() - lateness_s - 3600
    wait_for(lambda: (regional_watermark(port) or 0) >= end_s, 120, "the regional watermark to reach the run's end",
             w, lambda: f"regional watermark {regional_watermark(port)}, wanted {end_s}")
    # what the stage's internal topics hold from here on (the judging tick among it) committed
    wait_for(CaughtUp(kafka.bootstrap, f"{prefix}w", sources, internal), 120, "the last judgement to be committed", w)


def test_a_simulated_week_of_baseline_traffic_raises_no_alert(kafka, workers):
    from conftest import free_port

    prefix = f"b{uuid.uuid4().hex[:6]}."
    port = free_port()
    w = workers(prefix, f"{prefix}w", metrics_port=port)
    w.start()
    summary = simulate(kafka, prefix, "--seed", "3", "--span", "168", "--speed", str(168 * 3600 / 25),
                       "--duration", "25", "--scale", "0.02")
    assert summary["events"] > 10_000
    everything_judged(kafka, prefix, summary, port, w)
    w.stop()
    alerts = read_alerts_topic(kafka.bootstrap, prefix + topics.DERIVED_ALERTS)
    assert [(a["kind"], a["summary"]) for a in alerts] == []
