"""Trust on a GPU, ``pytest -m cuda``: the warm-up reaches steady state, a quiet pair stops early, bounds
around a known speedup are decided (or not) as on CPU, and a lane's first call hangs under the timeout."""

from __future__ import annotations

import time

import pytest
import torch

from pytest_dualgpu import LaneTimeoutError, dual_infer

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


class KernelSleep(torch.nn.Module):
    """Kernels that spin for a fixed number of cycles: a lane whose speedup is fixed by construction."""

    def __init__(self, cycles: int, shared: torch.cuda.Stream | None = None) -> None:
        super().__init__()
        self.cycles = cycles
        self.shared = shared

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.shared is None:
            torch.cuda._sleep(self.cycles)
            return x * 2
        # Both lanes on one stream of their own choosing: they can only take turns (speedup 1.0).
        self.shared.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self.shared):
            torch.cuda._sleep(self.cycles)
            y = x * 2
        torch.cuda.current_stream().wait_stream(self.shared)
        y.record_stream(torch.cuda.current_stream())
        return y


@pytest.fixture
def x() -> torch.Tensor:
    return torch.ones(8, device="cuda")


def test_every_lane_and_mode_warms_up_to_a_steady_time_on_the_gpu(x: torch.Tensor) -> None:
    torch.cuda.synchronize()
    time.sleep(2)  # let the clocks drop, so the warm-up has to bring them up again
    result = dual_infer(KernelSleep(2_000_000), KernelSleep(1_000_000), x, budget=0.5)
    for lane in result.lanes:
        assert lane.warmup is not None
        assert lane.warmup.converged, lane.warmup
        assert lane.warmup.seconds >= 0.25  # the GPU minimum
    chosen = next(probe for probe in result.modes if probe.chosen)
    assert chosen.warmup is not None
    assert chosen.warmup.converged
    assert result.reliable, result.problems


def test_a_quiet_gpu_pair_stops_once_its_interval_is_narrow(x: torch.Tensor) -> None:
    result = dual_infer(KernelSleep(2_000_000), KernelSleep(2_000_000), x, mode="streams", budget=3)
    assert result.stop == "precise"
    assert result.measuring_seconds < 3
    assert result.speedup > 1.6


@pytest.mark.parametrize(
    ("bound", "statuses"), [(0.8, {"pass"}), (1.0, {"inconclusive", "fail"}), (1.25, {"fail"})]
)
def test_bounds_around_a_known_gpu_speedup_are_decided_as_on_cpu(
    x: torch.Tensor, bound: float, statuses: set[str]
) -> None:
    """Two lanes that share one stream cannot beat 1x. Right at 1 the threads' own cost can decide it
    below (on an H200: 0.95 [0.90, 0.98]), but never above."""
    shared = torch.cuda.Stream()
    lanes = KernelSleep(2_000_000, shared), KernelSleep(2_000_000, shared)
    result = dual_infer(*lanes, x, mode="threads", budget=0.5, bounds={"speedup": bound})
    assert result.decisions[0].status in statuses, (result.speedup, result.speedup_ci)


def test_a_gpu_lane_that_hangs_in_its_first_call_is_named_within_the_timeout(x: torch.Tensor) -> None:
    import threading

    release = threading.Event()

    class HangsFirst(torch.nn.Module):
        def forward(self, y: torch.Tensor) -> torch.Tensor:
            release.wait()
            return y * 2

    started = time.perf_counter()
    try:
        with pytest.raises(LaneTimeoutError, match="lane 'HangsFirst'"):
            dual_infer(KernelSleep(100_000), HangsFirst(), x, timeout=1)
        assert time.perf_counter() - started < 6
    finally:
        release.set()
