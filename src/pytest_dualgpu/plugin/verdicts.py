"""The markers' arguments and their verdicts on a test's results.

Marker arguments are checked at collection (a typo should not wait for a GPU run to show up); verdicts are
judged after the test body over every result the test produced. A failed verdict says what was measured,
the bound, the confidence interval where there is one, and a hint at the likely cause. Nothing here knows
about pytest or imports torch.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pytest_dualgpu.bounds import METRICS, Bound, figure, interval_text, value_text
from pytest_dualgpu.errors import DualGpuUsageError
from pytest_dualgpu.latency import check_percentile
from pytest_dualgpu.results import DualResult
from pytest_dualgpu.specs import SETTING_RULES, SyncChecks, Tolerance, check_bool, check_number, parse_size
from pytest_dualgpu.stats import FAIL, INCONCLUSIVE, NO_TENSOR, PASS, VERDICT_KINDS, WARN
from pytest_dualgpu.units import number_text, ratio_text, size_text, time_text


@dataclass(frozen=True)
class SyncSpec:
    """``dualgpu_sync(trials=8, implicit="error", sanitizer=False, seed=None)``; seed replays trials."""

    trials: int = 8
    implicit: Literal["error", "warn", "ignore"] = "error"
    sanitizer: bool = False
    seed: int | None = None

    def __post_init__(self) -> None:
        SETTING_RULES["race_trials"].check("trials", self.trials)  # dual_infer's race_trials= and race_seed=
        SETTING_RULES["race_seed"].check("seed", self.seed)
        if self.implicit not in ("error", "warn", "ignore"):
            raise DualGpuUsageError(f"implicit must be 'error', 'warn' or 'ignore', got {self.implicit!r}")
        check_bool("sanitizer", self.sanitizer)

    @property
    def checks(self) -> SyncChecks:
        """What the test's calls check; host syncs are always looked for ("ignore" still reports them:
        only the verdict lets them pass)."""
        return SyncChecks(self.trials, self.seed, detect_syncs=True, sanitizer=self.sanitizer)


@dataclass(frozen=True)
class SpeedupSpec:
    """``dualgpu_speedup(min=None, min_efficiency=None, device="cuda")``."""

    min: float | None = None
    min_efficiency: float | None = None
    device: str | Sequence[str] = "cuda"

    def __post_init__(self) -> None:
        if self.min is None and self.min_efficiency is None:
            raise DualGpuUsageError("give min (a speedup such as 1.3) and/or min_efficiency (such as 0.5)")
        METRICS["speedup"].bound_rule.check("min", self.min)
        METRICS["efficiency"].bound_rule.check("min_efficiency", self.min_efficiency)
        _check_device_types(self.device)

    @property
    def device_types(self) -> tuple[str, ...]:
        return (self.device,) if isinstance(self.device, str) else tuple(self.device)

    @property
    def bounds(self) -> tuple[Bound, ...]:
        """What the engine must decide for this marker (it measures longer while they are open)."""
        wanted = [("speedup", self.min), ("efficiency", self.min_efficiency)]
        return tuple(Bound(metric, value) for metric, value in wanted if value is not None)


@dataclass(frozen=True)
class MemorySpec:
    """``dualgpu_memory(max_bytes=None, max_ratio=None)``; ``max_bytes`` also takes ``"512MiB"``."""

    max_bytes: int | str | None = None
    max_ratio: float | None = None

    def __post_init__(self) -> None:
        if self.max_bytes is None and self.max_ratio is None:
            raise DualGpuUsageError(
                "give max_bytes (an int or a size such as '2GiB') and/or max_ratio (such as 1.5)"
            )
        if self.max_bytes is not None:
            parse_size(self.max_bytes)
        check_number("max_ratio", self.max_ratio, minimum=0.0, strict=True)

    @property
    def byte_limit(self) -> int | None:
        return None if self.max_bytes is None else parse_size(self.max_bytes)


@dataclass(frozen=True)
class InterferenceSpec:
    """``dualgpu_interference(max_slowdown=None, percentile=50, lanes=None, device="cuda")``: every named
    lane (default all) at most ``max_slowdown`` times slower at that percentile while the others run."""

    max_slowdown: float | None = None
    percentile: int = 50
    lanes: str | Sequence[str] | None = None
    device: str | Sequence[str] = "cuda"

    def __post_init__(self) -> None:
        if self.max_slowdown is None:
            raise DualGpuUsageError("give max_slowdown, such as 1.5 (at most 1.5 times slower at once)")
        METRICS["slowdown"].bound_rule.check("max_slowdown", self.max_slowdown)
        check_percentile(self.percentile)
        names = self.lane_names
        if names is not None and (not names or not all(isinstance(name, str) and name for name in names)):
            raise DualGpuUsageError(f"lanes must be lane names (strings), got {self.lanes!r}")
        _check_device_types(self.device)

    @property
    def lane_names(self) -> tuple[str, ...] | None:
        if self.lanes is None:
            return None
        return (self.lanes,) if isinstance(self.lanes, str) else tuple(self.lanes)

    @property
    def device_types(self) -> tuple[str, ...]:
        return (self.device,) if isinstance(self.device, str) else tuple(self.device)

    @property
    def bounds(self) -> tuple[Bound, ...]:
        """One slowdown bound per named lane (or one for every lane), for the engine to decide."""
        assert self.max_slowdown is not None
        names = self.lane_names or (None,)
        return tuple(Bound("slowdown", self.max_slowdown, name, self.percentile) for name in names)


@dataclass(frozen=True)
class CudaSpec:
    """``dualgpu_cuda``: no arguments."""


MARKERS: dict[str, tuple[type, str]] = {
    "dualgpu_correct": (
        Tolerance,
        "dualgpu_correct(rtol=None, atol=None, equal_nan=False): every concurrent output of dual_infer "
        "equals each lane's output alone, within tolerance (by default as torch.testing.assert_close)",
    ),
    "dualgpu_sync": (
        SyncSpec,
        "dualgpu_sync(trials=8, implicit='error', sanitizer=False, seed=None): no host synchronization "
        "inside the lanes, and outputs stay correct over trials with random delays injected",
    ),
    "dualgpu_speedup": (
        SpeedupSpec,
        "dualgpu_speedup(min=None, min_efficiency=None, device='cuda'): the measured speedup and/or "
        "efficiency of dual_infer reaches the bound; judged only on the named device type(s)",
    ),
    "dualgpu_memory": (
        MemorySpec,
        "dualgpu_memory(max_bytes=None, max_ratio=None): the concurrent peak device memory stays under a "
        "size, or under max_ratio x the sequential peak (CUDA only)",
    ),
    "dualgpu_interference": (
        InterferenceSpec,
        "dualgpu_interference(max_slowdown=None, percentile=50, lanes=None, device='cuda'): every named lane "
        "(default: all) is at most max_slowdown times slower at that latency percentile (50, 90 or 99) "
        "while the others run than alone; judged only on the named device type(s)",
    ),
    "dualgpu_cuda": (
        CudaSpec,
        "dualgpu_cuda: the test needs a CUDA GPU; skipped without one, an error under --dualgpu-require-cuda",
    ),
}


def parse_marker(name: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> Any:
    """The spec of one marker, or a ``DualGpuUsageError`` naming the marker and the argument."""
    spec_class, _ = MARKERS[name]
    signature = inspect.signature(spec_class)
    accepted = ", ".join(signature.parameters) or "no arguments"
    unknown = sorted(set(kwargs) - set(signature.parameters))
    if unknown:
        raise DualGpuUsageError(
            f"{name}: unknown argument {', '.join(repr(key) for key in unknown)}; it takes {accepted}"
        )
    try:
        signature.bind(*args, **kwargs)
    except TypeError as error:
        raise DualGpuUsageError(f"{name}: {error}; it takes {accepted}") from None
    try:
        return spec_class(*args, **kwargs)
    except DualGpuUsageError as error:
        raise DualGpuUsageError(f"{name}: {error}") from None


@dataclass(frozen=True)
class Verdict:
    """One marker's judgement of one result; ``status`` is pass, fail, warn, inconclusive or
    "not judged (...)"."""

    kind: str
    status: str
    message: str = ""


def judge(result: DualResult, specs: Mapping[str, Any]) -> dict[str, Verdict]:
    """Every verdict the test's markers ask for on one result, keyed by kind (correct, sync, ...)."""
    judges: dict[str, Callable[[DualResult, Any], Verdict]] = {
        "correct": _judge_correct,
        "sync": _judge_sync,
        "speedup": _judge_speedup,
        "memory": _judge_memory,
        "interference": _judge_interference,
    }
    return {
        kind: judges[kind](result, specs[f"dualgpu_{kind}"])
        for kind in VERDICT_KINDS
        if f"dualgpu_{kind}" in specs
    }


