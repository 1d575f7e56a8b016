"""Race amplification on CPU: delays really are injected, replayable by seed, and races are caught."""

from __future__ import annotations

import random

import pytest
import torch
from models import MLP, SleepLane
from quick import QUICK

from pytest_dualgpu import DualGpuUsageError, dual_infer
from pytest_dualgpu.engine.backends import Backend
from pytest_dualgpu.engine.sync import DelayInjector


class ManyOps(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(40):
            x = x + 1
        return x


class WritesItsInput(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x.add_(1)
        return x * 2


def schedule(seed: int) -> list[tuple[int, float]]:
    injector = DelayInjector(Backend(torch.device("cpu"), 1), random.Random(seed))
    with injector:
        ManyOps()(torch.zeros(2))
    assert 40 <= injector.operators <= 42
    return injector.schedule


def test_delays_are_injected_before_operators_and_a_seed_replays_them() -> None:
    first = schedule(7)
    assert 2 <= len(first) <= 30
    assert all(1 <= operator <= 42 and 0 <= seconds <= 0.002 for operator, seconds in first)
    assert schedule(7) == first
    assert schedule(8) != first


def test_a_correct_pair_passes_every_trial_and_keeps_the_seed() -> None:
    result = dual_infer(MLP(), MLP(), torch.randn(8, 64), race_trials=8, **QUICK)
    assert (result.sync.race_trials, result.sync.race_failures) == (8, 0)
    assert isinstance(result.sync.seed, int)
    assert result.sync.first_failure is None
    again = dual_infer(MLP(), MLP(), torch.randn(8, 64), race_trials=2, race_seed=result.sync.seed, **QUICK)
    assert again.sync.seed == result.sync.seed


def test_a_lane_writing_its_shared_input_is_caught_by_the_trials_and_by_the_comparison() -> None:
    result = dual_infer(WritesItsInput(), SleepLane(0.001), torch.zeros(4), race_trials=4, **QUICK)
    assert not result.correct
    assert result.sync.race_failures == 4
    assert result.sync.first_failure == (
        "trial 1: an input shared by lanes WritesItsInput and SleepLane was changed in place during the "
        "concurrent run"
    )


def test_own_inputs_written_in_place_still_fail_the_trials_through_their_outputs() -> None:
    result = dual_infer(
        WritesItsInput(), SleepLane(0.001), torch.zeros(4), torch.zeros(4), race_trials=3, **QUICK
    )
    assert result.sync.race_failures == 3
    assert result.sync.first_failure is not None
    assert result.sync.first_failure.startswith("trial 1: lane 'WritesItsInput' output[0]: ")


def test_host_sync_detection_and_the_sanitizer_are_cuda_only() -> None:
    result = dual_infer(MLP(), MLP(), torch.randn(2, 64), detect_syncs=True, sanitizer=True, **QUICK)
    assert result.sync.implicit_syncs == []
    assert result.sync.sanitizer == []
    assert result.sync.race_trials == 0


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"race_trials": -1}, "race_trials must be an integer >= 0, got -1"),
        ({"race_trials": True}, "race_trials must be an integer >= 0, got True"),
        ({"race_seed": "abc"}, "race_seed must be an integer (to replay a failing trial), got 'abc'"),
        ({"detect_syncs": "yes"}, "detect_syncs must be True or False, got 'yes'"),
    ],
)
def test_bad_sync_settings_are_refused(setting: dict[str, object], message: str) -> None:
    with pytest.raises(DualGpuUsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        dual_infer(MLP(), MLP(), torch.randn(2, 64), **setting, **QUICK)


def test_implicit_syncs_fail_warn_or_pass_as_the_marker_says() -> None:
    from pytest_dualgpu import DualResult
    from pytest_dualgpu.plugin.verdicts import SyncSpec, judge

    measured = dual_infer(MLP(), MLP(), torch.randn(2, 64), **QUICK)
    found = {"lane": "MLP", "where": "model.py:7", "call": "scale = x.max().item()"}
    # Host syncs are found on CUDA only: a result that says it was measured there.
    on_gpu = {**measured.to_dict(), "device": "cuda:0"}
    synced = DualResult.from_dict({**on_gpu, "sync": {"implicit_syncs": [found]}})
    verdicts = {
        implicit: judge(synced, {"dualgpu_sync": SyncSpec(implicit=implicit)})["sync"]
        for implicit in ("error", "warn", "ignore")
    }
    assert verdicts["error"].status == "fail"
    assert verdicts["error"].message == (
        "1 host synchronization(s) inside the lanes: MLP: scale = x.max().item() at model.py:7"
    )
    assert verdicts["warn"].status == "warn"
    assert verdicts["ignore"].status == "pass"
    assert judge(DualResult.from_dict(on_gpu), {"dualgpu_sync": SyncSpec()})["sync"].status == "pass"
    nothing_checked = judge(measured, {"dualgpu_sync": SyncSpec(trials=0)})["sync"]
    assert nothing_checked.status == "not judged (cpu)"  # no race trials, and no host syncs on CPU
    raced = dual_infer(MLP(), MLP(), torch.randn(2, 64), race_trials=2, **QUICK)
    assert judge(raced, {"dualgpu_sync": SyncSpec(trials=2)})["sync"].status == "pass"


def test_writes_to_a_view_of_a_buffer_another_lane_reads_are_caught() -> None:
    buffer = torch.zeros(8)
    result = dual_infer(WritesItsInput(), SleepLane(0.001), buffer[:4], buffer[4:], race_trials=2, **QUICK)
    assert result.sync.race_failures == 2
    assert "an input shared by lanes WritesItsInput and SleepLane was changed in place" in (
        result.sync.first_failure or ""
    )
