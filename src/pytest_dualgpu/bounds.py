"""Bounds on a result's figures, and how one is decided: on the confidence interval, never the median.

One definition serves the engine (which measures until every bound it was given is decided), the markers'
verdicts and the regression gate. Each metric says which way is better and what the harness itself may be
off by (its margin, added to the statistical interval): a bound closer to the truth than that margin stays
inconclusive however long it is measured, which is the honest answer. Torch-free.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pytest_dualgpu import stats
from pytest_dualgpu.errors import DualGpuUsageError
from pytest_dualgpu.latency import check_percentile
from pytest_dualgpu.results import DualResult
from pytest_dualgpu.specs import NumberRule
from pytest_dualgpu.timeline import Interval
from pytest_dualgpu.units import number_text, ratio_text, size_text, time_text


@dataclass(frozen=True)
class Metric:
    name: str
    higher_is_better: bool
    margin: stats.Margin
    unit: str
    #: What a bound on the metric may be, given to ``bounds=`` or to a marker.
    bound_rule: NumberRule


#: Margins: 2% of a speedup or a time (the hand-off and timer overhead of a run, measured against
#: hand-written loops in docs/measurement.md), 0.04 of efficiency (2% of the times moves a balanced pair's
#: efficiency by up to twice that), nothing for memory (an exact count of bytes).
METRICS: dict[str, Metric] = {
    "speedup": Metric("speedup", True, stats.Margin(0.02), "x", NumberRule(0, strict=True)),
    "efficiency": Metric("efficiency", True, stats.Margin(0.04, relative=False), "", NumberRule(maximum=1)),
    "concurrent": Metric(
        "concurrent", False, stats.Margin(0.02), "s", NumberRule(0, strict=True, unit="seconds")
    ),
    "memory": Metric("memory", False, stats.Margin(0.0), "B", NumberRule(0, strict=True, unit="bytes")),
    "slowdown": Metric("slowdown", False, stats.Margin(0.02), "x", NumberRule(0, strict=True)),
}
TIMED = ("speedup", "efficiency", "concurrent", "slowdown")


@dataclass(frozen=True)
class Bound:
    """A limit a call's figure must reach: at least ``value`` for speedup and efficiency, at most for
    concurrent time (seconds) and for a lane's slowdown at a percentile (``lane`` None: every lane)."""

    metric: str
    value: float
    lane: str | None = None
    percentile: int = 50

    def __post_init__(self) -> None:
        if self.metric not in TIMED:
            raise DualGpuUsageError(
                f"a bound is on one of {', '.join(TIMED)}, got {self.metric!r} "
                "(e.g. bounds={'speedup': 1.3})"
            )
        METRICS[self.metric].bound_rule.check(f"the {self.metric} bound", self.value)
        check_percentile(self.percentile)

    @property
    def key(self) -> str:
        """Which figure the bound is on: the metric, or for a slowdown the lane and percentile too."""
        return self.metric if self.metric != "slowdown" else f"slowdown:{self.lane}:p{self.percentile}"

    def for_lanes(self, names: Sequence[str]) -> tuple[Bound, ...]:
        """A slowdown bound for every lane becomes one per lane; an unknown lane is a usage error."""
        if self.metric != "slowdown":
            return (self,)
        if self.lane is None:
            return tuple(Bound(self.metric, self.value, name, self.percentile) for name in names)
        if self.lane not in names:
            shown = ", ".join(map(repr, names))
            raise DualGpuUsageError(f"the slowdown bound names lane {self.lane!r}, but the lanes are {shown}")
        return (self,)

    def decide(self, figure: Figure | None) -> str:
        if figure is None:
            # No efficiency: the lanes cannot gain from overlap (nearly all the time is one lane's), so no
            # efficiency bound can be met, and measuring longer will not change that.
            return stats.FAIL if self.metric == "efficiency" else stats.INCONCLUSIVE
        metric = METRICS[self.metric]
        return stats.decide(
            figure.interval,
            self.value,
            higher_is_better=metric.higher_is_better,
            margin=metric.margin,
            rounds=figure.rounds,
            confidence=figure.confidence,
        )

    def decide_on(self, result: DualResult) -> str:
        return self.decide(figure_for(result, self))

    def undecidable(self, figure: Figure | None) -> bool:
        """Whether more rounds cannot help: even an interval shrunk to the median would straddle the bound."""
        if figure is None or figure.rounds < stats.rounds_for(figure.confidence):
            return False
        point = Figure(figure.value, (figure.value, figure.value), figure.rounds, figure.confidence)
        return Bound.decide(self, point) == stats.INCONCLUSIVE

    def __str__(self) -> str:
        said = f"{self.metric} {'>=' if METRICS[self.metric].higher_is_better else '<='} {self.value:g}"
        return said if self.metric != "slowdown" else f"{said} (lane {self.lane!r}, p{self.percentile})"


