from __future__ import annotations

import dataclasses
import json
import sys
from importlib.util import find_spec
from pathlib import Path

import pytest
import torch
from models import GilLane, SleepLane

import pytest_dualgpu
from pytest_dualgpu.errors import DualGpuUsageError
from pytest_dualgpu.reports.plots import (
    MATPLOTLIB_MISSING,
    require_matplotlib,
    session_figure,
    timeline_figure,
    write_matrix_png,
    write_session_png,
    write_sweep_png,
    write_timeline_png,
)
from pytest_dualgpu.reports.rows import ReportRow
from pytest_dualgpu.reports.traces import chrome_trace
from pytest_dualgpu.results import Decision, DualResult
from pytest_dualgpu.timeline import LaneTimeline, overlap

NODEID = "test_x.py::test_y"

needs_matplotlib = pytest.mark.skipif(
    find_spec("matplotlib") is None, reason="the [plot] extra is not installed"
)


@pytest.fixture(scope="module")
def sleeping() -> DualResult:
    return pytest_dualgpu.dual_infer(
        SleepLane(0.002), SleepLane(0.002), torch.ones(2), budget=0.1, mode="threads"
    )


@pytest.fixture(scope="module")
def gil_bound() -> DualResult:
    return pytest_dualgpu.dual_infer(
        GilLane(0.002), GilLane(0.002), torch.ones(2), budget=0.1, mode="threads"
    )


@pytest.fixture(scope="module")
def three_lanes() -> DualResult:
    models = [SleepLane(0.002), SleepLane(0.002), SleepLane(0.002)]
    return pytest_dualgpu.dual_infer.many(models, [torch.ones(2)] * 3, budget=0.1, mode="threads")


@pytest.fixture(scope="module")
def mixed() -> DualResult:
    return pytest_dualgpu.dual_infer(
        SleepLane(0.002), GilLane(0.002), torch.ones(2), budget=0.03, mode="threads"
    )


def png_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as image:
        assert image.format == "PNG"
        return image.size


def pixels(path: Path) -> bytes:
    from PIL import Image

    with Image.open(path) as image:
        return image.tobytes()


def tracks(result: DualResult) -> int:
    return sum(len(lines) for lines in result.timelines.values())


@needs_matplotlib
def test_timeline_png_is_ten_inches_wide_with_a_row_of_height_per_track(
    tmp_path: Path, sleeping: DualResult, gil_bound: DualResult
) -> None:
    for result in (sleeping, gil_bound):
        path = tmp_path / "nested" / "dir" / f"{result.lanes[0].name}.png"
        write_timeline_png(ReportRow(NODEID, result), path)
        assert tracks(result) == 4
        assert png_size(path) == (1000, round(100 * (1.2 + 0.45 * 4)))


@needs_matplotlib
def test_more_lanes_make_a_taller_timeline(
    tmp_path: Path, sleeping: DualResult, three_lanes: DualResult
) -> None:
    write_timeline_png(ReportRow(NODEID, sleeping), tmp_path / "two.png")
    write_timeline_png(ReportRow(NODEID, three_lanes), tmp_path / "three.png")
    assert tracks(three_lanes) == 6
    width, height = png_size(tmp_path / "three.png")
    assert (width, height) == (1000, round(100 * (1.2 + 0.45 * 6)))
    assert height > png_size(tmp_path / "two.png")[1]


@needs_matplotlib
def test_kernel_tracks_are_drawn_below_the_runs(tmp_path: Path, sleeping: DualResult) -> None:
    streams = [
        LaneTimeline("stream 7", ((0.0, 0.001), (0.0015, 0.002))),
        LaneTimeline("stream 13", ((0.0005, 0.003),)),
    ]
    profiled = dataclasses.replace(sleeping, timelines={**sleeping.timelines, "kernels": streams})
    write_timeline_png(ReportRow(NODEID, profiled), tmp_path / "kernels.png")
    assert png_size(tmp_path / "kernels.png") == (1000, round(100 * (1.2 + 0.45 * 6)))


@needs_matplotlib
def test_empty_timelines_draw_without_crashing(tmp_path: Path, sleeping: DualResult) -> None:
    idle = [LaneTimeline(name, ()) for name in sleeping.lane_names]
    empty = dataclasses.replace(sleeping, timelines={"concurrent": idle, "sequential": idle})
    write_timeline_png(ReportRow(NODEID, empty), tmp_path / "idle.png")
    assert png_size(tmp_path / "idle.png") == (1000, round(100 * (1.2 + 0.45 * 4)))
    write_timeline_png(ReportRow(NODEID, dataclasses.replace(sleeping, timelines={})), tmp_path / "none.png")
    assert png_size(tmp_path / "none.png")[0] == 1000


