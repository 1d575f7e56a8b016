"""The torch-free parts of trust: statistics, sanity checks, bounds, the stopping rule and the warm-up rule,
each on hand-made rounds whose answer is known, with a positive and a negative case."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pytest_dualgpu import stats
from pytest_dualgpu.bounds import Bound, parse_bounds
from pytest_dualgpu.engine.callsettings import CallSettings
from pytest_dualgpu.engine.executor import Run
from pytest_dualgpu.engine.measure import Samples, block_warning, measure_rounds
from pytest_dualgpu.engine.sanity import assess
from pytest_dualgpu.engine.stopping import StoppingRule, figures
from pytest_dualgpu.engine.warmup import WarmUpClock, warm_up
from pytest_dualgpu.errors import DualGpuUsageError
from pytest_dualgpu.results import DualResult, LaneResult, Measurement


def result_of(alone: list[list[float]], sequential: list[float], concurrent: list[float]) -> DualResult:
    """A result as the engine builds one from these per-round samples."""
    ratios = stats.paired_ratios(sequential, concurrent)
    lanes = [
        LaneResult(f"lane{index}", Measurement.from_samples(samples)) for index, samples in enumerate(alone)
    ]
    medians = [lane.alone.median for lane in lanes]
    efficiencies = [
        (s - c) / (s - max(a))
        for s, c, a in zip(sequential, concurrent, zip(*alone, strict=True), strict=True)
    ]
    return DualResult(
        name="pair",
        device="cpu",
        device_name="test",
        mode="threads",
        requested_mode="auto",
        lanes=lanes,
        sequential=Measurement.from_samples(sequential),
        concurrent=Measurement.from_samples(concurrent),
        speedup=stats.median(ratios),
        speedup_ci=stats.median_ci(ratios),
        ideal_speedup=sum(medians) / max(medians),
        efficiency=stats.median(efficiencies),
        efficiency_ci=stats.median_ci(efficiencies),
        overlap=1.0,
        correct=True,
        max_abs_err=0.0,
        max_rel_err=0.0,
        rounds=len(sequential),
    )


def jitter(value: float, count: int, spread: float = 0.01, phase: int = 0) -> list[float]:
    """``count`` values around ``value``, spread evenly by +-spread (a deterministic stand-in for noise);
    another ``phase`` gives another order, so two series do not move together."""
    return [value * (1 + spread * (((index + phase) * 7) % 5 - 2) / 2) for index in range(count)]


def test_an_honest_pair_has_no_problems() -> None:
    honest = result_of([jitter(4e-3, 12), jitter(4e-3, 12)], jitter(8e-3, 12), jitter(4.2e-3, 12))
    found = assess(honest)
    assert found.problems == []
    assert not any(warning.startswith("drifting") for warning in found.warnings)


def test_a_speedup_above_the_ideal_names_the_ideal() -> None:
    impossible = result_of([jitter(4e-3, 12), jitter(2e-3, 12)], jitter(6e-3, 12), jitter(1e-3, 12))
    found = assess(impossible)
    assert any("above the ideal 1.50x" in problem for problem in found.problems)
    assert any("finished sooner than lane 'lane0' alone" in problem for problem in found.problems)


def test_an_impossible_typical_round_is_a_problem_though_one_honest_round_widens_the_interval() -> None:
    """Seven rounds: at that count the median's 95% interval spans all of them, so one honest round reaches
    it back to possible; a verdict must still not pass on the six that beat the ideal (as one CI run saw:
    6.86x [2.08, 7.24] of an ideal 2.00x)."""
    alone = [[4e-3] * 7, [4e-3] * 7]
    mostly_impossible = result_of(alone, [8e-3] * 7, [1e-3] * 6 + [4.2e-3])
    assert mostly_impossible.speedup_ci[0] < mostly_impossible.ideal_speedup
    [problem, *_] = assess(mostly_impossible).problems
    assert "is above the ideal 2.00x" in problem
    assert "the typical round, though noise lets the interval [0.95, 4.00] reach possible ones" in problem
    # Near the ideal, noise pushes rounds past it, the median too by a few percent: possible, undecided.
    mostly_possible = result_of(alone, [8e-3] * 7, [4.1e-3] * 3 + [3.7e-3] * 4)
    assert mostly_possible.speedup > 1.05 * mostly_possible.ideal_speedup
    assert assess(mostly_possible).problems == []


def test_a_baseline_that_is_not_the_sum_of_its_parts_is_a_problem() -> None:
    odd = result_of([jitter(4e-3, 12), jitter(4e-3, 12)], jitter(12e-3, 12), jitter(6e-3, 12))
    assert any("disagrees with the sum of the alone times" in problem for problem in assess(odd).problems)
    close = result_of([jitter(4e-3, 12), jitter(4e-3, 12)], jitter(8.4e-3, 12), jitter(6e-3, 12))
    assert not any("sum of the alone" in problem for problem in assess(close).problems)


def test_medians_that_contradict_a_decided_speedup_are_a_problem() -> None:
    # Eight rounds of nine gain 1.2x; in the ninth the concurrent run took 100 ms. Sorted apart, the
    # concurrent median (10 ms) lands above the sequential one (5 ms): the columns would contradict.
    ms = 1e-3
    sequential = [ms * value for value in (1, 2, 3, 4, 5, 12, 12, 12, 12)]
    concurrent = [100 * ms] + [value / 1.2 for value in sequential[1:]]
    lanes = [[value / 2 for value in sequential]] * 2
    contradicting = result_of(lanes, sequential, concurrent)
    assert contradicting.concurrent.median > contradicting.sequential.median
    assert any("the rounds contradict each other" in problem for problem in assess(contradicting).problems)
    consistent = result_of(lanes, sequential, [value / 1.2 for value in sequential])
    assert not any("contradict" in problem for problem in assess(consistent).problems)


def test_a_drifting_lane_is_a_warning_and_a_drifting_speedup_a_problem() -> None:
    rising = [4e-3 * (1 + 0.05 * index) for index in range(12)]
    lane_drifts = result_of(
        [rising, jitter(4e-3, 12)], [r + 4e-3 for r in rising], [max(r, 4e-3) for r in rising]
    )
    found = assess(lane_drifts)
    assert any(
        warning.startswith("drifting: the alone time of lane 'lane0' rose") for warning in found.warnings
    )
    speedup_drifts = result_of(
        [jitter(4e-3, 12), jitter(4e-3, 12)],
        jitter(8e-3, 12),
        [4e-3 * (1 + 0.06 * index) for index in range(12)],
    )
    assert any(problem.startswith("drifting speedup") for problem in assess(speedup_drifts).problems)


def test_far_outlier_rounds_are_labelled_and_kept() -> None:
    concurrent = jitter(4.2e-3, 12)
    concurrent[3] = concurrent[7] = 40e-3
    noisy = result_of([jitter(4e-3, 12), jitter(4e-3, 12)], jitter(8e-3, 12), concurrent)
    assert any("2 of 12 rounds are far outliers" in warning for warning in assess(noisy).warnings)
    assert noisy.rounds == 12


def test_too_few_rounds_for_an_interval_are_said() -> None:
    few = result_of([jitter(4e-3, 4), jitter(4e-3, 4)], jitter(8e-3, 4), jitter(4.2e-3, 4))
    assert any("only 4 measured round(s)" in warning for warning in assess(few).warnings)


@pytest.mark.parametrize(
    ("interval", "bound", "higher", "status"),
    [
        ((1.5, 1.6), 1.3, True, "pass"),
        ((1.1, 1.2), 1.3, True, "fail"),
        ((1.2, 1.4), 1.3, True, "inconclusive"),
        ((1.30, 1.31), 1.3, True, "inconclusive"),  # at the bound: the margin keeps it open
        ((5e-3, 6e-3), 7e-3, False, "pass"),
        ((8e-3, 9e-3), 7e-3, False, "fail"),
    ],
)
def test_decide_on_the_widened_interval(
    interval: tuple[float, float], bound: float, higher: bool, status: str
) -> None:
    margin = stats.Margin(0.02)
    assert stats.decide(interval, bound, higher_is_better=higher, margin=margin, rounds=10) == status
    assert stats.decide(interval, bound, higher_is_better=higher, margin=margin, rounds=5) == "inconclusive"


@given(st.lists(st.floats(0.5, 2.0), min_size=6, max_size=40), st.floats(0.5, 2.0))
def test_a_decision_never_contradicts_its_interval(samples: list[float], bound: float) -> None:
    interval = stats.median_ci(samples)
    status = stats.decide(
        interval, bound, higher_is_better=True, margin=stats.Margin(0.02), rounds=len(samples)
    )
    if status == "pass":
        assert interval[0] >= bound
    if status == "fail":
        assert interval[1] < bound
    if interval[0] <= bound <= interval[1]:
        assert status == "inconclusive"


def test_the_trend_test_finds_monotone_series_and_not_shuffled_ones() -> None:
    rising = [1.0 + 0.02 * index for index in range(12)]
    moving = stats.trend(rising)
    assert moving is not None
    assert moving.significant(0.01, 0.10)
    assert moving.change == pytest.approx(0.22 / 1.11, rel=0.05)
    shuffled = [rising[(index * 5) % 12] for index in range(12)]
    still = stats.trend(shuffled)
    assert still is not None
    assert not still.significant(0.01, 0.10)
    assert stats.trend(rising[:5]) is None


def test_a_slower_start_is_found_where_every_early_sample_is_slower() -> None:
    series = [12.0, 11.8, 12.1, 12.0, 3.0, 3.1, 2.9, 3.0, 3.05]
    assert stats.slower_start(series) == 4
    assert stats.slower_start([3.0, 3.1, 2.9, 3.0, 3.05, 3.0, 2.95]) is None
    assert stats.slower_start([12.0, 3.0, 3.1, 2.9, 3.0, 3.05]) is None  # fewer than 3 on a side


def test_bounds_are_parsed_and_bad_ones_named() -> None:
    assert parse_bounds({"speedup": 1.3, "efficiency": 0.4}) == (
        Bound("speedup", 1.3),
        Bound("efficiency", 0.4),
    )
    with pytest.raises(DualGpuUsageError, match="a bound is on one of speedup, efficiency, concurrent"):
        parse_bounds({"memory": 1})
    with pytest.raises(DualGpuUsageError, match="the speedup bound must be a number > 0, got 'fast'"):
        parse_bounds({"speedup": "fast"})
    # One rule per metric (bounds.METRICS), which dualgpu_speedup(min=) is checked against too.
    with pytest.raises(DualGpuUsageError, match="the speedup bound must be a number > 0, got -1"):
        parse_bounds({"speedup": -1})
    with pytest.raises(DualGpuUsageError, match=r"the efficiency bound must be a number <= 1, got 1\.5"):
        parse_bounds({"efficiency": 1.5})
    with pytest.raises(DualGpuUsageError, match="bounds must be a mapping"):
        parse_bounds([1.3])


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"warmup": -1}, "warmup must be a number of seconds >= 0"),
        ({"budget": 2, "max_budget": 1}, r"max_budget \(1 s\) must be at least the budget \(2 s\)"),
        (
            {"lock_timeout": 0},
            r"lock_timeout must be a number of seconds > 0 \(to wait for the measuring lock, e.g. 600\)",
        ),
        ({"budget": float("inf")}, "budget must be a number of seconds > 0"),
        ({"bounds": {"overlap": 0.5}}, "a bound is on one of"),
    ],
)
def test_call_settings_refuse_what_cannot_work(settings: dict[str, object], message: str) -> None:
    with pytest.raises(DualGpuUsageError, match=message):
        CallSettings(**settings)  # type: ignore[arg-type]


def samples_of(sequential: list[float], concurrent: list[float], alone: list[list[float]]) -> Samples:
    samples = Samples()
    samples.elapsed = {"sequential": sequential, "concurrent": concurrent}
    samples.elapsed.update({f"alone:{index}": lane for index, lane in enumerate(alone)})
    samples.rounds = len(sequential)
    return samples


def rule(
    bounds: tuple[Bound, ...], *, budget_left: float = 10.0, deadline_left: float = 20.0
) -> StoppingRule:
    now = time.perf_counter()
    return StoppingRule(
        bounds,
        budget_deadline=now + budget_left,
        deadline=now + deadline_left,
        figures=lambda samples, confidence: figures(samples, confidence, lanes=2, best_time=max),
    )


def test_the_stopping_rule_stops_when_decided_keeps_going_when_open_and_ends_at_the_deadline() -> None:
    precise = samples_of(jitter(8e-3, 12, 0.002), jitter(4.2e-3, 12, 0.002), [jitter(4e-3, 12)] * 2)
    now = time.perf_counter()
    assert rule(())(precise, now) == "precise"
    assert rule((Bound("speedup", 1.5),))(precise, now) == "decided"
    assert rule((Bound("speedup", 1.9),))(precise, now) == "undecidable"  # within the margin of 1.90x
    wide = samples_of(jitter(8e-3, 12, 0.4), jitter(4.2e-3, 12, 0.4, phase=2), [jitter(4e-3, 12)] * 2)
    assert rule((Bound("speedup", 1.9),))(wide, now) is None  # open: measure on
    assert rule((Bound("speedup", 1.9),), deadline_left=-1)(wide, now) == "max budget"
    assert rule((), budget_left=-1)(wide, now) == "budget"
    assert rule(())(wide, now) is None


def test_the_stopping_rule_needs_enough_rounds_for_its_interval() -> None:
    now = time.perf_counter()
    few = samples_of(jitter(8e-3, 3, 0.002), jitter(4e-3, 3, 0.002), [jitter(4e-3, 3)] * 2)
    assert rule((Bound("speedup", 1.5),))(few, now) is None  # precise, but 3 rounds decide nothing
    seven = samples_of(jitter(8e-3, 7, 0.002), jitter(4e-3, 7, 0.002), [jitter(4e-3, 7)] * 2)
    assert rule((Bound("speedup", 1.5),))(seven, now) is None  # no 99% interval from 7 rounds
    eight = samples_of(jitter(8e-3, 8, 0.002), jitter(4e-3, 8, 0.002), [jitter(4e-3, 8)] * 2)
    assert rule((Bound("speedup", 1.5),))(eight, now) == "decided"
    assert stats.rounds_for(0.95) == 6
    assert stats.rounds_for(0.99) == 8


def test_an_efficiency_bound_with_no_efficiency_to_measure_is_decided_at_once() -> None:
    # One lane takes nearly all the time: overlap can save almost nothing, so no round has an efficiency.
    lopsided = samples_of(jitter(10e-3, 8), jitter(10e-3, 8), [jitter(10e-3, 8), jitter(1e-5, 8)])
    assert rule((Bound("efficiency", 0.5),))(lopsided, time.perf_counter()) == "decided"
    assert Bound("efficiency", 0.5).decide(None) == "fail"


def test_measuring_ends_at_the_deadline_with_or_without_bounds() -> None:
    wide = samples_of(jitter(8e-3, 12, 0.4), jitter(4.2e-3, 12, 0.4, phase=2), [jitter(4e-3, 12)] * 2)
    assert rule((), budget_left=5, deadline_left=-1)(wide, time.perf_counter()) == "max budget"


def test_the_warm_up_ends_once_the_time_per_call_stops_changing_and_not_before() -> None:
    calls = []

    def settling(count: int) -> float:
        """6 ms per call at first, falling by a tenth of what is left above 2 ms with every call."""
        per_call = 2e-3 + 4e-3 * 0.9 ** len(calls)
        for _ in range(count):
            calls.append(per_call)
            time.sleep(per_call)
        return per_call

    warmed = warm_up(settling, deadline=time.perf_counter() + 5, min_seconds=0.05)
    assert warmed.converged
    assert warmed.per_call is not None
    assert warmed.per_call < 2.1e-3
    assert warmed.calls > 25
    steady = warm_up(
        lambda count: (time.sleep(2e-3 * count), 2e-3)[1], deadline=time.perf_counter() + 5, min_seconds=0.05
    )
    assert steady.converged
    assert steady.seconds < 0.5
    capped = warm_up(settling_forever(), deadline=time.perf_counter() + 0.2, min_seconds=0.05)
    assert not capped.converged
    assert capped.seconds < 0.3


def settling_forever() -> object:
    state = {"per_call": 4e-3}

    def block(count: int) -> float:
        state["per_call"] *= 0.97
        time.sleep(state["per_call"] * count)
        return state["per_call"]

    return block


def test_the_warm_up_clock_lets_one_stage_borrow_but_keeps_a_turn_for_the_others() -> None:
    clock = WarmUpClock(cap=3.0, stages=3)
    first = clock.next_deadline() - time.perf_counter()
    assert 2.4 < first <= 2.5  # 3 s less a 0.25 s reserve for each of the two stages to come
    small = WarmUpClock(cap=0.3, stages=3)
    assert small.next_deadline() - time.perf_counter() == pytest.approx(0.1, abs=0.01)


def sleeping(seconds: float) -> Callable[[int], Run]:
    """A variant that really sleeps ``seconds`` per call, timed like the engine times a block."""

    def run(reps: int) -> Run:
        started = time.perf_counter()
        for _ in range(reps):
            time.sleep(seconds)
        elapsed = (time.perf_counter() - started) / reps
        return Run([0], elapsed, elapsed, [[(0.0, elapsed * reps)]], [])

    return run


def test_a_calibration_that_was_far_off_is_redone_after_the_first_round() -> None:
    variants = {"alone:0": sleeping(2e-4), "sequential": sleeping(4e-4), "concurrent": sleeping(2e-4)}
    measured = measure_rounds(
        variants, 1, settle=0.0, preroll=False, min_rounds=3, stop=lambda samples, now: "enough",
        deadline=time.perf_counter() + 5, target_block=0.01,
    )  # fmt: skip
    assert measured.recalibrated == 1
    assert measured.reps >= 10
    assert any(note.startswith("recalibrated: 1 call(s) per sample") for note in measured.notes)
    assert all(len(blocks) == measured.samples.rounds for blocks in measured.samples.blocks.values())
    assert block_warning(measured.samples, measured.reps) is None


def test_samples_too_short_for_the_timer_are_flagged() -> None:
    variants = {"alone:0": sleeping(1e-5), "sequential": sleeping(1e-5), "concurrent": sleeping(1e-5)}
    measured = measure_rounds(
        variants, 1, settle=0.0, preroll=False, min_rounds=3, stop=lambda samples, now: "enough",
        deadline=time.perf_counter() + 5,
    )  # fmt: skip
    warning = block_warning(measured.samples, measured.reps)
    assert warning is not None
    assert warning.startswith("samples too short to time well")


def test_medians_said_to_lean_the_other_way_visibly_do() -> None:
    honest = result_of([jitter(4e-3, 12), jitter(4e-3, 12)], jitter(8e-3, 12), jitter(4.2e-3, 12))

    def undecided(speedup: float, sequential: float, concurrent: float) -> list[str]:
        result = dataclasses.replace(
            honest,
            speedup=speedup,
            speedup_ci=(0.8, 1.2),
            sequential=dataclasses.replace(honest.sequential, median=sequential),
            concurrent=dataclasses.replace(honest.concurrent, median=concurrent),
        )
        return [warning for warning in assess(result).warnings if "lean the other way" in warning]

    assert undecided(0.97, 1.14e-3, 1.10e-3), "0.97x per round, yet faster at once by the medians"
    assert not undecided(0.998, 1.141e-3, 1.139e-3), "both read 1.00x and 1.14 ms: nothing leans"
    assert not undecided(0.97, 1.14e-3, 1.15e-3), "both lean the same way"