def _judge_correct(result: DualResult, _spec: Tolerance) -> Verdict:
    if result.correct:
        empty = result.without_tensors
        if empty and len(empty) == len(result.lanes):
            return Verdict(
                "correct",
                NO_TENSOR,
                "no lane's output holds a tensor, so no numbers were compared; return the tensors the "
                "model computes",
            )
        if empty:
            named = ("lane " if len(empty) == 1 else "lanes ") + ", ".join(repr(name) for name in empty)
            return Verdict(
                "correct",
                WARN,
                f"{named} returned no tensor, so only the other lanes' numbers were compared",
            )
        if result.uncomparable:
            shown = "; ".join(result.uncomparable[:3]) + ("; ..." if len(result.uncomparable) > 3 else "")
            return Verdict(
                "correct", WARN, f"outputs equal where they can be compared, but not all can: {shown}"
            )
        return Verdict("correct", PASS)
    shown = "; ".join(result.mismatches[:3]) + ("; ..." if len(result.mismatches) > 3 else "")
    training = [lane.name for lane in result.lanes if lane.training]
    if training:
        hint = (
            f"lane {training[0]!r} is in training mode (dropout or batch norm active), so no two calls give "
            "the same output; call model.eval() or place it with place_model, which does"
        )
    elif result.input_writes:
        hint = (
            "a lane changes its own input in place, so each call sees what the one before left (and any "
            "lane sharing that input is wrong too); clone it inside forward (x = x.clone()) or use the "
            "out-of-place operation"
        )
    else:
        hint = (
            "the lanes share something they write (an input changed in place, a buffer, module state), or a "
            "stream does not wait for data it reads; nondeterministic kernels need a tolerance"
        )
    return Verdict(
        "correct",
        FAIL,
        f"concurrent outputs differ from each lane run alone ({shown}); max abs err "
        f"{result.max_abs_err:.3g}, max rel err {result.max_rel_err:.3g}; hint: {hint}",
    )


