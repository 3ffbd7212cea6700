"""The order suite, at the stages (no Kafka): the simulator's incidents a-j with baseline traffic, delivered
in several orders, give one answer: exactly the live alert ids of event-time order.

Deliveries (tests/stage_pipeline.py plays both stages as the worker wires them):
  (a)  event-time order at live pace (a simulated hour a second), the worker keeping up;
  (a') everything published before the worker reads it: a pure backlog, read at 5,000 records a second;
  (b)  one region's whole file after another, in a random region order (each file published at once);
  (c)  one region delayed by a random number of hours within the allowed delay, at live pace;
and, on a tenth of the volume, other orders stations produce: one kind's file after another, each region's
file of each kind in a random order, every event delayed by its own random hours, a day's hours uploaded in a
random order; and (d') the stages restarted at random points on nothing but what their tables hold, the
records read since a commit read again (a worker killed: what lives only in memory is lost, what it had read
after its last commit is read twice).
The real-broker variants ((d) a worker SIGKILLed and restarted, (e) a second worker joining and leaving) are
tests/test_order_suite_broker.py; these try many more orders than a broker can. The orders on a tenth of the
volume and (d') are tests/test_order_suite_other_orders.py (a file of their own: pytest-xdist runs a file in one
process, and the two share out the suite's CPU).
"""
from __future__ import annotations

import os
import random

import pytest

from connectors.simulator.engine import Options, Simulation
from stage_pipeline import REGIONS, Pipeline
from streams import evaluate, ruleset

SPAN_HOURS = 30
# `make test` tries one seed at 0.3 of the paper's volume (its TEST_ORDER_SCALE); `make order-suite` several seeds
# and draws at full volume (some 205,000 events; about 20 s of CPU a delivery). By hand:
# YRDBUS_ORDER_SEEDS=11,23,31 YRDBUS_ORDER_DRAWS=3 YRDBUS_ORDER_SCALE=0.1 (a tenth of the volume); 1.0 by default
SEEDS = [int(x) for x in os.environ.get("YRDBUS_ORDER_SEEDS", "11").split(",") if x.strip()]
DRAWS = int(os.environ.get("YRDBUS_ORDER_DRAWS", "1"))
SCALE = float(os.environ.get("YRDBUS_ORDER_SCALE", "1.0"))
SPEED = 3600.0                                  # simulated seconds a wall second: live pace, sped up
DELAY_H = ruleset.default()["event_time"]["allowed_delay_hours"]


def simulate(seed: int, scale: float):
    sim = Simulation(Options(seed=seed, scenarios=["all"], span_hours=SPAN_HOURS, scale=scale))
    events = [(t, kind, rec) for t, _, kind, rec in sim.events()]
    return sim, events


def in_event_time(events) -> list:
    t0 = events[0][0]
    return [((t - t0) / 1000 / SPEED, kind, rec) for t, kind, rec in events]


def backlog(events) -> list:
    return [(0.0, kind, rec) for _, kind, rec in events]


def region_files(events, rng: random.Random) -> list:
    """Each region's day as one file, published at once, one region after another (operators' controls first)."""
    order = list(REGIONS)
    rng.shuffle(order)
    rank = {r: n for n, r in enumerate(order)}
    files = sorted(events, key=lambda e: (rank.get(e[2].get("region"), -1), e[0]))
    return [(n / 50_000, kind, rec) for n, (_, kind, rec) in enumerate(files)]


def region_delayed(events, rng: random.Random) -> tuple[list, str, float]:
    late, hours = rng.choice(REGIONS), rng.uniform(1, DELAY_H - 6)
    t0 = events[0][0]
    return ([((t - t0 + (hours * 3_600_000 if rec.get("region") == late else 0)) / 1000 / SPEED, kind, rec)
             for t, kind, rec in events], late, hours)


def kind_files(events, rng: random.Random) -> list:
    """Each kind's file (clearances, alerts, cases, controls) published at once, one after another."""
    order = ["clearance", "alert", "case", "control"]
    rng.shuffle(order)
    return _files(events, lambda e: order.index(e[1]))


def region_kind_files(events, rng: random.Random) -> list:
    """Each region's file of each kind, the files in a random order."""
    files = sorted({(e[2].get("region", ""), e[1]) for e in events})
    rng.shuffle(files)
    rank = {f: n for n, f in enumerate(files)}
    return _files(events, lambda e: rank[(e[2].get("region", ""), e[1])])


def shuffled_hours(events, rng: random.Random) -> list:
    """The day uploaded an hour of events at a time, the hours in a random order."""
    hours = sorted({t // 3_600_000 for t, _, _ in events})
    rng.shuffle(hours)
    rank = {h: n for n, h in enumerate(hours)}
    return _files(events, lambda e: rank[e[0] // 3_600_000])


def each_delayed(events, rng: random.Random, hours: float = 6.0) -> list:
    """Every event published its own random number of hours (up to ``hours``) after it happened, at live pace."""
    t0 = events[0][0]
    return [((t - t0 + rng.uniform(0, hours) * 3_600_000) / 1000 / SPEED, kind, rec) for t, kind, rec in events]


def _files(events, rank) -> list:
    files = sorted(events, key=lambda e: (rank(e), e[0]))
    return [(n / 50_000, kind, rec) for n, (_, kind, rec) in enumerate(files)]


def kinds(live: dict) -> dict:
    out: dict = {}
    for k in live.values():
        out[k] = out.get(k, 0) + 1
    return out


def differ(want: dict, got: dict) -> str:
    return (f"missing {sorted((want[i], i) for i in set(want) - set(got))}, "
            f"extra {sorted((got[i], i) for i in set(got) - set(want))}")


@pytest.fixture(scope="module", params=SEEDS)
def day(request):
    """A seed's 30 hours of incidents a-j and baseline (``SCALE`` of the paper's volume), and event-time order's
    answer, which must find every incident with no false alert."""
    sim, events = simulate(request.param, SCALE)
    want = Pipeline().deliver(in_event_time(events))
    truth = [evaluate.normalise_row(r.as_json()) for r in sim.truth_rows()]
    scored = evaluate.score(truth, list({a["alert_id"]: a for a in want.versions}.values()))
    assert scored["recall"] == 1.0 and scored["precision"] == 1.0, scored
    return request.param, events, want.live()


def test_a_pure_backlog_gives_the_answer_of_event_time_order(day):
    seed, events, want = day
    got = Pipeline().deliver(backlog(events)).live()
    assert got == want, f"seed {seed}: {differ(want, got)}"


@pytest.mark.parametrize("draw", range(DRAWS))
def test_one_regions_whole_file_after_another_gives_the_answer_of_event_time_order(day, draw):
    seed, events, want = day
    rng = random.Random(seed * 100 + draw)
    got = Pipeline().deliver(region_files(events, rng)).live()
    assert got == want, f"seed {seed} draw {draw}: {differ(want, got)}"


@pytest.mark.parametrize("draw", range(DRAWS))
def test_a_region_delayed_within_the_allowed_delay_gives_the_answer_of_event_time_order(day, draw):
    seed, events, want = day
    delivery, late, hours = region_delayed(events, random.Random(seed * 100 + 50 + draw))
    got = Pipeline().deliver(delivery).live()
    assert got == want, f"seed {seed}, {late} {hours:.1f} h late: {differ(want, got)}"
