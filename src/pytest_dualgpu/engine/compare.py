"""Comparison of concurrent outputs with the reference, over whatever a model returns.

Leaves are judged by ``torch.testing.assert_close`` (so tolerances default by dtype exactly as there);
the walk is ``trees.py``'s, through containers, dataclasses, ``ModelOutput``s, cache objects and any object
holding tensors in its attributes, because a mismatch must name the lane and the path down to the element
(``lane 'Decoder' output['past'].layers[1].keys[0, 3]``) and the largest errors are wanted even when all
is well. A value that cannot be compared (a lock, an opaque handle) is reported as such, never passed in
silence; a comparison that raises becomes a mismatch of that lane, never the loss of the measurement.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from pytest_dualgpu.engine.trees import Kind, children, is_array, kind
from pytest_dualgpu.errors import described
from pytest_dualgpu.specs import Tolerance


@dataclass
class Comparison:
    correct: bool = True
    max_abs_err: float = 0.0
    max_rel_err: float = 0.0
    mismatches: list[str] = field(default_factory=list)
    uncomparable: list[str] = field(default_factory=list)
    without_tensors: list[str] = field(default_factory=list)  # lanes whose reference holds no tensor

    def merge(self, other: Comparison) -> None:
        self.correct = self.correct and other.correct
        self.max_abs_err = max(self.max_abs_err, other.max_abs_err)
        self.max_rel_err = max(self.max_rel_err, other.max_rel_err)
        self.mismatches.extend(other.mismatches)
        self.uncomparable.extend(other.uncomparable)
        self.without_tensors.extend(other.without_tensors)


def compare_lanes(
    names: Sequence[str],
    references: Sequence[Any],
    actuals: Sequence[Any],
    tolerance: Tolerance | None = None,
) -> Comparison:
    """Compare each lane's concurrent output with that lane's reference output."""
    total = Comparison()
    for name, expected, actual in zip(names, references, actuals, strict=True):
        try:
            total.merge(compare_outputs(expected, actual, lane=name, tolerance=tolerance))
        except Exception as error:  # the measurement stands; this lane's comparison is what failed
            total.merge(
                Comparison(
                    correct=False,
                    mismatches=[f"lane {name!r} output: could not be compared: {described(error)}"],
                )
            )
    return total


def compare_outputs(
    expected: Any, actual: Any, *, lane: str = "", tolerance: Tolerance | None = None, root: str = "output"
) -> Comparison:
    tolerance = tolerance or Tolerance()
    result = Comparison()
    prefix = f"lane {lane!r} " if lane else ""
    tensors = 0
    for leaf in _walk(expected, actual, root, tolerance, set()):
        tensors += leaf.tensor
        result.max_abs_err = max(result.max_abs_err, leaf.abs_err)
        result.max_rel_err = max(result.max_rel_err, leaf.rel_err)
        if leaf.problem is not None:
            result.correct = False
            result.mismatches.append(f"{prefix}{leaf.path}: {leaf.problem}")
        if leaf.uncomparable is not None:
            result.uncomparable.append(f"{prefix}{leaf.path}: {leaf.uncomparable}")
    if not tensors:
        result.without_tensors.append(lane or root)
    return result


@dataclass(frozen=True)
class Leaf:
    path: str
    problem: str | None = None
    abs_err: float = 0.0
    rel_err: float = 0.0
    uncomparable: str | None = None
    tensor: bool = False  # a tensor or array was compared here, not a plain value


def _walk(
    expected: Any, actual: Any, path: str, tolerance: Tolerance, seen: set[tuple[int, int]]
) -> Iterator[Leaf]:
    found = kind(expected)
    if found is Kind.TENSOR:
        if (id(expected), id(actual)) not in seen:  # a shared tensor is compared once
            seen.add((id(expected), id(actual)))
            yield _compare_leaf(expected, actual, path, tolerance)
    elif found is Kind.PLAIN and _is_number(expected):
        yield _compare_leaf(expected, actual, path, tolerance)
    elif found is Kind.ARRAY:
        yield _compare_array(expected, actual, path, tolerance)
    elif found is Kind.PLAIN:
        yield _compare_value(expected, actual, path)
    elif found is Kind.ITERATOR:
        yield Leaf(path, uncomparable=f"a {type(expected).__name__}: reading it would use it up")
    elif found is Kind.OPAQUE:
        if actual is not expected:
            nothing = "which has no tensors, attributes or equality to compare"
            yield Leaf(path, uncomparable=f"a {_qualified(expected)}, {nothing}")
    elif type(actual) is not type(expected):
        got = _describe(actual)
        if type(actual).__qualname__ == type(expected).__qualname__:
            got = f"another class of that name ({_qualified(actual)}, defined anew on each call?)"
        yield Leaf(path, f"expected {type(expected).__name__}, got {got}")
    elif (id(expected), id(actual)) not in seen:  # a shared object (or a cycle) is compared once
        seen.add((id(expected), id(actual)))
        yield from _walk_children(expected, actual, path, tolerance, seen)


def _walk_children(
    expected: Any, actual: Any, path: str, tolerance: Tolerance, seen: set[tuple[int, int]]
) -> Iterator[Leaf]:
    wanted, got = children(expected, path), children(actual, path)
    if kind(expected) is Kind.MAPPING and set(expected) != set(actual):
        missing = ", ".join(sorted(map(repr, set(expected) - set(actual))))
        extra = ", ".join(sorted(map(repr, set(actual) - set(expected))))
        yield Leaf(path, f"keys differ: missing [{missing}], unexpected [{extra}]")
        return
    if [name for name, _ in wanted] != [name for name, _ in got]:
        if kind(expected) is Kind.SEQUENCE:
            yield Leaf(path, f"length {len(got)}, expected {len(wanted)}")
        else:
            shown = sorted(
                {name.rpartition(".")[2] for name, _ in wanted} ^ {name.rpartition(".")[2] for name, _ in got}
            )
            yield Leaf(path, f"attributes differ: {', '.join(shown)}")
        return
    lookup = dict(got) if kind(expected) is Kind.MAPPING else None
    for index, (child_path, child) in enumerate(wanted):
        other = lookup[child_path] if lookup is not None else got[index][1]
        yield from _walk(child, other, child_path, tolerance, seen)


def _compare_leaf(expected: Any, actual: Any, path: str, tolerance: Tolerance) -> Leaf:
    if isinstance(expected, torch.Tensor) and not isinstance(actual, torch.Tensor):
        return Leaf(path, f"expected a tensor, got {_describe(actual)}")
    if _is_number(expected) and not _is_number(actual):
        return Leaf(path, f"expected a number, got {_describe(actual)}")
    if isinstance(expected, torch.Tensor):
        expected, actual = _plain_tensor(expected), _plain_tensor(actual)
        if _identical(expected, actual):
            return Leaf(path, tensor=True)
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
    abs_err, rel_err, where = _errors(expected, actual, tolerance.equal_nan)
    if problem is not None and where:
        path = f"{path}[{', '.join(map(str, where))}]"
    return Leaf(path, problem, abs_err, rel_err, tensor=isinstance(expected, torch.Tensor))


def _plain_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """A strided tensor with the same values: sparse layouts densified, quantized values dequantized."""
    if tensor.is_quantized:
        tensor = tensor.dequantize()
    if tensor.layout != torch.strided:
        tensor = tensor.to_dense()
    return tensor


def _identical(expected: torch.Tensor, actual: torch.Tensor) -> bool:
    """Bit for bit the same values, which ``assert_close`` passes at any tolerance: the usual case, decided
    without it (its first use in a process imports ``torch.distributed.tensor``, about a second)."""
    return (
        type(expected) is type(actual) is torch.Tensor
        and actual.dtype == expected.dtype
        and actual.device == expected.device
        and actual.shape == expected.shape
        and bool(torch.equal(actual, expected))
    )


def _compare_array(expected: Any, actual: Any, path: str, tolerance: Tolerance) -> Leaf:
    if not is_array(actual):
        return Leaf(path, f"expected a NumPy array, got {_describe(actual)}")
    if expected.dtype.kind in "biufc" and actual.dtype.kind in "biufc":
        return _compare_leaf(
            torch.from_numpy(expected.copy()), torch.from_numpy(actual.copy()), path, tolerance
        )
    import numpy

    if expected.shape == actual.shape and bool(numpy.array_equal(expected, actual)):
        return Leaf(path, tensor=True)
    return Leaf(path, f"NumPy arrays differ (shape {actual.shape}, expected {expected.shape})", tensor=True)


def _compare_value(expected: Any, actual: Any, path: str) -> Leaf:
    try:
        equal = bool(actual == expected)
    except Exception as error:  # an equality that raises says nothing about equality
        return Leaf(path, uncomparable=f"a {_qualified(expected)} whose == raised {described(error)}")
    if equal:
        return Leaf(path)
    shown = repr(expected) if len(repr(expected)) <= 60 else _describe(expected)
    return Leaf(path, f"expected {shown}, got {_describe(actual)}")


def _errors(expected: Any, actual: Any, equal_nan: bool) -> tuple[float, float, tuple[int, ...]]:
    """Largest absolute and relative difference, and where the largest absolute one is; 0 and no place
    where shapes make them meaningless."""
    if not isinstance(expected, torch.Tensor):
        expected, actual = torch.tensor(expected), torch.tensor(actual)
    if expected.shape != actual.shape or expected.numel() == 0:
        return 0.0, 0.0, ()
    wanted = _as_float64(expected.detach())
    got = _as_float64(actual.detach()).to(wanted.device)
    gap = (got - wanted).abs()
    if equal_nan:
        gap = torch.where(wanted.isnan() & got.isnan(), torch.zeros_like(gap), gap)
    gap = torch.where(gap.isnan(), torch.full_like(gap, math.inf), gap)
    scale = wanted.abs()
    unscaled = torch.where(gap > 0, torch.full_like(gap, math.inf), torch.zeros_like(gap))
    relative = torch.where(scale > 0, gap / scale, unscaled)
    where = tuple(int(index) for index in torch.unravel_index(gap.argmax(), gap.shape)) if gap.dim() else ()
    return float(gap.max()), float(relative.max()), where


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


def _qualified(value: Any) -> str:
    cls = type(value)
    return cls.__name__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
