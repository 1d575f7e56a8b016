"""Calibration and interleaved measuring rounds, until a stopping rule has what it needs.

Variants (each lane alone, the lanes back to back, the lanes at once) are measured in rounds, one sample
of each per round, in an order that rotates every round: slow drift (clocks, temperature, a neighbour's
load) then hits every variant alike, and the per-round ratio sequential/concurrent cancels it. A round is
kept whole or not at all, so every sample has its partners.

Each sample is a block of ``reps`` calls. On CPU it is preceded by a pause (``settle``: OpenMP workers of
the previous variant keep spinning for a while and would compete) and then by one untimed call of the
same variant, because the first call after a pause pays for waking the thread team and cold caches
(measured: +4 ms on a 4 ms BERT-like encoder after a 10 ms pause).

When rounds stop is the caller's rule (``stop``): enough precision, every bound decided, or the budget
spent; the hard ``deadline`` ends measuring whatever the rule says, mid-round if need be. Before
stopping, the rounds are checked for a slower start: a lane still settling when its warm-up looked steady
(a plateau, then a step down) shows as early rounds all slower than the later ones; those are dropped
and measuring goes on.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pytest_dualgpu import stats
from pytest_dualgpu.latency import closed_loop
from pytest_dualgpu.timeline import Interval, overlap
from pytest_dualgpu.units import time_text

if TYPE_CHECKING:
    from pytest_dualgpu.engine.executor import Run
    from pytest_dualgpu.results import Measurement

#: A round-trip to the worker threads costs tens of microseconds; blocks shorter than this are noise.
MIN_BLOCK_SECONDS = 0.002
MAX_REPS = 10_000
#: A slower start is dropped when its rounds were this much slower than the rest (median to median).
SLOW_START_STEP = 1.10
MAX_RECALIBRATIONS = 2

Variant = Callable[[int], "Run"]


@dataclass
class Samples:
    """Per-variant samples, in round order; ``blocks`` holds each sample's length in seconds."""

    elapsed: dict[str, list[float]] = field(default_factory=dict)
    wall: dict[str, list[float]] = field(default_factory=dict)
    overlaps: dict[str, list[float]] = field(default_factory=dict)
    blocks: dict[str, list[float]] = field(default_factory=dict)
    #: Per variant, per round, per lane of the run (in its order): each call's closed-loop latency.
    latencies: dict[str, list[list[list[float]]]] = field(default_factory=dict)
    #: Per variant, per round: each lane's busy intervals (a pipeline stage marks one per micro-batch).
    intervals: dict[str, list[list[list[Interval]]]] = field(default_factory=dict)
    last: dict[str, Run] = field(default_factory=dict)
    rounds: int = 0

    def add_round(self, runs: dict[str, Run], reps: int) -> None:
        for variant, run in runs.items():
            self.elapsed.setdefault(variant, []).append(run.elapsed)
            self.wall.setdefault(variant, []).append(run.wall)
            self.overlaps.setdefault(variant, []).append(overlap(run.intervals))
            self.blocks.setdefault(variant, []).append(run.elapsed * reps)
            self.latencies.setdefault(variant, []).append([closed_loop(ends) for ends in run.call_ends])
            self.intervals.setdefault(variant, []).append(run.intervals)
            run.outputs = []
            self.last[variant] = run
        self.rounds += 1

    def drop_first(self, count: int) -> None:
        for series in (self.elapsed, self.wall, self.overlaps, self.blocks, self.latencies, self.intervals):
            for variant in series:
                del series[variant][:count]
        self.rounds -= count

    def lane_latencies(self, variant: str, position: int) -> list[float]:
        """Every call's latency of the lane at ``position`` in the variant's runs, over all rounds."""
        return [latency for round_ in self.latencies.get(variant, []) for latency in round_[position]]


@dataclass
class Measured:
    samples: Samples
    reps: int
    stop: str
    dropped: int = 0
    recalibrated: int = 0
    notes: list[str] = field(default_factory=list)
    round_seconds: list[float] = field(default_factory=list)  # every full round's length, dropped ones too


def reps_for(per_call: dict[str, float], target_block: float) -> int:
    """Repetitions per sample: the longest variant's block near ``target_block`` (at most 4x it), and no
    block shorter than the timer and the hand-off can resolve."""
    if not per_call or min(per_call.values()) <= 0:
        return MAX_REPS
    shortest, longest = min(per_call.values()), max(per_call.values())
    target = max(MIN_BLOCK_SECONDS, target_block)
    reps = max(math.ceil(MIN_BLOCK_SECONDS / shortest), math.ceil(target / longest))
    reps = min(reps, max(1, math.ceil(4 * target / longest)))
    return max(1, min(MAX_REPS, reps))


