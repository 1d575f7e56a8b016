"""Timelines for people: Chrome/Perfetto traces of every result, and kernel overlap from torch.profiler."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch
from models import MLP, GilLane, SleepLane
from quick import QUICK, QUICK_ARGS

from pytest_dualgpu import dual_infer
from pytest_dualgpu.engine.profiling import all_threads_config
from pytest_dualgpu.reports.traces import chrome_trace, result_file_stem
from pytest_dualgpu.timeline import LaneTimeline, overlap

TWO_TESTS = """
import torch
from inner_models import Sleep, Turns

def test_sleeping(dual_infer):
    dual_infer(Sleep(0.003), Sleep(0.003), torch.ones(2), name="sleepers")

def test_taking_turns(dual_infer):
    dual_infer(Turns(0.003), Turns(0.003), torch.ones(2))
"""


def tracks(trace: dict[str, Any]) -> dict[tuple[str, str], list[tuple[float, float]]]:
    """(process name, thread name) -> its complete events as (start, end) in seconds."""
    processes = {e["pid"]: e["args"]["name"] for e in trace["traceEvents"] if e["name"] == "process_name"}
    threads = {
        (e["pid"], e["tid"]): e["args"]["name"] for e in trace["traceEvents"] if e["name"] == "thread_name"
    }
    found: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for event in trace["traceEvents"]:
        if event["ph"] == "X":
            key = (processes[event["pid"]], threads[(event["pid"], event["tid"])])
            found.setdefault(key, []).append((event["ts"] / 1e6, (event["ts"] + event["dur"]) / 1e6))
    return found


def by_run(trace: dict[str, Any], run: str) -> list[list[tuple[float, float]]]:
    return [intervals for (process, _), intervals in tracks(trace).items() if run in process]


def test_a_trace_per_result_with_a_track_per_lane_in_each_run(suite: pytest.Pytester) -> None:
    suite.makepyfile(test_two=TWO_TESTS)
    suite.runpytest(*QUICK_ARGS, "--dualgpu-report=trace:traces").assert_outcomes(passed=2)
    files = sorted(path.name for path in (suite.path / "traces").iterdir())
    assert files == sorted(
        f"{result_file_stem(nodeid, 1)}.trace.json"
        for nodeid in ("test_two.py::test_sleeping", "test_two.py::test_taking_turns")
    )
    sleeping = json.loads(
        (
            suite.path / "traces" / f"{result_file_stem('test_two.py::test_sleeping', 1)}.trace.json"
        ).read_text()
    )
    assert sleeping["otherData"]["nodeid"] == "test_two.py::test_sleeping"
    assert {thread for _, thread in tracks(sleeping)} == {"Sleep", "Sleep-2"}
    concurrent, sequential = by_run(sleeping, "concurrent run"), by_run(sleeping, "sequential run")
    assert len(concurrent) == len(sequential) == 2
    for intervals in concurrent + sequential:
        assert intervals, "every lane has busy intervals"
        assert all(0 <= start <= end for start, end in intervals)
        assert all(end - start >= 0.0025 for start, end in intervals), "a 3 ms sleep is at least 2.5 ms busy"
    assert overlap(concurrent) > 0.8, "sleeping lanes run at once"
    assert overlap(sequential) == 0.0, "the baseline runs them one after the other"

    gil = json.loads(
        (
            suite.path / "traces" / f"{result_file_stem('test_two.py::test_taking_turns', 1)}.trace.json"
        ).read_text()
    )
    assert overlap(by_run(gil, "concurrent run")) < 0.2, "lanes that take turns do not overlap"


def test_chrome_trace_lines_runs_up_from_zero_in_microseconds() -> None:
    timelines = {
        "concurrent": [
            LaneTimeline("a", ((0.0, 0.001), (0.002, 0.003))),
            LaneTimeline("b", ((0.0005, 0.002),)),
        ],
        "sequential": [LaneTimeline("a", ((0.0, 0.001),)), LaneTimeline("b", ((0.001, 0.0025),))],
    }
    trace = chrome_trace(timelines, "t", {"mode": "threads"})
    complete = [event for event in trace["traceEvents"] if event["ph"] == "X"]
    assert len(complete) == 5
    assert complete[0] == {
        "name": "a #1",
        "cat": "concurrent",
        "ph": "X",
        "pid": 1,
        "tid": 1,
        "ts": 0.0,
        "dur": 1000.0,
    }
    names = [e["args"]["name"] for e in trace["traceEvents"] if e["name"] == "process_name"]
    assert names == [
        "t: concurrent run (threads) - each bar one call",
        "sequential run (back to back) - each bar one call",
    ]
    assert json.loads(json.dumps(trace)) == trace


def test_file_names_keep_tests_that_differ_only_in_punctuation_apart() -> None:
    first, second = result_file_stem("t.py::test[a b]", 1), result_file_stem("t.py::test[a_b]", 1)
    assert first != second
    assert first.startswith("t.py_test_a_b-")
    assert first.endswith("-call1")
    assert len(result_file_stem("t.py::test[" + "x" * 500 + "]", 3)) < 130


@pytest.fixture(scope="module")
def mlp_input() -> torch.Tensor:
    return torch.randn(256, 512)


needs_thread_profiling = pytest.mark.skipif(
    all_threads_config() is None, reason="this torch's profiler cannot see lane threads (profile_all_threads)"
)


@needs_thread_profiling
def test_kernel_overlap_sees_operators_run_at_once_on_the_lane_threads(mlp_input: torch.Tensor) -> None:
    result = dual_infer(MLP(512, 4), MLP(512, 4), mlp_input, mode="threads", budget=0.1, profile=True)
    assert result.kernel_overlap is not None
    assert result.kernel_overlap > 0.3, "matmuls of two lane threads overlap in time"
    kernels = result.timelines["kernels"]
    assert {line.lane for line in kernels} == {"thread of MLP", "thread of MLP-2"}
    assert all(line.intervals for line in kernels)


@needs_thread_profiling
def test_kernel_overlap_is_zero_when_the_lanes_run_back_to_back(mlp_input: torch.Tensor) -> None:
    result = dual_infer(MLP(512, 4), MLP(512, 4), mlp_input, mode="sequential", budget=0.1, profile=True)
    assert result.kernel_overlap == 0.0
    assert [line.lane for line in result.timelines["kernels"]] == ["caller's thread"]


def test_a_profiler_already_running_is_left_alone() -> None:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as outer:
        result = dual_infer(MLP(64, 2), MLP(64, 2), torch.randn(8, 64), **QUICK, profile=True)
        torch.ones(3).sum()
    assert result.kernel_overlap is None
    assert "kernel overlap not measured: a torch profiler is already running" in result.warnings
    assert any(event.name == "aten::sum" for event in outer.events()), "the user's profile still records"


@needs_thread_profiling
def test_no_profile_no_kernel_overlap_and_lanes_without_operators_say_so() -> None:
    plain = dual_infer(SleepLane(0.001), SleepLane(0.001), torch.ones(2), **QUICK)
    assert plain.kernel_overlap is None
    assert "kernels" not in plain.timelines
    pure_python = dual_infer(GilLane(0.001), GilLane(0.001), torch.ones(2), **QUICK, profile=True)
    assert pure_python.kernel_overlap is None
    assert any("recorded no operators" in warning for warning in pure_python.warnings)


@needs_thread_profiling
def test_profile_option_adds_kernel_tracks_to_the_trace_and_a_column_to_the_table(
    suite: pytest.Pytester,
) -> None:
    suite.makepyfile(
        test_mlp="""
        import torch
        from torch import nn

        def test_pair(dual_infer):
            a, b = nn.Linear(256, 256), nn.Linear(256, 256)
            dual_infer(a, b, torch.randn(128, 256), mode="threads")

        def test_unprofiled(dual_infer):
            a, b = nn.Linear(8, 8), nn.Linear(8, 8)
            dual_infer(a, b, torch.randn(2, 8), profile=False)
        """
    )
    result = suite.runpytest(*QUICK_ARGS, "--dualgpu-profile", "--dualgpu-report", "--dualgpu-report=trace:t")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*overlap*kernel overlap*", "*test_pair*", "*test_unprofiled*"])
    header = next(line for line in result.outlines if "kernel overlap" in line)
    unprofiled = next(line for line in result.outlines if "test_unprofiled" in line)
    column = header.index("kernel overlap")
    assert unprofiled[column] == "-"
    trace = json.loads(
        (suite.path / "t" / f"{result_file_stem('test_mlp.py::test_pair', 1)}.trace.json").read_text()
    )
    kernel_tracks = by_run(trace, "torch.profiler")
    assert len(kernel_tracks) == 2
    assert all(kernel_tracks)
    assert trace["otherData"]["kernel_overlap"] is not None