@needs_matplotlib
def test_session_png_grows_with_rows(
    tmp_path: Path, sleeping: DualResult, gil_bound: DualResult, three_lanes: DualResult
) -> None:
    rows = [
        ReportRow(f"test_x.py::test_{index}", result) for index, result in enumerate((sleeping, gil_bound))
    ]
    write_session_png(rows, tmp_path / "out" / "two.png")
    rows.append(ReportRow("test_x.py::test_" + "very_long_parametrized_name_" * 5, three_lanes))
    write_session_png(rows, tmp_path / "out" / "three.png")
    two, three = png_size(tmp_path / "out" / "two.png"), png_size(tmp_path / "out" / "three.png")
    assert two[0] == three[0] == 1000
    assert three[1] > two[1]


@needs_matplotlib
def test_session_png_with_a_hundred_rows_and_with_none(tmp_path: Path, sleeping: DualResult) -> None:
    rows = [ReportRow(f"test_x.py::test_case[{index}]", sleeping) for index in range(100)]
    write_session_png(rows, tmp_path / "many.png")
    write_session_png([], tmp_path / "none.png")
    assert png_size(tmp_path / "many.png")[1] > png_size(tmp_path / "none.png")[1]


@needs_matplotlib
def test_a_row_read_back_from_json_plots_the_same(tmp_path: Path, sleeping: DualResult) -> None:
    restored = DualResult.from_dict(json.loads(json.dumps(sleeping.to_dict())))
    write_timeline_png(ReportRow(NODEID, sleeping), tmp_path / "timeline.png")
    write_timeline_png(ReportRow(NODEID, restored), tmp_path / "timeline-json.png")
    assert pixels(tmp_path / "timeline.png") == pixels(tmp_path / "timeline-json.png")
    write_session_png([ReportRow(NODEID, sleeping)], tmp_path / "session.png")
    write_session_png([ReportRow(NODEID, restored)], tmp_path / "session-json.png")
    assert pixels(tmp_path / "session.png") == pixels(tmp_path / "session-json.png")


@needs_matplotlib
def test_matrix_png_grows_with_the_number_of_models(
    tmp_path: Path, sleeping: DualResult, gil_bound: DualResult, mixed: DualResult
) -> None:
    write_matrix_png(["sleep", "gil"], [[sleeping, mixed], [mixed, gil_bound]], tmp_path / "a" / "two.png")
    names = ["sleep", "gil", "a_model_with_a_rather_long_name"]
    grid = [[sleeping, mixed, sleeping], [mixed, gil_bound, mixed], [sleeping, mixed, sleeping]]
    write_matrix_png(names, grid, tmp_path / "a" / "three.png")
    two, three = png_size(tmp_path / "a" / "two.png"), png_size(tmp_path / "a" / "three.png")
    assert two[0] >= 500
    assert two[1] >= 450
    assert three[0] > two[0]
    assert three[1] > two[1]


@needs_matplotlib
def test_matrix_png_draws_a_failed_pair(tmp_path: Path, sleeping: DualResult, mixed: DualResult) -> None:
    no_efficiency = dataclasses.replace(sleeping, efficiency=None)
    write_matrix_png(["sleep", "mixed"], [[no_efficiency, None], [None, mixed]], tmp_path / "failed.png")
    write_matrix_png(["sleep", "mixed"], [[None, None], [None, None]], tmp_path / "all-failed.png")
    assert png_size(tmp_path / "failed.png") == png_size(tmp_path / "all-failed.png")
    assert pixels(tmp_path / "failed.png") != pixels(tmp_path / "all-failed.png")


