"""``dualgpu doctor`` end to end, on this machine and on stand-in GPUs."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from command import Ran, console_script, dualgpu, without_columns
from fakesmi import H100, install

from pytest_dualgpu.envsettings import SETTINGS

ROOT = Path(__file__).resolve().parents[1]
DOCTOR_SCHEMA = json.loads((ROOT / "docs" / "doctor-schema.json").read_text())
REPORT_SCHEMA = json.loads((ROOT / "docs" / "report-schema.json").read_text())


def doctor(*args: str, env: dict[str, str] | None = None) -> Ran:
    """The command in a clean environment: no watched setting leaks in from the machine running the tests.
    Run by ``main`` in this process: a healthy machine's check runs it once through the console script."""
    return dualgpu("doctor", *args, env=_clean(env))


def _clean(env: dict[str, str] | None) -> dict[str, str]:
    return {
        **{name: value for name, value in without_columns().items() if name not in SETTINGS},
        **(env or {}),
    }


def checks(path: Path) -> dict[str, dict[str, Any]]:
    document = json.loads(path.read_text())
    jsonschema.validate(document, DOCTOR_SCHEMA)
    machine_schema = {"$defs": REPORT_SCHEMA["$defs"], **REPORT_SCHEMA["$defs"]["machine"]}
    jsonschema.validate(document["machine"], machine_schema)
    return {check["name"]: check for check in document["checks"]}


def test_a_healthy_cpu_machine_passes_with_its_self_test(tmp_path: Path) -> None:
    done = console_script(
        "doctor", "--device", "cpu", "--json", str(tmp_path / "doctor.json"), env=_clean(None)
    )
    assert done.returncode == 0, done.stdout + done.stderr
    found = checks(tmp_path / "doctor.json")
    assert found["build"]["status"] == "pass"
    assert "torch" in found["build"]["detail"]
    assert found["device"]["status"] == "pass"
    assert found["settings"]["detail"] == f"none of the {len(SETTINGS)} watched variables is set"
    assert found["self-test: threads overlap"]["status"] == "pass"
    assert found["self-test: intra-op thread split"]["status"] == "pass"
    assert "nothing failed: lanes can overlap on this machine" in done.stdout


def test_every_setting_is_named_when_set_and_cuda_ones_fail_nothing_on_cpu(tmp_path: Path) -> None:
    settings = {
        "CUDA_LAUNCH_BLOCKING": "1",
        "CUDA_DEVICE_MAX_CONNECTIONS": "1",
        "TORCH_CUDA_SANITIZER": "1",
        "PYTORCH_NO_CUDA_MEMORY_CACHING": "1",
        "CUBLAS_WORKSPACE_CONFIG": ":4096:8",
        "OMP_NUM_THREADS": "64",
        "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": "25",
    }
    done = doctor("--device", "cpu", "--no-self-test", "--json", str(tmp_path / "d.json"), env=settings)
    found = checks(tmp_path / "d.json")
    for name, value in settings.items():
        assert f"{name}={value}" in found[f"setting {name}"]["detail"]
        assert found[f"setting {name}"]["fix"]
    blocking = found["setting CUDA_LAUNCH_BLOCKING"]
    assert blocking["status"] == "warn"
    assert "(a fail on cuda; this check ran on cpu)" in blocking["detail"]
    assert "one hardware work queue" in found["setting CUDA_DEVICE_MAX_CONNECTIONS"]["detail"]
    assert "64 threads on" in found["setting OMP_NUM_THREADS"]["detail"]
    assert done.returncode == 0, done.stdout  # warnings only: nothing here stops CPU lanes


def test_the_same_settings_fail_the_checks_of_a_gpu(tmp_path: Path) -> None:
    done = doctor("--device", "cpu", "--no-self-test", "--json", str(tmp_path / "d.json"))
    assert done.returncode == 0
    from pytest_dualgpu.envsettings import findings
    from pytest_dualgpu.stats import FAIL

    found = {
        finding.name: finding
        for finding in findings({"CUDA_LAUNCH_BLOCKING": "1", "CUDA_VISIBLE_DEVICES": ""})
    }
    assert found["CUDA_LAUNCH_BLOCKING"].status == FAIL
    assert found["CUDA_VISIBLE_DEVICES"].status == FAIL
    assert {finding.status for finding in findings({"CUDA_DEVICE_MAX_CONNECTIONS": "8"})} == {"pass"}
    assert [f.status for f in findings({"CUDA_DEVICE_MAX_CONNECTIONS": "2"})] == ["warn"]
    assert [f.status for f in findings({"CUDA_LAUNCH_BLOCKING": "0"})] == ["pass"]


