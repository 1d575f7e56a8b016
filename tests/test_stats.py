from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pytest_dualgpu import stats

timings = st.lists(st.floats(min_value=1e-6, max_value=10.0, allow_nan=False), min_size=1, max_size=60)


@given(timings)
def test_confidence_interval_contains_the_median(samples: list[float]) -> None:
    lo, hi = stats.median_ci(samples)
    assert lo <= stats.median(samples) <= hi
    assert min(samples) <= lo
    assert hi <= max(samples)


@given(timings)
def test_ratios_of_identical_samples_are_one(samples: list[float]) -> None:
    ratios = stats.paired_ratios(samples, samples)
    assert ratios == [1.0] * len(samples)
    assert stats.median(ratios) == 1.0
    assert stats.median_ci(ratios) == (1.0, 1.0)


@given(timings, st.floats(0, 1), st.floats(0, 1))
def test_quantiles_are_monotone(samples: list[float], q1: float, q2: float) -> None:
    low, high = sorted((q1, q2))
    assert stats.quantile(samples, low) <= stats.quantile(samples, high)
    assert stats.iqr(samples) >= 0


def test_median_and_iqr_match_the_textbook() -> None:
    assert stats.median([3.0, 1.0, 2.0]) == 2.0
    assert stats.median([1.0, 2.0, 3.0, 4.0]) == 2.5
    assert stats.iqr([1.0, 2.0, 3.0, 4.0, 5.0]) == pytest.approx(2.0)


@pytest.mark.parametrize(("n", "rank"), [(7, 1), (20, 6), (100, 40)])
def test_confidence_interval_uses_binomial_ranks(n: int, rank: int) -> None:
    samples = [float(value) for value in range(1, n + 1)]
    lo, hi = stats.median_ci(samples)
    assert (lo, hi) == (rank, n + 1 - rank)
    coverage = 1 - 2 * sum(math.comb(n, k) for k in range(rank)) / 2**n
    assert coverage >= 0.95


def test_empty_input_is_an_error() -> None:
    with pytest.raises(ValueError, match="no samples"):
        stats.median([])
    with pytest.raises(ValueError, match="differ in length"):
        stats.paired_ratios([1.0], [])
