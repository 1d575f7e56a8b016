"""Reports where people and CI look: the JSON schema, JUnit XML, pytest-html, PNG plots, CI workflows."""

from __future__ import annotations

import copy
import json
import os
import shlex
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from examplesuite import ExampleRun, copy_examples, run_workflow, workflow_commands
from quick import QUICK_ARGS

from pytest_dualgpu.engine.profiling import all_threads_config
from pytest_dualgpu.plugin.options import parse_thresholds
from pytest_dualgpu.reports.traces import result_file_stem

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = json.loads((ROOT / "docs" / "report-schema.json").read_text())

EVERYTHING = """
import pytest
import torch
from torch import nn
from inner_models import Drifting, Raising, Sleep

@pytest.mark.dualgpu_correct
@pytest.mark.dualgpu_sync(trials=2)
def test_linear_pair(dual_infer):
    dual_infer(nn.Linear(64, 64), nn.Linear(64, 64), torch.randn(32, 64), profile=True)

# A sleeping lane beside one that takes no time: nothing to gain, so min=2.5 fails. A GIL-holding lane here
# was now and then judged impossible under QUICK (no settling), and an unreliable result passes no verdict.
@pytest.mark.dualgpu_speedup(min=2.5, device="cpu")
def test_wrong_and_slow(dual_infer):
    dual_infer(Drifting(), Sleep(), torch.ones(2))

def test_pipeline(dual_infer):
    dual_infer.pipeline(nn.Linear(8, 8), nn.Linear(8, 8), torch.randn(8, 8), micro_batches=2)

def test_raises(dual_infer):
    dual_infer(Raising(), Sleep(), torch.ones(2))
"""


def validator(definition: str | None = None) -> jsonschema.protocols.Validator:
    schema = SCHEMA if definition is None else {"$ref": f"#/$defs/{definition}", "$defs": SCHEMA["$defs"]}
    return jsonschema.Draft202012Validator(schema)


def test_the_schema_is_valid_json_schema() -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)


@pytest.mark.skipif(all_threads_config() is None, reason="this torch's profiler cannot see lane threads")
def test_real_reports_follow_the_schema_and_broken_ones_do_not(suite: pytest.Pytester) -> None:
    suite.makepyfile(test_all=EVERYTHING)
    suite.runpytest(*QUICK_ARGS, "--dualgpu-save=base.json").assert_outcomes(passed=2, failed=2)
    compared = suite.runpytest(
        *QUICK_ARGS, "--dualgpu-compare=base.json", "--dualgpu-compare-fail=speedup:50%",
        "--dualgpu-compare-fail=memory:10%", "--dualgpu-report=json:new.json",
    )  # fmt: skip
    compared.assert_outcomes(passed=2, failed=2)
    for name in ("base.json", "new.json"):
        document = json.loads((suite.path / name).read_text())
        errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator().iter_errors(document)]
        assert errors == [], f"{name} breaks docs/report-schema.json"
    document = json.loads((suite.path / "new.json").read_text())
    assert "comparison" in document
    assert {row["nodeid"].split("::")[1] for row in document["results"]} == {
        "test_linear_pair", "test_wrong_and_slow", "test_pipeline"
    }  # fmt: skip
    assert document["errors"][0]["nodeid"].endswith("test_raises")
    profiled = next(row for row in document["results"] if row["nodeid"].endswith("test_linear_pair"))
    assert profiled["kernel_overlap"] is not None
    assert "kernels" in profiled["timelines"]

    broken = copy.deepcopy(document)
    del broken["machine"]["env"]
    broken["results"][0]["overlap"] = 1.5
    broken["results"][0]["verdicts"]["speedup"] = "maybe"
    problems = {e.message for e in validator().iter_errors(broken)}
    assert any("'env' is a required property" in problem for problem in problems)
    assert any("1.5 is greater than the maximum of 1" in problem for problem in problems)
    assert len(problems) >= 3


def test_junit_properties_are_result_rows_of_the_schema(suite: pytest.Pytester) -> None:
    suite.makepyfile(test_all=EVERYTHING)
    suite.runpytest(*QUICK_ARGS, "--junitxml=junit.xml", "-k", "pipeline or raises")
    cases = {case.get("name"): case for case in ET.parse(suite.path / "junit.xml").iter("testcase")}
    [row] = [json.loads(p.get("value", "")) for p in cases["test_pipeline"].iter("property")]
    assert list(validator("result").iter_errors(row)) == []
    [(name, value)] = [(p.get("name"), p.get("value", "")) for p in cases["test_raises"].iter("property")]
    assert name == "dualgpu_error"
    assert list(validator("callError").iter_errors(json.loads(value))) == []


@pytest.mark.parametrize("workers", ["0", "2"])
def test_pytest_html_shows_each_tests_rows_and_links_its_traces(suite: pytest.Pytester, workers: str) -> None:
    suite.makepyfile(
        test_pair="""
        import torch
        from inner_models import Sleep

        def test_pair(dual_infer):
            dual_infer(Sleep(), Sleep(), torch.ones(2), name="sleepers")

        def test_plain():
            pass
        """
    )
    result = suite.runpytest(
        *QUICK_ARGS, "-n", workers, "--html=html/report.html", "--dualgpu-report=trace:traces"
    )
    result.assert_outcomes(passed=2)
    page = (suite.path / "html" / "report.html").read_text()
    link = f"../traces/{result_file_stem('test_pair.py::test_pair', 1)}.trace.json"
    assert link in page
    assert (suite.path / "html" / link).resolve().is_file(), "the link leads to the trace"
    assert "dualgpu trace: sleepers" in page
    assert "Sleep + Sleep-2" in page, "the row's table is in the test's extras"


