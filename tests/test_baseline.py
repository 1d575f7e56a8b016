"""The baseline comparison and the regression gate: noise alone never fails it, a real regression does."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from mdtables import first_table
from models import SleepLane

from pytest_dualgpu import dual_infer
from pytest_dualgpu.errors import DualGpuUsageError
from pytest_dualgpu.reports.gate import Baseline, MetricChange, compare, parse_threshold
from pytest_dualgpu.reports.rows import CallError, ReportRow, dumps, json_document, load_report
from pytest_dualgpu.results import DualResult, Measurement

FAST = ("--dualgpu-budget=0.1", "--dualgpu-max-budget=3", "--dualgpu-warmup=0")


@pytest.mark.parametrize(
    ("text", "limit_of_base_2"),
    [
        ("speedup:10%", 1.8),
        ("efficiency:0.1", 1.9),
        ("efficiency:10%", 1.8),
        ("concurrent:10%", 2.2),
        ("concurrent:2ms", 2.002),
        ("memory:50%", 3.0),
        ("memory:1KiB", 1026.0),
    ],
)
def test_thresholds_move_the_base_the_wrong_way(text: str, limit_of_base_2: float) -> None:
    assert parse_threshold(text).limit(2.0) == pytest.approx(limit_of_base_2)
    assert str(parse_threshold(text)) == text


@pytest.mark.parametrize(
    "text", ["speedup", "speed:10%", "speedup:fast", "speedup:-5%", "memory:lots", "speedup:2"]
)
def test_bad_thresholds_say_what_is_accepted(text: str) -> None:
    with pytest.raises(DualGpuUsageError, match="use speedup:10%"):
        parse_threshold(text)


@pytest.fixture(scope="module")
def measured() -> DualResult:
    return dual_infer(SleepLane(0.001), SleepLane(0.001), torch.ones(2), budget=0.1)


def moved(result: DualResult, speedup: float, ci: tuple[float, float], **changes: object) -> DualResult:
    return dataclasses.replace(result, speedup=speedup, speedup_ci=ci, **changes)  # type: ignore[arg-type]


def baseline_of(*rows: ReportRow, torch_version: str = "2.13.0") -> Baseline:
    return Baseline("base.json", {"torch": torch_version}, {(r.nodeid, r.result.name, 0): r for r in rows})


def test_regression_needs_the_whole_interval_beyond_the_limit(measured: DualResult) -> None:
    base = ReportRow("t.py::test", moved(measured, 2.0, (1.9, 2.1)))
    gate = (parse_threshold("speedup:10%"),)
    noisy = ReportRow("t.py::test", moved(measured, 1.7, (1.5, 1.85)))  # median beyond, interval reaches in
    slower = ReportRow("t.py::test", moved(measured, 1.6, (1.55, 1.75)))  # all of it below 1.8
    assert compare([noisy], baseline_of(base), gate, "2.13.0").regressions == []
    comparison = compare([slower], baseline_of(base), gate, "2.13.0")
    [(row, change)] = comparison.regressions
    assert row is slower
    assert change.metric == "speedup"
    assert change.limit == pytest.approx(1.8)
    assert comparison.for_row(slower).cell() == "speedup -20.0% REGRESSED"  # type: ignore[union-attr]
    assert (
        "speedup 1.60x [95% CI 1.55, 1.75] vs base 2.00x (-20.0%); limit 1.80x (speedup:10%)"
        in (comparison.regression_lines()[0])
    )


def timed(result: DualResult, samples: tuple[float, ...]) -> DualResult:
    """The result with made-up concurrent times: exact numbers, not whatever this machine's load gave."""
    return dataclasses.replace(result, concurrent=Measurement.from_samples(samples))


def test_time_regresses_upwards_and_improvements_never_fail(measured: DualResult) -> None:
    base = ReportRow("t.py::test", timed(measured, (0.010,) * 9))
    gate = (parse_threshold("concurrent:10%"),)
    slower = timed(measured, (0.0120, 0.0125, 0.0130, 0.0135, 0.0140, 0.0145, 0.0150, 0.0155, 0.0160))
    noisy = timed(measured, (0.0090, 0.0100, 0.0110, 0.0120, 0.0130, 0.0140, 0.0150, 0.0160, 0.0170))
    faster = timed(measured, (0.005,) * 9)
    assert len(compare([ReportRow("t.py::test", slower)], baseline_of(base), gate, None).regressions) == 1
    assert compare([ReportRow("t.py::test", noisy)], baseline_of(base), gate, None).regressions == []
    assert compare([ReportRow("t.py::test", faster)], baseline_of(base), gate, None).regressions == []


