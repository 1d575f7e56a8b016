"""Order statistics for timing samples.

Pure Python on purpose: the report and the regression gate use these too, and they must not need torch.
Timings are skewed and heavy-tailed, so everything here is distribution-free (medians, quantiles, and the
binomial confidence interval of a median), never means and standard deviations.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


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
