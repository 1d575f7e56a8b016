"""The session's report: rows from every test (and every xdist worker), JSON, markdown, JUnit, hooks."""

from __future__ import annotations

import json
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
import torch
from lockholder import lock_held_here
from mdtables import first_table
from quick import QUICK, QUICK_ARGS

from pytest_dualgpu.results import DualResult

THREE_TESTS = """
import pytest
import torch
from inner_models import Drifting, Sleep, Turns

@pytest.mark.dualgpu_correct
def test_two_calls(dual_infer):
    dual_infer(Sleep(), Sleep(), torch.ones(2), name="first")
    dual_infer.many([Sleep(), Sleep(), Sleep()], [torch.ones(2)] * 3, name="three lanes")

@pytest.mark.dualgpu_speedup(min=2.5, device="cpu")  # above the ideal 2x: fails however the machine is
def test_turns(dual_infer):
    dual_infer(Turns(), Turns(), torch.ones(2), mode="threads")

@pytest.mark.parametrize("seconds", [0.001, 0.002])
def test_parametrized(dual_infer, seconds):
    dual_infer(Sleep(seconds), Sleep(seconds), torch.ones(2))

def test_no_dualgpu():
    pass
"""


def report(path: Path) -> dict[str, Any]:
    return dict(json.loads(path.read_text()))


def identity(document: dict[str, Any]) -> list[tuple[Any, ...]]:
    return [
        (
            row["nodeid"],
            row["call"],
            row["name"],
            tuple(lane["name"] for lane in row["lanes"]),
            row["verdicts"],
        )
        for row in document["results"]
    ]


@pytest.mark.parametrize("workers", ["0", "2"])
def test_one_row_per_call_in_collection_order_with_or_without_xdist(
    suite: pytest.Pytester, workers: str
) -> None:
    suite.makepyfile(test_three=THREE_TESTS)
    result = suite.runpytest("-n", workers, *QUICK_ARGS, "--dualgpu-report", "--dualgpu-report=json:r.json")
    result.assert_outcomes(passed=4, failed=1)
    document = report(suite.path / "r.json")
    assert identity(document) == [
        ("test_three.py::test_two_calls", 1, "first", ("Sleep", "Sleep-2"), _verdicts(correct="pass")),
        (
            "test_three.py::test_two_calls",
            2,
            "three lanes",
            ("Sleep", "Sleep-2", "Sleep-3"),
            _verdicts(correct="pass"),
        ),
        ("test_three.py::test_turns", 1, "Turns+Turns-2", ("Turns", "Turns-2"), _verdicts(speedup="fail")),
        ("test_three.py::test_parametrized[0.001]", 1, "Sleep+Sleep-2", ("Sleep", "Sleep-2"), _verdicts()),
        ("test_three.py::test_parametrized[0.002]", 1, "Sleep+Sleep-2", ("Sleep", "Sleep-2"), _verdicts()),
    ]
    table = [line for line in result.outlines if line.startswith("test_three.py::") and "x [" in line]
    assert [line.split()[0] for line in table] == [row[0] for row in identity(document)]
    assert "speedup FAIL" in table[2]


def test_two_calls_of_one_test_are_told_apart_and_numbered_alike_everywhere(suite: pytest.Pytester) -> None:
    suite.makepyfile(
        test_twice="""
        import torch
        from inner_models import Sleep

        def test_twice(dual_infer):
            dual_infer(Sleep(), Sleep(), torch.ones(2))
            dual_infer(Sleep(), Sleep(), torch.ones(2))
        """
    )
    result = suite.runpytest(
        *QUICK_ARGS, "--dualgpu-report", "--dualgpu-report=json:r.json", "--dualgpu-report=trace:t"
    )
    result.assert_outcomes(passed=1)
    labels = [line.split("  ")[0] for line in result.outlines if "Sleep + Sleep-2" in line]
    assert labels == ["test_twice.py::test_twice", "test_twice.py::test_twice call 2"]
    assert [row["call"] for row in report(suite.path / "r.json")["results"]] == [1, 2]
    assert sorted(path.name.rpartition("-")[2] for path in (suite.path / "t").iterdir()) == [
        "call1.trace.json",
        "call2.trace.json",
    ]