def test_a_gate_that_checked_nothing_says_so_and_lists_base_rows_that_did_not_run(
    measured: DualResult,
) -> None:
    base = ReportRow("t.py::test_old", measured)
    now = ReportRow("t.py::test_renamed", measured)
    comparison = compare([now], baseline_of(base), (parse_threshold("speedup:10%"),), None)
    assert comparison.judged == 0
    assert f"1 base result(s) did not run this time: t.py::test_old [{measured.name}]" in comparison.warnings
    memory_only = compare(
        [ReportRow("t.py::test_old", measured)], baseline_of(base), (parse_threshold("memory:10%"),), None
    )
    assert memory_only.judged == 0, "no memory on CPU: nothing for a memory threshold to judge"


def test_rows_match_by_node_id_name_and_occurrence(measured: DualResult) -> None:
    first = ReportRow("t.py::test", moved(measured, 2.0, (2.0, 2.0)), call=1)
    second = ReportRow("t.py::test", moved(measured, 1.0, (1.0, 1.0)), call=2)
    gate = (parse_threshold("speedup:10%"),)
    now = [ReportRow("t.py::test", moved(measured, 1.0, (1.0, 1.0)), call=1),
           ReportRow("t.py::test", moved(measured, 1.0, (1.0, 1.0)), call=2),
           ReportRow("t.py::other", moved(measured, 1.0, (1.0, 1.0)))]  # fmt: skip
    base = Baseline(
        "b.json", {}, {("t.py::test", measured.name, 0): first, ("t.py::test", measured.name, 1): second}
    )
    comparison = compare(now, base, gate, None)
    assert [row.call for row, _ in comparison.regressions] == [1]
    assert comparison.for_row(now[2]).cell() == "new"  # type: ignore[union-attr]
    assert "1 result(s) have no row in the base (b.json)" in comparison.warnings


def test_another_gpu_or_torch_is_a_warning_and_another_device_is_not_gated(measured: DualResult) -> None:
    base = ReportRow("t.py::test", moved(measured, 2.0, (2.0, 2.0), device_name="NVIDIA H100 80GB HBM3"))
    now = ReportRow("t.py::test", moved(measured, 1.0, (1.0, 1.0)))
    comparison = compare(
        [now], baseline_of(base, torch_version="2.5.0"), (parse_threshold("speedup:10%"),), "2.13.0"
    )
    assert comparison.regressions == []
    assert comparison.for_row(now).cell().endswith("(other device)")  # type: ignore[union-attr]
    assert any("base measured on NVIDIA H100 80GB HBM3" in warning for warning in comparison.warnings)
    assert "base measured with torch 2.5.0, this run with torch 2.13.0" in comparison.warnings


def test_a_baseline_reads_back_what_a_report_wrote(
    measured: DualResult, tmp_path: pytest.TempPathFactory
) -> None:
    path = tmp_path / "base.json"  # type: ignore[operator]
    path.write_text(dumps(json_document([ReportRow("t.py::test", measured)], [], {"torch": "x"})))
    baseline = Baseline.load(str(path))
    assert baseline.machine == {"torch": "x"}
    assert baseline.rows[("t.py::test", measured.name, 0)].result.speedup == measured.speedup


def test_a_report_from_before_calls_were_counted_from_1_reads_as_if_they_were(
    tmp_path: pytest.TempPathFactory, measured: DualResult
) -> None:
    document = json_document(
        [ReportRow("t.py::test", measured, call=1)], [CallError("t.py::test", 2, "x")], {}
    )
    document["version"] = 3
    document["results"][0]["call"] = 0
    document["errors"][0]["call"] = 1
    path = tmp_path / "old.json"  # type: ignore[operator]
    path.write_text(dumps(document))
    saved = load_report(path, "old.json", "")
    assert [row.call for row in saved.rows] == [1]
    assert [error.call for error in saved.errors] == [2]


@pytest.mark.parametrize(
    ("content", "message"),
    [("{not json", "not JSON"), ('{"results": 3}', "not a pytest-dualgpu JSON report"),
     ('{"version": 2, "results": [{"nodeid": "x"}]}', "a result could not be read"),
     ('{"version": 2, "results": [{"nodeid": "x", "verdicts": ["a"]}]}', "a result could not be read"),
     ('{"version": 2, "machine": [], "results": []}', "its 'machine' is not an object"),
     ('{"version": 1, "results": []}', "a version 1 report; this pytest-dualgpu reads versions 2, 3 and 4")],
)  # fmt: skip
def test_a_broken_baseline_is_a_clear_error(
    tmp_path: pytest.TempPathFactory, content: str, message: str
) -> None:
    path = tmp_path / "base.json"  # type: ignore[operator]
    path.write_text(content)
    with pytest.raises(DualGpuUsageError, match=message):
        Baseline.load(str(path))


