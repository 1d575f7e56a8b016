"""Busy intervals of lanes, and how much of them ran at the same time.

A lane's timeline is a list of ``(start, end)`` intervals in seconds, one per repetition of its model,
measured from a common origin (CUDA events on the lane's stream, or ``perf_counter`` in the lane's
thread). Per-repetition intervals rather than one envelope per lane matter: two lanes whose repetitions
merely alternate have envelopes that coincide, yet no two intervals of theirs ever overlap.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

Interval = tuple[float, float]


def union_length(intervals: Iterable[Interval]) -> float:
    """Total time covered by at least one interval."""
    total = 0.0
    current_start: float | None = None
    current_end = 0.0
    for start, end in sorted(intervals):
        if current_start is None or start > current_end:
            if current_start is not None:
                total += current_end - current_start
            current_start, current_end = start, end
        else:
            current_end = max(current_end, end)
    if current_start is not None:
        total += current_end - current_start
    return total


def overlap(lanes: Sequence[Sequence[Interval]]) -> float:
    """(sum of lane busy times - their union) / (sum - longest): 0 one after the other, 1 fully at once."""
    busy = [union_length(intervals) for intervals in lanes]
    total = sum(busy)
    span = total - max(busy, default=0.0)
    if span <= 0.0:
        return 0.0
    shared = total - union_length(interval for intervals in lanes for interval in intervals)
    return min(1.0, max(0.0, shared / span))


@dataclass(frozen=True)
class LaneTimeline:
    """One lane's intervals in one run, kept for traces and for diagnosing a missing overlap; ``total`` is
    how many the lane had where only the first are kept (None: all are)."""

    lane: str
    intervals: tuple[Interval, ...]
    total: int | None = None

    def capped(self, limit: int) -> LaneTimeline:
        if len(self.intervals) <= limit:
            return self
        return LaneTimeline(self.lane, self.intervals[:limit], self.total or len(self.intervals))

    @property
    def busy(self) -> float:
        return union_length(self.intervals)

    @property
    def envelope(self) -> Interval:
        return (min(start for start, _ in self.intervals), max(end for _, end in self.intervals))
