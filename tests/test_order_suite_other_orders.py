"""The order suite, continued (tests/test_order_suite.py says what it is): on a tenth of the volume, the other
orders stations produce (one kind's file after another, each region's file of each kind in a random order, a
day's hours uploaded in a random order, every event delayed by its own random hours), and (d') the stages
restarted at random points on nothing but what their tables hold, the records read since a commit read again.
"""
from __future__ import annotations

import random

import pytest

from stage_pipeline import Pipeline
from test_order_suite import (SEEDS, backlog, differ, each_delayed, in_event_time, kind_files, region_files,
                              region_kind_files, shuffled_hours, simulate)


@pytest.fixture(scope="module", params=SEEDS)
def small_day(request):
    """A seed's day at 0.1 of the volume, and event-time order's answer."""
    sim, events = simulate(request.param, 0.1)
    return request.param, events, Pipeline().deliver(in_event_time(events)).live()


@pytest.mark.parametrize("order", [kind_files, region_kind_files, shuffled_hours, each_delayed],
                         ids=lambda f: f.__name__)
def test_other_orders_within_the_allowed_delay_give_the_answer_of_event_time_order(small_day, order):
    seed, events, want = small_day
    got = Pipeline().deliver(order(events, random.Random(seed * 100 + 70))).live()
    assert got == want, f"seed {seed} {order.__name__}: {differ(want, got)}"


@pytest.mark.parametrize("order", [in_event_time, backlog, region_files], ids=lambda f: f.__name__)
def test_stages_restarted_at_random_points_from_their_tables_give_the_answer_of_event_time_order(small_day, order):
    seed, events, want = small_day
    rng = random.Random(seed * 100 + 90)
    delivery = order(events, rng) if order is region_files else order(events)
    points = sorted(rng.sample(range(len(events)), 3))
    pipeline = Pipeline().deliver(delivery, restarts=points, replay=500)
    assert pipeline.restarts == 3
    got = pipeline.live()
    assert got == want, f"seed {seed} {order.__name__}, restarted before records {points}: {differ(want, got)}"
