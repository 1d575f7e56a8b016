"""What a call or a marker may be asked for, checked in one place: numbers, flags, and the tolerance.

Torch-free and shared: the API's arguments and the markers' arguments go through the same checks, so a
bad value gets the same message wherever it was given.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import DualGpuUsageError


def check_number(
    name: str,
    value: object,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    strict: bool = False,
    integer: bool = False,
    unit: str = "",
    meaning: str = "",
) -> None:
    """A usage error unless ``value`` is None or a finite number (an int if ``integer``) within the limits.

    The message says what was expected: "budget must be a number of seconds > 0 (seconds of measuring per
    call), got -1"."""
    if value is None:
        return
    kind = "an integer" if integer else f"a number{f' of {unit}' if unit else ''}"
    if minimum is not None:
        kind += f" {'>' if strict else '>='} {minimum:g}"
    if maximum is not None:
        kind += f" {'and ' if minimum is not None else ''}<= {maximum:g}"
    wrong_type = isinstance(value, bool) or not isinstance(value, int if integer else (int, float))
    out_of_range = not wrong_type and (
        not math.isfinite(value)  # type: ignore[arg-type]
        or (minimum is not None and (value <= minimum if strict else value < minimum))  # type: ignore[operator]
        or (maximum is not None and value > maximum)  # type: ignore[operator]
    )
    if wrong_type or out_of_range:
        raise DualGpuUsageError(f"{name} must be {kind}{f' ({meaning})' if meaning else ''}, got {value!r}")


def check_bool(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise DualGpuUsageError(f"{name} must be True or False, got {value!r}")


@dataclass(frozen=True)
class Tolerance:
    """How close a concurrent output must be to the lane's output alone: ``dualgpu_correct``'s arguments
    and ``dual_infer``'s. None for both rtol and atol: the defaults ``torch.testing.assert_close`` picks by
    dtype."""

    rtol: float | None = None
    atol: float | None = None
    equal_nan: bool = False

    def __post_init__(self) -> None:
        if (self.rtol is None) != (self.atol is None):
            raise DualGpuUsageError(
                f"rtol={self.rtol} and atol={self.atol}: give both, or neither to get the defaults "
                "torch.testing.assert_close picks for the dtype"
            )
        check_number("rtol", self.rtol, minimum=0.0)
        check_number("atol", self.atol, minimum=0.0)
        check_bool("equal_nan", self.equal_nan)


@dataclass(frozen=True)
class SyncChecks:
    """Which synchronization checks a call runs: ``trials`` concurrent runs with random delays injected
    into the lanes (``seed`` replays them), host syncs inside the lanes (``detect_syncs``), and PyTorch's
    CUDA sanitizer over one run. ``dual_infer`` takes them as ``race_trials=``, ``race_seed=``,
    ``detect_syncs=`` and ``sanitizer=``; ``dualgpu_sync`` asks for them on a test's every call."""

    trials: int = 0
    seed: int | None = None
    detect_syncs: bool = False
    sanitizer: bool = False

    @property
    def wanted(self) -> bool:
        return bool(self.trials or self.detect_syncs or self.sanitizer)
