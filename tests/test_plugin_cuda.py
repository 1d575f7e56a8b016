"""The plugin on a GPU machine only (``pytest -m cuda``): the header, markers judged on CUDA, GPU choice."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pytest_dualgpu.machine import machine_info

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

ROOT = Path(__file__).resolve().parents[1]

KERNEL_SLEEP = """
import torch

class KernelSleep(torch.nn.Module):
    def forward(self, x):
        torch.cuda._sleep(2_000_000)
        return x * 2

class Wide(torch.nn.Module):
    def forward(self, x):
        return (x @ x.T).relu()
"""


def test_header_machine_and_markers_on_cuda(suite: pytest.Pytester) -> None:
    suite.makepyfile(gpu_models=KERNEL_SLEEP)
    suite.makepyfile(
        """
        import pytest
        import torch
        from gpu_models import KernelSleep, Wide

        @pytest.mark.dualgpu_cuda
        @pytest.mark.dualgpu_correct
        @pytest.mark.dualgpu_speedup(min=1.5, min_efficiency=0.5)
        @pytest.mark.dualgpu_memory(max_ratio=10)
        def test_sleeping_kernels(dual_infer, dualgpu_device):
            assert dualgpu_device.type == "cuda"
            dual_infer(KernelSleep(), KernelSleep(), torch.ones(4, device="cuda"))

        @pytest.mark.dualgpu_memory(max_bytes=1024)
        def test_too_much_memory(dual_infer):
            dual_infer(Wide(), Wide(), torch.randn(2048, 2048, device="cuda"))
        """
    )
    result = suite.runpytest_subprocess(
        "--dualgpu-budget=0.3", "--dualgpu-require-cuda", "--dualgpu-report", "--dualgpu-report=json:r.json"
    )
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "dualgpu: device cuda:0 (*, compute capability *), torch *, CUDA *; mode auto*",
            "*dualgpu_memory failed for 'Wide+Wide-2' (call 1 of 1): peak above the bound 1.0 KiB: "
            "concurrent peak * MiB*",
        ]
    )
    rows = {
        row["nodeid"].split("::")[1]: row
        for row in json.loads((suite.path / "r.json").read_text())["results"]
    }
    assert rows["test_sleeping_kernels"]["verdicts"] == {
        "correct": "pass",
        "sync": None,
        "speedup": "pass",
        "memory": "pass",
        "interference": None,
    }
    assert rows["test_too_much_memory"]["memory"]["concurrent"] > 1024


def test_a_chosen_gpu_is_the_only_one_the_process_sees(suite: pytest.Pytester) -> None:
    last = torch.cuda.device_count() - 1
    suite.makepyfile(
        f"""
        import os
        import torch

        def test_gpu(dualgpu_device):
            assert os.environ["CUDA_VISIBLE_DEVICES"] == "{last}"
            assert torch.cuda.device_count() == 1
            assert dualgpu_device == torch.device("cuda", 0)
        """
    )
    suite.runpytest_subprocess(f"--dualgpu-devices={last}").assert_outcomes(passed=1)


def test_machine_names_the_gpus() -> None:
    machine = machine_info()
    assert machine["gpus"][0]["name"] == torch.cuda.get_device_name(0)
    assert machine["gpus"][0]["uuid"].startswith(("GPU-", "MIG-"))
    assert machine["gpus"][0]["memory_bytes"] > 2**30
    assert machine["cuda"] == torch.version.cuda
    assert machine["cudnn"] == torch.backends.cudnn.version()
    assert machine["driver"]


def test_the_example_suite_passes_on_the_gpu(tmp_path: Path) -> None:
    report = tmp_path / "examples.json"
    completed = subprocess.run(
        [sys.executable, "-m", "pytest", "examples", "-p", "no:cacheprovider", "--dualgpu-require-cuda",
         "--dualgpu-report", f"--dualgpu-report=json:{report}"],
        cwd=ROOT, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    print(completed.stdout)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "7 passed" in completed.stdout
    assert "skipped" not in completed.stdout  # the CUDA example runs too
    verdicts = [row["verdicts"]["speedup"] for row in json.loads(report.read_text())["results"]]
    assert "not judged (cpu)" not in verdicts


def test_the_dualgpu_demo_runs_on_the_gpu(tmp_path: Path) -> None:
    report = tmp_path / "demo.json"
    completed = subprocess.run(
        [str(Path(sys.executable).with_name("dualgpu")), "demo", "--budget", "0.2", "--json", str(report)],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    print(completed.stdout)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    rows = json.loads(report.read_text())["results"]
    assert all(row["device"].startswith("cuda") for row in rows)
    assert len(rows) == 6 + 3, "the matrix of three models, then the best pair in every CUDA mode"
    assert [row["requested_mode"] for row in rows[-3:]] == ["streams", "threads", "graphs"]
    assert "== profile of the best pair" in completed.stdout
