"""Event time: watermarks.

The watermark of a stream is the largest event time seen minus the allowed
lateness. With several partitions the stream's watermark is the smallest of
the partitions' own: a partition read far ahead of another (a replay, a
backlog) must not fire the other's deadlines early. A partition silent for
``idle_ms`` of wall-clock time while the others move on stops holding the
watermark back (it is "idle") until it speaks again. Silence counts only when
nothing of the partition is waiting to be read: a reader with a backlog of it
``touch``-es it. The clock is any monotonic one: the wall clock, or the
timestamps of the records a stage reads (so that a stage reading its input
behind measures silence as it was when the records were written).
"""
from __future__ import annotations

import time
from typing import Callable


class Watermark:
    def __init__(self, lateness_ms: int, idle_ms: int = 30_000, clock: Callable[[], float] = time.monotonic):
        self.lateness_ms = lateness_ms
        self.idle_ms = idle_ms
        self._clock = clock
        self._max: dict[object, int] = {}       # partition -> largest event time seen
        self._seen_at: dict[object, float] = {}  # partition -> wall clock of its last event
        self.late = 0
        # current() is asked on every event, of a stream with up to hundreds of upstreams: its last answer is
        # kept while nothing it depends on changed (None: to work out again). _lowest: the smallest maximum
        # of the partitions active then (None: none was); _oldest: the earliest of their last events, whose
        # going idle is the first change time alone can make.
        self._cached: int | None = None
        self._lowest: int | None = None
        self._oldest = 0.0

    def observe(self, partition, event_ms: int) -> bool:
        """Record one event; True when it is late (older than the watermark before it came)."""
        late = event_ms < self.current()
        if late:
            self.late += 1
        old = self._max.get(partition, -(1 << 62))
        now = self._clock()
        if self._cached is not None:
            seen = self._seen_at.get(partition)
            was_active = seen is not None and (now - seen) * 1000 < self.idle_ms
            # still the same answer unless the partition comes back from idle (or is new), or it was the
            # slowest one and moves on
            if not was_active or self._lowest is None or (event_ms > old and old <= self._lowest):
                self._cached = None
        if event_ms > old:
            self._max[partition] = event_ms
        self._seen_at[partition] = now
        return late

    def expect(self, partitions) -> None:
        """Partitions that will feed the stream and have not spoken yet hold the watermark back from now on
        (until they speak, or for ``idle_ms``): a stream restarted on a backlog must not run ahead of a
        partition it has not read from yet."""
        self._cached = None
        now = self._clock()
        for p in partitions:
            if p not in self._max:
                self._max[p] = -(1 << 62)
                self._seen_at[p] = now

    def touch(self, partitions) -> None:
        """Partitions whose reader still has records of them to read: they hold the watermark back (at what
        they have given so far) for another ``idle_ms``, though they have said nothing new."""
        self._cached = None
        now = self._clock()
        for p in partitions:
            self._max.setdefault(p, -(1 << 62))
            self._seen_at[p] = now

    def peak(self, partition) -> int | None:
        """The largest event time seen of ``partition`` (None: not known to the stream)."""
        return self._max.get(partition)

    def maxima(self) -> dict:
        """The largest event time of every partition that has given one (to keep with the stream's state)."""
        return {p: m for p, m in self._max.items() if m > -(1 << 62)}

    def restore(self, maxima: dict) -> None:
        """Maxima kept before a restart: events processed then are not read again, and the watermark must
        not fall back behind them (a stream that ends, a night without traffic, would judge nothing more).
        The partitions count as just heard from."""
        self._cached = None
        now = self._clock()
        for p, m in maxima.items():
            if m > self._max.get(p, -(1 << 62)):
                self._max[p] = m
            self._seen_at[p] = now

    def forget(self, partition) -> None:
        self._cached = None
        self._max.pop(partition, None)
        self._seen_at.pop(partition, None)

    def settled(self) -> bool:
        """True when silence can move the watermark no further: every partition holding it back (an active one
        whose largest event time is below the largest of all) has gone idle on the clock. A stage's ticks go on
        until then: they are what moves its clock while nothing else comes."""
        if not self._max:
            return True
        now, top = self._clock(), max(self._max.values())
        return not any(m < top and (now - self._seen_at[p]) * 1000 < self.idle_ms for p, m in self._max.items())

    def current(self) -> int:
        if not self._max:
            return -(1 << 62)
        now = self._clock()
        if self._cached is not None and (self._lowest is None or (now - self._oldest) * 1000 < self.idle_ms):
            return self._cached
        seen_at, idle_ms = self._seen_at, self.idle_ms
        active = [(m, seen_at[p]) for p, m in self._max.items() if (now - seen_at[p]) * 1000 < idle_ms]
        if active:
            self._lowest = min(m for m, _ in active)
            self._oldest = min(t for _, t in active)
            self._cached = self._lowest - self.lateness_ms
        else:
            self._lowest = None
            self._cached = max(self._max.values()) - self.lateness_ms
        return self._cached


class Claims:
    """Which upstreams some worker says it holds, as their ticks name them (on a stage's clock).

    Silence means idleness only for an upstream someone holds and reads to its end. In a rebalance a partition is
    held by nobody for a while (revoked from one worker, its new one still recovering its tables): silent, yet
    with records to read. The ticks the other workers go on sending move the stage's clock; without this it
    would see the partition go idle and judge hours whose events it holds. An upstream claimed before and not
    claimed by any tick for ``expire_s`` on the clock is unclaimed: the stage holds it back (``Watermark.touch``)
    until a worker claims it again. One never claimed is left to ``Watermark.expect`` (a partition named that
    does not exist must not hold a stage for ever).
    """

    def __init__(self, expire_s: float):
        self.expire_s = expire_s
        self._at: dict[object, float] = {}

    def claim(self, upstreams, now: float) -> None:
        for u in upstreams:
            self._at[u] = now

    def unclaimed(self, now: float) -> list:
        return [u for u, at in self._at.items() if now - at > self.expire_s]


class RecordClock:
    """The clock of a stage's own topic: the timestamps of the records it reads, for ``Watermark``'s idleness.

    Silence measured on it is silence as it was when the records were written, however far behind the stage
    reads. A gap between the records' timestamps longer than ``max_step_s`` is a time nobody wrote in (the
    workers restarting, or a quiet bus) and counts for ``max_step_s`` only: a restart is nobody's silence, and
    silence under-counted only makes the watermark wait longer, never judge early. The clock is the largest
    timestamp seen less the gaps left out.
    """

    def __init__(self, max_step_s: float = 5.0):
        self.max_step_s = max_step_s
        self._last: float | None = None     # the largest record timestamp seen
        self.now = 0.0

    def advance(self, timestamp: float | None) -> None:
        """Take the timestamp (seconds) of a record read."""
        if timestamp:
            if self._last is None:
                self._last = timestamp
            elif timestamp > self._last:
                self.now += min(timestamp - self._last, self.max_step_s)
                self._last = timestamp

    def __call__(self) -> float:
        return self.now
