"""Calibration and interleaved measuring rounds.

Variants (each lane alone, the lanes back to back, the lanes at once) are measured in rounds, one sample
of each per round, in an order that rotates every round: slow drift (clocks, temperature, a neighbour's
load) then hits every variant alike, and the per-round ratio sequential/concurrent cancels it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .lanes import Run
from .timeline import overlap

#: A round-trip to the worker threads costs tens of microseconds; blocks shorter than this are noise.
MIN_BLOCK_SECONDS = 0.002
MAX_REPS = 10_000


@dataclass
class Samples:
    """Per-variant samples, in round order."""

    elapsed: dict[str, list[float]] = field(default_factory=dict)
    wall: dict[str, list[float]] = field(default_factory=dict)
    overlaps: dict[str, list[float]] = field(default_factory=dict)
    last: dict[str, Run] = field(default_factory=dict)
    rounds: int = 0

    def add(self, variant: str, run: Run) -> None:
        self.elapsed.setdefault(variant, []).append(run.elapsed)
        self.wall.setdefault(variant, []).append(run.wall)
        self.overlaps.setdefault(variant, []).append(overlap(run.intervals))
        run.outputs = []
        self.last[variant] = run


def reps_for(iteration_seconds: float, budget: float, variants: int, min_rounds: int) -> int:
    """Repetitions per sample so that ``min_rounds`` rounds take about half the budget.

    Half, so that with a fast model the budget buys many more than the minimum rounds, which is what
    narrows the confidence interval; and never below a block that the timer and hand-off can resolve.
    """
    target = max(MIN_BLOCK_SECONDS, budget / (2 * min_rounds * variants))
    if iteration_seconds <= 0:
        return MAX_REPS
    return max(1, min(MAX_REPS, math.ceil(target / iteration_seconds)))


def measure_rounds(
    variants: dict[str, Callable[[], Run]],
    *,
    budget: float,
    min_rounds: int,
    settle: float,
    max_rounds: int = 1000,
) -> Samples:
    """Run rotating rounds until ``budget`` seconds are spent (and at least ``min_rounds``).

    ``settle`` is slept between variants: on CPU, OpenMP workers keep spinning for a while after a
    parallel region, and a variant started right after one would compete with them.
    """
    names = list(variants)
    samples = Samples()
    deadline = time.perf_counter() + budget
    while samples.rounds < max_rounds and (samples.rounds < min_rounds or time.perf_counter() < deadline):
        shift = samples.rounds % len(names)
        for name in names[shift:] + names[:shift]:
            if settle:
                time.sleep(settle)
            samples.add(name, variants[name]())
        samples.rounds += 1
    return samples


def time_once(run: Callable[[], Run], times: int = 3) -> float:
    """Median per-iteration time of a few single runs, for calibration."""
    values = sorted(run().elapsed for _ in range(times))
    return values[len(values) // 2]
