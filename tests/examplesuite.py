"""The example suite as CI runs it: the example workflows' own pytest commands, on a copy of examples/.

Running the suite takes a while, so one session-scoped run (conftest's ``example_run``) serves every test
that reads what it prints and writes.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = ROOT / "examples" / "ci"


@dataclass(frozen=True)
class ExampleRun:
    folder: Path
    completed: subprocess.CompletedProcess[str]


def workflow_commands() -> dict[str, tuple[str, str]]:
    """The pytest command of each example workflow, and the shell that sets up its baseline comparison."""
    import yaml

    github = yaml.safe_load((WORKFLOWS / "github-actions.yml").read_text())
    steps = github["jobs"]["concurrency"]["steps"]
    [pytest_step] = [step["run"] for step in steps if "pytest examples" in step.get("run", "")]
    [compare_step] = [step["run"] for step in steps if "DUALGPU_COMPARE" in step.get("run", "")]
    gitlab = yaml.safe_load((WORKFLOWS / "gitlab-ci.yml").read_text())["dualgpu"]
    [gitlab_pytest] = [line for line in gitlab["script"] if "pytest examples" in line]
    [gitlab_compare] = [line for line in gitlab["before_script"] if "DUALGPU_COMPARE" in line]
    return {"github": (pytest_step, compare_step), "gitlab": (gitlab_pytest, gitlab_compare)}


def copy_examples(folder: Path) -> None:
    shutil.copytree(
        ROOT / "examples", folder / "examples", ignore=shutil.ignore_patterns("ci", "__pycache__")
    )


def run_workflow(
    ci: str, folder: Path, extra_env: dict[str, str], extra_args: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    """The workflow's pytest command in ``folder`` on CPU: as on a GPU runner less the CUDA requirement,
    with a short budget, the summary file CI would give, and nothing of this session's dualgpu settings."""
    words = [word for word in shlex.split(workflow_commands()[ci][0]) if word != "--dualgpu-require-cuda"]
    assert words[:3] == ["python", "-m", "pytest"]
    env = {key: value for key, value in os.environ.items() if not key.startswith("DUALGPU_")}
    env.update(
        DUALGPU_BUDGET="0.1",
        DUALGPU_WARMUP="0.5",
        GITHUB_STEP_SUMMARY=str(folder / "summary.md"),
        **extra_env,
    )
    return subprocess.run(
        [sys.executable, *words[1:], "-p", "no:cacheprovider", *extra_args], cwd=folder, env=env,
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
