"""The order suite on the real broker: the simulator's incidents a-j with baseline traffic (0.05 of the paper's
volume over 30 h, some 10,000 events) through `yrdbus worker` processes, each run ending with exactly the live
alerts of event-time order at the stages without Kafka (tests/stage_pipeline.py):
  (d) the worker SIGKILLed twice at random points and restarted;
  (e) a second worker joining part-way through and leaving (SIGTERM) before the end.
The points are random fractions of the input (seeded): the input is published up to a point, the test waits for
an outcome there (offsets committed, a derived alert, a member holding partitions), kills or adds a worker, and
publishes on. Nothing waits for a length of time. The stage-level variants (a)-(c) are tests/test_order_suite.py.
"""
from __future__ import annotations

import collections
import os
import random
import signal
import uuid

import pytest

from schemas.codec import get_codec
from stage_pipeline import Pipeline, kafka_records, live
from streams import evaluate
from streams.app import StreamsConfig, ensure_topics
from streams.evaluate import read_alerts_topic
from test_order_suite import in_event_time, simulate
from test_scaleout import group_offsets, members, short_partitions
from test_streams_worker import WorkerProcess, keys_on, publish, wait_for, workers  # noqa: F401
from kit.faults import CaughtUp
from schemas import topics
from schemas.settings import Settings
from yrdbus.cli_streams import changelog_topic, read_changelog

SEED = int(os.environ.get("YRDBUS_ORDER_SEEDS", "11").split(",")[0])
SCALE = 0.05
PARTITIONS = topics.DEFAULT_PARTITIONS   # the subject stage's, as the source topics': clearances read in place


@pytest.fixture(scope="module")
def day():
    """The seed's day as the stations publish it (in event-time order), its truth, and the stages' answer."""
    sim, events = simulate(SEED, SCALE)
    ordered = [(kind, rec) for _, kind, rec in events]
    want = Pipeline(partitions=PARTITIONS).deliver(in_event_time(events))
    truth = [evaluate.normalise_row(r.as_json()) for r in sim.truth_rows()]
    scored = evaluate.score(truth, list({a["alert_id"]: a for a in want.versions}.values()))
    assert scored["recall"] == 1.0 and scored["precision"] == 1.0, scored
    return ordered, truth, want.live()


def bus(kafka, variant: str, ordered) -> tuple[str, str, list, tuple[int, int]]:
    """A private bus for a variant: its prefix, the workers' group, the day's records and two random points of
    them (record counts, drawn for the seed and the variant)."""
    prefix = f"o{variant}{uuid.uuid4().hex[:6]}."
    ensure_topics(StreamsConfig(bootstrap=kafka.bootstrap, prefix=prefix, partitions=PARTITIONS))
    records = kafka_records(ordered, get_codec(), prefix)
    rng = random.Random(f"{SEED}-{variant}")
    first, second = sorted(int(len(records) * rng.uniform(0.1, 0.9)) for _ in range(2))
    return prefix, f"{prefix}w", records, (first, second)


def inputs(prefix: str) -> list[str]:
    return [prefix + t for t in topics.source_topics()] + [prefix + topics.CONTROL]


def alerts_of(kafka, prefix: str) -> list[dict]:
    return read_alerts_topic(kafka.bootstrap, prefix + topics.DERIVED_ALERTS)


def the_answer(kafka, prefix: str, group: str, want: dict, worker) -> list[dict]:
    """Wait for every record to be read and committed and the alerts that stand to be ``want``; then the alerts."""
    internal = [f"{prefix}streams.subjects", f"{prefix}streams.regional"]
    caught_up = CaughtUp(kafka.bootstrap, group, inputs(prefix), internal)
    wait_for(lambda: caught_up() and live(alerts_of(kafka, prefix)) == want, 240,
             "the alerts that stand to be those of event-time order", worker,
             lambda: {"committed/end": group_offsets(kafka.bootstrap, group, inputs(prefix)),
                      "short": short_partitions(kafka.bootstrap, group, inputs(prefix) + internal),
                      "missing": sorted((k, i) for i, k in want.items() if i not in live(alerts_of(kafka, prefix))),
                      "extra": sorted((k, i) for i, k in live(alerts_of(kafka, prefix)).items() if i not in want),
                      "flow": flow_progress(kafka, group)})
    return alerts_of(kafka, prefix)


