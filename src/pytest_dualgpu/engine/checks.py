"""The checks after the measured rounds, each a run of the chosen mode outside them: peak memory, the
outputs at once, kernel overlap under the profiler, and the sync checks."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pytest_dualgpu import stats
from pytest_dualgpu.engine.backends import Backend
from pytest_dualgpu.engine.callsettings import CallSettings
from pytest_dualgpu.engine.executor import Executor, Mode, Run, copying
from pytest_dualgpu.engine.measure import Measured
from pytest_dualgpu.engine.profiling import KernelProfile, profile_pass
from pytest_dualgpu.engine.sync import check as sync_checks
from pytest_dualgpu.gpustate import GpuState
from pytest_dualgpu.results import MemoryStats, SyncStats

#: The shortest profiled pass, and its most calls (see ``kernel_profile``).
PROFILED_SECONDS = 0.02
PROFILED_MAX_REPS = 100


@dataclass(frozen=True)
class Checks:
    """What the checks after the rounds found, for the result."""

    memory: MemoryStats | None
    outputs: list[Any]
    reference: list[Any]
    sync: SyncStats
    profile: KernelProfile | None
    gpu_state: dict[str, GpuState] | None


def peak_memory(
    backend: Backend,
    mode: Mode,
    eager_streams: Callable[[], Mode],
    alone_peaks: dict[str, int] | None,
    names: Sequence[str],
) -> MemoryStats | None:
    """Peak memory back to back and at once, beside each lane's alone (None where it cannot be read)."""
    if alone_peaks is None:
        return None
    if mode.static_outputs:  # graph pools are allocated once; the eager peak is the one that varies
        mode = eager_streams()
    everyone = list(range(len(names)))
    with backend.peak_memory() as sequential:
        mode.back_to_back(everyone, 1)
    with backend.peak_memory() as concurrent:
        mode.concurrent(1)
    return MemoryStats(
        alone=tuple(alone_peaks[lane_name] for lane_name in names),
        sequential=sequential[0],
        concurrent=concurrent[0],
    )


def outputs_at_once(mode: Mode) -> list[Any]:
    """One concurrent call's outputs, each copied as its lane returns it (see ``executor.copying``)."""
    calls = mode.calls
    mode.calls = [copying(call) for call in calls]
    try:
        return mode.concurrent(1).outputs
    finally:
        mode.calls = calls


def kernel_profile(
    backend: Backend, mode: Mode, executor: Executor, names: Sequence[str], measured: Measured
) -> KernelProfile:
    """One more concurrent pass under torch.profiler, outside the measured rounds (it slows them).

    It lasts at least ``PROFILED_SECONDS``: the profiler slows each thread's first launches, and one
    lane's late start is then a small part of the pass (two 1 ms sleep kernels per lane on an H200
    showed a kernel overlap of 0.70 in two calls, against 0.97 from the lanes' own events).
    """
    per_call = stats.median(measured.samples.elapsed.get("concurrent") or [0.0])
    reps = measured.reps
    if per_call > 0:
        reps = min(max(reps, math.ceil(PROFILED_SECONDS / per_call)), PROFILED_MAX_REPS)
    threads = [
        (worker.native_id, f"thread of {lane_name}")
        for worker, lane_name in zip(executor.lane_workers, names, strict=True)
    ]
    threads.append((threading.get_native_id(), "caller's thread"))
    return profile_pass(lambda: mode.concurrent(reps), backend.kind, threads)


def sync_stats(
    mode: Mode, executor: Executor, reference: list[Any], settings: CallSettings, warnings: list[str]
) -> SyncStats:
    """Host syncs, provoked races and the sanitizer, each with eager calls in the chosen style."""
    if not settings.sync.wanted:
        return SyncStats()
    everyone = list(range(len(executor.lanes)))

    def concurrent(calls: Sequence[Callable[[], Any]], run: str) -> Run:
        if mode.name == "streams":
            return executor.streams(1, calls, run)
        if mode.name == "sequential":
            return executor.sequential(everyone, 1, calls, run)
        return executor.threads(1, calls, run)  # threads, and graphs: replays take no delays

    if settings.sanitizer and executor.backend.kind == "cuda":
        warnings.append(
            "the CUDA sanitizer stays hooked into CUDA tracing for the rest of this process: later "
            "timings carry its overhead; run sanitizer checks in a session of their own"
        )
    return sync_checks(executor, concurrent, reference, settings.tolerance, settings.sync)
