"""The flow of one ``dual_infer`` call (``api.py``), from the user's models to a ``DualResult``.

take the measuring lock -> place inputs -> warm up to steady state (each lane alone, its first call under
the timeout, then each candidate mode; ``steadystate.py``) -> calibrate -> probe modes (auto) -> measured
rounds until the figures are precise or every bound is decided (``measure.py``) -> memory peaks (CUDA)
-> one checked concurrent run -> sync checks when asked (``checks.py``) -> the result, built once from
what the phases found and judged (``assemble.py``). What differs between models side by side and a pipeline
(two lanes whose calls hand micro-batches over) is the call's arrangement (``arrangement.py``). Nothing
here knows about pytest.

Time: the warm-up takes at most ``warmup`` seconds, probes and rounds at most ``max_budget``; the checks
after them (memory, outputs, sync trials, profile) are a few runs more.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

from pytest_dualgpu.engine.arrangement import Arrangement, SideBySide
from pytest_dualgpu.engine.assemble import Findings, build_result, judged
from pytest_dualgpu.engine.backends import Backend, drop_locals, make_backend
from pytest_dualgpu.engine.callsettings import CallSettings, high_priority
from pytest_dualgpu.engine.checks import Checks, kernel_profile, outputs_at_once, peak_memory, sync_stats
from pytest_dualgpu.engine.devices import lock_path, resolve_device
from pytest_dualgpu.engine.executor import Executor, Lane, Mode, Run
from pytest_dualgpu.engine.inputs import check_models, lane_names_for, make_lanes, to_device
from pytest_dualgpu.engine.lock import MeasuringLock, Notify
from pytest_dualgpu.engine.measure import (
    Measured,
    measure_rounds,
    reps_for,
    slower_start,
)
from pytest_dualgpu.engine.parts import CallParts
from pytest_dualgpu.engine.pipeline import HandOff, Pipeline, PipelineCalls, split_batch
from pytest_dualgpu.engine.steadystate import CallWarmUp
from pytest_dualgpu.engine.stopping import StoppingRule, figures
from pytest_dualgpu.engine.workers import still_running
from pytest_dualgpu.errors import ConcurrentOutOfMemoryError, LaneError
from pytest_dualgpu.results import DualResult, ModeProbe, WarmUp, default_name

PROBE_ROUNDS = 3
LOCK_WAIT_WARNING_SECONDS = 1.0
#: How long the lock waits for lane threads abandoned after a timeout before handing itself on.
ABANDONED_LINGER = 30.0


def run_call(
    models: Sequence[Callable[..., Any]],
    inputs: Sequence[Any],
    *,
    names: Sequence[str] | None,
    name: str | None,
    settings: CallSettings,
    notify: Notify | None = None,
) -> DualResult:
    device = resolve_device(settings.device)
    lanes = make_lanes(models, inputs, names, device)
    high = high_priority(settings, [lane.name for lane in lanes])
    backend = make_backend(device, len(lanes), high)
    return _measured(backend, lanes, settings, name, SideBySide(), notify)


def run_pipeline(
    producer: Callable[..., Any],
    consumer: Callable[..., Any],
    inputs: Any,
    micro_batches: int,
    *,
    names: Sequence[str] | None,
    name: str | None,
    settings: CallSettings,
    hand_off: type[HandOff] = HandOff,
    notify: Notify | None = None,
) -> DualResult:
    """``hand_off``: the hand-over between the stages (a subclass changes how the consumer waits)."""
    device = resolve_device(settings.device)
    lane_names = lane_names_for([producer, consumer], names)
    check_models([producer, consumer], [inputs, inputs], lane_names, device)
    inputs = to_device(inputs, device)
    parts = split_batch(inputs, micro_batches)
    backend = make_backend(device, 2, high_priority(settings, lane_names))
    calls = PipelineCalls(producer, consumer, parts, hand_off(len(parts), backend, settings.timeout))
    lanes = [
        Lane(lane_names[0], calls.producer_handing_over),
        Lane(lane_names[1], calls.consumer_taking_over),
    ]
    pipeline = Pipeline(calls, inputs, micro_batches)
    return _measured(
        backend, lanes, settings, name or default_name(lane_names, pipeline=True), pipeline, notify
    )


def _measured(
    backend: Backend,
    lanes: list[Lane],
    settings: CallSettings,
    name: str | None,
    arrangement: Arrangement,
    notify: Notify | None = None,
) -> DualResult:
    device = backend.device
    lock = MeasuringLock(lock_path(device), timeout=settings.lock_timeout, notify=notify)
    waited = lock.acquire()
    abandoned_before = {id(entry.thread) for entry in still_running()}
    measurement: _Measuring | None = None
    try:
        measurement = _Measuring(CallParts(backend, lanes, settings, arrangement), lock_wait=waited)
        if waited > LOCK_WAIT_WARNING_SECONDS:
            measurement.warnings.append(f"waited {waited:.1f} s for the {device.type} measuring lock")
        measurement.warnings += [
            f"lane {entry.lane!r} of an earlier call still runs user code in thread {entry.thread.name} "
            f"(abandoned after its timeout, {time.monotonic() - entry.since:.0f} s ago): it competes with "
            "these measurements"
            for entry in still_running()
        ]
        return measurement.run(name or default_name([lane.name for lane in lanes]))
    except BaseException as error:
        # Every failure gives cached device memory back; after running out of it, the frames that
        # still hold the lane's tensors are cleared first, or there would be nothing to give back.
        oom = error if isinstance(error, LaneError) and backend.is_out_of_memory(error.__cause__) else None
        if oom is not None:
            drop_locals(oom)
        backend.release()
        if oom is not None and oom.__cause__ is not None:
            peaks = measurement.warming.alone_peaks if measurement is not None else None
            raise ConcurrentOutOfMemoryError(oom.run, oom.lane, peaks, oom.__cause__) from oom.__cause__
        raise
    finally:
        # Only threads this call abandoned hold the lock back; one stuck for good delays one call, not all.
        fresh = [entry.thread for entry in still_running() if id(entry.thread) not in abandoned_before]
        lock.release(running=fresh, linger=ABANDONED_LINGER)


class _Measuring:
    """The state of one call while it measures; each phase's own state lives with the phase."""

    def __init__(self, parts: CallParts, lock_wait: float = 0.0) -> None:
        self.parts = parts
        self.backend = parts.backend
        self.settings = parts.settings
        self.arrangement = parts.arrangement
        self.lock_wait = lock_wait
        self.names = parts.names
        self.everyone = parts.everyone
        # A slowdown bound on every lane is one per lane, checked against the lane names before anything runs.
        self.bounds = tuple(each for bound in self.settings.bounds for each in bound.for_lanes(self.names))
        self.warnings: list[str] = []
        if any(parts.high) and self.backend.kind != "cuda":
            self.warnings.append(
                f"priorities= asks for CUDA stream priorities; on {self.backend.kind} there are no streams, "
                "so it changed nothing"
            )
        self.warming = CallWarmUp(parts)

    def run(self, name: str) -> DualResult:
        started = time.perf_counter()
        with Executor(self.backend, self.parts.lanes, self.settings.timeout) as executor:
            eager = self.arrangement.mode("sequential", executor)
            self.arrangement.prepare(executor, self.names)
            alone, lane_warmups = self.warming.warm_lanes(eager)
            reference = self.arrangement.reference(alone)
            modes = self.warming.warm_modes(executor)
            warmed = time.perf_counter()
            try:
                deadline = warmed + self.settings.measuring_cap
                reps = self._calibrate(lane_warmups, modes, eager)
                chosen, probes = self._probe(modes, reps, deadline)
                gpu_at_start = self.backend.gpu_state()
                measured = self._measure(chosen, eager, reps, warmed, deadline)
                gpu_at_end = self.backend.gpu_state()
                measuring_seconds = time.perf_counter() - warmed
                memory = peak_memory(
                    self.backend,
                    chosen,
                    functools.partial(self.arrangement.mode, "streams", executor),
                    self.warming.alone_peaks,
                    self.names,
                )
                outputs = outputs_at_once(chosen)
                profile = (
                    kernel_profile(self.backend, chosen, executor, self.names, measured)
                    if self.settings.profile
                    else None
                )
                sync_warnings: list[str] = []
                sync = sync_stats(chosen, executor, reference, self.settings, sync_warnings)
            finally:
                for mode in modes:
                    mode.close()
        gpu_state = {"start": gpu_at_start, "end": gpu_at_end} if gpu_at_start and gpu_at_end else None
        found = Findings(
            name=name,
            mode=chosen.name,
            measured=measured,
            lane_warmups=lane_warmups,
            mode_warmups=self.warming.mode_warmups,
            probes={**self.warming.failed_modes, **probes},
            input_writes=self.warming.input_writes,
            checks=Checks(memory, outputs, reference, sync, profile, gpu_state),
            warnings=[*self.warnings, *self.warming.warnings, *sync_warnings],
            lock_wait=self.lock_wait,
            warmup_seconds=warmed - started,
            measuring_seconds=measuring_seconds,
        )
        return judged(build_result(self.parts, found), self.bounds)

    def _calibrate(self, lane_warmups: list[WarmUp], modes: list[Mode], eager: Mode) -> int:
        """Repetitions per sample, from the steady times the warm-up ended with."""
        alone = [warmup.per_call or 0.0 for warmup in lane_warmups]
        concurrent = [
            self.warming.mode_warmups[mode.name].per_call or 0.0
            for mode in modes
            if mode.name in self.warming.mode_warmups
        ]
        if min(alone, default=0.0) <= 0 or not concurrent:
            alone = [eager.back_to_back([index], 1).elapsed for index in self.everyone]
            concurrent = [modes[0].concurrent(1).elapsed]
        per_call = {f"alone:{index}": seconds for index, seconds in enumerate(alone)}
        per_call["sequential"] = sum(alone)
        per_call["concurrent"] = min(concurrent)
        return reps_for(per_call, self._target_block)

    @property
    def _target_block(self) -> float:
        """A sample long enough that ``min_rounds`` rounds of samples take about a third of the budget: a
        quiet pair that is precise after them stops early, and a noisy one gets many more rounds than the
        minimum in its budget, which is what narrows its interval."""
        variants = len(self.names) + 2
        return self.settings.budget / (3 * self.settings.min_rounds * variants)

    def _probe(self, modes: list[Mode], reps: int, deadline: float) -> tuple[Mode, dict[str, ModeProbe]]:
        """The mode whose concurrent run is fastest in a few short rounds, and what each mode did in them.

        Fastest, not highest speedup: each mode's speedup is against a sequential run in its own style, and
        graph replays back to back are faster than eager calls, so a high speedup over a slow sequential run
        could still be the slower way to serve.
        """
        if len(modes) == 1:
            return modes[0], {}
        probes: dict[str, ModeProbe] = {}
        for mode in modes:
            warmup = self.warming.mode_warmups.get(mode.name)
            measured = measure_rounds(
                {
                    "sequential": functools.partial(mode.back_to_back, self.everyone),
                    "concurrent": mode.concurrent,
                },
                reps,
                settle=self.parts.settle,
                preroll=self.backend.preroll,
                min_rounds=PROBE_ROUNDS,
                stop=lambda samples, now: "probed",
                deadline=deadline,
            )
            samples = measured.samples
            if not samples.rounds:
                probes[mode.name] = ModeProbe(mode.name, warmup=warmup)
                continue
            probes[mode.name] = ModeProbe.from_rounds(
                mode.name, samples.elapsed["sequential"], samples.elapsed["concurrent"], warmup=warmup
            )
        return min(modes, key=lambda mode: probes[mode.name].concurrent or math.inf), probes

    def _measure(self, mode: Mode, eager: Mode, reps: int, start: float, deadline: float) -> Measured:
        variants: dict[str, Callable[[int], Run]] = {
            f"alone:{index}": functools.partial(_alone, mode, index, f"alone run of lane {lane_name!r}")
            for index, lane_name in enumerate(self.names)
        }
        variants["sequential"] = functools.partial(mode.back_to_back, self.everyone)
        variants["concurrent"] = mode.concurrent
        if mode.static_outputs:
            variants["eager sequential"] = functools.partial(eager.back_to_back, self.everyone)
        timed = [f"alone:{index}" for index in self.everyone] + ["concurrent"]
        return measure_rounds(
            variants,
            reps,
            settle=self.parts.settle,
            preroll=self.backend.preroll,
            min_rounds=self.settings.min_rounds,
            stop=StoppingRule(
                self.bounds,
                budget_deadline=start + self.settings.budget,
                deadline=deadline,
                figures=functools.partial(
                    figures,
                    lanes=len(self.names),
                    best_time=self.arrangement.best_time,
                    slowdowns=[
                        (bound.key, self.names.index(bound.lane or ""), bound.percentile)
                        for bound in self.bounds
                        if bound.metric == "slowdown"
                    ],
                ),
            ),
            deadline=deadline,
            target_block=self._target_block,
            check_start=lambda samples: slower_start(samples.elapsed, timed),
        )


def _alone(mode: Mode, index: int, label: str, reps: int) -> Run:
    return mode.back_to_back([index], reps, label)
