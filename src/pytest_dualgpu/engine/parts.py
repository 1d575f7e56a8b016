"""What one call measures and how: the device's backend, the lanes, the call's settings and the lanes'
arrangement. Every phase of a call (``call.py``) reads them; none changes them."""

from __future__ import annotations

import functools
from dataclasses import dataclass

from pytest_dualgpu.engine.arrangement import Arrangement
from pytest_dualgpu.engine.backends import Backend
from pytest_dualgpu.engine.callsettings import CallSettings
from pytest_dualgpu.engine.executor import Lane


@dataclass(frozen=True)
class CallParts:
    backend: Backend
    lanes: list[Lane]
    settings: CallSettings
    arrangement: Arrangement

    @functools.cached_property
    def names(self) -> list[str]:
        return [lane.name for lane in self.lanes]

    @property
    def everyone(self) -> list[int]:
        return list(range(len(self.lanes)))

    @property
    def high(self) -> list[bool]:
        """Which lanes' streams get the device's highest priority."""
        return self.backend.high

    @property
    def settle(self) -> float:
        """The pause before each measured sample: the call's, else the backend's."""
        return self.backend.default_settle if self.settings.settle is None else self.settings.settle