def _judge_sync(result: DualResult, spec: SyncSpec) -> Verdict:
    sync = result.sync
    device_type = result.device.partition(":")[0]
    if device_type != "cuda" and sync.race_trials == 0:
        # Host syncs and the sanitizer exist on CUDA only: without race trials nothing was checked.
        return Verdict(
            "sync", f"not judged ({device_type})", "no race trials (trials=0) and no host syncs on CPU"
        )
    problems = []
    if sync.race_failures:
        problems.append(
            f"{sync.race_failures} of {sync.race_trials} trials with random delays went wrong, first "
            f"{sync.first_failure} (replay with dualgpu_sync(seed={sync.seed}))"
        )
    if sync.sanitizer:
        problems.append(f"the CUDA sanitizer found unsynchronized accesses: {'; '.join(sync.sanitizer[:3])}")
    if not result.correct:
        problems.append(
            "the concurrent outputs differ from each lane run alone: " + "; ".join(result.mismatches[:2])
        )
    syncs = [
        f"{found.get('lane', '?')}: {found.get('call', '?')} at {found.get('where', '?')}"
        for found in sync.implicit_syncs
    ]
    if syncs and spec.implicit == "error":
        problems.append(f"{len(syncs)} host synchronization(s) inside the lanes: {'; '.join(syncs[:3])}")
    if problems:
        return Verdict("sync", FAIL, "; ".join(problems))
    if syncs and spec.implicit == "warn":
        return Verdict(
            "sync", WARN, f"{len(syncs)} host synchronization(s) inside the lanes: {'; '.join(syncs[:3])}"
        )
    return Verdict("sync", PASS)