@needs_matplotlib
def test_matrix_png_rejects_a_grid_that_does_not_match_the_names(
    tmp_path: Path, sleeping: DualResult
) -> None:
    with pytest.raises(ValueError, match="2 rows of 2"):
        write_matrix_png(["a", "b"], [[sleeping, sleeping]], tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()


@needs_matplotlib
def test_sweep_png_is_a_thousand_by_seven_hundred(
    tmp_path: Path, sleeping: DualResult, gil_bound: DualResult, mixed: DualResult
) -> None:
    write_sweep_png([1, 4, 16], [sleeping, mixed, gil_bound], tmp_path / "sweep" / "full.png")
    assert png_size(tmp_path / "sweep" / "full.png") == (1000, 700)
    write_sweep_png([8, 1, 2, 4], [sleeping, mixed, None, mixed], tmp_path / "sweep" / "gap.png")
    assert png_size(tmp_path / "sweep" / "gap.png") == (1000, 700)


@needs_matplotlib
def test_sweep_png_with_no_measured_batch_size_still_draws(tmp_path: Path, sleeping: DualResult) -> None:
    write_sweep_png([1, 2, 4], [None, None, None], tmp_path / "nothing.png")
    write_sweep_png([2], [sleeping], tmp_path / "single.png")
    assert png_size(tmp_path / "nothing.png") == png_size(tmp_path / "single.png") == (1000, 700)
    with pytest.raises(ValueError, match="positive"):
        write_sweep_png([0, 1], [sleeping, sleeping], tmp_path / "zero.png")


def test_missing_matplotlib_names_the_extra_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(DualGpuUsageError, match="pip install 'pytest-dualgpu\\[plot\\]'") as caught:
        require_matplotlib()
    assert str(caught.value) == MATPLOTLIB_MISSING
    with pytest.raises(DualGpuUsageError, match="need matplotlib"):
        write_session_png([], tmp_path / "never.png")
    assert not (tmp_path / "never.png").exists()


def _calls(lane: str, count: int, length: float, gap: float, offset: float = 0.0) -> LaneTimeline:
    intervals = tuple(
        (offset + i * (length + gap), offset + i * (length + gap) + length) for i in range(count)
    )
    return LaneTimeline(lane, intervals).capped(50)


@needs_matplotlib
def test_a_timeline_says_what_a_bar_is_and_how_many_calls_it_leaves_out(sleeping: DualResult) -> None:
    names = sleeping.lane_names
    spaced = [_calls(names[0], 120, 0.001, 0.001), _calls(names[1], 120, 0.001, 0.001, 0.0005)]
    result = dataclasses.replace(sleeping, timelines={"concurrent": spaced, "sequential": spaced})
    figure = timeline_figure(ReportRow(NODEID, result))
    concurrent = figure.axes[0].get_title(loc="left")
    assert concurrent == "each bar one call; only the first 50 of 120 per lane are drawn"
    assert all(len(line.intervals) == 50 and line.total == 120 for line in spaced)


@needs_matplotlib
def test_calls_too_close_to_draw_apart_are_said_to_run_together(sleeping: DualResult) -> None:
    names = sleeping.lane_names
    touching = [_calls(names[0], 40, 0.001, 0.0), _calls(names[1], 40, 0.001, 0.0)]
    result = dataclasses.replace(sleeping, timelines={"concurrent": touching})
    title = timeline_figure(ReportRow(NODEID, result)).axes[0].get_title(loc="left")
    assert title == (
        "each bar one call; up to 40 of them run together into one bar at this scale (zoom in the trace)"
    )


@needs_matplotlib
def test_the_timeline_title_gives_the_overlap_of_the_calls_it_draws(sleeping: DualResult) -> None:
    figure = timeline_figure(ReportRow(NODEID, sleeping))
    drawn = overlap([line.intervals for line in sleeping.timelines["concurrent"]])
    title = figure.get_suptitle()
    assert f"overlap {sleeping.overlap:.2f} (median of {sleeping.rounds} rounds)" in title
    assert title.endswith(f", {drawn:.2f} in the calls drawn")


@needs_matplotlib
def test_the_session_chart_explains_red_rows_and_draws_the_speedup_bound(
    sleeping: DualResult, gil_bound: DualResult
) -> None:
    bound = Decision("speedup", 1.5, "fail", gil_bound.speedup_ci)
    failed = ReportRow(
        "t.py::test_gil", dataclasses.replace(gil_bound, decisions=[bound]), {"speedup": "fail"}
    )
    figure = session_figure([ReportRow("t.py::test_sleep", sleeping), failed])
    labels = [text.get_text() for text in figure.legends[0].get_texts()]
    assert "measured speedup, a verdict failed" in labels
    assert "the speedup's bound (min=)" in labels
    marks = next(c for c in figure.axes[0].collections if c.get_label() == "the speedup's bound (min=)")
    assert marks.get_offsets().tolist() == [[1.5, 1.0]]
    passing_only = session_figure([ReportRow("t.py::test_sleep", sleeping)])
    labels = [text.get_text() for text in passing_only.legends[0].get_texts()]
    assert "measured speedup, a verdict failed" not in labels
    assert "the speedup's bound (min=)" not in labels


def test_a_trace_names_what_its_events_are_and_what_it_left_out() -> None:
    lines = [_calls("A", 80, 0.001, 0.001), _calls("B", 80, 0.001, 0.001, 0.0005)]
    trace = chrome_trace({"concurrent": lines, "sequential": lines}, "t", {"mode": "threads"})
    names = [event["args"]["name"] for event in trace["traceEvents"] if event["name"] == "process_name"]
    assert (
        names[0]
        == "t: concurrent run (threads) - each bar one call; only the first 50 of 80 per lane are drawn"
    )
    assert trace["otherData"]["overlap_of_drawn_concurrent"] == overlap([line.intervals for line in lines])
    assert sum(event["ph"] == "X" for event in trace["traceEvents"]) == 2 * 2 * 50