def measure_rounds(
    variants: dict[str, Variant],
    reps: int,
    *,
    settle: float,
    preroll: bool,
    min_rounds: int,
    stop: Callable[[Samples, float], str | None],
    deadline: float,
    target_block: float | None = None,
    max_rounds: int = 1000,
    check_start: Callable[[Samples], int | None] | None = None,
) -> Measured:
    """Rotating rounds until ``stop(samples, now)`` gives a reason (asked after ``min_rounds``), or
    ``deadline`` (a ``time.perf_counter`` value) passes; one round at least, whatever the deadline.

    With ``target_block``, the first round checks the calibration: where its blocks came out far from the
    target (``_off_target``), ``reps`` is set again from what that round measured and it is measured anew
    (twice at most).
    """
    names = list(variants)
    measured = Measured(Samples(), reps, "")
    samples = measured.samples
    while samples.rounds < max_rounds:
        shift = samples.rounds % len(names)
        runs: dict[str, Run] = {}
        began = time.perf_counter()
        for name in names[shift:] + names[:shift]:
            if samples.rounds and time.perf_counter() >= deadline:  # one round there is, whatever the time
                break
            if settle:
                time.sleep(settle)
            if preroll:
                variants[name](1)
            runs[name] = variants[name](measured.reps)
        if len(runs) < len(names):
            measured.stop = "max budget" if samples.rounds >= min_rounds else "deadline"
            break
        samples.add_round(runs, measured.reps)
        measured.round_seconds.append(time.perf_counter() - began)
        if target_block is not None and samples.rounds == 1 and measured.recalibrated < MAX_RECALIBRATIONS:
            better = reps_for({name: run.elapsed for name, run in runs.items()}, target_block)
            if better != measured.reps and _off_target(samples, target_block):
                measured.notes.append(
                    f"recalibrated: {measured.reps} call(s) per sample gave blocks of "
                    f"{time_text(min(samples.blocks[name][0] for name in names), unit=False)}-"
                    f"{time_text(max(samples.blocks[name][0] for name in names))}; now {better}"
                )
                measured.reps = better
                measured.recalibrated += 1
                samples.drop_first(1)
                continue
        now = time.perf_counter()
        reason = stop(samples, now) if samples.rounds >= min_rounds or now >= deadline else None
        if reason is None:
            continue
        start = check_start(samples) if check_start is not None else None
        if start is not None and now < deadline:
            samples.drop_first(start)
            measured.dropped += start
            continue
        measured.stop = reason
        break
    else:
        measured.stop = "max rounds"
    start = check_start(samples) if check_start is not None else None
    if start is not None and samples.rounds - start >= stats.MIN_DECISION_ROUNDS:
        samples.drop_first(start)
        measured.dropped += start
    return measured


def _off_target(samples: Samples, target_block: float) -> bool:
    """The first round's blocks were far from what calibration aimed at: the longest under 0.4x or over
    4x the target (it may reach 4x by design), or the shortest under half the timer's minimum."""
    blocks = [series[0] for series in samples.blocks.values()]
    target = max(MIN_BLOCK_SECONDS, target_block)
    return max(blocks) < 0.4 * target or max(blocks) > 4 * target or min(blocks) < MIN_BLOCK_SECONDS / 2


def slower_start(series: dict[str, list[float]], variants: list[str]) -> int | None:
    """Rounds to drop from the start: where one of ``variants`` (times) began clearly slower than it went
    on, and the back-to-back time (which contains every lane) agrees it was slower then."""
    if not series:
        return None
    starts = []
    for variant in variants:
        split = stats.slower_start(series[variant])
        if split is None:
            continue
        earlier, later = series[variant][:split], series[variant][split:]
        sequential = series["sequential"]
        if stats.median(earlier) >= SLOW_START_STEP * stats.median(later) and stats.median(
            sequential[:split]
        ) > stats.median(sequential[split:]):
            starts.append(split)
    return max(starts) if starts else None


def block_warning(samples: Samples, reps: int) -> str | None:
    """A note when a variant's median sample was shorter than the timer resolves well."""
    short = {
        name: stats.median(blocks)
        for name, blocks in samples.blocks.items()
        if blocks and stats.median(blocks) < MIN_BLOCK_SECONDS / 2
    }
    if not short:
        return None
    shown = ", ".join(f"{name} {seconds * 1e6:.0f} us" for name, seconds in short.items())
    return (
        f"samples too short to time well ({shown} per sample of {reps} call(s), under "
        f"{MIN_BLOCK_SECONDS / 2 * 1e3:g} ms): the figures carry the timer's and hand-off's overhead"
    )


def measuring_notes(
    measured: Measured,
    times: tuple[Measurement, Measurement],
    *,
    min_rounds: int,
    cap: float,
    settle: float,
) -> list[str]:
    """What a result should say about its rounds: recalibrations, noise in the (sequential, concurrent)
    times, rounds left out, too few rounds (and why), samples too short."""
    notes = list(measured.notes)
    noisy = [
        f"{value.relative_iqr:.0%} ({label})"
        for label, value in zip(("sequential", "concurrent"), times, strict=True)
        if value.noisy
    ]
    if noisy:
        notes.append(
            f"noisy times: IQR/median is {' and '.join(noisy)}; raise the budget or quiet the machine"
        )
    if measured.dropped:
        notes.append(
            f"the first {measured.dropped} round(s) were left out: the lanes were still getting faster "
            "then, although their warm-up had looked steady (raise warmup= for such models)"
        )
    if measured.samples.rounds < min_rounds:
        notes.append(_few_rounds(measured, min_rounds, cap, settle))
    short = block_warning(measured.samples, measured.reps)
    if short:
        notes.append(short)
    return notes


def _few_rounds(measured: Measured, min_rounds: int, cap: float, settle: float) -> str:
    """Why fewer than ``min_rounds`` rounds fitted in ``max_budget``: a budget too small for one round
    here, or a machine that slowed down while it measured."""
    shortest = min(measured.round_seconds, default=0.0)
    said = f"only {measured.samples.rounds} round(s) fitted in max_budget {cap:g} s (min_rounds {min_rounds})"
    if shortest * min_rounds > cap:
        pauses = f", {settle * 1e3:g} ms of it settling pauses per variant" if settle else ""
        return (
            f"{said}: a round takes at least {time_text(shortest)} here{pauses}, so {min_rounds} rounds "
            f"need {shortest * min_rounds:.2f} s; raise the budget (max_budget is 5x it unless set)"
        )
    return f"{said}: the rounds took longer as the call went on (the machine slowed down)"