def _judge_speedup(result: DualResult, spec: SpeedupSpec) -> Verdict:
    """Decided on the confidence interval (``bounds.py``): pass when it lies at or above every bound, fail
    when it lies below one, inconclusive when it straddles one after all the measuring allowed, and
    inconclusive whatever it says when the result is unreliable."""
    device_type = result.device.partition(":")[0]
    if device_type not in spec.device_types:
        return Verdict("speedup", f"not judged ({device_type})")
    lo, hi = result.speedup_ci
    measured = (
        f"speedup {ratio_text(result.speedup, (lo, hi))} of an ideal {ratio_text(result.ideal_speedup)}, "
        f"efficiency {_maybe(result.efficiency)}, overlap {result.overlap:.2f}, "
        f"mode {result.mode!r} on {result.device}"
    )
    if not result.reliable:
        return Verdict(
            "speedup",
            INCONCLUSIVE,
            f"no verdict on an unreliable result: {'; '.join(result.problems)} ({measured})",
        )
    misses, open_bounds = [], []
    for bound in spec.bounds:
        measured_figure = figure(result, bound.metric)
        if bound.metric == "efficiency" and measured_figure is None:
            misses.append(
                f"no efficiency to reach {number_text(bound.value)}: these lanes cannot gain from overlap "
                f"(ideal {ratio_text(result.ideal_speedup)})"
            )
            continue
        status = bound.decide(measured_figure)
        shown = "speedup" if bound.metric == "speedup" else "efficiency"
        limit = value_text(bound.metric, bound.value)
        if status == FAIL:
            misses.append(f"{shown} below the bound {limit}")
        elif status == INCONCLUSIVE and measured_figure is not None:
            open_bounds.append(f"{interval_text(bound.metric, measured_figure)} straddles {limit}")
    if misses:
        if spec.min is not None and spec.min > result.ideal_speedup:
            hint = (
                f"the bound {ratio_text(spec.min)} is above the ideal {ratio_text(result.ideal_speedup)} "
                "that perfect overlap of these lanes would give; lower min, or balance the lanes so the "
                "ideal rises"
            )
        else:
            hint = speedup_hint(result)
        return Verdict("speedup", FAIL, f"{' and '.join(misses)}: {measured}; hint: {hint}")
    if open_bounds:
        return Verdict(
            "speedup",
            INCONCLUSIVE,
            f"{'; '.join(open_bounds)} after {result.rounds} rounds ({result.measuring_seconds:.1f} s of "
            f"measuring, stopped: {result.stop or 'budget'}), so neither pass nor fail can be said with 95% "
            f"confidence and the harness's own margin ({measured}); raise --dualgpu-max-budget, quiet the "
            "machine, or set the bound further from what this pair does",
        )
    return Verdict("speedup", PASS)


def _judge_interference(result: DualResult, spec: InterferenceSpec) -> Verdict:
    """Decided like the speedup, per lane, on the interval of its slowdown at the percentile."""
    device_type = result.device.partition(":")[0]
    if device_type not in spec.device_types:
        return Verdict("interference", f"not judged ({device_type})")
    if not result.reliable:
        problems = "; ".join(result.problems)
        return Verdict("interference", INCONCLUSIVE, f"no verdict on an unreliable result: {problems}")
    p = spec.percentile
    names = spec.lane_names or tuple(result.lane_names)
    missing = [name for name in names if name not in result.lane_names]
    if missing:
        lanes = ", ".join(map(repr, result.lane_names))
        return Verdict(
            "interference", FAIL, f"no lane named {', '.join(map(repr, missing))}; the lanes are {lanes}"
        )
    misses, open_lanes = [], []
    for bound in Bound("slowdown", spec.max_slowdown or 0.0, None, p).for_lanes(names):
        lane = next(lane for lane in result.lanes if lane.name == bound.lane)
        if lane.latency is None:
            open_lanes.append(f"lane {bound.lane!r} has no latencies measured")
            continue
        interval = lane.latency.slowdown_ci(p)
        measured = (
            f"lane {bound.lane!r} p{p} {time_text(lane.latency.at_once.at(p))} at once against "
            f"{time_text(lane.latency.alone.at(p))} alone: {ratio_text(lane.latency.slowdown(p), interval)}"
        )
        status = bound.decide_on(result)
        if status == FAIL:
            misses.append(f"{measured} slower, above the bound {ratio_text(bound.value)}")
        elif status == INCONCLUSIVE:
            if interval is None:
                calls = min(lane.latency.alone.n, lane.latency.at_once.n)
                open_lanes.append(
                    f"{measured}, but {calls} calls give no interval at p{p} (raise the budget)"
                )
            else:
                open_lanes.append(f"{measured} straddles {ratio_text(bound.value)}")
    if misses:
        return Verdict(
            "interference", FAIL, f"{'; '.join(misses)}; hint: {_interference_hint(result, names)}"
        )
    if open_lanes:
        return Verdict(
            "interference",
            INCONCLUSIVE,
            f"{'; '.join(open_lanes)} after {result.rounds} rounds ({result.measuring_seconds:.1f} s of "
            "measuring), so neither pass nor fail can be said with 95% confidence",
        )
    return Verdict("interference", PASS)


