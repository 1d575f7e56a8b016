"""The table fits the terminal: columns left out by priority, long text shortened, and the way to see all."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from models import SleepLane
from quick import QUICK_ARGS

from pytest_dualgpu import dual_infer
from pytest_dualgpu.reports.rows import ALWAYS, ReportRow, default_columns, dumps, format_table, json_document
from pytest_dualgpu.reports.tablefit import NARROWEST, fit_columns

EVERY_HEADER = ["test", "lanes", "device", "mode", "alone ms", "seq ms", "conc ms", "speedup [95% CI]"]
LONG_NAMES = """
import pytest
import torch
from inner_models import Sleep

@pytest.mark.dualgpu_correct
@pytest.mark.dualgpu_speedup(min=1.2)
@pytest.mark.dualgpu_memory(max_ratio=2)
def test_an_image_encoder_and_a_text_encoder_share_the_device_and_gain(dual_infer):
    dual_infer(Sleep(), Sleep(), torch.ones(2))
    dual_infer(Sleep(), Sleep(), torch.ones(2))
"""


@pytest.fixture(scope="module")
def rows() -> list[ReportRow]:
    result = dual_infer(SleepLane(0.001), SleepLane(0.001), torch.ones(2), budget=0.1)
    nodeid = "tests/models/test_encoders.py::TestPairs::test_an_image_encoder_beside_a_text_encoder[bf16]"
    verdicts = {"correct": "pass", "speedup": "not judged (cpu)", "memory": "not judged (cpu)"}
    return [ReportRow(nodeid, result, dict(verdicts), call=call) for call in (1, 2)]


def table_lines(rows: list[ReportRow], width: int | None) -> tuple[list[str], list[str]]:
    fitted = fit_columns(rows, default_columns(), width)
    return format_table(rows, fitted.columns).splitlines(), fitted.left_out


@pytest.mark.parametrize("width", [60, 80, 100, 120, 160, 200, 250])
def test_a_fitted_table_keeps_what_matters_and_fits_wherever_it_can(
    rows: list[ReportRow], width: int
) -> None:
    lines, left_out = table_lines(rows, width)
    kept = [column for column in default_columns() if column.priority >= ALWAYS]
    narrowest = sum(NARROWEST[column.shortened] if column.shortened else 18 for column in kept) + 2 * 3
    if width >= narrowest:
        assert max(map(len, lines)) <= width
    for column in kept:
        assert column.header in lines[0]
    priorities = {column.header: column.priority for column in default_columns()}
    assert [priorities[header] for header in left_out] == sorted(priorities[header] for header in left_out)
    assert "call 2" in lines[3], "a test id shortened from the left keeps its end"


def test_a_table_that_fits_is_left_whole(rows: list[ReportRow]) -> None:
    whole = format_table(rows, default_columns()).splitlines()
    assert table_lines(rows, max(map(len, whole)))[0] == whole
    assert table_lines(rows, None)[0] == whole


def test_the_session_table_fits_columns_and_says_how_to_see_it_whole(
    suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    suite.makepyfile(test_long=LONG_NAMES)
    monkeypatch.setenv("COLUMNS", "100")
    narrow = suite.runpytest(*QUICK_ARGS, "--dualgpu-report")
    narrow.assert_outcomes(passed=1)
    start = next(index for index, line in enumerate(narrow.outlines) if line.startswith("test "))
    table = narrow.outlines[start : start + 4]
    assert all(len(line) <= 100 for line in table), table
    assert table[0].split()[:2] == ["test", "lanes"]
    assert "verdicts" in table[0]
    assert "call 2" in table[3]
    narrow.stdout.fnmatch_lines(
        ["table fitted to 100 columns: left out device*", "*--dualgpu-report=term-wide*"]
    )
    wide = suite.runpytest(*QUICK_ARGS, "--dualgpu-report=term-wide")
    header = next(line for line in wide.outlines if line.startswith("test "))
    assert all(name in header for name in EVERY_HEADER)
    assert "fitted" not in wide.stdout.str()


def test_the_report_command_fits_a_terminal_and_prints_a_file_or_pipe_whole(
    rows: list[ReportRow], tmp_path: Path
) -> None:
    saved = tmp_path / "r.json"
    saved.write_text(dumps(json_document(rows, [], {})))
    environment = {name: value for name, value in os.environ.items() if name != "COLUMNS"}

    def report(*args: str, columns: str | None = None) -> list[str]:
        env = environment if columns is None else {**environment, "COLUMNS": columns}
        command = [sys.executable, "-m", "pytest_dualgpu", "report", str(saved), *args]
        done = subprocess.run(command, capture_output=True, text=True, env=env, check=False, timeout=120)
        assert done.returncode == 0, done.stderr
        return done.stdout.splitlines()

    narrow = report(columns="90")
    assert all(len(line) <= 90 for line in narrow)
    assert any("--format term-wide" in line for line in narrow)
    for whole in (report(), report("--format", "term-wide", columns="90")):
        assert all(name in whole[0] for name in EVERY_HEADER)
        assert not any("fitted" in line for line in whole)
