"""Latency on a GPU, ``pytest -m cuda``: per-lane latency from each lane's own stream, and a high stream
priority that keeps a small latency-critical lane fast beside one that fills the GPU."""

from __future__ import annotations

import pytest
import torch

from pytest_dualgpu import dual_infer
from pytest_dualgpu.engine.backends import gpu_sleep

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


class KernelSleep(torch.nn.Module):
    def __init__(self, cycles: int = 1_000_000) -> None:
        super().__init__()
        self.cycles = cycles

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        torch.cuda._sleep(self.cycles)
        return x * 2


class FillsTheGpu(torch.nn.Module):
    """Large matrix products back to back: every SM busy for milliseconds, in waves of blocks that each
    take a whole SM."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(4):
            x = x @ x
            x = x / x.norm()
        return x


class Critical(torch.nn.Module):
    """Quick alone, and bound by the GPU rather than by its launches (a sleep kernel of 300 us comes
    first), so what it waits for at once is SMs: its product needs whole SMs, which a neighbour's blocks
    hold until they end. A lane bound by its host thread gains nothing from a stream's priority: on an
    H200 both priorities measured the same p99 slowdown for four small layers (2.7x), and for a 50 us
    sleep on a lane thread (3.7x), while the 50 us sleep issued from the caller's thread gained."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(1024, 1024, dtype=torch.float16) / 32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gpu_sleep(300e-6)
        return torch.relu(x @ self.weight)


def test_each_lane_s_latency_comes_from_its_own_stream() -> None:
    x = torch.ones(8, device="cuda")
    result = dual_infer(KernelSleep(), KernelSleep(), x, mode="streams", budget=0.5)
    for lane in result.lanes:
        assert lane.latency is not None
        assert lane.latency.at_once.n == lane.latency.alone.n
        assert lane.slowdown == pytest.approx(1.0, abs=0.2)  # tiny kernels on two streams run fully at once


@pytest.mark.parametrize("mode", ["streams", "threads"])
def test_a_high_priority_lane_keeps_its_tail_beside_a_lane_that_fills_the_gpu(mode: str) -> None:
    critical = Critical().cuda().eval()
    heavy = FillsTheGpu().cuda().eval()
    inputs = [
        torch.randn(1024, 1024, device="cuda", dtype=torch.float16),
        torch.randn(8192, 8192, device="cuda", dtype=torch.float16),
    ]
    slowdowns = {}
    for priority in ("normal", "high"):
        result = dual_infer.many(
            [critical, heavy], inputs, mode=mode, budget=2, priorities=[priority, "normal"], min_rounds=20
        )
        lane = result.lanes[0]
        assert lane.priority == priority
        assert lane.latency is not None
        slowdowns[priority] = lane.latency.slowdown(99)
    assert slowdowns["high"] < slowdowns["normal"], slowdowns
