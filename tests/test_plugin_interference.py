"""``dualgpu_interference`` through real inner pytest sessions: pass, fail naming the lane, inconclusive,
bad arguments at collection, the same rows with and without xdist, and the report and JSON it leaves."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

SCHEMA = json.loads((Path(__file__).resolve().parents[1] / "docs" / "report-schema.json").read_text())
#: The test models, written into each inner session (its own directory, as a user's suite would have them).
MODELS = Path(__file__).with_name("models.py")

TESTS = """
import pytest
import torch
from models import SleepLane, turn_takers


@pytest.mark.dualgpu_interference(max_slowdown=1.5, device="cpu")
def test_sleeping_lanes_cost_nothing(dual_infer):
    dual_infer(SleepLane(0.003), SleepLane(0.003), torch.ones(2))


@pytest.mark.dualgpu_interference(max_slowdown=2.0, device="cpu")
def test_turn_takers(dual_infer):
    dual_infer(*turn_takers(), torch.ones(2))


@pytest.mark.dualgpu_interference(max_slowdown=2.0, lanes=["Slow"], device="cpu")
def test_only_the_slow_lane(dual_infer):
    dual_infer(*turn_takers(), torch.ones(2))


@pytest.mark.dualgpu_interference(max_slowdown=1.5, percentile=99, device="cpu")
def test_a_p99_from_few_calls(dual_infer):
    dual_infer(SleepLane(0.003), SleepLane(0.003), torch.ones(2), budget=0.1, max_budget=0.3)
"""

# Sleeping and turn-taking lanes: no OpenMP workers to settle.
OPTIONS = (
    "--dualgpu-budget=2",
    "--dualgpu-max-budget=4",
    "--dualgpu-warmup=0.3",
    "--dualgpu-settle=0",
    "-p",
    "no:randomly",
)


@pytest.mark.parametrize("workers", ["0", "2"])
def test_pass_fail_naming_the_lane_and_inconclusive(suite: pytest.Pytester, workers: str) -> None:
    suite.makepyfile(models=MODELS.read_text(), test_lanes=TESTS)
    result = suite.runpytest(
        *OPTIONS,
        "-n",
        workers,
        "--dualgpu-report",
        "--dualgpu-report=json:out.json",
        "--dualgpu-report=md:out.md",
    )
    result.assert_outcomes(passed=3, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*dualgpu_interference failed for 'Quick+Slow' (call 1 of 1): lane 'Quick' p50 * ms at once "
            "against * ms alone: *x * slower, above the bound 2.00x; hint: on the CPU the lanes share*",
            "*dualgpu_interference inconclusive for 'SleepLane+SleepLane-2'*calls give no interval at p99*",
        ]
    )
    document = json.loads((suite.path / "out.json").read_text())
    jsonschema.validate(document, SCHEMA)
    verdicts = {
        row["nodeid"].rpartition("::")[2]: row["verdicts"]["interference"] for row in document["results"]
    }
    assert verdicts == {
        "test_sleeping_lanes_cost_nothing": "pass",
        "test_turn_takers": "fail",
        "test_only_the_slow_lane": "pass",
        "test_a_p99_from_few_calls": "inconclusive",
    }
    turns = next(row for row in document["results"] if row["nodeid"].endswith("test_turn_takers"))
    quick = turns["lanes"][0]
    assert quick["slowdown"] > 3
    assert quick["latency"]["at_once"]["p50"] > quick["latency"]["alone"]["p50"]
    assert [decision["lane"] for decision in turns["decisions"]] == ["Quick", "Slow"]
    assert "slowdown" in result.stdout.str()  # the table's column
    markdown = (suite.path / "out.md").read_text()
    assert "Per-lane latency (ms), alone and at once" in markdown
    assert "interference FAIL" in markdown


def test_bad_interference_arguments_fail_the_collection_of_that_test(suite: pytest.Pytester) -> None:
    suite.makepyfile(
        """
        import pytest

        @pytest.mark.dualgpu_interference(max_slowdown=2, percentile=95)
        def test_bad(dual_infer):
            pass
        """
    )
    result = suite.runpytest()
    result.stdout.fnmatch_lines(
        ["*dualgpu_interference: percentile must be one of 50, 90, 99 (the latencies measured), got 95*"]
    )
    assert result.ret != 0


def test_the_marker_is_registered(suite: pytest.Pytester) -> None:
    result = suite.runpytest("--markers")
    result.stdout.fnmatch_lines(
        ["@pytest.mark.dualgpu_interference(max_slowdown=None, percentile=50, lanes=None, device='cuda'): *"]
    )
