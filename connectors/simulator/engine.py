"""The simulation: baseline and scripted incidents merged in event-time order, paced, published.

Event time runs from ``start`` at ``speed`` simulated seconds a wall second
(and at most ``rate`` events a wall second). The events themselves depend on
the seed and the options that shape traffic (start, span, regions, scenarios,
scale), never on the pace: the same seed gives the same events, ids and tokens
included, at any speed.
"""
from __future__ import annotations

import itertools
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable, Iterator

from schemas import reference
from schemas.pseudonym import DEMO_KEY, Pseudonymizer
from connectors.simulator import scenarios as sc
from connectors.simulator import truth
from connectors.simulator.profile import load_profile
from connectors.simulator.records import HOUR, iso, ms_of
from connectors.simulator.traffic import Baseline

DEFAULT_START = datetime(2017, 6, 5, tzinfo=timezone.utc)   # a Monday
DEFAULT_SPEED = 60.0
#: the frame incidents are placed in when the span is open-ended (no --duration, no --span)
OPEN_FRAME_HOURS = 24.0
#: Event times may not run ahead of the clock by more than the contract's skew (schemas.validation: 5 min).
FUTURE_SKEW_MS = 4 * 60 * 1000
#: The simulator's travellers are fictitious: their tokens are made with the public demo key, always, so that
#: the same seed gives the same tokens on every machine.
SIMULATOR_KEY = DEMO_KEY


class SimulationError(ValueError):
    pass


@dataclass
class Options:
    seed: int = 7
    start: datetime = DEFAULT_START
    speed: float | None = None          # simulated seconds a wall second; None with a rate: as fast as the rate
    rate: float | None = None           # at most this many events a wall second
    duration: float | None = None       # wall seconds
    span_hours: float | None = None     # simulated hours; default speed x duration
    regions: list[str] = field(default_factory=lambda: list(reference.REGIONS))
    scenarios: list[str] = field(default_factory=list)   # letters or names, or ["all"]
    scale: float = 1.0                  # multiplies baseline volumes (1.0: the paper's figures)

    def effective_speed(self) -> float | None:
        if self.speed is None and self.rate is None:
            return DEFAULT_SPEED
        return self.speed

    def span_ms(self) -> int | None:
        """The simulated span in ms, or None when it is open-ended."""
        if self.span_hours is not None:
            return int(self.span_hours * HOUR)
        speed = self.effective_speed()
        if self.duration is not None and speed is not None:
            return int(self.duration * speed * 1000)
        if self.duration is not None and self.rate is not None:
            # as fast as the rate: the span is what the rate publishes in the duration, at mean traffic
            per_sim_second = load_profile().annual_crossings / (8760 * 3600) * self.scale * sum(
                reference.regions()[r]["share_of_crossings"] for r in self.regions)
            return int(self.rate * self.duration / per_sim_second * 1000)
        return None


