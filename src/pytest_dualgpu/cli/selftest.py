"""The doctor's self-test: the engine run on known lanes, whose right answers are known in advance.

On CUDA: lanes of sleep kernels (they hold a stream, not the SMs) must overlap in every mode; a lane that
calls ``.item()`` must be caught; a graph must capture and replay; the profiler must see both streams;
peak memory must count what a lane allocates; a pipeline must hand its micro-batches over. On CPU:
sleeping lanes must overlap on the lane threads, and the intra-op threads must be split between the
lanes (and given back). The whole test stops at its budget.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from pytest_dualgpu.cli.check import Check
from pytest_dualgpu.engine.api import dual_infer
from pytest_dualgpu.engine.backends import gpu_sleep, graphs_unsupported
from pytest_dualgpu.errors import described
from pytest_dualgpu.modes import CUDA_CONCURRENT
from pytest_dualgpu.results import DualResult
from pytest_dualgpu.stats import FAIL, PASS, SKIP
from pytest_dualgpu.units import ratio_text, size_text

QUICK: dict[str, Any] = {"budget": 0.2, "max_budget": 1.0, "warmup": 0.5, "min_rounds": 7}
LANE_SECONDS = 0.002
OVERLAP_AT_LEAST = 0.8
SPEEDUP_AT_LEAST = 1.5
ALLOCATED_BYTES = 64 * 2**20


class SleepKernels(nn.Module):
    """Keeps its stream busy for a fixed time without using the SMs: two always fit side by side."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gpu_sleep(LANE_SECONDS, x.device)
        return x * 2


class Sleeping(nn.Module):
    """The CPU twin: sleeps, releasing the GIL, so two lane threads overlap whatever the cores do."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(LANE_SECONDS)
        return x * 2


class Syncing(nn.Module):
    """Reads a value back to the host in the middle of its work: a host sync the check must find."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gpu_sleep(LANE_SECONDS / 2, x.device)
        scale = float(x.sum().item())
        return x * scale


class Allocating(nn.Module):
    """Holds a known number of bytes at its peak."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        block = torch.ones(ALLOCATED_BYTES // 4, device=x.device)
        return x + block[:1]


class ThreadCounter(nn.Module):
    """Remembers how many intra-op threads torch gave it in each thread it ran on."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: dict[str, int] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen[threading.current_thread().name] = torch.get_num_threads()
        return x @ x


def run_self_test(device: torch.device, budget_seconds: float = 60.0) -> list[Check]:
    """Every test for the device's type, in order, until ``budget_seconds`` is spent."""
    tests = _cuda_tests(device) if device.type == "cuda" else _cpu_tests()
    deadline = time.monotonic() + budget_seconds
    checks = []
    for name, test in tests:
        if time.monotonic() >= deadline:
            checks.append(
                Check(name, SKIP, f"the self-test's {budget_seconds:.0f} s ran out", "run it alone")
            )
            continue
        try:
            checks.append(test())
        except Exception as error:
            checks.append(Check(name, FAIL, described(error), "see the error; report it"))
    return checks


def _cuda_tests(device: torch.device) -> list[tuple[str, Callable[[], Check]]]:
    x = torch.ones(16, device=device)
    tests: list[tuple[str, Callable[[], Check]]] = [
        (f"self-test: {mode} overlap", _overlaps(device, x, mode)) for mode in CUDA_CONCURRENT
    ]
    tests += [
        ("self-test: host sync found", lambda: _sync_found(device, x)),
        ("self-test: graph capture and replay", lambda: _graph_replays(device)),
        ("self-test: profiler sees two streams", lambda: _profiler_streams(device, x)),
        ("self-test: peak memory", lambda: _peak_memory(device, x)),
        ("self-test: pipeline hand-over", lambda: _pipeline(device)),
    ]
    return tests


def _overlaps(device: torch.device, x: torch.Tensor, mode: str) -> Callable[[], Check]:
    name = f"self-test: {mode} overlap"

    def test() -> Check:
        if mode == "graphs" and graphs_unsupported():
            return Check(name, SKIP, str(graphs_unsupported()))
        result = dual_infer(SleepKernels(), SleepKernels(), x, device=device, mode=mode, **QUICK)
        return _overlap_check(name, result, mode)

    return test


def _overlap_check(name: str, result: DualResult, mode: str, lanes: str = "lanes of sleep kernels") -> Check:
    figures = (
        f"mode {result.mode}: overlap {result.overlap:.2f}, speedup {ratio_text(result.speedup)} of "
        f"{ratio_text(result.ideal_speedup)}"
    )
    if result.mode != mode:
        return Check(
            name,
            FAIL,
            f"ran {result.mode!r} instead of {mode!r}: {'; '.join(result.warnings)}",
            "see the warning",
        )
    if result.overlap >= OVERLAP_AT_LEAST and result.speedup >= SPEEDUP_AT_LEAST:
        return Check(name, PASS, f"two {lanes} overlapped: {figures}")
    return Check(
        name,
        FAIL,
        f"two lanes that cannot help overlapping did not: {figures}",
        result.hint or "see the settings checks above",
    )


