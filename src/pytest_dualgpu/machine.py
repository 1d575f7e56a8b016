"""What a report says about the machine its results were measured on.

A baseline measured on another GPU, driver or torch says little about this run, so the JSON report
carries enough to tell (and the regression gate warns on a mismatch). GPU facts come from nvidia-smi,
which does not start CUDA: the writer is the xdist controller, which must not hold a CUDA context. Only
where nvidia-smi is missing and this process uses CUDA anyway do they come from torch.
"""

from __future__ import annotations

import os
import platform
import sys
from functools import cache
from typing import Any

from pytest_dualgpu.envsettings import SETTINGS
from pytest_dualgpu.gpus import known, nvidia_smi, visible_entries

#: Environment variables that change how lanes overlap, or whether results repeat.
CONCURRENCY_ENV = tuple(SETTINGS)
GPU_FIELDS = (
    "index",
    "name",
    "uuid",
    "compute_cap",
    "memory.total",
    "driver_version",
    "mig.mode.current",
    "compute_mode",
)
DEFAULT_MPS_PIPE_DIRECTORY = "/tmp/nvidia-mps"


def machine_info() -> dict[str, Any]:
    """The machine, as the JSON report's ``machine`` object (``docs/report-schema.json``)."""
    import torch

    gpus = _gpus_from_nvidia_smi() or _gpus_from_torch()
    return {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": _cudnn_version(),
        "cpu": {"model": cpu_model(), "cores": os.cpu_count()},
        "gpus": gpus,
        "driver": next((gpu["driver"] for gpu in gpus if gpu["driver"]), None),
        "mps": mps_state(),
        "env": {name: os.environ.get(name) for name in CONCURRENCY_ENV},
    }


def _gpus_from_nvidia_smi() -> list[dict[str, Any]]:
    fields = list(GPU_FIELDS)
    rows = nvidia_smi(*fields)
    if not rows:  # drivers before 510 do not know compute_cap, and reject the whole query for it
        fields.remove("compute_cap")
        rows = nvidia_smi(*fields)
    gpus = []
    for row in rows:
        if len(row) != len(fields):
            continue
        found = dict(zip(fields, row, strict=True))
        gpus.append(
            {
                "index": int(found["index"]),
                "name": found["name"],
                "uuid": found["uuid"],
                "compute_capability": known(found.get("compute_cap", "")),
                "memory_bytes": _mebibytes(found["memory.total"]),
                "driver": found["driver_version"],
                "mig": known(found["mig.mode.current"]),
                "compute_mode": known(found["compute_mode"]),
            }
        )
    for gpu in gpus:
        gpu["visible"] = _visible(gpu, gpus)
    return gpus


def _visible(gpu: dict[str, Any], gpus: list[dict[str, Any]]) -> bool | None:
    """Whether CUDA_VISIBLE_DEVICES lets this process see the GPU; None where that cannot be told.

    UUIDs (or their prefixes) are certain. Indices are CUDA's, which count the fastest GPU first unless
    CUDA_DEVICE_ORDER=PCI_BUS_ID, while nvidia-smi counts in bus order: they agree only on a host of
    identical GPUs or in bus order.
    """
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is None:
        return True
    entries = visible_entries(listed)
    if any(gpu["uuid"] and entry.startswith("GPU-") and gpu["uuid"].startswith(entry) for entry in entries):
        return True
    if any(entry.startswith("MIG-") for entry in entries):
        return None  # a MIG instance names its slice, not the GPU's UUID
    indices = [entry for entry in entries if entry.isdigit()]
    if not indices:
        return False
    same_order = os.environ.get("CUDA_DEVICE_ORDER") == "PCI_BUS_ID" or len({g["name"] for g in gpus}) == 1
    return str(gpu["index"]) in indices if same_order else None


def _gpus_from_torch() -> list[dict[str, Any]]:
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_initialized():
        return []
    gpus = []
    for index in range(torch.cuda.device_count()):
        properties = torch.cuda.get_device_properties(index)
        uuid = str(getattr(properties, "uuid", "")) or None
        gpus.append(
            {
                "index": index,
                "name": properties.name,
                "uuid": f"GPU-{uuid}" if uuid and not uuid.startswith("GPU-") else uuid,
                "compute_capability": f"{properties.major}.{properties.minor}",
                "memory_bytes": properties.total_memory,
                "driver": None,
                "mig": None,
                "compute_mode": None,
                "visible": True,
            }
        )
    return gpus


def mps_state() -> dict[str, Any]:
    """Whether an MPS control daemon listens: its pipe directory holds a ``control`` pipe then."""
    directory = os.environ.get("CUDA_MPS_PIPE_DIRECTORY", DEFAULT_MPS_PIPE_DIRECTORY)
    return {"pipe_directory": directory, "daemon": os.path.exists(os.path.join(directory, "control"))}


def _cudnn_version() -> int | None:
    import torch

    if not torch.backends.cudnn.is_available():  # type: ignore[no-untyped-call]
        return None
    version: int | None = torch.backends.cudnn.version()  # type: ignore[no-untyped-call]
    return version


def _mebibytes(text: str) -> int | None:
    number = text.split()[0] if text else ""
    return int(number) * 2**20 if number.isdigit() else None


@cache
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "CPU"
