"""Pipelines on a GPU machine only (``pytest -m cuda``): streams and threads, races caught, no false alarm."""

from __future__ import annotations

import pytest
import torch
from models import BrokenHandOff

from pytest_dualgpu import dual_infer
from pytest_dualgpu.engine.call import run_pipeline
from pytest_dualgpu.engine.callsettings import CallSettings

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


class SleepThenDouble(torch.nn.Module):
    """One tiny kernel that spins, then a real one: stages that overlap on two streams."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        torch.cuda._sleep(1_000_000)
        return x * 2


class Project(torch.nn.Module):
    def __init__(self, width: int = 2048) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(width, width, device="cuda") / width**0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x @ self.weight).relu()


@pytest.mark.parametrize("mode", ["streams", "threads", "graphs"])
def test_stages_overlap_on_their_streams(mode: str) -> None:
    x = torch.randn(8, 16, device="cuda")
    result = dual_infer.pipeline(
        SleepThenDouble(), SleepThenDouble(), x, micro_batches=4, mode=mode, budget=0.3
    )
    assert result.mode == mode
    assert result.correct, result.mismatches
    assert result.speedup > 1.3
    assert result.overlap > 0.5


class ItemStage(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * x.max().item()


def test_a_stage_that_cannot_be_captured_falls_back_to_threads_and_says_why() -> None:
    x = torch.randn(8, 16, device="cuda")
    result = dual_infer.pipeline(SleepThenDouble(), ItemStage(), x, mode="graphs", budget=0.2)
    assert result.mode == "threads"
    assert any("graph capture of lane 'ItemStage' failed" in (probe.error or "") for probe in result.modes)


def test_a_missing_event_wait_is_caught_by_race_amplification() -> None:
    x = torch.randn(64, 2048, device="cuda")
    settings = CallSettings(budget=0.2, race_trials=8, mode="threads")
    result = run_pipeline(
        Project(), Project(), x, 4, names=None, name=None, settings=settings, hand_off=BrokenHandOff
    )
    assert result.sync.race_failures > 0, result.sync


def test_a_correct_pipeline_passes_50_trials() -> None:
    x = torch.randn(64, 2048, device="cuda")
    result = dual_infer.pipeline(Project(), Project(), x, race_trials=50, budget=0.2)
    assert (result.sync.race_trials, result.sync.race_failures) == (50, 0), result.sync.first_failure
    assert result.correct, result.mismatches