class Simulation:
    """Plans the traffic and incidents of ``options``; ``events()`` yields them, ``run()`` publishes them."""

    def __init__(self, options: Options):
        self.o = options
        self._publishing = False     # an event is being handed over and counted (``interrupt`` waits for it)
        self._interrupted = False
        for r in options.regions:
            if r not in reference.REGIONS:
                raise SimulationError(f"unknown region {r!r}; expected some of {', '.join(reference.REGIONS)}")
        if options.start.tzinfo is None:
            raise SimulationError("the start time needs a time zone (e.g. 2017-06-05T00:00Z)")
        if options.scale <= 0:
            raise SimulationError("--scale must be above 0")
        self.start = ms_of(options.start)
        span = options.span_ms()
        self.end = self.start + span if span is not None else None
        if self.end is not None and self.end > time.time() * 1000 + FUTURE_SKEW_MS:
            raise SimulationError(
                f"the simulated span would end at {iso(self.end)}, in the future: the contract refuses events "
                f"ahead of the clock; choose an earlier --start or a shorter span")
        first_hour = self.start // HOUR * HOUR
        self.pseudonymizer = Pseudonymizer(SIMULATOR_KEY)
        self.counter = itertools.count()
        self.baseline = Baseline(options.seed, options.regions, load_profile(), self.pseudonymizer, self.counter,
                                 scale=options.scale, first_hour=first_hour)
        letters = sc.resolve(options.scenarios) if options.scenarios else []
        self.skipped = {sc.SCENARIOS[x]: f"needs regions {', '.join(sorted(sc.NEEDS[x]))}"
                        for x in letters if not sc.NEEDS[x] <= set(options.regions)}
        letters = [x for x in letters if sc.NEEDS[x] <= set(options.regions)]
        frame = span if span is not None else int(OPEN_FRAME_HOURS * HOUR)
        self.incidents = sc.Planner(options.seed, self.start, frame, self.baseline, self.pseudonymizer).plan(letters)
        self.reached = self.start       # event time of the last event given out

    # ------------------------------------------------------------------ events
    def events(self) -> Iterator[tuple[int, int, str, dict]]:
        """(occurred_at ms, sequence, kind, record) in event-time order, up to the end of the span."""
        h0 = self.start // HOUR * HOUR
        while self.end is None or h0 < self.end:
            for ev in self.baseline.hour(h0, not_before=self.start):
                if self.end is not None and ev[0] >= self.end:
                    self.reached = self.end
                    return
                self.reached = max(self.reached, ev[0])
                yield ev
            h0 += HOUR
            self.reached = max(self.reached, min(h0, self.end) if self.end is not None else h0)

    def complete(self, incident: sc.Incident) -> bool:
        return self.reached >= incident.complete_at

    def truth_rows(self) -> list[truth.TruthRow]:
        return [r for inc in self.incidents if self.complete(inc) for r in inc.rows]

    # ------------------------------------------------------------------ run
    def interrupt(self) -> None:
        """Stop the run (a signal handler's call: SIGTERM, Ctrl-C): at once, or, while an event is being handed to
        ``publish`` and counted, right after it, so that the summary counts every event handed over and the
        truth is that of the last one. Raised anywhere, the interruption could land after the producer took an
        event and before it was counted (seen: 378 events summed up, 379 delivered)."""
        if self._publishing:
            self._interrupted = True
        else:
            raise KeyboardInterrupt

    def run(self, publish: Callable[[str, dict], object], *, progress: Callable[[dict], None] | None = None,
            clock=time.monotonic, sleep=time.sleep, should_stop: Callable[[], bool] | None = None) -> dict:
        """Publish every event through ``publish(kind, record)`` at the options' pace; returns the summary."""
        speed = self.o.effective_speed()
        rate = self.o.rate
        by = defaultdict(Counter)
        n = 0
        wall0 = clock()
        next_report = wall0
        stopped = None
        lag = 0.0
        last = self.start        # event time of the last event published
        finished = False
        try:
            for t, _seq, kind, record in self.events():
                if t > time.time() * 1000 + FUTURE_SKEW_MS:
                    stopped = "reached the present: later events would be ahead of the clock"
                    break
                target = wall0
                if speed is not None:
                    target += max(0, t - self.start) / 1000.0 / speed
                if rate is not None:
                    target = max(target, wall0 + n / rate)
                now = clock()
                if target > now + 0.002:
                    sleep(target - now)
                    now = target
                else:
                    lag = max(lag, now - target)
                self._publishing = True
                try:
                    publish(kind, record)
                    last = max(last, t)
                    n += 1
                    by[kind][record.get("region") or "ALL"] += 1
                finally:
                    self._publishing = False
                if self._interrupted:
                    raise KeyboardInterrupt
                if now >= next_report:
                    next_report = now + 0.25
                    if progress:
                        progress(self._progress(t, n, now - wall0))
                    if should_stop and should_stop():
                        stopped = "asked to stop"
                        break
                    if self.end is None and self.o.duration is not None and now - wall0 >= self.o.duration:
                        break
            else:
                finished = True
        except KeyboardInterrupt:
            stopped = "interrupted"
        if not finished:
            # the event in hand when the run stopped was not published: the run reached the one before it
            self.reached = last
        wall = clock() - wall0
        summary = {
            "seed": self.o.seed,
            "start": iso(self.start),
            "end": iso(self.reached),
            "span_hours": round((self.reached - self.start) / HOUR, 3),
            "regions": list(self.o.regions),
            "speed": speed, "rate": rate, "scale": self.o.scale,
            "events": n,
            "by_kind": {k: sum(v.values()) for k, v in sorted(by.items())},
            "by_kind_region": {k: dict(sorted(v.items())) for k, v in sorted(by.items())},
            "wall_seconds": round(wall, 3),
            "events_per_second": round(n / wall, 1) if wall > 0 else None,
            "max_lag_seconds": round(lag, 3),
            "incidents": [inc.summary(self.complete(inc)) for inc in self.incidents],
            "skipped_scenarios": self.skipped,
            "stopped": stopped,
        }
        for inc in summary["incidents"]:
            if inc["scenario"] == "flow_surge":
                inc["events"] = self.baseline.surge_events
        return summary

    def _progress(self, t: int, n: int, wall: float) -> dict:
        return {"event_time": iso(t), "simulated_seconds": (t - self.start) / 1000,
                "span_seconds": (self.end - self.start) / 1000 if self.end is not None else None,
                "events": n, "wall_seconds": wall}

    def write_truth(self, path) -> int:
        return truth.write(path, self.truth_rows())