def _sync_found(device: torch.device, x: torch.Tensor) -> Check:
    name = "self-test: host sync found"
    result = dual_infer(
        Syncing(),
        SleepKernels(),
        x,
        device=device,
        mode="streams",
        detect_syncs=True,
        names=["Syncing", "Clean"],
        **QUICK,
    )
    blamed = {entry.get("lane") for entry in result.sync.implicit_syncs}
    if blamed == {"Syncing"}:
        return Check(
            name,
            PASS,
            f"the .item() in lane 'Syncing' was found at {result.sync.implicit_syncs[0].get('where')}",
        )
    return Check(
        name,
        FAIL,
        f"expected lane 'Syncing' alone to be named, got {sorted(map(str, blamed))}",
        "report it: the sync check is blind here",
    )


def _graph_replays(device: torch.device) -> Check:
    name = "self-test: graph capture and replay"
    if graphs_unsupported():
        return Check(name, SKIP, str(graphs_unsupported()))
    layer = nn.Linear(256, 256).to(device).eval()
    x = torch.randn(64, 256, device=device)
    result = dual_infer(
        layer, nn.Linear(256, 256).to(device).eval(), x, device=device, mode="graphs", **QUICK
    )
    if result.mode == "graphs" and result.correct:
        return Check(
            name,
            PASS,
            "two Linear lanes captured and replayed as graphs with outputs equal to eager "
            f"(max err {result.max_abs_err:.1e})",
        )
    return Check(
        name,
        FAIL,
        f"mode {result.mode}, correct {result.correct}: {'; '.join(result.warnings) or result.mismatches}",
        "see the capture error",
    )


def _profiler_streams(device: torch.device, x: torch.Tensor) -> Check:
    name = "self-test: profiler sees two streams"
    result = dual_infer(
        SleepKernels(), SleepKernels(), x, device=device, mode="threads", profile=True, **QUICK
    )
    tracks = result.timelines.get("kernels", [])
    busy = [track for track in tracks if track.intervals]
    if result.kernel_overlap is not None and len(busy) >= 2 and result.kernel_overlap >= 0.5:
        return Check(
            name, PASS, f"kernels on {len(busy)} streams, kernel overlap {result.kernel_overlap:.2f}"
        )
    return Check(
        name,
        FAIL,
        f"{len(busy)} stream(s) with kernels, kernel overlap {result.kernel_overlap}",
        "see the profile warnings: " + "; ".join(result.warnings),
    )


def _peak_memory(device: torch.device, x: torch.Tensor) -> Check:
    name = "self-test: peak memory"
    result = dual_infer(Allocating(), Allocating(), x, device=device, mode="threads", **QUICK)
    memory = result.memory
    if memory is None:
        return Check(name, FAIL, "no memory figures on CUDA", "report it")
    alone = min(memory.alone) if memory.alone else 0
    if alone >= ALLOCATED_BYTES and memory.concurrent >= ALLOCATED_BYTES:
        return Check(
            name,
            PASS,
            f"a lane allocating {size_text(ALLOCATED_BYTES)} peaked at {size_text(alone)} alone, "
            f"{size_text(memory.concurrent)} at once",
        )
    return Check(
        name,
        FAIL,
        f"a lane allocating {size_text(ALLOCATED_BYTES)} was counted at {size_text(alone)}",
        "report it",
    )


def _pipeline(device: torch.device) -> Check:
    name = "self-test: pipeline hand-over"
    batch = torch.ones(8, 16, device=device)
    result = dual_infer.pipeline(
        SleepKernels(),
        SleepKernels(),
        batch,
        micro_batches=4,
        device=device,
        mode="threads",
        race_trials=2,
        **QUICK,
    )
    if result.correct and result.sync.race_failures == 0:
        return Check(
            name,
            PASS,
            "4 micro-batches handed over with correct outputs in 2 race trials, "
            f"overlap {result.overlap:.2f}",
        )
    return Check(
        name,
        FAIL,
        f"correct {result.correct}, race failures {result.sync.race_failures}: {result.sync.first_failure}",
        "report it",
    )


def _cpu_tests() -> list[tuple[str, Callable[[], Check]]]:
    return [
        ("self-test: threads overlap", _cpu_overlap),
        ("self-test: intra-op thread split", _thread_split),
    ]


def _cpu_overlap() -> Check:
    x = torch.ones(16)
    result = dual_infer(Sleeping(), Sleeping(), x, device="cpu", mode="threads", **QUICK)
    return _overlap_check("self-test: threads overlap", result, "threads", "sleeping lanes")


def _thread_split() -> Check:
    name = "self-test: intra-op thread split"
    before = torch.get_num_threads()
    first, second = ThreadCounter(), ThreadCounter()
    x = torch.ones(32, 32)
    dual_infer(first, second, x, device="cpu", mode="threads", **QUICK)
    share = max(1, before // 2)
    in_lanes = {
        count
        for model in (first, second)
        for thread, count in model.seen.items()
        if thread.startswith("dualgpu-lane")
    }
    after = torch.get_num_threads()
    if in_lanes == {share} and after == before:
        return Check(
            name,
            PASS,
            f"each of 2 lane threads ran on {share} of the process's {before} intra-op threads, "
            "given back after",
        )
    return Check(
        name,
        FAIL,
        f"lane threads ran on {sorted(in_lanes)} intra-op threads (expected {share}); the caller has "
        f"{after} after, {before} before",
        "report it",
    )
