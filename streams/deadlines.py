"""The subject stage's pending deadlines (transit stays), fired on the stage's watermark.

Kept apart from the Faust wiring so that its mechanics run without Kafka: deadlines learned in any order, a
watermark that rises or stays, a deadline already due when it is learned (a late upload) fired at once, and a
deadline whose subject has changed since (an exit read meanwhile) passed over.
"""
from __future__ import annotations

import heapq
from typing import Callable, Iterable, Iterator


class Deadlines:
    """A queue of (event time, subject): the subject has something due at that time.

    Entries are not removed when a subject's state changes; ``due`` asks ``current(subject)`` for the subject's
    deadline now and passes over an entry that no longer matches it. The highest watermark given to ``due`` is
    kept: a deadline learned at or below it is due at once (``judge``)."""

    def __init__(self):
        self._heap: list[tuple[int, str]] = []
        self.judge: int | None = None      # the highest watermark the stage has reached

    def __len__(self) -> int:
        return len(self._heap)

    def reset(self, entries: Iterable[tuple[int, str]]) -> None:
        """Every pending deadline anew (after a rebalance: the subjects of the partitions held now)."""
        self._heap = list(entries)
        heapq.heapify(self._heap)

    def add(self, deadline: int, subject: str) -> None:
        heapq.heappush(self._heap, (deadline, subject))

    def watermark(self, wm: int) -> bool:
        """Take the stage's watermark; True when it rose."""
        if self.judge is None or wm > self.judge:
            self.judge = wm
            return True
        return False

    def due(self, current: Callable[[str], int | None]) -> Iterator[tuple[int, str]]:
        """The (deadline, subject) pairs before the highest watermark, earliest first, whose subject still has
        that deadline (``current(subject)``: its next deadline now, None when it has none). Each is given once;
        an entry added while iterating that is already due is given in its turn."""
        while self._heap and self.judge is not None and self._heap[0][0] < self.judge:
            d, s = heapq.heappop(self._heap)
            if current(s) == d:
                yield d, s
