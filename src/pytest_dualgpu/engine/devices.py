"""Which device to measure on, putting models there, and the lock that keeps measurements apart.

Which GPU each xdist worker gets is ``gpus.py`` (that must happen before torch touches CUDA); what the
report says about the machine is ``machine.py``.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

import torch

from pytest_dualgpu.errors import DualGpuUsageError
from pytest_dualgpu.gpus import nvidia_smi
from pytest_dualgpu.machine import cpu_model


def resolve_device(spec: str | torch.device | None = None, option: str | None = None) -> torch.device:
    """``None``/``"auto"``: CUDA when available, else CPU; ``"cuda"`` means the current CUDA device.

    ``option`` (e.g. ``"--device"``) is how the caller's user chose the device, for the fix in errors.
    """
    if spec is None or spec == "auto":
        return resolve_device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(spec)
    except (RuntimeError, TypeError) as error:
        raise DualGpuUsageError(
            f"device {spec!r} is not a device: use 'auto', 'cpu', 'cuda' or 'cuda:N' ({error})"
        ) from None
    if device.type == "cpu":
        return torch.device("cpu")
    if device.type != "cuda":
        raise DualGpuUsageError(f"device {spec!r}: only 'cpu' and 'cuda' devices are supported")
    if not torch.cuda.is_available():
        built = torch.version.cuda or "no CUDA (a CPU build)"
        fix = f"use {option} cpu or {option} auto" if option else "use device='cpu' or 'auto'"
        asked = f"{option} {spec}" if option else f"device {spec!r}"
        raise DualGpuUsageError(
            f"{asked} was asked for but CUDA is not available (torch {torch.__version__} built "
            f"with {built}); {fix}"
        )
    index = torch.cuda.current_device() if device.index is None else device.index
    if not 0 <= index < torch.cuda.device_count():
        raise DualGpuUsageError(
            f"device {spec!r}: only {torch.cuda.device_count()} CUDA device(s) are visible "
            f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')})"
        )
    return torch.device("cuda", index)


def place_model(
    model: torch.nn.Module,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    channels_last: bool = False,
) -> torch.nn.Module:
    """Move a module to the device (and dtype, and channels-last layout) and switch it to eval mode."""
    if not isinstance(model, torch.nn.Module):
        raise DualGpuUsageError(
            f"place_model takes a torch.nn.Module, got {type(model).__name__}; "
            "plain callables are used as they are"
        )
    if dtype is not None and not isinstance(dtype, torch.dtype):
        raise DualGpuUsageError(f"dtype must be a torch.dtype such as torch.float16, got {dtype!r}")
    model = model.to(resolve_device(device))
    if dtype is not None:
        model = model.to(dtype)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    return model.eval()


def model_devices(model: Any) -> set[torch.device]:
    """Devices of a module's parameters and buffers; empty for plain callables."""
    if not isinstance(model, torch.nn.Module):
        return set()
    tensors = [*model.parameters(), *model.buffers()]
    return {tensor.device for tensor in tensors}


def same_device(left: torch.device, right: torch.device) -> bool:
    if left.type != right.type:
        return False
    return left.type == "cpu" or (left.index or 0) == (right.index or 0)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_model()} ({os.cpu_count()} cores)"


def lock_path(device: torch.device) -> str:
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        identity = str(getattr(properties, "uuid", "")) or f"index{device.index}"
        key = f"cuda-{identity}"
    else:
        key = "cpu"
    return os.path.join(lock_directory(), f"pytest-dualgpu-{key}.lock")


#: Where measuring locks live unless ``DUALGPU_LOCK_DIR`` says otherwise.
SHARED_LOCK_DIRECTORY = "/tmp"


def lock_directory() -> str:
    """One folder for every process on the machine: a per-process or per-user ``TMPDIR`` (CI runners,
    ``pytester``, sandboxes) would hide one session's lock from another measuring the same device."""
    chosen = os.environ.get("DUALGPU_LOCK_DIR")
    if chosen:
        os.makedirs(chosen, exist_ok=True)
        return chosen
    if os.name == "posix" and os.access(SHARED_LOCK_DIRECTORY, os.W_OK):
        return SHARED_LOCK_DIRECTORY
    return tempfile.gettempdir()


def describe_device(device: torch.device) -> str:
    """One line for the session header: what the measurements run on."""
    versions = f"torch {torch.__version__}"
    if device.type != "cuda":
        cuda = f"CUDA {torch.version.cuda}, no GPU visible" if torch.version.cuda else "a CPU build"
        return f"{device} ({device_name(device)}), {versions} ({cuda})"
    major, minor = torch.cuda.get_device_capability(device)
    driver = _nvidia_driver()
    return (
        f"{device} ({torch.cuda.get_device_name(device)}, compute capability {major}.{minor}"
        f"{f', driver {driver}' if driver else ''}), {versions}, CUDA {torch.version.cuda}, "
        f"cuDNN {torch.backends.cudnn.version()}"  # type: ignore[no-untyped-call]
    )


def _nvidia_driver() -> str | None:
    rows = nvidia_smi("driver_version")
    return rows[0][0] if rows else None