def _verdicts(**given: str) -> dict[str, str | None]:
    return {kind: given.get(kind) for kind in ("correct", "sync", "speedup", "memory", "interference")}


def test_json_rows_are_complete_results(suite: pytest.Pytester) -> None:
    suite.makepyfile(test_three=THREE_TESTS)
    suite.runpytest(*QUICK_ARGS, "--dualgpu-report=json:r.json", "-k", "two_calls")
    document = report(suite.path / "r.json")
    assert document["version"] == 4
    assert document["machine"]["torch"] == torch.__version__
    assert document["machine"]["cpu"]["cores"] >= 1
    assert document["errors"] == []
    first = document["results"][0]
    result = DualResult.from_dict(first)
    assert result.name == "first"
    assert result.device == "cpu"
    assert result.correct
    assert result.rounds >= QUICK["min_rounds"]  # the session's setting reached the call
    assert result.speedup_ci[0] <= result.speedup <= result.speedup_ci[1]
    assert set(first["timelines"]) == {"sequential", "concurrent"}
    assert "outputs" not in first


def test_markdown_goes_to_a_file_or_the_github_step_summary(
    suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    suite.makepyfile(test_three=THREE_TESTS)
    summary = suite.path / "summary.md"
    summary.write_text("earlier step\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    suite.runpytest(
        *QUICK_ARGS, "--dualgpu-report=md", "--dualgpu-report=md:out/table.md", "-k", "parametrized"
    )
    written = (suite.path / "out" / "table.md").read_text()
    assert summary.read_text() == "earlier step\n" + written
    header, separator, *body = first_table(written)
    cells = [cell.strip() for cell in header.strip("|").split("|")]
    assert cells[:4] == ["test", "lanes", "device", "mode"]
    assert cells[-1] == "verdicts"
    assert set(separator) <= set("|-: ")
    assert [line.split("|")[1].strip() for line in body] == [
        "test_three.py::test_parametrized[0.001]",
        "test_three.py::test_parametrized[0.002]",
    ]
    monkeypatch.delenv("GITHUB_STEP_SUMMARY")
    missing = suite.runpytest(*QUICK_ARGS, "--dualgpu-report=md", "-k", "parametrized")
    assert missing.ret == pytest.ExitCode.USAGE_ERROR  # known at start-up: nothing was measured for nothing
    missing.stderr.fnmatch_lines(
        ["*dualgpu: --dualgpu-report=md: $GITHUB_STEP_SUMMARY is not set*use md:PATH*"]
    )
    assert "passed" not in missing.stdout.str()


def test_junit_xml_carries_each_result_as_a_json_property(suite: pytest.Pytester) -> None:
    suite.makepyfile(test_three=THREE_TESTS)
    suite.runpytest(*QUICK_ARGS, "--junitxml=junit.xml", "-k", "two_calls or no_dualgpu")
    cases = {case.get("name"): case for case in ET.parse(suite.path / "junit.xml").iter("testcase")}
    properties = [
        json.loads(prop.get("value", ""))
        for prop in cases["test_two_calls"].iter("property")
        if prop.get("name") == "dualgpu"
    ]
    assert [(entry["call"], entry["name"], entry["verdicts"]["correct"]) for entry in properties] == [
        (1, "first", "pass"),
        (2, "three lanes", "pass"),
    ]
    assert properties[0]["nodeid"] == "test_three.py::test_two_calls"
    assert properties[0]["speedup"] > 0
    assert list(cases["test_no_dualgpu"].iter("property")) == []


@pytest.mark.parametrize("workers", ["0", "2"])
def test_a_failing_lane_leaves_the_other_tests_and_the_report_intact(
    suite: pytest.Pytester, workers: str
) -> None:
    suite.makepyfile(
        """
        import threading
        import torch
        from inner_models import Raising, Sleep

        def test_raises(dual_infer):
            dual_infer(Raising(), Sleep(), torch.ones(2))

        def test_after(dual_infer):
            assert dual_infer(Sleep(), Sleep(), torch.ones(2)).correct
            assert threading.active_count() == 1
        """
    )
    result = suite.runpytest_subprocess(
        "-n", workers, "-p", "no:randomly", *QUICK_ARGS, "--dualgpu-report", "--dualgpu-report=json:r.json"
    )
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*LaneError: lane 'Raising' raised RuntimeError in the alone run of lane 'Raising': lane "
            "exploded",
            "*::test_after*Sleep + Sleep-2*",
            "*::test_raises: dual_infer call 1 raised LaneError: lane 'Raising' raised RuntimeError*",
        ]
    )
    document = report(suite.path / "r.json")
    assert [row["nodeid"].split("::")[1] for row in document["results"]] == ["test_after"]
    assert [error["nodeid"].split("::")[1] for error in document["errors"]] == ["test_raises"]


