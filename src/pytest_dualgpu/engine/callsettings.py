"""How one ``dual_infer`` call measures: every setting the API takes, checked before anything runs."""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pytest_dualgpu.bounds import Bound, parse_bounds
from pytest_dualgpu.errors import DualGpuUsageError
from pytest_dualgpu.modes import checked_mode
from pytest_dualgpu.specs import (
    DEFAULT_BUDGET,
    DEFAULT_LOCK_TIMEOUT,
    DEFAULT_WARMUP,
    SETTING_RULES,
    SyncChecks,
    Tolerance,
    check_bool,
    check_max_budget,
    check_setting,
)

if TYPE_CHECKING:
    import torch

MAX_BUDGET_FACTOR = 5.0


@dataclass(frozen=True)
class CallSettings:
    """How a call measures. ``budget``: seconds of measured rounds (warm-up and probes come on top)."""

    mode: str = "auto"
    device: str | torch.device | None = None
    budget: float = DEFAULT_BUDGET
    max_budget: float | None = None  # None: MAX_BUDGET_FACTOR x budget
    warmup: float = DEFAULT_WARMUP
    bounds: tuple[Bound, ...] = ()
    min_rounds: int = 7
    timeout: float = 120.0
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT
    rtol: float | None = None
    atol: float | None = None
    equal_nan: bool = False
    settle: float | None = None
    race_trials: int = 0
    race_seed: int | None = None
    detect_syncs: bool = False
    sanitizer: bool = False
    profile: bool = False
    priorities: Sequence[str] | Mapping[str, str] | None = None

    def __post_init__(self) -> None:
        checked_mode(self.mode)
        for name in SETTING_RULES:  # each rule is named after the field it checks
            check_setting(name, getattr(self, name))
        check_max_budget(self.budget, self.max_budget)
        object.__setattr__(self, "bounds", parse_bounds(self.bounds))
        _check_priorities(self.priorities)
        for flag in ("detect_syncs", "sanitizer", "profile"):
            check_bool(flag, getattr(self, flag))
        self.tolerance  # noqa: B018  (built once here, so a bad tolerance is refused before anything runs)

    @property
    def measuring_cap(self) -> float:
        return self.budget * MAX_BUDGET_FACTOR if self.max_budget is None else self.max_budget

    @property
    def sync(self) -> SyncChecks:
        return SyncChecks(self.race_trials, self.race_seed, self.detect_syncs, self.sanitizer)

    @functools.cached_property
    def tolerance(self) -> Tolerance:
        return Tolerance(rtol=self.rtol, atol=self.atol, equal_nan=self.equal_nan)


PRIORITIES = ("high", "normal")


def _check_priorities(priorities: object) -> None:
    if priorities is None:
        return
    values = priorities.values() if isinstance(priorities, Mapping) else priorities
    if isinstance(priorities, str) or not isinstance(values, Iterable):
        raise DualGpuUsageError(
            f"priorities must be a list with one of {PRIORITIES} per lane, or a mapping from lane name to "
            f"one, e.g. {{'Encoder': 'high'}}; got {priorities!r}"
        )
    wrong = [value for value in values if value not in PRIORITIES]
    if wrong:
        raise DualGpuUsageError(f"a priority is 'high' or 'normal', got {wrong[0]!r}")


def high_priority(settings: CallSettings, names: Sequence[str]) -> list[bool]:
    """Which lanes' streams get the device's highest priority; unknown lane names are a usage error."""
    priorities = settings.priorities
    if priorities is None:
        return [False] * len(names)
    if isinstance(priorities, Mapping):
        unknown = sorted(set(priorities) - set(names))
        if unknown:
            raise DualGpuUsageError(
                f"priorities names lane(s) {', '.join(map(repr, unknown))}, but the lanes are "
                f"{', '.join(map(repr, names))}"
            )
        return [priorities.get(name) == "high" for name in names]
    chosen = list(priorities)
    if len(chosen) != len(names):
        raise DualGpuUsageError(
            f"priorities has {len(chosen)} entries for {len(names)} lanes; give one per lane"
        )
    return [value == "high" for value in chosen]
