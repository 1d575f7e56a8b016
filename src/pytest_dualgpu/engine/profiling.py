"""Kernel-level overlap: one more concurrent pass under ``torch.profiler``.

Lane intervals say when each lane was busy from its own point of view; two lanes time-sliced on one GPU
both look busy for the whole run. The profiler says what really executed when: kernels grouped by CUDA
stream, or on CPU the operators grouped by the thread that ran them. The trace is read in its exported
Chrome form, the profiler's documented output, rather than through its event objects.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from pytest_dualgpu.errors import described
from pytest_dualgpu.timeline import Interval, LaneTimeline, overlap

#: Segments kept per track for traces and reports (every row carries them); the overlap uses all of them.
TRACK_LIMIT = 200
DEVICE_CATEGORIES = ("kernel", "gpu_memcpy", "gpu_memset")


@dataclass
class KernelProfile:
    """Busy segments per stream (CUDA) or lane thread (CPU), and how much of them ran at once."""

    tracks: list[LaneTimeline]
    kernel_overlap: float | None
    warnings: list[str] = field(default_factory=list)


def profile_pass(
    run: Callable[[], object], device_kind: str, lane_threads: Sequence[tuple[int | None, str]]
) -> KernelProfile:
    """Run ``run`` once under the profiler; ``lane_threads`` are (native thread id, track name) pairs."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device_kind == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    config = all_threads_config()
    if config is None and device_kind != "cuda":
        return KernelProfile(
            [],
            None,
            [f"kernel overlap needs torch.profiler to see the lane threads; torch {torch.__version__} "
             "cannot (its profiler has no profile_all_threads)"],
        )  # fmt: skip
    if torch._C._autograd._profiler_enabled():
        return KernelProfile([], None, ["kernel overlap not measured: a torch profiler is already running"])
    # The first pass only warms the profiler up: its start-up work (CUPTI's, on the first launches) would
    # delay one stream's kernels against the other's in the trace (seen on an H200: kernel overlap 0.73
    # for two lanes that overlapped 0.97 everywhere else).
    profiler = torch.profiler.profile(
        activities=activities,
        schedule=torch.profiler.schedule(wait=0, warmup=1, active=1),
        experimental_config=config,
    )
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*clears events at the end of each cycle")
            profiler.start()
    except Exception as error:  # the profiler is a diagnostic: its failure must not fail the call
        return KernelProfile([], None, [f"kernel overlap not measured: the profiler did not start ({error})"])
    events: list[dict[str, Any]] = []
    failure: str | None = None
    try:
        run()
        profiler.step()
        run()
    finally:
        try:
            profiler.stop()
            events = _exported_events(profiler)
        except Exception as error:
            failure = f"kernel overlap not measured: the profiler failed ({described(error)})"
    if failure is not None:
        return KernelProfile([], None, [failure])
    names = {thread: lane for thread, lane in lane_threads if thread is not None}
    if device_kind == "cuda":
        groups = _by_stream(events, names)
        missing = "no kernels"
    else:
        groups = _by_lane_thread(events, names)
        missing = "no operators on the lane threads"
    if not groups:
        return KernelProfile([], None, [f"the profiled pass recorded {missing}: kernel overlap unknown"])
    origin = min(start for intervals in groups.values() for start, _ in intervals)
    tracks = [
        LaneTimeline(label, tuple((start - origin, end - origin) for start, end in _merged(intervals)))
        for label, intervals in sorted(groups.items())
    ]
    kernel_overlap = overlap([line.intervals for line in tracks])
    return KernelProfile([line.capped(TRACK_LIMIT) for line in tracks], kernel_overlap)


def all_threads_config() -> Any:
    """The profiler records only the thread that started it unless told otherwise (torch >= 2.7)."""
    try:
        return torch._C._profiler._ExperimentalConfig(profile_all_threads=True)
    except TypeError:
        return None


def _exported_events(profiler: torch.profiler.profile) -> list[dict[str, Any]]:
    handle, path = tempfile.mkstemp(prefix="dualgpu-profile-", suffix=".json")
    os.close(handle)
    try:
        profiler.export_chrome_trace(path)
        with open(path, encoding="utf-8") as file:
            trace = json.load(file)
    finally:
        os.unlink(path)
    return [event for event in trace.get("traceEvents", []) if event.get("ph") == "X"]


def _seconds(event: dict[str, Any]) -> Interval:
    start = float(event["ts"]) / 1e6
    return (start, start + float(event.get("dur", 0.0)) / 1e6)


def _by_stream(events: list[dict[str, Any]], lane_of_thread: dict[int, str]) -> dict[str, list[Interval]]:
    """Device work grouped by stream, named after the lane whose thread launched it where that is known."""
    launcher = {
        event.get("args", {}).get("correlation"): event.get("tid")
        for event in events
        if event.get("cat") in ("cuda_runtime", "cuda_driver")
    }
    groups: dict[str, list[Interval]] = {}
    lanes: dict[Any, set[str]] = {}
    for event in events:
        if event.get("cat") not in DEVICE_CATEGORIES:
            continue
        args = event.get("args", {})
        stream = args.get("stream", event.get("tid"))
        groups.setdefault(f"stream {stream}", []).append(_seconds(event))
        lane = lane_of_thread.get(launcher.get(args.get("correlation")))  # type: ignore[arg-type]
        if lane is not None:
            lanes.setdefault(stream, set()).add(lane)
    named = {}
    for label, intervals in groups.items():
        stream = label.removeprefix("stream ")
        owners = lanes.get(int(stream) if stream.isdigit() else stream, set())
        named[f"{label} ({', '.join(sorted(owners))})" if owners else label] = intervals
    return named


def _by_lane_thread(
    events: list[dict[str, Any]], lane_of_thread: dict[int, str]
) -> dict[str, list[Interval]]:
    """CPU operators grouped by the (lane or caller's) thread that ran them; other threads are left out."""
    groups: dict[str, list[Interval]] = {}
    for event in events:
        if event.get("cat") != "cpu_op":
            continue
        lane = lane_of_thread.get(event.get("tid"))  # type: ignore[arg-type]
        if lane is None:
            continue
        groups.setdefault(lane, []).append(_seconds(event))
    return groups


def _merged(intervals: list[Interval]) -> list[Interval]:
    """Nested and touching intervals joined: an operator and the operators it calls are one busy stretch."""
    merged: list[Interval] = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged
