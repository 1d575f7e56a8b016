"""Which GPU each test process gets under ``--dualgpu-devices``.

The choice is made through ``CUDA_VISIBLE_DEVICES``, which the CUDA driver reads once, when the first
thing in the process touches CUDA (often a conftest's ``torch.cuda.is_available()``). So it is made
before conftests load, and this module does not import torch. The xdist controller picks the GPUs and
hands the list to its workers in an environment variable they inherit; each worker takes its own.
"""

from __future__ import annotations

import glob
import os
import re
import subprocess
import sys
from collections.abc import Callable, Sequence
from typing import Literal

from pytest_dualgpu.errors import DualGpuUsageError

WORKER_GPUS = "PYTEST_DUALGPU_WORKER_GPUS"
#: Device files a Linux machine has for any GPU torch can use: NVIDIA's (/dev/nvidia0, ...), AMD's under
#: ROCm (/dev/kfd), WSL2's (/dev/dxg), NVIDIA Jetson's (/dev/nvhost-ctrl-gpu).
GPU_DEVICE_FILES = ("/dev/nvidia[0-9]*", "/dev/kfd", "/dev/dxg", "/dev/nvhost-ctrl-gpu")


def no_gpu_here(device_files: Sequence[str] = GPU_DEVICE_FILES) -> bool:
    """Whether this is a Linux machine without any GPU device file: torch would count no GPU, and an xdist
    controller need not import it (two seconds) to learn that."""
    return sys.platform.startswith("linux") and not any(glob.glob(pattern) for pattern in device_files)


def visible_entries(listed: str) -> list[str]:
    """The entries of a ``CUDA_VISIBLE_DEVICES`` value (indices, UUIDs or MIG ids)."""
    return [entry.strip() for entry in listed.split(",") if entry.strip()]


def chosen_entries(visible: Sequence[str], chosen: tuple[int, ...] | Literal["auto"]) -> list[str]:
    """The ``CUDA_VISIBLE_DEVICES`` entries to hand out, in order: every visible one, or the chosen ones."""
    if chosen == "auto":
        return list(visible)
    if not visible:
        raise DualGpuUsageError("--dualgpu-devices: no CUDA device is visible to hand out")
    beyond = [index for index in chosen if index >= len(visible)]
    if beyond:
        raise DualGpuUsageError(
            f"--dualgpu-devices: GPU index {beyond[0]} is out of range; {len(visible)} GPU(s) are visible "
            f"({', '.join(visible)}), so indices go from 0 to {len(visible) - 1}"
        )
    return [visible[index] for index in chosen]


def worker_number(worker_id: str) -> int:
    """``gw3`` -> 3; other ids (custom ``--tx`` names) count as worker 0."""
    match = re.fullmatch(r"gw(\d+)", worker_id)
    return int(match.group(1)) if match else 0


def assign(
    chosen: tuple[int, ...] | Literal["auto"] | None,
    *,
    distributing: bool,
    count_gpus: Callable[[], int],
) -> str | None:
    """Set this process's ``CUDA_VISIBLE_DEVICES``; returns the value set, or None when left alone.

    ``distributing``: this process is an xdist controller; it exports the GPUs for its workers and keeps
    its own environment. ``count_gpus`` is only called there, and only when ``CUDA_VISIBLE_DEVICES`` is
    unset.
    """
    if chosen is None:
        return None
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    worker_gpus = os.environ.get(WORKER_GPUS)
    worker_id = os.environ.get("PYTEST_XDIST_WORKER")
    if worker_id is not None and worker_gpus is not None:
        entries = visible_entries(worker_gpus)
        return _set(entries[worker_number(worker_id) % len(entries)]) if entries else None
    if distributing:
        visible = visible_entries(listed) if listed is not None else [str(i) for i in range(count_gpus())]
        entries = chosen_entries(visible, chosen)
        if entries:
            os.environ[WORKER_GPUS] = ",".join(entries)
        return None
    if chosen == "auto":
        return None  # one process, every GPU visible: cuda:0 is the first, as without the option
    if listed is None:
        return _set(str(chosen[0]))  # checked at first use: counting here could start CUDA
    return _set(chosen_entries(visible_entries(listed), chosen)[0])


def _set(entry: str) -> str:
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        raise DualGpuUsageError(
            "--dualgpu-devices came too late: CUDA was already initialized in this process, so "
            "CUDA_VISIBLE_DEVICES can no longer choose the GPU"
        )
    os.environ["CUDA_VISIBLE_DEVICES"] = entry
    return entry


def nvidia_smi(*fields: str) -> list[list[str]]:
    """One row per GPU from ``nvidia-smi --query-gpu``; empty when there is no nvidia-smi or it fails.

    It describes the GPUs without starting CUDA in this process, which an xdist controller must not do:
    a context there holds memory all session, and on an exclusive-process GPU it locks the workers out.
    """
    return smi_rows(f"--query-gpu={','.join(fields)}", "--format=csv,noheader")


def smi_rows(*arguments: str) -> list[list[str]]:
    """The CSV rows nvidia-smi prints for ``arguments``; empty when there is none or it fails."""
    try:
        completed = subprocess.run(
            ["nvidia-smi", *arguments], capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return []
    return [[cell.strip() for cell in line.split(",")] for line in completed.stdout.strip().splitlines()]


def known(text: str) -> str | None:
    """An nvidia-smi cell, or None where it says it does not know ("[N/A]", "N/A", "[Not Supported]")."""
    return None if not text or text.startswith("[") or text == "N/A" else text


def gpu_inventory() -> str:
    """The GPUs of the machine in one line, e.g. ``0: NVIDIA H100 80GB HBM3 (compute 9.0, driver 550.54)``."""
    rows = nvidia_smi("index", "name", "compute_cap", "driver_version")
    return "; ".join(
        f"{index}: {name} (compute {compute}, driver {driver})" for index, name, compute, driver in rows
    )
