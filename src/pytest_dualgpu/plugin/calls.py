"""The ``dual_infer`` fixture's callable: each call also gets the bounds it must decide.

A call measures until its bounds are decided (``bounds.py``), so the fixture hands it the bounds of the
test's ``dualgpu_speedup`` marker and the regression gate's limits for that very call: the base row the
gate will compare it with is found by the same key the gate uses (test, result name, occurrence), so the
engine measures toward the limit that will be judged. Torch-free at import: lane names are worked out
only when a call is made.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pytest_dualgpu.bounds import Bound
from pytest_dualgpu.errors import DualGpuUsageError
from pytest_dualgpu.reports.gate import Baseline, Threshold
from pytest_dualgpu.results import default_name

if TYPE_CHECKING:
    from pytest_dualgpu.engine.api import DualInfer
    from pytest_dualgpu.results import DualResult


@dataclass(frozen=True)
class GateLimits:
    """The regression gate's limits for the calls of one test, when a baseline and thresholds are set."""

    baseline: Baseline | None
    thresholds: tuple[Threshold, ...]
    nodeid: str

    def bounds(self, name: str, occurrence: int) -> tuple[Bound, ...]:
        if self.baseline is None or not self.thresholds:
            return ()
        return self.baseline.bounds_for((self.nodeid, name, occurrence), self.thresholds)


class FixtureDualInfer:
    """``dual_infer`` as the fixture gives it: the session's settings, the result recorded, and the
    bounds of the markers and of the gate passed to every call (a call's own ``bounds=`` wins)."""

    def __init__(
        self,
        bound: DualInfer,
        marker_bounds: tuple[Bound, ...],
        gate: GateLimits,
        recorded_names: Callable[[], list[str]],
    ) -> None:
        self._bound = bound
        self._marker_bounds = marker_bounds
        self._gate = gate
        self._recorded_names = recorded_names

    def __call__(
        self, model_a: Any, model_b: Any, inputs: Any, inputs_b: Any = None, **settings: Any
    ) -> DualResult:
        settings = self._with_bounds(settings, [model_a, model_b])
        return self._bound(model_a, model_b, inputs, inputs_b, **settings)

    def many(self, models: Sequence[Any], inputs: Sequence[Any], **settings: Any) -> DualResult:
        return self._bound.many(models, inputs, **self._with_bounds(settings, models))

    def pipeline(
        self, producer: Any, consumer: Any, inputs: Any, micro_batches: int = 4, **settings: Any
    ) -> DualResult:
        settings = self._with_bounds(settings, [producer, consumer], pipeline=True)
        return self._bound.pipeline(producer, consumer, inputs, micro_batches, **settings)

    def bind(self, **settings: Any) -> FixtureDualInfer:
        """A copy with other defaults that still records its results and decides the same bounds."""
        return FixtureDualInfer(
            self._bound.bind(**settings), self._marker_bounds, self._gate, self._recorded_names
        )

    @property
    def settings(self) -> Any:
        return self._bound.settings

    def _with_bounds(
        self, settings: dict[str, Any], models: Sequence[Any], pipeline: bool = False
    ) -> dict[str, Any]:
        if "bounds" in settings:
            return settings
        bounds = self._marker_bounds
        name = self._result_name(settings, models, pipeline)
        if name is not None:
            bounds += self._gate.bounds(name, self._recorded_names().count(name))
        return {**settings, "bounds": bounds} if bounds else settings

    def _result_name(self, settings: dict[str, Any], models: Sequence[Any], pipeline: bool) -> str | None:
        """The name the result will have; None where the call is malformed (the engine says why)."""
        if settings.get("name"):
            return str(settings["name"])
        from pytest_dualgpu.engine.inputs import lane_names_for

        try:
            return default_name(lane_names_for(list(models), settings.get("names")), pipeline)
        except DualGpuUsageError:
            return None

    def __repr__(self) -> str:
        return repr(self._bound)