def test_hooks_see_every_result_and_can_change_the_columns(suite: pytest.Pytester) -> None:
    suite.makeconftest(
        """
        from pytest_dualgpu.report import Column  # the name it had before reports/: still works

        seen = []

        def pytest_dualgpu_result(result, item):
            assert result.outputs is not None
            seen.append((item.name, result.name))

        def pytest_dualgpu_report_columns(columns, config):
            columns[:] = [column for column in columns if column.header != "max err"]
            columns.append(Column("rounds", lambda row: f"{row.result.rounds} rounds"))

        def pytest_sessionfinish(session):
            print("seen:", seen)
        """
    )
    suite.makepyfile(test_three=THREE_TESTS)
    result = suite.runpytest(
        *QUICK_ARGS, "-s", "--dualgpu-report", "--dualgpu-report=md:t.md", "-k", "two_calls"
    )
    result.stdout.fnmatch_lines(
        ["*seen: [[]('test_two_calls', 'first'), ('test_two_calls', 'three lanes')[]]"]
    )
    header = next(line for line in result.outlines if line.startswith("test "))
    assert "max err" not in header
    assert header.split()[-1] == "rounds"
    assert " rounds |" in (suite.path / "t.md").read_text()


def test_failed_verdicts_stand_out_in_colour(suite: pytest.Pytester) -> None:
    suite.makepyfile(test_three=THREE_TESTS)
    result = suite.runpytest(*QUICK_ARGS, "--color=yes", "--dualgpu-report", "-k", "turns or parametrized")
    table = [line for line in result.outlines if "test_three.py::test_" in line and "x [" in line]
    turns = next(line for line in table if "Turns +" in line)
    assert "\x1b[31m" in turns
    assert "speedup FAIL" in turns
    assert all("\x1b[31m" not in line for line in table if "Sleep +" in line)


class SignalTestStart:
    """Passed to the inner session as a plugin: tells the holder of the lock that a test has begun."""

    def __init__(self) -> None:
        self.event = threading.Event()

    def pytest_runtest_call(self) -> None:
        self.event.set()


def test_a_long_wait_for_the_measuring_lock_is_reported(suite: pytest.Pytester) -> None:
    suite.makepyfile(test_three=THREE_TESTS)
    started = SignalTestStart()
    held = threading.Event()

    def hold() -> None:
        with lock_held_here():
            held.set()
            started.event.wait(timeout=60)
            time.sleep(1.5)

    holder = threading.Thread(target=hold)
    holder.start()
    assert held.wait(timeout=120)
    result = suite.runpytest(*QUICK_ARGS, "--dualgpu-report", "-k", "parametrized", plugins=[started])
    holder.join()
    result.stdout.fnmatch_lines(
        [
            "*test_parametrized*: waited *s for the cpu measuring lock",
            "measuring lock: waited * s in all (longest * s, test_three.py::test_parametrized[[]0.001[]]); "
            "another process on this machine measured the same device meanwhile (another session?)*",
        ]
    )


def test_a_rerun_replaces_the_rows_of_the_attempt_before(suite: pytest.Pytester) -> None:
    suite.makeconftest(
        """
        from _pytest.runner import runtestprotocol

        def pytest_runtest_protocol(item, nextitem):
            # What pytest-rerunfailures does: the same item through the whole protocol again.
            item.ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
            for _ in range(2):
                runtestprotocol(item, nextitem=nextitem, log=True)
            item.ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
            return True
        """
    )
    suite.makepyfile(
        """
        import pytest
        import torch
        from inner_models import Drifting, Sleep

        attempts = []

        @pytest.mark.dualgpu_correct
        def test_flaky_first(dual_infer):
            attempts.append(1)
            first = Drifting() if len(attempts) == 1 else Sleep()
            dual_infer(first, Sleep(), torch.ones(2))
        """
    )
    result = suite.runpytest(*QUICK_ARGS, "--dualgpu-report=json:r.json", "--junitxml=j.xml")
    result.assert_outcomes(failed=1, passed=1)
    (row,) = report(suite.path / "r.json")["results"]
    assert (row["name"], row["call"], row["verdicts"]["correct"]) == ("Sleep+Sleep-2", 1, "pass")


