"""Whether a result's figures can be true: physically possible, steady, and not contradicting each other.

Every check works on the paired per-round samples a result keeps (each lane alone, back to back, at once:
one of each per round), so it judges what was measured in the same moment, and it needs no torch: a
result read back from JSON can be checked again. A problem makes the result unreliable (no verdict passes
on it); a warning is shown beside the figures.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from pytest_dualgpu import stats
from pytest_dualgpu.bounds import Bound
from pytest_dualgpu.gpustate import state_warnings
from pytest_dualgpu.results import DualResult
from pytest_dualgpu.units import ratio_text, time_text

#: How far the speedup may exceed the ideal before overhead no longer explains it: the ideal rests on the
#: alone times, which are measured apart from the concurrent run they are compared with.
IDEAL_EXCESS = 0.05
#: How far the typical round (the median) may be beyond the ideal, or below the slowest lane, where the
#: interval does not decide it: at 7 rounds a pair whose ideal is about 1.0 measured medians up to 7%
#: above it (short budgets, the 2-core VM), and none of the pairs measured came near a quarter.
TYPICAL_EXCESS = 0.25
#: How far the back-to-back time may stray from the sum of the alone times (both back to back on one
#: thread and stream, so only caches and the previous lane's leftovers tell them apart).
SEQUENTIAL_DISAGREEMENT = 0.10
#: How much faster than the slowest lane alone the lanes at once may seem before it cannot be true.
CONCURRENT_FLOOR = 0.05
DRIFT_ALPHA = 0.01
DRIFT_MIN_CHANGE = 0.10
OUTLIER_SHARE = 0.10


@dataclass
class Assessment:
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def best_possible_time(alone: Sequence[float], micro_batches: int | None) -> float:
    """What perfect overlap would take: the slowest lane, and for a pipeline of k micro-batches also the
    faster stage's share of one micro-batch (the consumer cannot start before the producer's first)."""
    if micro_batches is None:
        return max(alone)
    return max(alone) + min(alone) / micro_batches


def assess(result: DualResult) -> Assessment:
    found = Assessment()
    if result.gpu_state:
        warnings, problems = state_warnings(result.gpu_state.get("start"), result.gpu_state.get("end"))
        found.warnings += warnings
        found.problems += problems
    rounds = _Rounds(result)
    if rounds.count == 0:
        return found
    _possible(result, rounds, found)
    _contradictions(result, found)
    _drift(result, rounds, found)
    _outliers(rounds, found)
    if rounds.count < stats.MIN_DECISION_ROUNDS:
        found.warnings.append(
            f"only {rounds.count} measured round(s): too few for a 95% interval, so no bound can be decided; "
            "raise the budget"
        )
    return found


class _Rounds:
    """The per-round samples of one result, paired."""

    def __init__(self, result: DualResult) -> None:
        self.alone = [list(lane.alone.samples) for lane in result.lanes]
        self.sequential = list(result.sequential.samples)
        self.concurrent = list(result.concurrent.samples)
        lengths = {len(self.sequential), len(self.concurrent), *(len(lane) for lane in self.alone)}
        self.count = len(self.sequential) if len(lengths) == 1 else 0
        self.micro_batches = result.micro_batches

    def per_round(self, index: int) -> list[float]:
        return [lane[index] for lane in self.alone]

    def ratios(self, value: str) -> list[float]:
        values = []
        for index in range(self.count):
            alone = self.per_round(index)
            sequential, concurrent = self.sequential[index], self.concurrent[index]
            if min(alone) <= 0 or concurrent <= 0:
                continue
            best = best_possible_time(alone, self.micro_batches)
            values.append(
                {
                    "speedup/ideal": (sequential / concurrent) / (sum(alone) / best),
                    "concurrent/slowest": concurrent / max(alone),
                    "sequential/sum": sequential / sum(alone),
                }[value]
            )
        return values


def _possible(result: DualResult, rounds: _Rounds, found: Assessment) -> None:
    """The speedup and the concurrent time are impossible when the whole interval of their median round is
    beyond what physics allows, or when the typical round (the median) is far beyond it: a verdict passed
    there would rest on rounds that cannot be true, however far one ordinary round widens the interval."""
    over_ideal = rounds.ratios("speedup/ideal")
    floor = rounds.ratios("concurrent/slowest")
    sums = rounds.ratios("sequential/sum")
    cpu = result.device.startswith("cpu")
    if over_ideal and (
        stats.median_ci(over_ideal)[0] > 1 + IDEAL_EXCESS or stats.median(over_ideal) > 1 + TYPICAL_EXCESS
    ):
        lo, hi = result.speedup_ci
        why = (
            "the lanes ran with fewer intra-op threads each than alone, so a model that is faster with "
            "fewer threads (or a back-to-back run whose threads lost their cores to other work) gains from "
            "the split, not from overlap"
            if cpu
            else "the back-to-back run was slowed by something the lanes at once escaped"
        )
        found.problems.append(
            f"speedup {ratio_text(result.speedup, (lo, hi))} is above the ideal "
            f"{ratio_text(result.ideal_speedup)} that perfect overlap of these lanes allows (per round by "
            f"{stats.median(over_ideal) - 1:.0%}{_how_surely(over_ideal, 1 + IDEAL_EXCESS)}): {why}"
        )
    if floor and (
        stats.median_ci(floor)[1] < 1 - CONCURRENT_FLOOR or stats.median(floor) < 1 - TYPICAL_EXCESS
    ):
        slowest = max(result.lanes, key=lambda lane: lane.alone.median)
        surely = _how_surely(floor, 1 - CONCURRENT_FLOOR)
        found.problems.append(
            f"the lanes at once ({time_text(result.concurrent.median)}) finished sooner than lane "
            f"{slowest.name!r} alone ({time_text(slowest.alone.median)}){surely}: "
            "no overlap can do that, so the alone runs were slowed by something the concurrent run escaped"
        )
    elif result.efficiency_ci is not None and result.efficiency_ci[0] > 1 + IDEAL_EXCESS:
        # On its interval, not its median: for a pair with a short lane beside a long one the possible gain
        # is small, so a per-round efficiency swings by tens of percent on noise of a percent.
        found.problems.append(
            f"efficiency {result.efficiency:.2f} [95% CI {result.efficiency_ci[0]:.2f}, "
            f"{result.efficiency_ci[1]:.2f}] is above 1: the lanes at once beat perfect overlap"
        )
    if sums:
        lo, hi = stats.median_ci(sums)
        if lo > 1 + SEQUENTIAL_DISAGREEMENT or hi < 1 - SEQUENTIAL_DISAGREEMENT:
            total = sum(lane.alone.median for lane in result.lanes)
            found.problems.append(
                f"the back-to-back time {time_text(result.sequential.median)} disagrees with the sum of the "
                f"alone times {time_text(total)} (per round {ratio_text(stats.median(sums), (lo, hi))}): "
                "the back-to-back run is not what its parts take, so the speedup does not measure overlap"
            )


def _how_surely(per_round: list[float], limit: float) -> str:
    """What to add where the median round is impossible but the 95% interval still reaches possible ones."""
    lo, hi = stats.median_ci(per_round)
    if lo <= limit <= hi:
        return f"; the typical round, though noise lets the interval [{lo:.2f}, {hi:.2f}] reach possible ones"
    return ""


def _leans(ratio: float) -> int:
    """Which way a ratio of times points (1 faster at once, -1 slower), 0 where it shows as 1.00x."""
    return 0 if round(ratio, 2) == 1.0 else 1 if ratio > 1 else -1


def _contradictions(result: DualResult, found: Assessment) -> None:
    """The speedup is a median of per-round ratios, the time columns medians of each variant apart; where
    they point different ways, say which to believe."""
    against_one = Bound("speedup", 1.0).decide_on(result)
    faster_at_once = result.concurrent.median < result.sequential.median
    by_medians = result.sequential.median / result.concurrent.median if result.concurrent.median > 0 else 1.0
    per_round = _leans(result.speedup)
    if (against_one == stats.PASS and not faster_at_once) or (against_one == stats.FAIL and faster_at_once):
        found.problems.append(
            f"the rounds contradict each other: speedup {ratio_text(result.speedup)} per round, but the "
            f"medians are {time_text(result.sequential.median)} back to back and "
            f"{time_text(result.concurrent.median)} at once; "
            "the machine's speed changed between rounds more than concurrency changed it"
        )
    elif against_one == stats.INCONCLUSIVE and per_round != 0 and per_round == -_leans(by_medians):
        lo, hi = result.speedup_ci
        found.warnings.append(
            f"no gain or loss beyond noise: speedup {ratio_text(result.speedup, (lo, hi))} "
            f"includes 1, and the medians ({time_text(result.sequential.median)} back to back, "
            f"{time_text(result.concurrent.median)} at once) lean the other way"
        )
    efficiency = result.efficiency_ci
    if efficiency is not None and (
        (efficiency[0] > 0 and against_one == stats.FAIL) or (efficiency[1] < 0 and against_one == stats.PASS)
    ):
        found.problems.append(
            f"efficiency {result.efficiency:.2f} and speedup {ratio_text(result.speedup)} point different "
            "ways: the alone times moved between rounds"
        )


def _drift(result: DualResult, rounds: _Rounds, found: Assessment) -> None:
    series = {f"the alone time of lane {lane.name!r}": rounds.alone[i] for i, lane in enumerate(result.lanes)}
    series["the back-to-back time"] = rounds.sequential
    series["the concurrent time"] = rounds.concurrent
    for label, samples in series.items():
        moved = _moved(label, samples)
        if moved:
            found.warnings.append(f"drifting: {moved}; the median describes no single moment")
    speedups = stats.paired_ratios(rounds.sequential, rounds.concurrent)
    moved = _moved("the per-round speedup", speedups)
    if moved:
        found.problems.append(f"drifting speedup: {moved}: concurrency paid differently as the run went on")


def _moved(label: str, samples: list[float]) -> str | None:
    """How a series drifted over the rounds, when it did (significant at 1% and by 10% or more)."""
    moving = stats.trend(samples)
    if moving is None or not moving.significant(DRIFT_ALPHA, DRIFT_MIN_CHANGE):
        return None
    return (
        f"{label} {'rose' if moving.change > 0 else 'fell'} by {abs(moving.change):.0%} over {len(samples)} "
        f"rounds (Mann-Kendall p={moving.p_value:.1g})"
    )


def _outliers(rounds: _Rounds, found: Assessment) -> None:
    speedups = stats.paired_ratios(rounds.sequential, rounds.concurrent)
    far = stats.outliers(speedups)
    if len(far) >= 2 and len(far) > OUTLIER_SHARE * len(speedups):
        found.warnings.append(
            f"{len(far)} of {len(speedups)} rounds are far outliers (speedup beyond 3 IQR of the quartiles); "
            "they are kept: the median and its interval do not depend on how far out they lie"
        )
