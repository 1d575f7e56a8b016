"""The machine description every JSON report carries."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import torch

from pytest_dualgpu.machine import CONCURRENCY_ENV, machine_info

# What `nvidia-smi --query-gpu=... --format=csv,noheader` prints on a two-GPU machine, one with MIG on.
GPUS = [
    (0, "NVIDIA H100 80GB HBM3", "11111111-2222-3333-4444-555555555555", "Disabled", "Default"),
    (1, "NVIDIA H100 80GB HBM3", "66666666-7777-8888-9999-000000000000", "Enabled", "Exclusive_Process"),
]


def fake_nvidia_smi(directory: Path, monkeypatch: pytest.MonkeyPatch, gpus: list[tuple[object, ...]]) -> None:
    """An nvidia-smi on PATH that answers like the real one (this machine has none). An old driver
    (OLD_DRIVER set) rejects the compute_cap field, as drivers before 510 do."""
    with_cap = "".join(
        f"{i}, {name}, GPU-{uuid}, 9.0, 81559 MiB, 550.54.15, {mig}, {mode}\n"
        for i, name, uuid, mig, mode in gpus
    )
    without = "".join(
        f"{i}, {name}, GPU-{uuid}, 81559 MiB, 470.1, {mig}, {mode}\n" for i, name, uuid, mig, mode in gpus
    )
    script = directory / "nvidia-smi"
    script.write_text(
        "#!/bin/sh\n"
        'case "$1" in *compute_cap*) [ -n "$OLD_DRIVER" ] && exit 2; cat <<\'EOF\'\n'
        f"{with_cap}EOF\n;; *) cat <<'EOF'\n{without}EOF\n;; esac\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{directory}{os.pathsep}{os.environ['PATH']}")


@pytest.fixture
def two_gpu_nvidia_smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUDA_DEVICE_ORDER", raising=False)
    fake_nvidia_smi(tmp_path, monkeypatch, GPUS)


def test_versions_cpu_and_the_environment_that_changes_concurrency(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("CUDA_MPS_PIPE_DIRECTORY", str(tmp_path))  # not the host's: it may run MPS
    monkeypatch.setenv("CUDA_DEVICE_MAX_CONNECTIONS", "1")
    monkeypatch.delenv("PYTORCH_CUDA_ALLOC_CONF", raising=False)
    machine = machine_info()
    assert machine["torch"] == torch.__version__
    assert machine["cuda"] == torch.version.cuda
    assert machine["cpu"]["cores"] == os.cpu_count()
    assert machine["cpu"]["model"]
    assert set(machine["env"]) == set(CONCURRENCY_ENV)
    assert machine["env"]["CUDA_DEVICE_MAX_CONNECTIONS"] == "1"
    assert machine["env"]["PYTORCH_CUDA_ALLOC_CONF"] is None
    assert machine["mps"]["daemon"] is False


def test_gpus_come_from_nvidia_smi_with_mig_mode_and_visibility(
    two_gpu_nvidia_smi: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-66666666-7777-8888-9999-000000000000")
    machine = machine_info()
    first, second = machine["gpus"]
    assert first == {
        "index": 0,
        "name": "NVIDIA H100 80GB HBM3",
        "uuid": "GPU-11111111-2222-3333-4444-555555555555",
        "compute_capability": "9.0",
        "memory_bytes": 81559 * 2**20,
        "driver": "550.54.15",
        "mig": "Disabled",
        "compute_mode": "Default",
        "visible": False,
    }
    assert (second["mig"], second["compute_mode"], second["visible"]) == (
        "Enabled",
        "Exclusive_Process",
        True,
    )
    assert machine["driver"] == "550.54.15"


def test_every_gpu_is_visible_without_cuda_visible_devices(
    two_gpu_nvidia_smi: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert [gpu["visible"] for gpu in machine_info()["gpus"]] == [True, True]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    assert [gpu["visible"] for gpu in machine_info()["gpus"]] == [False, True]


def test_an_mps_daemon_is_seen_by_its_control_pipe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_MPS_PIPE_DIRECTORY", str(tmp_path))
    assert machine_info()["mps"] == {"pipe_directory": str(tmp_path), "daemon": False}
    os.mkfifo(tmp_path / "control")
    assert machine_info()["mps"]["daemon"] is True


def test_an_old_driver_without_compute_cap_still_lists_the_gpus(
    two_gpu_nvidia_smi: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OLD_DRIVER", "1")
    gpus = machine_info()["gpus"]
    assert [(gpu["name"], gpu["compute_capability"], gpu["driver"]) for gpu in gpus] == [
        ("NVIDIA H100 80GB HBM3", None, "470.1")
    ] * 2


def test_indices_on_mixed_gpus_are_only_trusted_in_bus_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mixed = [GPUS[0], (1, "NVIDIA A100-SXM4-40GB", *GPUS[1][2:])]
    fake_nvidia_smi(tmp_path, monkeypatch, mixed)
    monkeypatch.delenv("CUDA_DEVICE_ORDER", raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    assert [gpu["visible"] for gpu in machine_info()["gpus"]] == [None, None]
    monkeypatch.setenv("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    assert [gpu["visible"] for gpu in machine_info()["gpus"]] == [False, True]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-1111")  # a UUID prefix is certain in any order
    assert [gpu["visible"] for gpu in machine_info()["gpus"]] == [True, False]


def test_the_measuring_lock_is_found_by_every_process_whatever_its_tmpdir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tempfile

    from pytest_dualgpu.engine.devices import lock_path

    monkeypatch.setenv("TMPDIR", str(tmp_path))  # a per-process TMPDIR, as CI runners and sandboxes set
    monkeypatch.setattr(tempfile, "tempdir", None)
    monkeypatch.delenv("DUALGPU_LOCK_DIR", raising=False)
    assert lock_path(torch.device("cpu")) == "/tmp/pytest-dualgpu-cpu.lock"
    monkeypatch.setenv("DUALGPU_LOCK_DIR", str(tmp_path / "locks"))
    assert lock_path(torch.device("cpu")) == str(tmp_path / "locks" / "pytest-dualgpu-cpu.lock")
