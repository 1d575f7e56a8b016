"""The execution modes by name: the one list that the options, the API, the command and the engine check."""

from __future__ import annotations

from pytest_dualgpu.errors import DualGpuUsageError

AUTO = "auto"
#: Every mode a call can run in; ``auto`` probes the ones the device has and keeps the best.
MODES = ("sequential", "streams", "threads", "graphs")
#: The modes that run lanes at once on a GPU, and on a CPU.
CUDA_CONCURRENT = ("streams", "threads", "graphs")
CPU_CONCURRENT = ("threads",)
CHOICES = (AUTO, *MODES)


def checked_mode(value: object) -> str:
    """``value`` if it names a mode (or ``auto``), else a usage error that lists them."""
    if isinstance(value, str) and value in CHOICES:
        return value
    raise DualGpuUsageError(f"mode {value!r} is not one of {', '.join(CHOICES)}")
