"""Latency on a GPU, ``pytest -m cuda``: per-lane latency from each lane's own stream, and a high stream
priority that keeps a small latency-critical lane fast beside one that fills the GPU."""

from __future__ import annotations

import pytest
import torch

from pytest_dualgpu import dual_infer

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
    """Large matrix products back to back: every SM busy for milliseconds."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(8):
            x = x @ x
            x = x / x.norm()
        return x


class Critical(torch.nn.Module):
    """A few small kernels: quick alone, and easily stuck behind a neighbour's big ones."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(256, 256)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(4):
            x = torch.relu(self.linear(x))
        return x


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
        torch.randn(32, 256, device="cuda"),
        torch.randn(4096, 4096, device="cuda", dtype=torch.float16),
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
