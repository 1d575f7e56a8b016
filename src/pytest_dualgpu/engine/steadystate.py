"""The warm-up phase of a call (``call.py``): each lane alone until its time per call is steady, its output
kept as the reference and its peak memory taken; then each candidate mode's concurrent run until steady.
What "steady" means is ``warmup.py``'s rule; this phase applies it to the call's lanes and modes."""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any

from pytest_dualgpu.engine.compare import compare_outputs
from pytest_dualgpu.engine.executor import Executor, GraphCaptureError, Lane, Mode, kept
from pytest_dualgpu.engine.parts import CallParts
from pytest_dualgpu.engine.trees import Kind, kind, walk
from pytest_dualgpu.engine.warmup import WarmUpClock, unsettled_warning, warm_up
from pytest_dualgpu.errors import DualGpuUsageError
from pytest_dualgpu.results import ModeProbe, WarmUp
from pytest_dualgpu.specs import Tolerance


class CallWarmUp:
    """What the warm-up found, filled in as it goes: a failure part-way still leaves the peaks taken so far
    for the error that names them. ``failed_modes``: the probes of modes that could not even be set up."""

    def __init__(self, parts: CallParts) -> None:
        self.parts = parts
        self.settings = parts.settings
        self.warnings: list[str] = []
        self.failed_modes: dict[str, ModeProbe] = {}
        self.mode_warmups: dict[str, WarmUp] = {}
        self.alone_peaks: dict[str, int] | None = None
        self.input_writes: list[str] = []
        self.candidates = self._candidate_modes()
        self.clock = WarmUpClock(self.settings.warmup, len(parts.lanes) + len(self.candidates))

    def warm_lanes(self, eager: Mode) -> tuple[list[Any], list[WarmUp]]:
        """Each lane alone until steady (lazy init, autotuning in isolation); its first call runs under
        the timeout. Then one more call gives the reference output and the lane's peak memory."""
        reference = []
        warmups = []
        peaks = {}
        for index, lane_name in enumerate(self.parts.names):
            label = f"alone run of lane {lane_name!r}"
            lane = self.parts.lanes[index]
            before = kept(lane.args), kept(lane.kwargs)
            started = time.perf_counter()
            first_output = eager.back_to_back([index], 1, label).outputs[0]
            first = time.perf_counter() - started
            _refuse_iterators(lane_name, first_output)
            self._check_own_inputs(lane, before)
            # A first call that compiles or loads is bounded by the timeout, and checking what it did by
            # nothing that measures: neither takes from the warm-up cap.
            self.clock.pause(time.perf_counter() - started)
            if self.settings.warmup > 0:
                steady = warm_up(
                    functools.partial(_per_call, eager, [index], label),
                    deadline=self.clock.next_deadline(),
                    min_seconds=self.parts.backend.min_warmup,
                )
                warmup = WarmUp(steady.seconds + first, steady.calls + 1, steady.converged, steady.per_call)
                if not steady.converged:
                    self.warnings.append(
                        unsettled_warning(f"lane {lane_name!r}", warmup, self.settings.warmup)
                    )
            else:
                warmup = WarmUp(first, 1, False, None)
            with self.parts.backend.peak_memory() as peak:
                run = eager.back_to_back([index], 1, label)
            reference.append(kept(run.outputs[0]))
            warmups.append(
                warmup if warmup.per_call is not None else dataclasses.replace(warmup, per_call=run.elapsed)
            )
            if peak:
                peaks[lane_name] = peak[0]
        if self.settings.warmup == 0:
            self.warnings.append(
                "warm-up skipped (warmup=0): the figures may include first-call effects (lazy "
                "initialisation, caches, clocks)"
            )
        self.alone_peaks = peaks or None
        return reference, warmups

    def _check_own_inputs(self, lane: Lane, before: tuple[Any, Any]) -> None:
        """Whether the lane's first call, alone, changed its own inputs: then every call sees what the one
        before left, and any lane sharing them is wrong too; that is this lane's doing, and is named."""
        exact = Tolerance(rtol=0.0, atol=0.0, equal_nan=True)
        args, kwargs = before
        for was, now, root in ((args, lane.args, "args"), (kwargs, lane.kwargs, "kwargs")):
            changed = compare_outputs(was, now, tolerance=exact, root=root)
            if not changed.correct:
                where = changed.mismatches[0].partition(":")[0]
                self.input_writes.append(f"lane {lane.name!r} changes its own input in place ({where})")
                return

    def _candidate_modes(self) -> list[str]:
        requested = self.settings.mode
        available = self.parts.backend.concurrent_modes
        if requested == "auto":
            return list(available)
        if requested == "sequential" or requested in available:
            return [requested]
        self.warnings.append(
            f"mode {requested!r} needs CUDA; ran {available[0]!r} on {self.parts.backend.kind} instead"
        )
        return [available[0]]

    def warm_modes(self, executor: Executor) -> list[Mode]:
        """Each candidate mode, its concurrent run warmed up to steady state like the lanes were."""
        modes: list[Mode] = []
        candidates = list(self.candidates)
        for mode_name in candidates:  # grows when a graphs-only request falls back to threads
            try:
                mode = self.parts.arrangement.mode(mode_name, executor)
            except GraphCaptureError as error:
                self.failed_modes[mode_name] = ModeProbe(mode_name, error=error.reason)
                if candidates == [mode_name]:
                    self.warnings.append(f"{error.reason}; ran 'threads' instead")
                    candidates.append("threads")
                    self.clock.add_stages(1)
                continue
            mode.back_to_back(self.parts.everyone, 1)
            mode.concurrent(1)
            if self.settings.warmup > 0:
                warmup = warm_up(
                    functools.partial(_concurrent_per_call, mode),
                    deadline=self.clock.next_deadline(),
                    min_seconds=self.parts.backend.min_warmup,
                )
                self.mode_warmups[mode.name] = warmup
                if not warmup.converged:
                    label = f"the concurrent run of mode {mode.name!r}"
                    self.warnings.append(unsettled_warning(label, warmup, self.settings.warmup))
            modes.append(mode)
        return modes


def _refuse_iterators(lane_name: str, output: Any) -> None:
    """A generator or iterator output does its work only when someone iterates: nothing would be timed."""
    for path, leaf in walk(output):
        if kind(leaf) is Kind.ITERATOR:
            raise DualGpuUsageError(
                f"lane {lane_name!r} returned a {type(leaf).__name__} at {path}: its work runs only when "
                "it is iterated, so dual_infer would time nothing; return the values (e.g. list(...) or "
                "torch.stack(...)) from forward"
            )


def _per_call(mode: Mode, lanes: list[int], label: str, calls: int) -> float:
    return mode.back_to_back(lanes, calls, label).elapsed


def _concurrent_per_call(mode: Mode, calls: int) -> float:
    return mode.concurrent(calls).elapsed