def parse_bounds(raw: object) -> tuple[Bound, ...]:
    """``{"speedup": 1.3}``, or a sequence of ``Bound``s, as the API's ``bounds=`` takes them."""
    if raw is None:
        return ()
    if isinstance(raw, Mapping):
        return tuple(Bound(str(metric), value) for metric, value in raw.items())
    if isinstance(raw, (list, tuple)) and all(isinstance(item, Bound) for item in raw):
        return tuple(raw)
    raise DualGpuUsageError(
        f"bounds must be a mapping such as {{'speedup': 1.3, 'efficiency': 0.5}}, got {raw!r}"
    )


@dataclass(frozen=True)
class Figure:
    """A measured value, its interval at ``confidence`` and how many rounds (values) it rests on."""

    value: float
    interval: Interval
    rounds: int
    confidence: float = 0.95


def figure(result: DualResult, metric: str) -> Figure | None:
    """A result's figure for a metric, or None where it has none (no efficiency, no memory on CPU)."""
    if metric == "speedup":
        return Figure(result.speedup, result.speedup_ci, result.rounds)
    if metric == "efficiency":
        if result.efficiency is None:
            return None
        interval = result.efficiency_ci or (result.efficiency, result.efficiency)
        rounds = result.rounds if result.efficiency_rounds is None else result.efficiency_rounds
        return Figure(result.efficiency, interval, rounds)
    if metric == "concurrent":
        samples = result.concurrent.samples
        median = result.concurrent.median
        interval = stats.median_ci(samples) if samples else (median, median)
        return Figure(median, interval, result.rounds)
    if metric == "memory":
        if result.memory is None:
            return None
        peak = float(result.memory.concurrent)
        return Figure(peak, (peak, peak), stats.MIN_DECISION_ROUNDS)
    raise ValueError(f"unknown metric {metric!r}")


def value_text(metric: str, value: float, interval: tuple[float, float] | None = None) -> str:
    """A figure or a bound of ``metric`` as people read it, in the metric's unit."""
    unit = METRICS[metric].unit
    if unit == "x":
        return ratio_text(value, interval)
    if unit == "s":
        return time_text(value, interval)
    if unit == "B":
        return size_text(int(value))
    return number_text(value, interval)


def interval_text(metric: str, figure: Figure) -> str:
    return value_text(metric, figure.value, figure.interval)


def all_decided(bounds: Sequence[Bound], figures: Mapping[str, Figure | None]) -> bool:
    return all(bound.decide(figures.get(bound.key)) != stats.INCONCLUSIVE for bound in bounds)


def figure_for(result: DualResult, bound: Bound) -> Figure | None:
    """The figure a bound is on: a metric of the result, or a lane's slowdown at a percentile."""
    if bound.metric != "slowdown":
        return figure(result, bound.metric)
    lane = next((lane for lane in result.lanes if lane.name == bound.lane), None)
    if lane is None or lane.latency is None:
        return None
    interval = lane.latency.slowdown_ci(bound.percentile)
    if interval is None:
        return None  # too few calls for an interval at that percentile: nothing can be decided
    return Figure(lane.latency.slowdown(bound.percentile), interval, result.rounds)


def final_status(bound: Bound, result: DualResult, reliable: bool) -> tuple[str, Figure | None]:
    """A bound on a finished result: inconclusive whatever the interval says when the result is unreliable
    (its figures cannot all be true, so none of them may pass a verdict)."""
    measured = figure_for(result, bound)
    if not reliable:
        return stats.INCONCLUSIVE, measured
    return bound.decide(measured), measured