def test_a_stand_in_gpu_with_mps_mig_other_processes_and_throttling(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mps = tmp_path / "mps"
    mps.mkdir()
    (mps / "control").write_text("")
    gpus = [
        {**H100, "mig.mode.current": "Enabled", "persistence_mode": "Disabled"},
        {
            **H100,
            "index": 1,
            "uuid": "GPU-66666666-7777-8888-9999-000000000000",
            "compute_mode": "Exclusive_Process",
            "clocks.sm": "990 MHz",
            "temperature.gpu": "91",
            "clocks_throttle_reasons.active": "0x0000000000000048",  # hw slowdown, hw thermal
        },
    ]
    apps = [
        {"gpu_uuid": H100["uuid"], "pid": 4242, "process_name": "python train.py", "used_memory": "30000 MiB"}
    ]
    install(tmp_path, monkeypatch, gpus, apps)
    done = doctor("--device", "cpu", "--no-self-test", "--json", str(tmp_path / "d.json"),
                  env={"CUDA_MPS_PIPE_DIRECTORY": str(mps), "PATH": os.environ["PATH"],
                       "FAKE_NVIDIA_SMI": os.environ["FAKE_NVIDIA_SMI"]})  # fmt: skip
    found = checks(tmp_path / "d.json")
    assert found["MPS"]["status"] == "warn"
    assert str(mps) in found["MPS"]["detail"]
    assert found["GPU 0 MIG"]["status"] == "warn"
    assert found["GPU 0 persistence"]["fix"] == "sudo nvidia-smi -pm 1"
    others = found["GPU 0 other processes"]
    assert others["status"] == "warn"
    assert "pid 4242 python train.py (29.3 GiB)" in others["detail"]
    assert found["GPU 0 clocks"]["status"] == "pass"
    assert "SM clock 1980 of 1980 MHz, 41 C, 118 W (via nvidia-smi)" in found["GPU 0 clocks"]["detail"]
    assert "Exclusive_Process" in found["GPU 1 compute mode"]["detail"]
    throttled = found["GPU 1 clocks"]
    assert throttled["status"] == "fail"
    assert "throttled: hw_slowdown, hw_thermal_slowdown" in throttled["detail"]
    assert found["NVML"]["status"] == "warn"  # nvidia-ml-py is not installed here
    assert "pytest-dualgpu[gpu]" in found["NVML"]["fix"]
    assert done.returncode == 1, done.stdout
    assert "some check failed" in done.stdout


def test_cuda_asked_for_on_a_cpu_build_fails_clearly(tmp_path: Path) -> None:
    done = doctor("--device", "cuda", "--json", str(tmp_path / "d.json"))
    assert done.returncode == 1
    found = checks(tmp_path / "d.json")
    assert found["device"]["status"] == "fail"
    assert "CUDA is not available" in found["device"]["detail"]
    assert found["self-test"]["status"] == "skip"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--device",), "expected one argument"),
        (("--bogus",), "unrecognized arguments"),
        (("--json", "."), "directory"),
    ],
)
def test_bad_usage_exits_2(args: tuple[str, ...], message: str) -> None:
    done = doctor("--no-self-test", *args)
    assert done.returncode == 2
    assert message in done.stderr


def test_graphs_need_a_torch_that_can_end_a_failed_capture(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from pytest_dualgpu.engine.backends import graphs_unsupported

    monkeypatch.setattr(torch, "__version__", "2.7.1+cu126")
    reason = graphs_unsupported()
    assert reason is not None
    assert "mode 'graphs' needs torch >= 2.8 (this is 2.7.1+cu126)" in reason
    assert "use 'threads'" in reason
    monkeypatch.setattr(torch, "__version__", "2.13.0")
    assert graphs_unsupported() is None