def _interference_hint(result: DualResult, names: Sequence[str]) -> str:
    if result.device.startswith("cuda"):
        first = names[0] if names else "the lane"
        return (
            "a neighbour that fills the GPU runs its kernels first; give the latency-critical lane a higher "
            f"stream priority (priorities={{{first!r}: 'high'}}), smaller batches beside it, or fewer "
            "neighbours"
        )
    return (
        "on the CPU the lanes share the cores and the GIL (and any lock their code takes): a lane that "
        "holds them makes the others wait its turn; smaller batches, fewer intra-op threads or fewer "
        "neighbours help"
    )


def speedup_hint(result: DualResult) -> str:
    """The likely reason concurrency did not pay, from what was measured."""
    if result.mode == "sequential":
        return "the call ran in 'sequential' mode, which is the back-to-back run itself; use mode='auto'"
    if result.hint:
        return result.hint
    if result.ideal_speedup < 1.2:
        return (
            f"one lane dominates (ideal is only {ratio_text(result.ideal_speedup)}): balance the lanes, e.g. "
            "their batch sizes, before expecting a speedup"
        )
    if result.efficiency is not None and result.efficiency < 0.2:
        return (
            f"lanes overlapped ({result.overlap:.0%}) but did not finish sooner: they were time-sliced or "
            "each lane alone already fills the device (compute, memory bandwidth or cores)"
        )
    if result.sequential.noisy or result.concurrent.noisy:
        return "the measurement is noisy; raise --dualgpu-budget or quiet the machine"
    return "the lanes compete for the device; try other batch sizes, or another mode"


def _judge_memory(result: DualResult, spec: MemorySpec) -> Verdict:
    memory = result.memory
    if memory is None:
        return Verdict("memory", f"not judged ({result.device.partition(':')[0]})")
    alone = ", ".join(
        f"{lane} {size_text(peak)}" for lane, peak in zip(result.lane_names, memory.alone, strict=True)
    )
    measured = (
        f"concurrent peak {size_text(memory.concurrent)}, sequential peak {size_text(memory.sequential)}, "
        f"alone {alone}"
    )
    misses = []
    limit = spec.byte_limit
    if limit is not None and memory.concurrent > limit:
        misses.append(f"peak above the bound {size_text(limit)}")
    ratio = memory.ratio
    if spec.max_ratio is not None and ratio is not None and ratio > spec.max_ratio:
        misses.append(f"ratio {ratio:.2f} above the bound {ratio_text(spec.max_ratio)} the sequential peak")
    if not misses:
        return Verdict("memory", PASS)
    return Verdict(
        "memory",
        FAIL,
        f"{' and '.join(misses)}: {measured}; hint: running at once holds every lane's activations at the "
        "same time; lower the batch sizes or run fewer models together",
    )


def _maybe(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _check_device_types(device: object) -> None:
    types = (
        (device,) if isinstance(device, str) else tuple(device) if isinstance(device, (list, tuple)) else ()
    )
    if not types or not all(kind in ("cpu", "cuda") for kind in types):
        raise DualGpuUsageError(f"device must be 'cuda', 'cpu' or a list of them, got {device!r}")
