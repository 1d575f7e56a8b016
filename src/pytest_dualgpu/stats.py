"""Order statistics for timing samples.

Pure Python on purpose: the report and the regression gate use these too, and they must not need torch.
Timings are skewed and heavy-tailed, so everything here is distribution-free (medians, quantiles, and the
binomial confidence interval of a median), never means and standard deviations.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


def quantile(samples: Sequence[float], q: float) -> float:
    """Linear interpolation between order statistics (numpy's default method)."""
    if not samples:
        raise ValueError("quantile of no samples")
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile q must lie in [0, 1], got {q}")
    ordered = sorted(samples)
    position = q * (len(ordered) - 1)
    below = math.floor(position)
    above = min(below + 1, len(ordered) - 1)
    return ordered[below] + (ordered[above] - ordered[below]) * (position - below)


def median(samples: Sequence[float]) -> float:
    return quantile(samples, 0.5)


def iqr(samples: Sequence[float]) -> float:
    return quantile(samples, 0.75) - quantile(samples, 0.25)


def median_ci(samples: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """Confidence interval of the median from order statistics.

    The number of samples below the true median is Binomial(n, 1/2), so the interval between the j-th
    smallest and the j-th largest sample covers it with probability 1 - 2 P(B < j). We take the largest
    such j that still reaches ``confidence``; with too few samples for that, the full range.
    """
    if not samples:
        raise ValueError("confidence interval of no samples")
    ordered = sorted(samples)
    n = len(ordered)
    tail = (1.0 - confidence) / 2.0
    rank = 0
    cumulative = 0.0
    for k in range(n // 2 + 1):
        cumulative += math.comb(n, k) / 2.0**n
        if cumulative > tail:
            break
        rank = k + 1
    rank = max(rank, 1)
    return ordered[rank - 1], ordered[n - rank]


def paired_ratios(numerators: Sequence[float], denominators: Sequence[float]) -> list[float]:
    """Per-round ratios: pairing samples of one round cancels drift that hits both variants alike."""
    if len(numerators) != len(denominators):
        raise ValueError(f"paired samples differ in length: {len(numerators)} vs {len(denominators)}")
    return [num / den for num, den in zip(numerators, denominators, strict=True) if den > 0.0]


def rounds_for(confidence: float) -> int:
    """The fewest samples whose range covers the median with at least ``confidence`` (1 - 2 / 2**n):
    with fewer, ``median_ci`` can only give the range, which covers less, so nothing may be decided."""
    n = 1
    while 1 - 2 / 2**n < confidence:
        n += 1
    return n


#: 6 at 95% (the range of 6 covers the median with 96.9%), 8 at 99% (99.2%).
MIN_DECISION_ROUNDS = rounds_for(0.95)

# Efficiency is measured only where running at once could save at least this share of the time back to
# back: below it, the ratio would divide noise by noise.
MEANINGFUL_GAIN = 0.05
PASS = "pass"
FAIL = "fail"
INCONCLUSIVE = "inconclusive"
WARN = "warn"
SKIP = "skip"  # a check that does not apply here (the doctor's)
NO_TENSOR = "not judged (no tensor)"
NOTICES = (WARN, NO_TENSOR)  # statuses that pass the test with a warning
#: The markers whose verdicts a result carries, in the report's order.
VERDICT_KINDS = ("correct", "sync", "speedup", "memory", "interference")


@dataclass(frozen=True)
class Margin:
    """What the harness itself may be off by, on top of the statistical interval.

    ``relative``: a share of the value (times, speedups); otherwise an amount (efficiency points).
    """

    amount: float
    relative: bool = True

    def widen(self, interval: tuple[float, float]) -> tuple[float, float]:
        lo, hi = interval
        if self.relative:
            return lo - self.amount * abs(lo), hi + self.amount * abs(hi)
        return lo - self.amount, hi + self.amount


def decide(
    interval: tuple[float, float],
    bound: float,
    *,
    higher_is_better: bool,
    margin: Margin,
    rounds: int,
    confidence: float = 0.95,
) -> str:
    """Pass when the whole interval (widened by the margin) lies on the good side of the bound, fail when
    it lies on the other side, inconclusive when it straddles it or too few rounds back an interval at
    that confidence."""
    if rounds < rounds_for(confidence):
        return INCONCLUSIVE
    lo, hi = margin.widen(interval)
    if higher_is_better:
        good, bad = lo >= bound, hi < bound
    else:
        good, bad = hi <= bound, lo > bound
    return PASS if good else FAIL if bad else INCONCLUSIVE


def relative_width(interval: tuple[float, float], center: float) -> float:
    lo, hi = interval
    return (hi - lo) / abs(center) if center else math.inf


@dataclass(frozen=True)
class Trend:
    """A monotone trend over the rounds: Mann-Kendall's test and the Theil-Sen slope.

    ``change``: the slope over the whole run as a share of the median (0.3 = rose by 30%).
    """

    p_value: float
    change: float

    def significant(self, alpha: float, min_change: float) -> bool:
        return self.p_value < alpha and abs(self.change) >= min_change


def trend(samples: Sequence[float]) -> Trend | None:
    """Mann-Kendall with the normal approximation (no tie correction: timings rarely tie); None below
    6 samples, where even a perfectly monotone series is not significant at 1% (at 6 it is: p = 0.009)."""
    n = len(samples)
    if n < 6:
        return None
    s = 0
    slopes = []
    for i in range(n - 1):
        for j in range(i + 1, n):
            difference = samples[j] - samples[i]
            s += (difference > 0) - (difference < 0)
            slopes.append(difference / (j - i))
    variance = n * (n - 1) * (2 * n + 5) / 18
    z = (s - math.copysign(1, s)) / math.sqrt(variance) if s else 0.0
    p_value = math.erfc(abs(z) / math.sqrt(2))
    middle = median(samples)
    change = median(slopes) * (n - 1) / middle if middle else 0.0
    return Trend(p_value, change)


def slower_start(samples: Sequence[float], min_side: int = 3) -> int | None:
    """Where a series that started slow settled: the split k with every one of the first k samples slower
    than every later one, ``min_side`` on each side at least, and the later ones the faster by the most.

    Under no change, one such split at a given k has probability 1/C(n, k) (0.05 summed over k = 3..5
    at n = 8, less as n grows); the caller also asks for a size of the step.
    """
    n = len(samples)
    best: tuple[float, int] | None = None
    for k in range(min_side, n - min_side + 1):
        earlier, later = samples[:k], samples[k:]
        if min(earlier) > max(later):
            step = median(earlier) / median(later) if median(later) > 0 else math.inf
            if best is None or step > best[0]:
                best = (step, k)
    return None if best is None else best[1]


def outliers(samples: Sequence[float], reach: float = 3.0) -> list[int]:
    """Indices of samples beyond ``reach`` interquartile ranges outside the quartiles (Tukey's far out).

    The spread is at least 1% of the median: where nearly every sample is the same, a rounding-level
    difference is not "far out".
    """
    if len(samples) < 4:
        return []
    q1, q3 = quantile(samples, 0.25), quantile(samples, 0.75)
    spread = max(q3 - q1, 0.01 * abs(median(samples)))
    return [
        index
        for index, value in enumerate(samples)
        if value < q1 - reach * spread or value > q3 + reach * spread
    ]


def quantile_ci(samples: Sequence[float], q: float, confidence: float = 0.95) -> tuple[float, float] | None:
    """Distribution-free confidence interval of the ``q`` quantile from order statistics, or None where
    there are too few samples for one (the number below the true quantile is Binomial(n, q): at 95%, a
    p99 needs 367 samples before even the largest one bounds it from above)."""
    n = len(samples)
    if n == 0:
        return None
    tail = (1.0 - confidence) / 2.0
    probabilities = [_binomial(n, k, q) for k in range(n + 1)]
    below = 0.0
    lower = None  # the largest rank r with P(B < r) <= tail: the r-th smallest sample is a lower bound
    for rank in range(1, n + 1):
        below += probabilities[rank - 1]
        if below <= tail:
            lower = rank
        else:
            break
    above = 0.0
    upper = None  # the smallest rank r with P(B >= r) <= tail
    for rank in range(n, 0, -1):
        above += probabilities[rank]
        if above <= tail:
            upper = rank
        else:
            break
    if lower is None or upper is None:
        return None
    ordered = sorted(samples)
    return ordered[lower - 1], ordered[upper - 1]


def ratio_ci(
    numerator: tuple[float, float] | None, denominator: tuple[float, float] | None
) -> tuple[float, float] | None:
    """Interval of a ratio of two independent quantities from their intervals: the extremes of the
    quotient. With each interval at 97.5%, the ratio's covers at least 95% (Bonferroni)."""
    if numerator is None or denominator is None or denominator[0] <= 0:
        return None
    return numerator[0] / denominator[1], numerator[1] / denominator[0]


def _binomial(n: int, k: int, q: float) -> float:
    """P(B = k) for B ~ Binomial(n, q), in logs so that thousands of samples neither overflow nor
    underflow before the end."""
    if q <= 0.0 or q >= 1.0:
        return float(k == (0 if q <= 0.0 else n))
    log = (
        math.lgamma(n + 1)
        - math.lgamma(k + 1)
        - math.lgamma(n - k + 1)
        + k * math.log(q)
        + (n - k) * math.log1p(-q)
    )
    return math.exp(log)
