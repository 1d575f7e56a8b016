"""What a call or a marker may be asked for, checked in one place: numbers, sizes, flags, the tolerance.

Torch-free and shared: the API's and the markers' arguments, the plugin's options and the command's flags
go through the same checks, so a bad value gets the same message wherever it was given.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from .errors import DualGpuUsageError


@dataclass(frozen=True)
class NumberRule:
    """What one number may be. A setting has one rule whichever way it is given (an argument of the API or
    of a marker, a pytest option, environment variable or ini key, a flag of the command), so one mistake
    gets one message wherever it was made."""

    minimum: float | None = None
    maximum: float | None = None
    strict: bool = False  # the minimum itself is refused
    integer: bool = False
    unit: str = ""
    meaning: str = ""

    def expected(self, name: str) -> str:
        """ "budget must be a number of seconds > 0 (of measuring per call, e.g. 1.0)" """
        kind = "an integer" if self.integer else f"a number{f' of {self.unit}' if self.unit else ''}"
        if self.minimum is not None:
            kind += f" {'>' if self.strict else '>='} {self.minimum:g}"
        if self.maximum is not None:
            kind += f" {'and ' if self.minimum is not None else ''}<= {self.maximum:g}"
        return f"{name} must be {kind}{f' ({self.meaning})' if self.meaning else ''}"

    def check(self, name: str, value: object) -> None:
        """A usage error unless ``value`` is None or a number this rule allows."""
        if value is not None and not self._allows(value):
            raise DualGpuUsageError(f"{self.expected(name)}, got {value!r}")

    def parse(self, name: str, raw: object) -> Any:
        """The number in ``raw``: text (an option, a variable, a flag) or a number pytest's ini parsing
        made. The error leaves out the value, which the caller shows beside where it was given."""
        value = raw
        if isinstance(raw, str):
            try:
                value = int(raw.strip()) if self.integer else float(raw)
            except ValueError:
                value = None
        if value is None or not self._allows(value):
            raise DualGpuUsageError(self.expected(name))
        return value

    def _allows(self, value: object) -> bool:
        if isinstance(value, bool) or not isinstance(value, int if self.integer else (int, float)):
            return False
        return math.isfinite(value) and not (
            (self.minimum is not None and (value <= self.minimum if self.strict else value < self.minimum))
            or (self.maximum is not None and value > self.maximum)
        )


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
    """A usage error unless ``value`` is None or a finite number (an int if ``integer``) within the limits:
    "budget must be a number of seconds > 0 (of measuring per call), got -1"."""
    NumberRule(minimum, maximum, strict, integer, unit, meaning).check(name, value)


#: What a call measures with unless told otherwise, wherever it is told (API, options, command).
DEFAULT_BUDGET = 1.0
DEFAULT_WARMUP = 3.0
DEFAULT_LOCK_TIMEOUT = 600.0

#: The measuring settings' numbers, by their name in the API (the option, variable, ini key and flag of
#: each are named after it).
SETTING_RULES: dict[str, NumberRule] = {
    "budget": NumberRule(0, strict=True, unit="seconds", meaning="of measuring per call, e.g. 1.0"),
    "max_budget": NumberRule(
        0, strict=True, unit="seconds", meaning="of measuring to decide a bound, e.g. 5"
    ),
    "warmup": NumberRule(
        0, unit="seconds", meaning="the cap of the steady-state warm-up, e.g. 3; 0 skips it"
    ),
    "min_rounds": NumberRule(1, integer=True, meaning="the fewest measured rounds per call, e.g. 7"),
    "settle": NumberRule(
        0, unit="seconds", meaning="the pause before each sample on CPU, e.g. 0.01; 0: none"
    ),
    "timeout": NumberRule(0, strict=True, unit="seconds", meaning="a lane may take per run"),
    "lock_timeout": NumberRule(
        0, strict=True, unit="seconds", meaning="to wait for the measuring lock, e.g. 600"
    ),
    "race_trials": NumberRule(0, integer=True),
    "race_seed": NumberRule(integer=True, meaning="to replay a failing trial"),
}


def check_setting(name: str, value: object) -> None:
    SETTING_RULES[name].check(name, value)


def parse_setting(name: str, raw: object) -> Any:
    return SETTING_RULES[name].parse(name, raw)


def check_max_budget(budget: float, max_budget: float | None) -> None:
    if max_budget is not None and max_budget < budget:
        raise DualGpuUsageError(
            f"max_budget ({max_budget:g} s) must be at least the budget ({budget:g} s): it is how far "
            "measuring may go past the budget to decide a bound"
        )


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


def parse_size(value: int | str, what: str = "max_bytes") -> int:
    """Bytes from an int or a string such as ``"512MiB"``, ``"2GB"``, ``"1.5 GiB"``."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    if isinstance(value, str):
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*", value, flags=re.IGNORECASE)
        if match:
            number, unit = float(match.group(1)), (match.group(2) or "B").upper()
            scale = 1 if unit == "B" else (1024 if "I" in unit else 1000) ** ("KMGT".index(unit[0]) + 1)
            if number > 0:
                return int(number * scale)
    raise DualGpuUsageError(
        f"{what} must be a number of bytes > 0 or a size such as '512MiB' or '2GB', got {value!r}"
    )