# 21 rounds, not the default 7: with 7 the 95% interval of a median is the whole range, and one
# disturbed round would keep a real regression from being proven. 8 ms lanes: a loaded machine's
# scheduling delays are small beside them, so the sleeping pair stays near 2x.
SWITCHABLE = """
import os
import torch
from inner_models import Sleep, Turns

# Sleeping lanes need no settling pauses (those are for OpenMP workers); 21 rounds narrow the interval.
def test_pair(dual_infer):
    lane = Turns if os.environ.get("LANES") == "turns" else Sleep
    dual_infer(lane(0.004), lane(0.004), torch.ones(2), name="pair", min_rounds=21, settle=0)

def test_steady(dual_infer):
    dual_infer(Sleep(0.004), Sleep(0.004), torch.ones(2), name="steady", min_rounds=21, settle=0)
"""


def test_the_gate_fails_the_session_on_a_real_regression_and_passes_without_one(
    suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    suite.makepyfile(test_gate=SWITCHABLE)
    suite.runpytest(*FAST, "--dualgpu-save=base/dualgpu.json").assert_outcomes(passed=2)
    assert json.loads((suite.path / "base" / "dualgpu.json").read_text())["results"]

    unchanged = suite.runpytest(
        *FAST, "--dualgpu-compare=base/dualgpu.json", "--dualgpu-compare-fail=speedup:30%", "--dualgpu-report"
    )
    assert unchanged.ret == pytest.ExitCode.OK
    unchanged.stdout.fnmatch_lines(
        ["*vs base*", "regression gate: no result regressed beyond speedup:30% (2 metric(s) judged)"]
    )

    monkeypatch.setenv("LANES", "turns")  # sleeping lanes overlap (~1.9x), turn-taking ones cannot (~1x)
    regressed = suite.runpytest(
        *FAST, "--dualgpu-compare=base/dualgpu.json", "--dualgpu-compare-fail=speedup:30%",
        "--dualgpu-report=json:new.json", "--dualgpu-report=md:summary.md",
    )  # fmt: skip
    assert regressed.ret == pytest.ExitCode.TESTS_FAILED, (suite.path / "new.json").read_text()
    regressed.assert_outcomes(passed=2)
    regressed.stdout.fnmatch_lines(
        [
            "regression gate (speedup:30%) failed for 1 result(s):",
            "  test_gate.py::test_pair [[]pair]: speedup *x [[]95% CI *] vs base *x (-*%); "
            "limit *x (speedup:30%)",
        ]
    )
    assert "test_steady" not in "".join(line for line in regressed.outlines if line.startswith("  test_"))
    document = json.loads((suite.path / "new.json").read_text())
    assert [entry["nodeid"] for entry in document["comparison"]["regressions"]] == ["test_gate.py::test_pair"]
    assert document["results"][0]["baseline"]["metrics"]["speedup"]["regressed"] is True
    summary = (suite.path / "summary.md").read_text()
    header, _, *body = first_table(summary)
    columns = [cell.strip() for cell in header.strip("|").split("|")]
    table = [
        dict(zip(columns, (cell.strip() for cell in line.strip("|").split("|")), strict=True))
        for line in body
    ]
    assert [(row["test"], row["vs base"].endswith("REGRESSED")) for row in table] == [
        ("test_gate.py::test_pair [pair]", True),
        ("test_gate.py::test_steady [steady]", False),
    ]
    assert "- regressed: test_gate.py::test_pair [pair]: speedup" in summary


def test_the_gate_reaches_the_exit_code_under_xdist(
    suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    suite.makepyfile(test_gate=SWITCHABLE)
    # The base is saved in this process: how a base is saved under xdist is not what this test is about.
    suite.runpytest(*FAST, "--dualgpu-save=base.json").assert_outcomes(passed=2)
    monkeypatch.setenv("LANES", "turns")
    result = suite.runpytest(
        *FAST, "-n", "2", "--dualgpu-compare=base.json", "--dualgpu-compare-fail=speedup:30%"
    )
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*regression gate (speedup:30%) failed for 1 result(s):*"])


def test_one_threshold_per_metric() -> None:
    from pytest_dualgpu.plugin.options import parse_thresholds

    with pytest.raises(DualGpuUsageError, match="speedup has more than one threshold"):
        parse_thresholds("speedup:10% memory:5% speedup:5%")


def test_thresholds_from_the_ini_file_wait_for_a_baseline(suite: pytest.Pytester) -> None:
    suite.makeini("[pytest]\ndualgpu_compare_fail = speedup:10%\n")
    suite.makepyfile(test_gate=SWITCHABLE)
    result = suite.runpytest(*FAST, "-k", "steady")
    assert result.ret == pytest.ExitCode.OK
    assert "regression gate" not in result.stdout.str()


def test_a_memory_regression_is_judged_on_an_unreliable_result_too() -> None:
    grown = MetricChange(
        "memory", 100.0, 200.0, (200.0, 200.0), parse_threshold("memory:10%"), reliable=False
    )
    assert grown.regressed
    slower = MetricChange("speedup", 2.0, 1.0, (0.9, 1.1), parse_threshold("speedup:10%"), reliable=False)
    assert slower.status == "inconclusive"
