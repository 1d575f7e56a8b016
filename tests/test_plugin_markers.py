"""The markers through real inner pytest sessions: registration, argument checks, every verdict's paths."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from models import SleepLane
from quick import QUICK_ARGS

from pytest_dualgpu import dual_infer
from pytest_dualgpu.errors import DualGpuUsageError
from pytest_dualgpu.plugin.verdicts import MemorySpec, SpeedupSpec, judge, parse_marker
from pytest_dualgpu.results import DualResult, MemoryStats
from pytest_dualgpu.specs import parse_size


def rows(path: Path) -> list[dict[str, object]]:
    return list(json.loads(path.read_text())["results"])


def test_markers_are_registered_for_strict_markers_and_collect_only(suite: pytest.Pytester) -> None:
    suite.makepyfile(
        """
        import pytest

        @pytest.mark.dualgpu_correct
        @pytest.mark.dualgpu_sync(trials=2)
        @pytest.mark.dualgpu_speedup(min=1.1)
        @pytest.mark.dualgpu_memory(max_ratio=2)
        @pytest.mark.dualgpu_cuda
        def test_marked():
            pass
        """
    )
    assert suite.runpytest("--strict-markers", "--collect-only").ret == 0
    listing = suite.runpytest("--markers")
    listing.stdout.fnmatch_lines(
        [
            "@pytest.mark.dualgpu_correct(rtol=None, atol=None, equal_nan=False): *",
            "@pytest.mark.dualgpu_sync(trials=8, implicit='error', sanitizer=False, seed=None): *",
            "@pytest.mark.dualgpu_speedup(min=None, min_efficiency=None, device='cuda'): *",
            "@pytest.mark.dualgpu_memory(max_bytes=None, max_ratio=None): *",
            "@pytest.mark.dualgpu_cuda: *",
        ]
    )
    # In a subprocess: pytest caches known marker names process-wide.
    disabled = suite.runpytest_subprocess("--strict-markers", "-p", "no:dualgpu")
    disabled.stdout.fnmatch_lines(["*'dualgpu_*' not found in `markers` configuration option*"])
    assert disabled.ret == pytest.ExitCode.INTERRUPTED


@pytest.mark.parametrize(
    ("marker", "message"),
    [
        (
            "dualgpu_speedup(minimum=1.5)",
            "dualgpu_speedup: unknown argument 'minimum'; it takes min, min_efficiency, device",
        ),
        ("dualgpu_speedup()", "dualgpu_speedup: give min (a speedup such as 1.3) and/or min_efficiency*"),
        ("dualgpu_speedup(min='fast')", "dualgpu_speedup: min must be a number > 0, got 'fast'"),
        (
            "dualgpu_speedup(min=1.2, device='tpu')",
            "dualgpu_speedup: device must be 'cuda', 'cpu' or a list*",
        ),
        (
            "dualgpu_speedup(min_efficiency=1.5)",
            "dualgpu_speedup: min_efficiency must be a number <= 1, got 1.5",
        ),
        ("dualgpu_correct(rtol=0.1)", "dualgpu_correct: rtol=0.1 and atol=None: give both, or neither*"),
        (
            "dualgpu_correct(1, 2, 3, 4)",
            "dualgpu_correct: too many positional arguments; it takes rtol, atol, *",
        ),
        (
            "dualgpu_sync(implicit='loud')",
            "dualgpu_sync: implicit must be 'error', 'warn' or 'ignore', got 'loud'",
        ),
        ("dualgpu_sync(trials=-1)", "dualgpu_sync: trials must be an integer >= 0, got -1"),
        ("dualgpu_memory()", "dualgpu_memory: give max_bytes*"),
        (
            "dualgpu_memory(max_bytes='lots')",
            "dualgpu_memory: max_bytes must be a number of bytes > 0 or a size*",
        ),
        ("dualgpu_cuda(True)", "dualgpu_cuda: too many positional arguments; it takes no arguments"),
    ],
)
def test_bad_marker_arguments_fail_that_test_naming_marker_and_argument(
    suite: pytest.Pytester, marker: str, message: str
) -> None:
    suite.makepyfile(
        f"""
        import pytest

        @pytest.mark.{marker}
        def test_marked():
            pass

        def test_unmarked():
            pass
        """
    )
    result = suite.runpytest()
    result.stdout.fnmatch_lines(["*ERROR at setup of test_marked*", f"*test_marked: {message}"])
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.assert_outcomes(passed=1, errors=1)  # the other test of the file still ran


def test_every_verdict_passes_on_sleeping_lanes_and_the_report_says_so(suite: pytest.Pytester) -> None:
    suite.makepyfile(
        """
        import pytest
        import torch
        from inner_models import Sleep

        @pytest.mark.dualgpu_correct
        @pytest.mark.dualgpu_sync
        @pytest.mark.dualgpu_speedup(min=1.2, min_efficiency=0.3, device=["cpu", "cuda"])
        @pytest.mark.dualgpu_memory(max_bytes="1GiB", max_ratio=1.5)
        def test_pair(dual_infer):
            # 10 ms sleeps: scheduling delays on a busy machine stay small beside them
            result = dual_infer(Sleep(0.01), Sleep(0.01), torch.ones(4))
            assert result.correct
        """
    )
    result = suite.runpytest(*QUICK_ARGS, "--dualgpu-report", "--dualgpu-report=json:out.json")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*test_pair*correct pass, sync pass, speedup pass, memory not judged (cpu)"])
    (row,) = rows(suite.path / "out.json")
    assert row["verdicts"] == {
        "correct": "pass",
        "sync": "pass",
        "speedup": "pass",
        "memory": "not judged (cpu)",
        "interference": None,
    }


def test_speedup_is_not_judged_on_devices_it_does_not_name(suite: pytest.Pytester) -> None:
    suite.makepyfile(
        """
        import pytest
        import torch
        from inner_models import Gil

        @pytest.mark.dualgpu_speedup(min=1.9)
        def test_gil_bound_pair(dual_infer):
            dual_infer(Gil(), Gil(), torch.ones(4))
        """
    )
    result = suite.runpytest(*QUICK_ARGS, "--dualgpu-report=md:table.md")
    result.assert_outcomes(passed=1)
    assert "speedup not judged (cpu)" in (suite.path / "table.md").read_text()


def test_speedup_failure_gives_value_bound_interval_and_hint(suite: pytest.Pytester) -> None:
    suite.makepyfile(
        """
        import pytest
        import torch
        from inner_models import Sleep, Turns

        @pytest.mark.dualgpu_speedup(min=1.9, device="cpu")
        def test_turn_taking_pair(dual_infer):
            dual_infer(Turns(), Turns(), torch.ones(4), mode="threads")

        @pytest.mark.dualgpu_speedup(min=2.5, device="cpu")
        def test_bound_above_ideal(dual_infer):
            dual_infer(Sleep(), Sleep(), torch.ones(4))

        @pytest.mark.dualgpu_speedup(min_efficiency=0.9, device="cpu")
        def test_back_to_back(dual_infer):
            dual_infer(Sleep(), Sleep(), torch.ones(4), mode="sequential")
        """
    )
    result = suite.runpytest(*QUICK_ARGS, "--dualgpu-report")
    result.assert_outcomes(failed=3)
    result.stdout.fnmatch_lines(
        [
            "*dualgpu_speedup failed for 'Turns+Turns-2' (call 1 of 1): speedup below the bound 1.90x: "
            "speedup *x [[]95% CI *, *] of an ideal *x, efficiency *, overlap *, mode 'threads' on cpu; "
            "hint: *",
            "*dualgpu_speedup failed for 'Sleep+Sleep-2'*hint: the bound 2.50x is above the ideal *",
            "*dualgpu_speedup failed for 'Sleep+Sleep-2'*efficiency below the bound 0.90*hint: the call "
            "ran in 'sequential' mode*",
        ]
    )
    assert result.stdout.str().count("speedup FAIL") == 3


def test_correct_and_sync_fail_when_concurrent_outputs_differ(suite: pytest.Pytester) -> None:
    suite.makepyfile(
        """
        import pytest
        import torch
        from inner_models import Drifting, Sleep

        @pytest.mark.dualgpu_correct
        @pytest.mark.dualgpu_sync
        def test_stateful_lane(dual_infer):
            dual_infer(Drifting(), Sleep(), torch.zeros(3))
        """
    )
    result = suite.runpytest(*QUICK_ARGS, "--dualgpu-report=json:out.json")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*dualgpu_correct failed for 'Drifting+Sleep' (call 1 of 1): concurrent outputs differ from each "
            "lane run alone (lane 'Drifting' output*; max abs err *; hint: the lanes share something*",
            "*dualgpu_sync failed for 'Drifting+Sleep' (call 1 of 1): 8 of 8 trials with random delays went "
            "wrong, first trial 1: lane 'Drifting' output*the concurrent outputs differ*",
        ]
    )
    (row,) = rows(suite.path / "out.json")
    assert row["verdicts"]["correct"] == "fail"
    assert row["verdicts"]["sync"] == "fail"
    assert row["correct"] is False


def test_sync_trials_catch_a_lane_writing_a_shared_input_and_give_the_seed(
    suite: pytest.Pytester,
) -> None:
    suite.makepyfile(
        """
        import pytest
        import torch
        from inner_models import Sleep, WritesItsInput

        @pytest.mark.dualgpu_sync(trials=3, seed=1234)
        @pytest.mark.dualgpu_correct
        def test_shared_input(dual_infer):
            result = dual_infer(WritesItsInput(), Sleep(), torch.zeros(3))
            assert result.sync.race_trials == 3

        @pytest.mark.dualgpu_sync(trials=3)
        def test_own_inputs(dual_infer):
            dual_infer(Sleep(), Sleep(), torch.zeros(3))
        """
    )
    result = suite.runpytest(*QUICK_ARGS, "--dualgpu-report=json:out.json")
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.fnmatch_lines(
        [
            "*dualgpu_correct failed for 'WritesItsInput+Sleep' (call 1 of 1): concurrent outputs differ*",
            "*dualgpu_sync failed for 'WritesItsInput+Sleep' (call 1 of 1): 3 of 3 trials with random delays "
            "went wrong, first trial 1: an input shared by lanes WritesItsInput and Sleep was changed in "
            "place during the concurrent run (replay with dualgpu_sync(seed=1234))*",
        ]
    )
    shared, own = rows(suite.path / "out.json")
    assert shared["sync"]["seed"] == 1234
    assert (own["sync"]["race_trials"], own["sync"]["race_failures"], own["verdicts"]["sync"]) == (
        3,
        0,
        "pass",
    )


def test_correct_marker_tolerance_is_the_default_of_each_call(suite: pytest.Pytester) -> None:
    suite.makepyfile(
        """
        import pytest
        import torch
        from inner_models import Drifting, Sleep

        @pytest.mark.dualgpu_correct(rtol=0.0, atol=1000.0)
        def test_loose(dual_infer):
            assert dual_infer(Drifting(), Sleep(), torch.zeros(3)).correct

        @pytest.mark.dualgpu_correct(rtol=0.0, atol=1000.0)
        def test_call_overrides(dual_infer):
            assert not dual_infer(Drifting(), Sleep(), torch.zeros(3), rtol=0.0, atol=0.0).correct
        """
    )
    result = suite.runpytest(*QUICK_ARGS)
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*dualgpu_correct failed for 'Drifting+Sleep'*"])


def test_every_call_of_a_test_is_judged(suite: pytest.Pytester) -> None:
    suite.makepyfile(
        """
        import pytest
        import torch
        from inner_models import Drifting, Sleep

        @pytest.mark.dualgpu_correct
        def test_two_calls(dual_infer):
            dual_infer(Sleep(), Sleep(), torch.ones(2), name="good")
            dual_infer(Drifting(), Sleep(), torch.ones(2), name="bad")
        """
    )
    result = suite.runpytest(*QUICK_ARGS, "--dualgpu-report=json:out.json")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*dualgpu_correct failed for 'bad' (call 2 of 2)*"])
    assert "failed for 'good'" not in result.stdout.str()
    assert [(row["name"], row["verdicts"]["correct"]) for row in rows(suite.path / "out.json")] == [
        ("good", "pass"),
        ("bad", "fail"),
    ]


def test_a_marked_test_that_never_calls_dual_infer_fails_saying_so(suite: pytest.Pytester) -> None:
    suite.makepyfile(
        """
        import pytest
        import torch
        from pytest_dualgpu import dual_infer
        from inner_models import Sleep

        @pytest.mark.dualgpu_speedup(min=1.2)
        def test_forgot():
            pass

        @pytest.mark.dualgpu_correct
        def test_module_level_call():
            dual_infer(Sleep(), Sleep(), torch.ones(2), budget=0.1)

        @pytest.mark.dualgpu_correct
        def test_body_fails_first(dual_infer):
            assert False, "the body's own failure"
        """
    )
    result = suite.runpytest(*QUICK_ARGS)
    result.assert_outcomes(failed=3)
    result.stdout.fnmatch_lines(
        [
            "*test_forgot is marked dualgpu_speedup but no call of the dual_infer fixture produced a "
            "result: *",
            "*test_module_level_call is marked dualgpu_correct but no call*imported directly is not "
            "recorded*",
            "*AssertionError: the body's own failure*",
        ]
    )
    assert "test_body_fails_first is marked" not in result.stdout.str()


def test_dualgpu_cuda_skips_with_a_reason_without_a_gpu(suite: pytest.Pytester) -> None:
    suite.makepyfile(
        """
        import pytest

        @pytest.mark.dualgpu_cuda
        def test_needs_gpu():
            pass

        def test_plain():
            pass
        """
    )
    result = suite.runpytest("-rs")
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines(
        [
            "SKIPPED [[]1[]] test_dualgpu_cuda_skips*.py:3: dualgpu_cuda: needs a CUDA GPU; torch * is a "
            "CPU build"
        ]
    )
    on_cpu = suite.runpytest("-rs", "--dualgpu-device=cpu")
    on_cpu.stdout.fnmatch_lines(["*dualgpu_cuda: this session measures on the CPU (--dualgpu-device=cpu)"])


def test_memory_verdict_judges_real_peaks() -> None:
    measured = dual_infer(SleepLane(0.001), SleepLane(0.001), torch.ones(2), budget=0.1)
    assert judge(measured, {"dualgpu_memory": MemorySpec(max_bytes=1)})["memory"].status == "not judged (cpu)"
    mib = 2**20
    with_peaks = DualResult.from_dict(
        {**measured.to_dict(), "memory": MemoryStats((100 * mib, 200 * mib), 300 * mib, 450 * mib).to_dict()}
    )
    fits = judge(with_peaks, {"dualgpu_memory": MemorySpec(max_bytes="512MiB", max_ratio=1.5)})["memory"]
    assert fits.status == "pass"
    too_big = judge(with_peaks, {"dualgpu_memory": MemorySpec(max_bytes=400 * mib, max_ratio=1.2)})["memory"]
    assert too_big.status == "fail"
    assert too_big.message.startswith(
        "peak above the bound 400.0 MiB and ratio 1.50 above the bound 1.20x the sequential peak: concurrent "
        "peak 450.0 MiB, sequential peak 300.0 MiB, alone SleepLane 100.0 MiB, SleepLane-2 200.0 MiB; hint: "
    )


@pytest.mark.parametrize(
    ("text", "size"), [(1024, 1024), ("512MiB", 512 * 2**20), ("2GB", 2 * 10**9), ("1.5 GiB", 3 * 2**29)]
)
def test_sizes(text: int | str, size: int) -> None:
    assert parse_size(text) == size


def test_marker_arguments_may_be_positional() -> None:
    assert parse_marker("dualgpu_speedup", (1.4,), {}) == SpeedupSpec(min=1.4)
    with pytest.raises(DualGpuUsageError, match="dualgpu_speedup: multiple values for argument 'min'"):
        parse_marker("dualgpu_speedup", (1.4,), {"min": 1.2})


def test_a_correct_verdict_that_compared_no_tensor_does_not_say_pass(suite: pytest.Pytester) -> None:
    suite.makepyfile(
        """
        import pytest
        import torch
        from inner_models import Sleep

        class Nothing(torch.nn.Module):
            def forward(self, x):
                return {"count": 3, "label": "cat"}

        @pytest.mark.dualgpu_correct
        def test_no_tensors(dual_infer):
            dual_infer(Nothing(), Nothing(), torch.ones(2))

        @pytest.mark.dualgpu_correct
        def test_one_lane_without(dual_infer):
            dual_infer(Sleep(), Nothing(), torch.ones(2))
        """
    )
    result = suite.runpytest(*QUICK_ARGS, "--dualgpu-report=json:out.json")
    result.assert_outcomes(passed=2, warnings=2)
    result.stdout.fnmatch_lines(
        [
            "*dualgpu_correct for 'Nothing+Nothing-2' (call 1 of 1): no lane's output holds a tensor*",
            "*dualgpu_correct for 'Sleep+Nothing' (call 1 of 1): lane 'Nothing' returned no tensor*",
        ]
    )
    assert [row["verdicts"]["correct"] for row in rows(suite.path / "out.json")] == [
        "not judged (no tensor)",
        "warn",
    ]


def test_the_correct_verdict_names_every_lane_without_a_tensor() -> None:
    result = dual_infer.many([SleepLane(0.001)] * 3, [torch.ones(2)] * 3, budget=0.05)
    specs = {"dualgpu_correct": parse_marker("dualgpu_correct", (), {})}
    some = judge(dataclasses.replace(result, without_tensors=result.lane_names[1:]), specs)["correct"]
    assert (some.status, some.message) == (
        "warn",
        "lanes 'SleepLane-2', 'SleepLane-3' returned no tensor, so only the other lanes' numbers were "
        "compared",
    )
    every = judge(dataclasses.replace(result, without_tensors=result.lane_names), specs)["correct"]
    assert every.status == "not judged (no tensor)"
