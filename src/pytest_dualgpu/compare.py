"""Comparison of concurrent outputs with the reference, over arbitrarily nested outputs.

Leaves are judged by ``torch.testing.assert_close`` (so tolerances default by dtype exactly as there);
the walk over containers is ours, because a mismatch must name the lane and the path inside the output
(``lane 'TextEncoder' output['logits'][1]``) and the largest errors are wanted even when all is well.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .errors import DualGpuUsageError


@dataclass
class Comparison:
    correct: bool = True
    max_abs_err: float = 0.0
    max_rel_err: float = 0.0
    mismatches: list[str] = field(default_factory=list)

    def merge(self, other: Comparison) -> None:
        self.correct = self.correct and other.correct
        self.max_abs_err = max(self.max_abs_err, other.max_abs_err)
        self.max_rel_err = max(self.max_rel_err, other.max_rel_err)
        self.mismatches.extend(other.mismatches)


@dataclass(frozen=True)
class Tolerance:
    rtol: float | None = None
    atol: float | None = None
    equal_nan: bool = False

    def __post_init__(self) -> None:
        if (self.rtol is None) != (self.atol is None):
            raise DualGpuUsageError(
                f"rtol={self.rtol} and atol={self.atol}: give both, or neither to get the defaults "
                "torch.testing.assert_close picks for the dtype"
            )
        for name in ("rtol", "atol"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float)) and value >= 0):
                raise DualGpuUsageError(f"{name} must be a number >= 0, got {value!r}")


def compare_lanes(
    names: Sequence[str],
    references: Sequence[Any],
    actuals: Sequence[Any],
    tolerance: Tolerance | None = None,
) -> Comparison:
    """Compare each lane's concurrent output with that lane's reference output."""
    total = Comparison()
    for name, expected, actual in zip(names, references, actuals, strict=True):
        total.merge(compare_outputs(expected, actual, lane=name, tolerance=tolerance))
    return total


def compare_outputs(
    expected: Any, actual: Any, *, lane: str = "", tolerance: Tolerance | None = None
) -> Comparison:
    tolerance = tolerance or Tolerance()
    result = Comparison()
    prefix = f"lane {lane!r} " if lane else ""
    for path, problem, abs_err, rel_err in _walk(expected, actual, "output", tolerance):
        result.max_abs_err = max(result.max_abs_err, abs_err)
        result.max_rel_err = max(result.max_rel_err, rel_err)
        if problem is not None:
            result.correct = False
            result.mismatches.append(f"{prefix}{path}: {problem}")
    return result


Leaf = tuple[str, "str | None", float, float]


def _walk(expected: Any, actual: Any, path: str, tolerance: Tolerance) -> Iterator[Leaf]:
    if isinstance(expected, torch.Tensor) or _is_number(expected):
        yield _compare_leaf(expected, actual, path, tolerance)
    elif expected is None or isinstance(expected, (str, bytes)):
        if actual != expected:
            yield path, f"expected {expected!r}, got {_describe(actual)}", 0.0, 0.0
    elif type(actual) is not type(expected):
        yield path, f"expected {type(expected).__name__}, got {_describe(actual)}", 0.0, 0.0
    elif isinstance(expected, Mapping):
        if set(expected) != set(actual):
            missing = ", ".join(sorted(map(repr, set(expected) - set(actual))))
            extra = ", ".join(sorted(map(repr, set(actual) - set(expected))))
            yield path, f"keys differ: missing [{missing}], unexpected [{extra}]", 0.0, 0.0
            return
        for key in expected:
            yield from _walk(expected[key], actual[key], f"{path}[{key!r}]", tolerance)
    elif isinstance(expected, tuple) and hasattr(expected, "_fields"):
        for name in expected._fields:
            yield from _walk(getattr(expected, name), getattr(actual, name), f"{path}.{name}", tolerance)
    elif isinstance(expected, (list, tuple)):
        if len(expected) != len(actual):
            yield path, f"length {len(actual)}, expected {len(expected)}", 0.0, 0.0
            return
        for index, (left, right) in enumerate(zip(expected, actual, strict=True)):
            yield from _walk(left, right, f"{path}[{index}]", tolerance)
    elif dataclasses.is_dataclass(expected):
        for item in dataclasses.fields(expected):
            yield from _walk(
                getattr(expected, item.name), getattr(actual, item.name), f"{path}.{item.name}", tolerance
            )
    elif actual != expected:
        yield path, f"expected {expected!r}, got {actual!r}", 0.0, 0.0


def _compare_leaf(expected: Any, actual: Any, path: str, tolerance: Tolerance) -> Leaf:
    if isinstance(expected, torch.Tensor) and not isinstance(actual, torch.Tensor):
        return path, f"expected a tensor, got {_describe(actual)}", 0.0, 0.0
    if _is_number(expected) and not _is_number(actual):
        return path, f"expected a number, got {_describe(actual)}", 0.0, 0.0
    problem = None
    try:
        torch.testing.assert_close(
            actual,
            expected,
            rtol=tolerance.rtol,
            atol=tolerance.atol,
            equal_nan=tolerance.equal_nan,
            check_device=False,
        )
    except AssertionError as error:
        problem = " ".join(line.strip() for line in str(error).splitlines() if line.strip())
    abs_err, rel_err = _errors(expected, actual, tolerance.equal_nan)
    return path, problem, abs_err, rel_err


def _errors(expected: Any, actual: Any, equal_nan: bool) -> tuple[float, float]:
    """Largest absolute and relative difference; 0 where shapes make them meaningless."""
    if not isinstance(expected, torch.Tensor):
        expected, actual = torch.tensor(expected), torch.tensor(actual)
    if expected.shape != actual.shape or expected.numel() == 0:
        return 0.0, 0.0
    wanted = _as_float64(expected.detach())
    got = _as_float64(actual.detach()).to(wanted.device)
    gap = (got - wanted).abs()
    if equal_nan:
        gap = torch.where(wanted.isnan() & got.isnan(), torch.zeros_like(gap), gap)
    gap = torch.where(gap.isnan(), torch.full_like(gap, math.inf), gap)
    scale = wanted.abs()
    unscaled = torch.where(gap > 0, torch.full_like(gap, math.inf), torch.zeros_like(gap))
    relative = torch.where(scale > 0, gap / scale, unscaled)
    return float(gap.max()), float(relative.max())


def _as_float64(tensor: torch.Tensor) -> torch.Tensor:
    if tensor.is_complex():
        return tensor.to(torch.complex128)
    return tensor.to(torch.float64)


def _is_number(value: Any) -> bool:
    return isinstance(value, (bool, int, float, complex))


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"Tensor{tuple(value.shape)}"
    return type(value).__name__