def test_png_plots_per_result_and_for_the_session(suite: pytest.Pytester) -> None:
    from PIL import Image

    suite.makepyfile(test_all=EVERYTHING)
    suite.runpytest(*QUICK_ARGS, "--dualgpu-report=png:plots", "-k", "not raises").assert_outcomes(
        passed=2, failed=1
    )
    names = sorted(path.name for path in (suite.path / "plots").iterdir())
    assert len(names) == 4
    assert "session.png" in names
    with Image.open(suite.path / "plots" / "session.png") as session:
        assert session.format == "PNG"
        assert session.width == 1000
        assert session.height > 150
    stem = result_file_stem("test_all.py::test_linear_pair", 1)
    with Image.open(suite.path / "plots" / f"{stem}.png") as timeline:
        assert timeline.format == "PNG"
        assert timeline.size[0] == 1000


def test_png_without_matplotlib_is_a_usage_error_before_anything_runs(suite: pytest.Pytester) -> None:
    suite.makeconftest("import sys\nsys.modules['matplotlib'] = None  # as if it were not installed\n")
    suite.makepyfile(test_all=EVERYTHING)
    result = suite.runpytest_subprocess(*QUICK_ARGS, "--dualgpu-report=png:plots", "-k", "pipeline")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "passed" not in result.stdout.str()
    result.stderr.fnmatch_lines(
        ["*dualgpu: png reports need matplotlib: pip install 'pytest-dualgpu[[]plot]'"]
    )
    assert not (suite.path / "plots").exists()


def test_the_workflows_are_wellformed_and_upload_what_they_make() -> None:
    github = yaml.safe_load((ROOT / "examples" / "ci" / "github-actions.yml").read_text())
    assert set(github[True]) == {"push", "pull_request"}  # YAML 1.1 reads the key `on` as True
    uploads = [
        s for s in github["jobs"]["concurrency"]["steps"] if s.get("uses", "").startswith("actions/upload")
    ]
    assert uploads[0]["if"] == "always()"
    assert "dualgpu.json" in uploads[0]["with"]["path"]
    gitlab = yaml.safe_load((ROOT / "examples" / "ci" / "gitlab-ci.yml").read_text())["dualgpu"]
    assert gitlab["artifacts"]["reports"]["junit"] == "junit.xml"
    for command, _ in workflow_commands().values():
        words = shlex.split(command)
        assert "--dualgpu-require-cuda" in words
        assert "--dualgpu-devices=auto" in words
        assert "--dualgpu-save=dualgpu.json" in words


def test_the_workflow_commands_run_on_cpu_and_the_second_compares_with_the_first(
    example_run: ExampleRun, tmp_path: Path
) -> None:
    """GitHub's command on the default branch saved the baseline (the session's one run of the example
    suite); GitLab's on a feature branch compares with it, here over the tests of one example file. Both
    baseline steps run as the workflows have them."""

    def check_outputs(
        folder: Path, completed: subprocess.CompletedProcess[str], rows: int, summary: str
    ) -> dict[str, Any]:
        assert completed.returncode == 0, completed.stdout + completed.stderr
        saved: dict[str, Any] = json.loads((folder / "dualgpu.json").read_text())
        assert len(saved["results"]) == rows
        assert len(list((folder / "dualgpu-traces").iterdir())) == rows
        assert "| test" in (folder / summary).read_text()
        assert [p.get("name") for p in ET.parse(folder / "junit.xml").iter("property")].count(
            "dualgpu"
        ) == rows
        return saved

    assert "6 passed, 1 skipped" in example_run.completed.stdout
    check_outputs(example_run.folder, example_run.completed, rows=6, summary="summary.md")
    copy_examples(tmp_path)
    (tmp_path / "baseline").mkdir()
    shutil.copy(example_run.folder / "dualgpu.json", tmp_path / "baseline" / "dualgpu.json")
    commands = workflow_commands()
    for ci, (_, compare_shell) in commands.items():
        compare_env = _environment_after(compare_shell, tmp_path, ci)
        assert compare_env["DUALGPU_COMPARE"] == "baseline/dualgpu.json"
        thresholds = parse_thresholds(compare_env["DUALGPU_COMPARE_FAIL"])  # the workflow's own, as shipped
        assert [threshold.metric for threshold in thresholds] == ["speedup", "efficiency"]
    # The workflow's own thresholds are meant for a quiet GPU; on a shared CPU the gate is only exercised.
    compared = run_workflow(
        "gitlab", tmp_path, {**compare_env, "DUALGPU_COMPARE_FAIL": "speedup:95%"}, ("-k", "two_linear")
    )
    assert "2 passed" in compared.stdout
    saved = check_outputs(tmp_path, compared, rows=2, summary="dualgpu.md")
    assert saved["comparison"]["path"] == "baseline/dualgpu.json"
    assert all(row["baseline"]["found"] for row in saved["results"])


def _environment_after(shell: str, cwd: Path, ci: str) -> dict[str, str]:
    """What the workflow's baseline step leaves in the environment of the next command."""
    if ci == "github":
        github_env = cwd / "github_env"
        github_env.write_text("")
        subprocess.run(
            ["bash", "-c", shell], cwd=cwd, env={**os.environ, "GITHUB_ENV": str(github_env)}, check=True
        )
        pairs = [line.split("=", 1) for line in github_env.read_text().splitlines()]
        return {key: value for key, value in pairs}
    printed = subprocess.run(
        ["bash", "-c", f"{shell}\nenv -0"], cwd=cwd, env={**os.environ, "CI_COMMIT_BRANCH": "feature",
        "CI_DEFAULT_BRANCH": "main"}, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    found = dict(entry.split("=", 1) for entry in printed.split("\0") if "=" in entry)
    return {key: value for key, value in found.items() if key.startswith("DUALGPU_")}
