"""The flow of one ``dual_infer`` call (``api.py``), from the user's models to a ``DualResult``.

place inputs -> warm up (each lane alone, then each candidate mode) -> calibrate -> probe modes (auto)
-> measured rounds -> memory peaks (CUDA) -> one checked concurrent run -> compare with the reference
-> sync checks (host syncs, delayed trials, sanitizer) when asked. A pipeline is two lanes whose calls
hand micro-batches over (``pipeline.py``). Nothing here knows about pytest.
"""

from __future__ import annotations

import functools
import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from . import stats
from .backends import Backend, drop_locals, make_backend
from .compare import Tolerance, compare_lanes
from .devices import device_name, measuring_lock, resolve_device
from .diagnosis import no_overlap_hint
from .errors import ConcurrentOutOfMemoryError, DualGpuUsageError, LaneError
from .inputs import check_models, lane_names_for, make_lanes, to_device
from .lanes import MODE_CLASSES, Executor, GraphCaptureError, Lane, Mode, Run
from .measure import Samples, measure_rounds, reps_for, time_once
from .pipeline import PIPELINE_MODES, HandOff, PipelineCalls, best_time, split_batch
from .profiling import KernelProfile, profile_pass
from .results import DualResult, LaneResult, Measurement, MemoryStats, ModeProbe, SyncStats
from .settings import MODES
from .sync import SyncSettings
from .sync import check as sync_checks
from .timeline import LaneTimeline
from .trees import map_tensors

PROBE_ROUNDS = 3
TIMELINE_REPS = 50  # intervals kept per lane: enough to draw, small enough to travel in every report
MEANINGFUL_GAIN = 0.05  # efficiency needs a possible gain of at least this share of the sequential time
LOCK_WAIT_WARNING_SECONDS = 1.0


@dataclass(frozen=True)
class CallSettings:
    """How a call measures. ``budget``: seconds of measured rounds (warm-up and probes come on top)."""

    mode: str = "auto"
    device: str | torch.device | None = None
    budget: float = 1.0
    min_rounds: int = 7
    timeout: float = 120.0
    rtol: float | None = None
    atol: float | None = None
    equal_nan: bool = False
    settle: float | None = None
    race_trials: int = 0
    race_seed: int | None = None
    detect_syncs: bool = False
    sanitizer: bool = False
    profile: bool = False

    def __post_init__(self) -> None:
        if self.mode not in ("auto", *MODES):
            raise DualGpuUsageError(f"mode {self.mode!r} is not one of auto, {', '.join(MODES)}")
        _require_positive("budget", self.budget, "seconds of measuring per call, e.g. budget=1.0")
        _require_positive("timeout", self.timeout, "seconds a lane may take per run")
        if isinstance(self.min_rounds, bool) or not isinstance(self.min_rounds, int) or self.min_rounds < 1:
            raise DualGpuUsageError(f"min_rounds must be an integer >= 1, got {self.min_rounds!r}")
        if self.settle is not None and (not isinstance(self.settle, (int, float)) or self.settle < 0):
            raise DualGpuUsageError(f"settle must be a number of seconds >= 0, got {self.settle!r}")
        if (
            isinstance(self.race_trials, bool)
            or not isinstance(self.race_trials, int)
            or self.race_trials < 0
        ):
            raise DualGpuUsageError(f"race_trials must be an integer >= 0, got {self.race_trials!r}")
        if self.race_seed is not None and (
            isinstance(self.race_seed, bool) or not isinstance(self.race_seed, int)
        ):
            raise DualGpuUsageError(
                f"race_seed must be an integer (to replay a failing trial), got {self.race_seed!r}"
            )
        for flag in ("detect_syncs", "sanitizer", "profile"):
            if not isinstance(getattr(self, flag), bool):
                raise DualGpuUsageError(f"{flag} must be True or False, got {getattr(self, flag)!r}")

    @property
    def sync(self) -> SyncSettings:
        return SyncSettings(self.race_trials, self.race_seed, self.detect_syncs, self.sanitizer)

    @property
    def tolerance(self) -> Tolerance:
        return Tolerance(rtol=self.rtol, atol=self.atol, equal_nan=self.equal_nan)


