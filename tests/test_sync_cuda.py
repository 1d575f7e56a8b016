"""Synchronization checks on a GPU machine only (``pytest -m cuda``)."""

from __future__ import annotations

import pytest
import torch
from models import MLP

from pytest_dualgpu import dual_infer

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

BUDGET = {"budget": 0.2}


class ItemInForward(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = x.abs().max().item()  # the host waits for the GPU here
        return x / (scale + 1)


class SideStreamRace(torch.nn.Module):
    """Reads on a side stream what its own stream is still writing: no wait_stream before it."""

    def __init__(self) -> None:
        super().__init__()
        self.side = torch.cuda.Stream()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        doubled = x * 2
        with torch.cuda.stream(self.side):
            result = doubled + 1
        torch.cuda.current_stream().wait_stream(self.side)
        return result


def test_a_host_sync_is_reported_with_its_lane_and_source_line() -> None:
    x = torch.randn(64, 64, device="cuda")
    model = MLP().cuda().eval()
    before = torch.cuda.get_sync_debug_mode()
    result = dual_infer(ItemInForward(), model, x, detect_syncs=True, **BUDGET)
    assert torch.cuda.get_sync_debug_mode() == before
    (found,) = result.sync.implicit_syncs
    assert found["lane"] == "ItemInForward"
    assert found["where"].endswith(f"test_sync_cuda.py:{ItemInForward.forward.__code__.co_firstlineno + 1}")
    assert found["call"] == "scale = x.abs().max().item()  # the host waits for the GPU here"


def test_race_amplification_widens_a_race_inside_a_lane() -> None:
    x = torch.randn(1024, 1024, device="cuda")
    result = dual_infer(SideStreamRace(), MLP(1024).cuda().eval(), x, race_trials=16, **BUDGET)
    assert result.sync.race_failures > 0, result.sync
    assert "SideStreamRace" in (result.sync.first_failure or "")


def test_the_sanitizer_names_an_unsynchronized_access() -> None:
    x = torch.randn(256, 256, device="cuda")
    result = dual_infer(SideStreamRace(), MLP(256).cuda().eval(), x, sanitizer=True, **BUDGET)
    assert result.sync.sanitizer, result.sync
    assert all("without synchronization" in found for found in result.sync.sanitizer), result.sync.sanitizer
    assert any("CUDA sanitizer stays hooked" in warning for warning in result.warnings)


def test_a_correct_pair_never_raises_a_false_alarm_over_50_trials() -> None:
    x = torch.randn(32, 64, device="cuda")
    result = dual_infer(
        MLP().cuda().eval(), MLP().cuda().eval(), x, race_trials=50, detect_syncs=True, **BUDGET
    )
    assert (result.sync.race_trials, result.sync.race_failures) == (50, 0)
    assert result.sync.implicit_syncs == []


def test_the_marker_fails_or_warns_on_a_host_sync(suite: pytest.Pytester) -> None:
    suite.makepyfile(
        """
        import pytest
        import torch

        class ItemInForward(torch.nn.Module):
            def forward(self, x):
                return x / (x.abs().max().item() + 1)

        @pytest.mark.dualgpu_sync(trials=2)
        def test_error(dual_infer):
            dual_infer(ItemInForward(), ItemInForward(), torch.randn(8, device="cuda"))

        @pytest.mark.dualgpu_sync(trials=2, implicit="warn")
        def test_warn(dual_infer):
            dual_infer(ItemInForward(), ItemInForward(), torch.randn(8, device="cuda"))
        """
    )
    result = suite.runpytest_subprocess("--dualgpu-budget=0.2")
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.fnmatch_lines(
        [
            "*dualgpu_sync failed for 'ItemInForward+ItemInForward-2'*host synchronization(s) inside the "
            "lanes: ItemInForward: return x / (x.abs().max().item() + 1) at *test_the_marker_fails*.py:6*",
            "*DualGpuWarning: dualgpu_sync for*",
        ]
    )
