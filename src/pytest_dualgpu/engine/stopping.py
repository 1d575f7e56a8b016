"""When to stop measuring, and the figures the decision rests on, from the rounds measured so far.

Every bound given is decided (or cannot be: it lies within the harness's margin of a precise figure);
else, with no bound, the speedup is precise enough (``PRECISION_WIDTH``); else the budget is spent. With
bounds still open, measuring goes on to the deadline (``max_budget``). Torch-free.

Looking after every round and stopping at the first decided look would decide by chance more often than
one look at 95% does (the optional-stopping problem), so a look stops measuring only when the stricter
``INTERIM_CONFIDENCE`` interval is decided; the verdict itself is then taken once, on the 95% interval of
all the rounds.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from pytest_dualgpu import stats
from pytest_dualgpu.bounds import Bound, Figure, all_decided
from pytest_dualgpu.engine.measure import Samples

#: Without a bound to decide, measuring stops once the speedup's 95% interval is this narrow (its whole
#: width as a share of the median, so +-2.5%): past that, more rounds change no conclusion anyone draws.
PRECISION_WIDTH = 0.05
INTERIM_CONFIDENCE = 0.99


class StoppingRule:
    """When to stop measuring: every bound decided (or undecidable), else a precise enough speedup, else
    the budget spent; with bounds still open, measuring goes on to the deadline (``max_budget``)."""

    def __init__(
        self,
        bounds: Sequence[Bound],
        *,
        budget_deadline: float,
        deadline: float,
        figures: Callable[[Samples, float], dict[str, Figure | None]],
    ) -> None:
        self.bounds = bounds
        self.budget_deadline = budget_deadline
        self.deadline = deadline
        self.figures = figures

    def __call__(self, samples: Samples, now: float) -> str | None:
        figures = self.figures(samples, 0.95)
        speedup = figures["speedup"]
        precise = (
            speedup is not None and stats.relative_width(speedup.interval, speedup.value) <= PRECISION_WIDTH
        )
        if now >= self.deadline:
            return "max budget"
        if self.bounds:
            strict = self.figures(samples, INTERIM_CONFIDENCE)
            if all_decided(self.bounds, strict):
                return "decided"
            if precise and all(
                bound.decide(strict.get(bound.key)) != stats.INCONCLUSIVE
                or bound.undecidable(figures.get(bound.key))
                for bound in self.bounds
            ):
                return "undecidable"
        elif precise:
            return "precise"
        elif now >= self.budget_deadline:
            return "budget"
        if now >= self.deadline:
            return "max budget"
        return None


def figures(
    samples: Samples,
    confidence: float,
    *,
    lanes: int,
    best_time: Callable[[list[float]], float],
    slowdowns: Sequence[tuple[str, int, int]] = (),
) -> dict[str, Figure | None]:
    """The figures bounds are decided on, from the rounds so far, with intervals at ``confidence``;
    ``slowdowns`` asks for lanes' slowdowns, each as (key, lane index, percentile)."""

    def figure(values: list[float]) -> Figure | None:
        if not values:
            return None
        return Figure(stats.median(values), stats.median_ci(values, confidence), len(values), confidence)

    found = {
        "speedup": figure(stats.paired_ratios(samples.elapsed["sequential"], samples.elapsed["concurrent"])),
        "efficiency": figure(per_round_efficiencies(samples, lanes, best_time)),
        "concurrent": figure(samples.elapsed["concurrent"]),
    }
    for key, index, percentile in slowdowns:
        found[key] = _slowdown(samples, index, percentile, confidence)
    return found


def _slowdown(samples: Samples, index: int, percentile: int, confidence: float) -> Figure | None:
    """A lane's slowdown at a percentile: the ratio of its latency quantiles at once and alone, each with
    an interval at half the error, so that their quotient's interval holds ``confidence``."""
    alone = samples.lane_latencies(f"alone:{index}", 0)
    at_once = samples.lane_latencies("concurrent", index)
    if not alone or not at_once:
        return None
    each = 1 - (1 - confidence) / 2
    q = percentile / 100
    interval = stats.ratio_ci(stats.quantile_ci(at_once, q, each), stats.quantile_ci(alone, q, each))
    if interval is None:
        return None
    value = stats.quantile(at_once, q) / stats.quantile(alone, q)
    return Figure(value, interval, samples.rounds, confidence)


def per_round_efficiencies(
    samples: Samples, lane_count: int, best_time: Callable[[list[float]], float]
) -> list[float]:
    """Per round: (sequential - concurrent) / (sequential - best possible concurrent time).

    The best possible time is the slowest lane alone, or for a pipeline of k micro-batches that plus the
    faster lane's share of one micro-batch.

    Per round, like the speedup: on a machine whose speed drifts, the medians of separately sorted
    variants can come from different phases and disagree with the paired speedup.
    """
    per_round = []
    for round_index in range(samples.rounds):
        sequential = samples.elapsed["sequential"][round_index]
        concurrent = samples.elapsed["concurrent"][round_index]
        alone = [samples.elapsed[f"alone:{lane}"][round_index] for lane in range(lane_count)]
        best = best_time(alone)
        # Where overlap could save (almost) nothing, as in a pipeline of one micro-batch, the ratio would
        # divide noise by noise: that is decided from the alone times, not from the noisy difference.
        if sum(alone) - best > stats.MEANINGFUL_GAIN * sum(alone) and sequential > best:
            per_round.append((sequential - concurrent) / (sequential - best))
    return per_round
