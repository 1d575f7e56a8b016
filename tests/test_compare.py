from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_dualgpu.engine.compare import compare_lanes, compare_outputs
from pytest_dualgpu.engine.trees import iter_tensors, map_tensors
from pytest_dualgpu.errors import DualGpuUsageError
from pytest_dualgpu.specs import Tolerance


class Pair(NamedTuple):
    first: Any
    second: Any


@dataclasses.dataclass
class Box:
    logits: Any
    extra: Any = None


def test_equal_nested_outputs_are_correct_with_zero_error() -> None:
    output = {
        "logits": [torch.ones(2), torch.zeros(3)],
        "pair": Pair(1.5, None),
        "box": Box(torch.eye(2), "x"),
    }
    result = compare_outputs(output, map_tensors(output, torch.Tensor.clone), lane="Text")
    assert result.correct
    assert (result.max_abs_err, result.max_rel_err) == (0.0, 0.0)
    assert result.mismatches == []


def test_mismatch_names_the_lane_and_the_path() -> None:
    expected = {"logits": [torch.ones(2), torch.zeros(3)]}
    actual = {"logits": [torch.ones(2), torch.tensor([0.0, 0.5, 0.0])]}
    result = compare_lanes(["TextEncoder"], [expected], [actual])
    assert not result.correct
    assert result.max_abs_err == pytest.approx(0.5)
    assert result.max_rel_err == math.inf
    assert result.mismatches[0].startswith(
        "lane 'TextEncoder' output['logits'][1][1]: Tensor-likes are not close"
    )


def test_paths_through_named_tuples_and_dataclasses() -> None:
    expected = Box(logits=Pair(torch.ones(1), torch.ones(1)))
    actual = Box(logits=Pair(torch.ones(1), torch.full((1,), 2.0)))
    result = compare_outputs(expected, actual, lane="A")
    assert result.mismatches[0].startswith("lane 'A' output.logits.second[0]:")
    assert result.max_rel_err == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("expected", "actual", "message"),
    [
        ([torch.ones(1)], [torch.ones(1), torch.ones(1)], "length 2, expected 1"),
        ({"a": torch.ones(1)}, {"b": torch.ones(1)}, "keys differ: missing ['a'], unexpected ['b']"),
        (torch.ones(2), None, "expected a tensor, got NoneType"),
        ((torch.ones(1),), [torch.ones(1)], "expected tuple, got list"),
        (None, torch.ones(1), "expected None, got Tensor(1,)"),
        ("label", "other", "expected 'label', got str"),
        (3, 4, "Scalars are not equal"),
        (torch.ones(2), torch.ones(3), "shape"),
        (torch.ones(2), torch.ones(2, dtype=torch.float64), "dtype"),
    ],
)
def test_structural_mismatches_are_reported(expected: Any, actual: Any, message: str) -> None:
    result = compare_outputs(expected, actual)
    assert not result.correct
    assert message in result.mismatches[0]


def test_default_tolerance_follows_the_dtype() -> None:
    half = torch.ones(4, dtype=torch.float16)
    assert compare_outputs(half, half + 5e-4).correct
    assert not compare_outputs(half.float(), half.float() + 5e-4).correct


def test_explicit_tolerance_and_nan() -> None:
    nan = torch.tensor([1.0, float("nan")])
    assert not compare_outputs(nan, nan.clone()).correct
    assert compare_outputs(nan, nan.clone(), tolerance=Tolerance(equal_nan=True)).correct
    assert compare_outputs(torch.ones(1), torch.ones(1) + 0.1, tolerance=Tolerance(rtol=0, atol=0.2)).correct


def _assert_close_passes(expected: torch.Tensor, actual: torch.Tensor) -> bool:
    try:
        torch.testing.assert_close(actual, expected, check_device=False)
    except AssertionError:
        return False
    return True


@pytest.mark.parametrize(
    ("expected", "actual"),
    [
        (torch.arange(6.0).reshape(2, 3), torch.arange(6.0).reshape(2, 3)),
        (torch.arange(6.0).reshape(2, 3), torch.arange(6.0).reshape(3, 2)),
        (torch.arange(6.0), torch.arange(6.0).double()),
        (torch.arange(6), torch.arange(6)),
        (torch.tensor([True, False]), torch.tensor([True, False])),
        (torch.tensor([1 + 2j]), torch.tensor([1 + 2j])),
        (torch.tensor([0.0]), torch.tensor([-0.0])),
        (torch.tensor([float("nan")]), torch.tensor([float("nan")])),
        (torch.ones(2, 3), torch.ones(3, 2).t()),
        (torch.nn.Parameter(torch.ones(2)), torch.ones(2)),
    ],
    ids=["same", "reshaped", "dtype", "ints", "bools", "complex", "signed-zero", "nan", "strides", "param"],
)
def test_identical_values_get_the_verdict_assert_close_gives(
    expected: torch.Tensor, actual: torch.Tensor
) -> None:
    assert compare_outputs(expected, actual).correct == _assert_close_passes(expected, actual)


def test_half_given_tolerance_is_a_usage_error() -> None:
    with pytest.raises(DualGpuUsageError, match="give both, or neither"):
        Tolerance(atol=1e-3)
    with pytest.raises(DualGpuUsageError, match="rtol must be a number >= 0"):
        Tolerance(rtol=-1.0, atol=0.0)


def _leaves() -> st.SearchStrategy[Any]:
    shapes = st.lists(st.integers(1, 3), min_size=0, max_size=2)
    tensors = st.builds(
        lambda shape, seed: torch.randn(shape, generator=torch.Generator().manual_seed(seed)),
        shapes,
        st.integers(0, 1000),
    )
    scalars = st.one_of(
        st.integers(-5, 5), st.floats(-10, 10, allow_nan=False), st.none(), st.text(max_size=3)
    )
    return st.one_of(tensors, scalars)


nested = st.recursive(
    _leaves(),
    lambda children: st.one_of(
        st.lists(children, max_size=3),
        st.lists(children, max_size=3).map(tuple),
        st.dictionaries(st.text("abc", min_size=1, max_size=2), children, max_size=3),
        st.builds(Pair, children, children),
        st.builds(Box, children, children),
    ),
    max_leaves=8,
)


@settings(max_examples=150, deadline=None)
@given(nested)
def test_any_output_equals_its_copy(output: Any) -> None:
    result = compare_outputs(output, map_tensors(output, torch.Tensor.clone), lane="L")
    assert result.correct, result.mismatches
    assert result.max_abs_err == 0.0


@settings(max_examples=150, deadline=None)
@given(nested, st.data())
def test_one_perturbed_tensor_is_found_at_its_path(output: Any, data: st.DataObject) -> None:
    tensors = list(iter_tensors(output))
    if not tensors:
        return
    target = data.draw(st.sampled_from(range(len(tensors))))
    seen = iter(range(len(tensors)))

    def perturb(tensor: torch.Tensor) -> torch.Tensor:
        return tensor + 1.0 if next(seen) == target else tensor.clone()

    result = compare_outputs(output, map_tensors(output, perturb), lane="L")
    assert not result.correct
    assert len(result.mismatches) == 1
    assert result.max_abs_err == pytest.approx(1.0)
    assert result.mismatches[0].startswith("lane 'L' output")
