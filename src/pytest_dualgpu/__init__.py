"""pytest-dualgpu: test and profile several PyTorch models running concurrently on one GPU.

Importing this package does not import torch (the pytest plugin is loaded in every session of a suite
that installs it); the engine and its torch import come in on first use of the names below.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "ConcurrentOutOfMemoryError",
    "DualGpuError",
    "DualGpuUsageError",
    "DualResult",
    "LaneError",
    "LaneTimeoutError",
    "Measurement",
    "__version__",
    "dual_infer",
    "place_model",
]

_LAZY = {
    "dual_infer": "engine.api",
    "DualResult": "results",
    "Measurement": "results",
    "place_model": "engine.devices",
    "DualGpuError": "errors",
    "DualGpuUsageError": "errors",
    "LaneError": "errors",
    "LaneTimeoutError": "errors",
    "ConcurrentOutOfMemoryError": "errors",
}

if TYPE_CHECKING:
    from pytest_dualgpu.engine.api import dual_infer
    from pytest_dualgpu.engine.devices import place_model
    from pytest_dualgpu.errors import (
        ConcurrentOutOfMemoryError,
        DualGpuError,
        DualGpuUsageError,
        LaneError,
        LaneTimeoutError,
    )
    from pytest_dualgpu.results import DualResult, Measurement


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from importlib import import_module

        value = getattr(import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