def test_an_infinite_error_stays_strict_json_and_reads_back() -> None:
    from models import SleepLane

    from pytest_dualgpu import dual_infer
    from pytest_dualgpu.reports.rows import ReportRow, dumps

    measured = dual_infer(SleepLane(0.001), SleepLane(0.001), torch.ones(2), budget=0.1)
    row = ReportRow(
        "test_x.py::test_y", DualResult.from_dict({**measured.to_dict(), "max_abs_err": float("inf")})
    )

    def refuse(constant: str) -> None:
        raise ValueError(f"non-standard JSON constant {constant}")

    data = json.loads(dumps(row.to_dict()), parse_constant=refuse)
    assert data["max_abs_err"] == "Infinity"
    assert ReportRow.from_dict(data).result.max_abs_err == float("inf")


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("json:taken", "--dualgpu-report=json:taken: taken is a directory; give a file path*"),
        (
            "md:table.md/out.md",
            "--dualgpu-report=md:table.md/out.md: table.md is a file, so*cannot be created*",
        ),
        ("trace:table.md", "--dualgpu-report=trace:table.md: table.md is a file; trace takes a folder"),
    ],
)
def test_a_target_that_cannot_be_a_file_is_a_usage_error_before_anything_runs(
    suite: pytest.Pytester, target: str, message: str
) -> None:
    suite.makepyfile(test_three=THREE_TESTS)
    (suite.path / "taken").mkdir()
    (suite.path / "table.md").write_text("a file\n")
    result = suite.runpytest(*QUICK_ARGS, f"--dualgpu-report={target}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*dualgpu: {message}"])
    assert "passed" not in result.stdout.str()


def test_a_target_that_fails_at_the_end_costs_no_other_target(suite: pytest.Pytester) -> None:
    suite.makepyfile(
        test_three=THREE_TESTS,
        test_takes_the_path="def test_takes_the_path():\n    import os\n    os.mkdir('taken')\n",
    )
    result = suite.runpytest(
        *QUICK_ARGS,
        "-k",
        "parametrized or takes",
        "--dualgpu-report=json:taken",
        "--dualgpu-report=md:table.md",
    )
    result.assert_outcomes(passed=3)
    assert result.ret == pytest.ExitCode.INTERNAL_ERROR
    result.stdout.fnmatch_lines(
        ["dualgpu: could not write the json:taken report: DualGpuUsageError: *directory*"]
    )
    assert "test_parametrized" in (suite.path / "table.md").read_text()
    result.stdout.fnmatch_lines([f"dualgpu: md report: {suite.path / 'table.md'}"])


def test_an_efficiency_that_could_not_be_measured_is_explained_under_the_table(
    suite: pytest.Pytester,
) -> None:
    suite.makepyfile(
        test_uneven="""
        import torch
        from inner_models import Sleep

        class Instant(torch.nn.Module):
            def forward(self, x):
                return x * 2

        def test_uneven(dual_infer):  # the short lane is ~0.1% of the pair: overlap could save nothing to see
            dual_infer(Instant(), Sleep(0.01), torch.ones(2))
        """
    )
    result = suite.runpytest(*QUICK_ARGS, "--dualgpu-report", "--dualgpu-report=md:summary.md")
    result.assert_outcomes(passed=1)
    header = next(line for line in result.outlines if line.startswith("test "))
    row = next(line for line in result.outlines if line.startswith("test_uneven.py::"))
    assert row[header.index(" eff ") + 1 :].split()[0] == "-"
    result.stdout.fnmatch_lines(
        ["eff -: not measured, because running at once could not save 5% of the time*"]
    )
    assert "eff -: not measured" in (suite.path / "summary.md").read_text()