def _require_positive(name: str, value: object, meaning: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or math.isinf(value):
        raise DualGpuUsageError(f"{name} must be a finite number > 0 ({meaning}), got {value!r}")


def run_call(
    models: Sequence[Callable[..., Any]],
    inputs: Sequence[Any],
    *,
    names: Sequence[str] | None,
    name: str | None,
    settings: CallSettings,
) -> DualResult:
    device = resolve_device(settings.device)
    lanes = make_lanes(models, inputs, names, device)
    return _measured(make_backend(device, len(lanes)), lanes, settings, name)


def run_pipeline(
    producer: Callable[..., Any],
    consumer: Callable[..., Any],
    inputs: Any,
    micro_batches: int,
    *,
    names: Sequence[str] | None,
    name: str | None,
    settings: CallSettings,
    hand_off_wait: bool = True,
) -> DualResult:
    """``hand_off_wait=False`` removes the consumer's wait: a broken pipeline, for the tests only."""
    device = resolve_device(settings.device)
    lane_names = lane_names_for([producer, consumer], names)
    check_models([producer, consumer], [inputs, inputs], lane_names, device)
    inputs = to_device(inputs, device)
    parts = split_batch(inputs, micro_batches)
    backend = make_backend(device, 2)
    hand_off = HandOff(len(parts), backend, settings.timeout, wait=hand_off_wait)
    calls = PipelineCalls(producer, consumer, parts, hand_off)
    lanes = [
        Lane(lane_names[0], calls.producer_handing_over),
        Lane(lane_names[1], calls.consumer_taking_over),
    ]
    plan = PipelinePlan(calls, inputs, micro_batches)
    return _measured(backend, lanes, settings, name or " -> ".join(lane_names), plan)


@dataclass
class PipelinePlan:
    calls: PipelineCalls
    inputs: Any
    micro_batches: int


def _measured(
    backend: Backend,
    lanes: list[Lane],
    settings: CallSettings,
    name: str | None,
    plan: PipelinePlan | None = None,
) -> DualResult:
    device = backend.device
    with measuring_lock(device) as waited:
        measurement = _Measuring(backend, lanes, settings, lock_wait=waited, pipeline=plan)
        if waited > LOCK_WAIT_WARNING_SECONDS:
            measurement.warnings.append(f"waited {waited:.1f} s for the {device.type} measuring lock")
        try:
            return measurement.run(name or "+".join(lane.name for lane in lanes))
        except BaseException as error:
            # Every failure gives cached device memory back; after running out of it, the frames that
            # still hold the lane's tensors are cleared first, or there would be nothing to give back.
            oom = (
                error if isinstance(error, LaneError) and backend.is_out_of_memory(error.__cause__) else None
            )
            if oom is not None:
                drop_locals(oom)
            backend.release()
            if oom is not None and oom.__cause__ is not None:
                raise ConcurrentOutOfMemoryError(
                    oom.run, oom.lane, measurement.alone_peaks, oom.__cause__
                ) from oom.__cause__
            raise


class _Measuring:
    """The state of one call while it measures."""

    def __init__(
        self,
        backend: Backend,
        lanes: list[Lane],
        settings: CallSettings,
        lock_wait: float = 0.0,
        pipeline: PipelinePlan | None = None,
    ) -> None:
        self.backend = backend
        self.lock_wait = lock_wait
        self.pipeline = pipeline
        self.lanes = lanes
        self.settings = settings
        self.names = [lane.name for lane in lanes]
        self.everyone = list(range(len(lanes)))
        self.warnings: list[str] = []
        self.probes: dict[str, ModeProbe] = {}
        self.alone_peaks: dict[str, int] | None = None

    def run(self, name: str) -> DualResult:
        with Executor(self.backend, self.lanes, self.settings.timeout) as executor:
            eager = self._mode("sequential", executor)
            if self.pipeline is not None:
                try:
                    self.pipeline.calls.prepare()
                except Exception as error:
                    raise LaneError(self.names[0], f"alone run of lane {self.names[0]!r}", error) from error
            reference = self._warm_up_alone(eager)
            if self.pipeline is not None:
                reference[-1] = self.pipeline.calls.whole_batch(self.pipeline.inputs)
            modes = self._build_modes(executor)
            try:
                reps = reps_for(
                    time_once(lambda: eager.baseline(self.everyone, 1)),
                    self.settings.budget,
                    len(self.lanes) + 2,
                    self.settings.min_rounds,
                )
                chosen = self._choose(modes, reps)
                samples = self._measure(chosen, eager, reps)
                memory = self._memory(chosen, executor)
                outputs = self._checked_outputs(chosen)
                profile = self._profile(chosen, executor, reps) if self.settings.profile else None
                sync = self._sync_checks(chosen, executor, reference)
            finally:
                for mode in modes:
                    mode.close()
        result = self._result(name, chosen.name, samples, reps, memory, outputs, reference)
        result.sync = sync
        if profile is not None:
            result.kernel_overlap = profile.kernel_overlap
            result.timelines["kernels"] = profile.tracks
            result.warnings.extend(profile.warnings)
        result.hint = no_overlap_hint(result)
        return result

    def _best_time(self, alone: list[float]) -> float:
        """What perfect overlap would take: the slowest lane, or a pipeline's fill time on top of it."""
        if self.pipeline is None:
            return max(alone)
        return best_time(alone, self.pipeline.micro_batches)

    def _profile(self, mode: Mode, executor: Executor, reps: int) -> KernelProfile:
        """One more concurrent pass under torch.profiler, outside the measured rounds (it slows them)."""
        threads = [
            (worker.native_id, f"thread of {lane_name}")
            for worker, lane_name in zip(executor.lane_workers, self.names, strict=True)
        ]
        threads.append((threading.get_native_id(), "caller's thread"))
        return profile_pass(lambda: mode.concurrent(reps), self.backend.kind, threads)

    def _sync_checks(self, mode: Mode, executor: Executor, reference: list[Any]) -> SyncStats:
        """Host syncs, provoked races and the sanitizer, each with eager calls in the chosen style."""
        if not self.settings.sync.wanted:
            return SyncStats()

        def concurrent(calls: Sequence[Callable[[], Any]], run: str) -> Run:
            if mode.name == "streams":
                return executor.streams(1, calls, run)
            if mode.name == "sequential":
                return executor.sequential(self.everyone, 1, calls, run)
            return executor.threads(1, calls, run)  # threads, and graphs: replays take no delays

        if self.settings.sanitizer and self.backend.kind == "cuda":
            self.warnings.append(
                "the CUDA sanitizer stays hooked into CUDA tracing for the rest of this process: later "
                "timings carry its overhead; run sanitizer checks in a session of their own"
            )
        return sync_checks(executor, concurrent, reference, self.settings.tolerance, self.settings.sync)

    def _warm_up_alone(self, eager: Mode) -> list[Any]:
        """Each lane alone first (lazy init, cudnn autotune in isolation), twice; keep the second outputs."""
        reference = []
        peaks = {}
        for index, lane_name in enumerate(self.names):
            label = f"alone run of lane {lane_name!r}"
            eager.baseline([index], 1, label)
            with self.backend.peak_memory() as peak:
                reference.append(eager.baseline([index], 1, label).outputs[0])
            if peak:
                peaks[lane_name] = peak[0]
        self.alone_peaks = peaks or None
        return reference

    def _candidate_modes(self) -> list[str]:
        requested = self.settings.mode
        available = self.backend.concurrent_modes
        if requested == "auto":
            return list(available)
        if requested == "sequential" or requested in available:
            return [requested]
        self.warnings.append(
            f"mode {requested!r} needs CUDA; ran {available[0]!r} on {self.backend.kind} instead"
        )
        return [available[0]]

    def _mode(self, mode_name: str, executor: Executor) -> Mode:
        if self.pipeline is None:
            return MODE_CLASSES[mode_name](executor)
        return PIPELINE_MODES[mode_name](executor, self.pipeline.calls)

    def _build_modes(self, executor: Executor) -> list[Mode]:
        modes: list[Mode] = []
        candidates = self._candidate_modes()
        for mode_name in candidates:  # grows when a graphs-only request falls back to threads
            try:
                mode = self._mode(mode_name, executor)
            except GraphCaptureError as error:
                self.probes[mode_name] = ModeProbe(mode_name, error=error.reason)
                if candidates == [mode_name]:
                    self.warnings.append(f"{error.reason}; ran 'threads' instead")
                    candidates.append("threads")
                continue
            mode.baseline(self.everyone, 1)
            mode.concurrent(1)
            modes.append(mode)
        return modes

    def _choose(self, modes: list[Mode], reps: int) -> Mode:
        """The mode whose concurrent run is fastest in a few short rounds.

        Fastest, not highest speedup: each mode's speedup is against a baseline in its own style, and
        graph replays back to back are faster than eager calls, so a high speedup over a slow baseline
        could still be the slower way to serve.
        """
        if len(modes) == 1:
            return modes[0]
        for mode in modes:
            samples = measure_rounds(
                {
                    "sequential": functools.partial(mode.baseline, self.everyone, reps),
                    "concurrent": functools.partial(mode.concurrent, reps),
                },
                budget=0.0,
                min_rounds=PROBE_ROUNDS,
                settle=self._settle,
            )
            self.probes[mode.name] = ModeProbe(
                mode.name,
                speedup=stats.median(
                    stats.paired_ratios(samples.elapsed["sequential"], samples.elapsed["concurrent"])
                ),
                sequential=stats.median(samples.elapsed["sequential"]),
                concurrent=stats.median(samples.elapsed["concurrent"]),
            )
        return min(modes, key=lambda mode: self.probes[mode.name].concurrent or math.inf)

    @property
    def _settle(self) -> float:
        return self.backend.default_settle if self.settings.settle is None else self.settings.settle

    def _measure(self, mode: Mode, eager: Mode, reps: int) -> Samples:
        variants: dict[str, Callable[[], Run]] = {
            f"alone:{index}": functools.partial(
                mode.baseline, [index], reps, f"alone run of lane {lane_name!r}"
            )
            for index, lane_name in enumerate(self.names)
        }
        variants["sequential"] = functools.partial(mode.baseline, self.everyone, reps)
        variants["concurrent"] = functools.partial(mode.concurrent, reps)
        if mode.static_outputs:
            variants["eager sequential"] = functools.partial(eager.baseline, self.everyone, reps)
        return measure_rounds(
            variants, budget=self.settings.budget, min_rounds=self.settings.min_rounds, settle=self._settle
        )

    def _memory(self, mode: Mode, executor: Executor) -> MemoryStats | None:
        if self.alone_peaks is None:
            return None
        if mode.static_outputs:  # graph pools are allocated once; the eager peak is the one that varies
            mode = self._mode("streams", executor)
        with self.backend.peak_memory() as sequential:
            mode.baseline(self.everyone, 1)
        with self.backend.peak_memory() as concurrent:
            mode.concurrent(1)
        return MemoryStats(
            alone=tuple(self.alone_peaks[lane_name] for lane_name in self.names),
            sequential=sequential[0],
            concurrent=concurrent[0],
        )

    def _checked_outputs(self, mode: Mode) -> list[Any]:
        outputs = mode.concurrent(1).outputs
        if mode.static_outputs:
            outputs = [map_tensors(output, torch.Tensor.clone) for output in outputs]
        return outputs

    def _result(
        self,
        name: str,
        mode_name: str,
        samples: Samples,
        reps: int,
        memory: MemoryStats | None,
        outputs: list[Any],
        reference: list[Any],
    ) -> DualResult:
        def measured(variant: str) -> Measurement:
            return Measurement.from_samples(samples.elapsed[variant], samples.wall[variant])

        lanes = [LaneResult(lane, measured(f"alone:{index}")) for index, lane in enumerate(self.names)]
        sequential, concurrent = measured("sequential"), measured("concurrent")
        ratios = stats.paired_ratios(samples.elapsed["sequential"], samples.elapsed["concurrent"])
        alone = [lane.alone.median for lane in lanes]
        efficiencies = _efficiencies(samples, len(lanes), self._best_time)
        comparison = compare_lanes(self.names, reference, outputs, self.settings.tolerance)
        self.probes[mode_name] = ModeProbe(
            mode_name,
            speedup=stats.median(ratios),
            sequential=sequential.median,
            concurrent=concurrent.median,
            chosen=True,
        )
        noisy = [
            f"{value.relative_iqr:.0%} ({label})"
            for label, value in (("sequential", sequential), ("concurrent", concurrent))
            if value.noisy
        ]
        if noisy:
            self.warnings.append(
                f"noisy times: IQR/median is {' and '.join(noisy)}; raise the budget or quiet the machine"
            )
        return DualResult(
            name=name,
            device=str(self.backend.device),
            device_name=device_name(self.backend.device),
            mode=mode_name,
            requested_mode=self.settings.mode,
            lanes=lanes,
            sequential=sequential,
            concurrent=concurrent,
            eager_sequential=measured("eager sequential") if "eager sequential" in samples.elapsed else None,
            speedup=stats.median(ratios),
            speedup_ci=stats.median_ci(ratios),
            ideal_speedup=sum(alone) / self._best_time(alone) if max(alone) > 0 else 1.0,
            efficiency=stats.median(efficiencies) if efficiencies else None,
            efficiency_ci=stats.median_ci(efficiencies) if efficiencies else None,
            micro_batches=self.pipeline.micro_batches if self.pipeline is not None else None,
            overlap=stats.median(samples.overlaps["concurrent"]),
            correct=comparison.correct,
            max_abs_err=comparison.max_abs_err,
            max_rel_err=comparison.max_rel_err,
            mismatches=comparison.mismatches,
            memory=memory,
            modes=[self.probes[mode] for mode in MODES if mode in self.probes],
            warnings=self.warnings,
            rounds=samples.rounds,
            reps=reps,
            lock_wait=self.lock_wait,
            timelines={
                run: [
                    LaneTimeline(self.names[index], tuple(intervals[:TIMELINE_REPS]))
                    for index, intervals in zip(
                        samples.last[run].lanes, samples.last[run].intervals, strict=True
                    )
                ]
                for run in ("sequential", "concurrent")
            },
            outputs=outputs,
            reference=reference,
        )


def _efficiencies(
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
        if sum(alone) - best > MEANINGFUL_GAIN * sum(alone) and sequential > best:
            per_round.append((sequential - concurrent) / (sequential - best))
    return per_round
