"""On a GPU machine only (``pytest -m cuda``): the doctor's self-test, and each bias the CUDA code was read
to have (events created while timing, graph-pipeline waits counted as busy, small freed blocks left
unpoisoned, a guessed sleep clock, failed captures, other threads' syncs blamed on a lane)."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from pytest_dualgpu import dual_infer
from pytest_dualgpu.cli.doctor import diagnose
from pytest_dualgpu.engine.backends import (
    gpu_sleep,
    graphs_unsupported,
    make_backend,
    sleep_cycles_per_second,
)
from pytest_dualgpu.engine.executor import Executor, Lane, busy
from pytest_dualgpu.engine.sync import poison_free_memory

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]
QUICK = {"budget": 0.2, "max_budget": 1.0, "warmup": 0.5}


class Sleeps(torch.nn.Module):
    def __init__(self, seconds: float = 0.002) -> None:
        super().__init__()
        self.seconds = seconds

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gpu_sleep(self.seconds)
        return x * 2


class MarksTwoStretches(torch.nn.Module):
    """Marks its own busy stretches, as pipeline stages do: the call's own stamps go unused."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with busy():
            gpu_sleep(0.0002)
        with busy():
            gpu_sleep(0.0002)
        return x * 2


def test_the_doctor_passes_a_healthy_gpu_within_a_minute(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pytest_dualgpu", "doctor", "--device", "cuda", "--json", str(tmp_path / "d")],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    print(done.stdout)
    self_tests = [line for line in done.stdout.splitlines() if "self-test" in line]
    assert not any(line.startswith("FAIL") for line in self_tests), done.stdout
    assert len(self_tests) >= 8


def test_every_self_test_passes_in_process() -> None:
    diagnosis = diagnose("cuda")
    failed = [
        check for check in diagnosis.checks if check.name.startswith("self-test") and check.status == "fail"
    ]
    assert failed == [], failed


def test_the_sleep_clock_is_measured_so_a_delay_lasts_what_it_says() -> None:
    rate = sleep_cycles_per_second(torch.cuda.current_device())
    assert 3e8 < rate < 4e9  # cycles per second: a GPU clock between 0.3 and 4 GHz
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    gpu_sleep(0.005)
    end.record()
    end.synchronize()
    assert 0.004 < start.elapsed_time(end) / 1e3 < 0.0065


@pytest.mark.parametrize("marked", [False, True], ids=["whole calls", "busy marks"])
def test_timing_events_are_created_before_a_run_not_inside_it(marked: bool) -> None:
    device = torch.device("cuda", torch.cuda.current_device())
    backend = make_backend(device, 2)
    model = MarksTwoStretches() if marked else Sleeps(0.0005)
    lanes = [Lane(f"lane{i}", model, (torch.ones(4, device=device),), {}) for i in range(2)]
    with Executor(backend, lanes, timeout=60) as executor:
        executor.sequential([0, 1], 1, list(lanes), "first")
        executor.threads(8, list(lanes), "warm")
        created = backend.events_created  # type: ignore[attr-defined]
        for _ in range(3):
            executor.threads(8, list(lanes), "timed")
            executor.streams(8, list(lanes), "timed")
        assert backend.events_created == created  # type: ignore[attr-defined]


def test_a_graphs_pipeline_marks_busy_time_not_its_waits() -> None:
    if graphs_unsupported():
        pytest.skip(str(graphs_unsupported()))

    class Slow(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            gpu_sleep(0.004)
            return x * 2

    class Fast(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            gpu_sleep(0.0005)
            return x + 1

    x = torch.ones(8, 16, device="cuda")
    result = dual_infer.pipeline(Slow(), Fast(), x, micro_batches=4, mode="graphs", **QUICK)
    assert result.mode == "graphs"
    lines = result.timelines["concurrent"]
    marks = [interval for line in lines for interval in line.intervals]
    span = max(end for _, end in marks) - min(start for start, _ in marks)
    consumer = next(line for line in lines if line.lane == result.lane_names[1])
    busy = sum(end - start for start, end in consumer.intervals)
    assert busy < 0.5 * span, "the consumer's waits for the producer counted as busy"


def test_poisoning_reaches_small_blocks_and_blocks_pending_free() -> None:
    device = torch.device("cuda", torch.cuda.current_device())
    side = torch.cuda.Stream()
    small = [torch.full((16,), 1.0, device=device) for _ in range(200)]
    medium = [torch.full((100_000,), 1.0, device=device) for _ in range(8)]  # 400 KB: small pool too
    pending = torch.full((16,), 1.0, device=device)
    with torch.cuda.stream(side):
        gpu_sleep(0.01)
        pending.record_stream(side)
    del small, medium, pending
    poison_free_memory(device)
    again = [torch.empty(16, device=device) for _ in range(200)]
    again += [torch.empty(100_000, device=device) for _ in range(8)]
    unpoisoned = sum(int(not torch.isnan(tensor).all()) for tensor in again)
    assert unpoisoned == 0


def test_a_failed_capture_leaves_the_allocator_sound() -> None:
    if graphs_unsupported():
        pytest.skip(str(graphs_unsupported()))

    class SynchronizesTheDevice(torch.nn.Module):
        """Passes the warm-up's sync check (a device-wide synchronize does not warn) but breaks a capture."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            torch.cuda.synchronize()
            return x * 2

    x = torch.ones(16, device="cuda")
    fallen_back = dual_infer(SynchronizesTheDevice(), Sleeps(), x, mode="graphs", **QUICK)
    assert fallen_back.mode == "threads"
    assert any("graph capture" in warning for warning in fallen_back.warnings)
    # After a capture that ended badly the allocator would still think one is underway, and defer every
    # free made on another stream for good: such a block must become free again.
    side = torch.cuda.Stream()
    tensor = torch.ones(1 << 16, device="cuda")
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        tensor.mul_(2)
    tensor.record_stream(side)
    address = tensor.data_ptr()
    del tensor
    torch.cuda.synchronize()
    torch.empty(1, device="cuda")  # an allocation processes finished frees
    states = [
        block["state"]
        for segment in torch.cuda.memory_snapshot()
        for block in segment["blocks"]
        if block["address"] == address
    ]
    assert states == ["inactive"]
    # The default generator left the failed capture too: a random op outside any capture works (torch
    # 2.11 raised "Offset increment outside graph capture encountered unexpectedly").
    assert torch.randn(8, device="cuda").isfinite().all()
    captured = dual_infer(Sleeps(), Sleeps(), x, mode="graphs", **QUICK)
    assert captured.mode == "graphs"
    assert captured.correct


def test_another_threads_syncs_are_never_blamed_on_a_lane() -> None:
    stop = threading.Event()
    errors: list[BaseException] = []

    def syncing() -> None:
        stream = torch.cuda.Stream()
        try:
            with torch.cuda.stream(stream):
                while not stop.is_set():
                    torch.ones(4, device="cuda").sum().item()
        except BaseException as error:
            errors.append(error)

    neighbour = threading.Thread(target=syncing)
    neighbour.start()
    try:
        x = torch.ones(16, device="cuda")
        checked = dual_infer(Sleeps(), Sleeps(), x, mode="streams", detect_syncs=True, **QUICK)
        graphs = dual_infer(Sleeps(), Sleeps(), x, mode="graphs", **QUICK)
    finally:
        stop.set()
        neighbour.join()
    assert checked.sync.implicit_syncs == []
    if not graphs_unsupported():
        assert graphs.mode == "graphs", graphs.warnings
    assert errors == []  # the sync debug mode never turned the neighbour's syncs into errors
