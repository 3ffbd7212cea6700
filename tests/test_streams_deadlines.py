"""streams.deadlines.Deadlines without Kafka: the subject stage's pending deadlines, learned in any order."""
from __future__ import annotations

import itertools
import random

import pytest

from streams.deadlines import Deadlines

pytestmark = pytest.mark.unit   # no Java, Kafka or ClickHouse: `make unit`


def fire(dl: Deadlines, states: dict) -> list[tuple[int, str]]:
    """What the stage does on a step: every due deadline whose subject still has it, its stay then closed."""
    out = []
    for d, s in dl.due(lambda s: states.get(s)):
        out.append((d, s))
        states[s] = None
    return out


def test_a_deadline_fires_once_the_watermark_is_past_it_and_not_before():
    dl, states = Deadlines(), {"a": 100}
    dl.add(100, "a")
    assert dl.watermark(100) and fire(dl, states) == []          # at the deadline: still in time
    assert dl.watermark(101) and fire(dl, states) == [(100, "a")]
    assert fire(dl, states) == [] and len(dl) == 0


def test_a_deadline_learned_already_due_fires_at_once_without_the_watermark_rising():
    dl, states = Deadlines(), {}
    assert dl.watermark(1_000)
    states["late"] = 400
    dl.add(400, "late")                                         # a late upload: due when it is learned
    assert not dl.watermark(1_000)                             # the watermark did not rise
    assert fire(dl, states) == [(400, "late")]


def test_the_watermark_never_goes_back_a_lower_one_judges_on_the_highest():
    dl, states = Deadlines(), {"a": 500}
    dl.watermark(1_000)
    assert not dl.watermark(200) and dl.judge == 1_000          # a rebalance may start a stage lower
    dl.add(500, "a")
    assert fire(dl, states) == [(500, "a")]


def test_an_entry_whose_subject_changed_since_is_passed_over():
    dl = Deadlines()
    states = {"a": None, "b": 700}                             # a's exit was read meanwhile; b moved its deadline
    dl.add(300, "a")
    dl.add(300, "b")
    dl.add(700, "b")
    dl.watermark(800)
    assert fire(dl, states) == [(700, "b")]


@pytest.mark.parametrize("seed", range(5))
def test_the_same_deadlines_fire_whatever_order_they_are_learned_in(seed):
    """The deadlines and the watermarks in any interleaving: at the end, each subject's deadline below the
    highest watermark has fired once, the others not at all."""
    rng = random.Random(seed)
    deadlines = {f"s{i}": rng.randrange(0, 10_000) for i in range(40)}
    marks = sorted(rng.randrange(0, 12_000) for _ in range(6))
    expected = sorted((d, s) for s, d in deadlines.items() if d < marks[-1])
    for _ in range(20):
        steps = [("d", s) for s in deadlines] + [("w", m) for m in marks]
        rng.shuffle(steps)
        dl, states, fired = Deadlines(), {}, []
        for kind, x in steps:
            if kind == "d":
                states[x] = deadlines[x]
                dl.add(deadlines[x], x)
            else:
                dl.watermark(x)
            fired += fire(dl, states)
        assert sorted(fired) == expected


def test_reset_takes_the_pending_deadlines_anew():
    dl, states = Deadlines(), {"a": 10, "b": 20}
    dl.add(5, "gone")
    dl.reset([(20, "b"), (10, "a")])
    dl.watermark(100)
    assert fire(dl, states) == [(10, "a"), (20, "b")]
    assert list(itertools.islice(dl.due(lambda s: None), 1)) == []