def flow_progress(kafka, group: str) -> dict:
    """The regional stage's flow section as its changelog holds it: the last hour judged, and the last hour each
    subject partition has sent its counts for (a partition whose hours stopped shows here)."""
    flow = (read_changelog(Settings(kafka_bootstrap=kafka.bootstrap), changelog_topic(group, "regional"))
            .get("flow") or (0, {}))[1]
    return {"judged": flow.get("judged"), "progress": flow.get("progress")}


def check_alerts(alerts: list[dict], truth: list[dict], want: dict) -> None:
    assert live(alerts) == want
    scored = evaluate.score(truth, [a for a in evaluate.last_versions(alerts)])
    assert scored["recall"] == 1.0 and scored["precision"] == 1.0, scored
    # a record read again after a kill or a rebalance may be derived again: with the same id, never a new one
    versions = collections.Counter((a["alert_id"], a.get("status") or "RAISED") for a in alerts)
    assert len({a["alert_id"] for a in alerts}) == len({(a["kind"], tuple(a["must_act"]), a["subject"],
                                                         a["pattern"], a["occurred_at"]) for a in alerts}), versions


@pytest.mark.skipif(not os.environ.get("YRDBUS_ORDER_KILLS"), reason=(
    "run by `make order-suite` (YRDBUS_ORDER_KILLS=1), not by `make test`: 1 run in 13 beside two CPU burners "
    "ended with one TREND_RISING and its SYSTEMIC_ESCALATION raised for another window than in event-time order "
    "after the kills; both causes found since are fixed (partitions of the dead member taken for idle, a sparse "
    "partition's first record lost when nothing was committed): it comes back once it has passed beside burners"))
def test_d_a_worker_sigkilled_twice_at_random_points_gives_the_answer_of_event_time_order(kafka, workers, day):
    ordered, truth, want = day
    prefix, group, records, (first, second) = bus(kafka, "d", ordered)
    w = workers(prefix, group, partitions=PARTITIONS)
    # up to the first point: read and committed, then killed (what it wrote must be what it restores)
    publish(kafka.bootstrap, records[:first])
    w.start()
    wait_for(lambda: group_offsets(kafka.bootstrap, group, inputs(prefix))[0] >= first, 180,
             f"the first {first} records to be committed", w)
    w.stop(signal.SIGKILL)
    # up to the second point: killed again while reading it, once it has sent something past the first
    before = len(keys_on(kafka.bootstrap, prefix + topics.DERIVED_ALERTS)) + \
        len(keys_on(kafka.bootstrap, prefix + topics.TRENDS))
    publish(kafka.bootstrap, records[first:second])
    w.start()
    wait_for(lambda: group_offsets(kafka.bootstrap, group, inputs(prefix))[0] > first
             or len(keys_on(kafka.bootstrap, prefix + topics.DERIVED_ALERTS))
             + len(keys_on(kafka.bootstrap, prefix + topics.TRENDS)) > before, 180,
             "the restarted worker to commit or send something", w)
    w.stop(signal.SIGKILL)
    publish(kafka.bootstrap, records[second:])
    w.start()
    alerts = the_answer(kafka, prefix, group, want, w)
    w.stop()
    check_alerts(alerts, truth, want)


def test_e_a_second_worker_joining_and_leaving_mid_stream_gives_the_answer_of_event_time_order(kafka, workers, day,
                                                                                              tmp_path):
    ordered, truth, want = day
    prefix, group, records, (joins, leaves) = bus(kafka, "e", ordered)
    a = workers(prefix, group, partitions=PARTITIONS)
    b = WorkerProcess(kafka, tmp_path / "second", prefix, group, partitions=PARTITIONS)   # its own folder and log
    publish(kafka.bootstrap, records[:joins])
    a.start()
    wait_for(lambda: group_offsets(kafka.bootstrap, group, inputs(prefix))[0] >= joins // 2, 180,
             "the first worker to commit", a)
    # the second joins with records in flight: the next part is published while the group rebalances
    b.start()
    publish(kafka.bootstrap, records[joins:leaves])
    try:
        wait_for(lambda: (lambda m: len(m) == 2 and all(m))(members(kafka.bootstrap, group)), 180,
                 "the second worker to hold partitions", b)
        for w in (a, b):
            assert w.proc.poll() is None, w.tail()
    except BaseException:
        b.stop(signal.SIGKILL)
        raise
    # and leaves (a clean stop) before the end: the first takes its partitions back, with their state
    b.stop()
    publish(kafka.bootstrap, records[leaves:])
    alerts = the_answer(kafka, prefix, group, want, a)
    a.stop()
    check_alerts(alerts, truth, want)
