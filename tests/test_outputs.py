"""What models really return, compared right: objects holding tensors, caches, NumPy, sparse and quantized
tensors, cycles and shared references, values with nothing to compare; outputs that are usage errors;
lanes that change their own inputs; and the walk's paths, checked by property tests."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator, Mapping
from typing import Any, NamedTuple

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from models import MLP
from quick import QUICK

from pytest_dualgpu import DualGpuUsageError, dual_infer
from pytest_dualgpu.engine.compare import compare_lanes, compare_outputs
from pytest_dualgpu.engine.trees import iter_tensors, map_tensors, walk
from pytest_dualgpu.plugin.verdicts import judge
from pytest_dualgpu.specs import Tolerance


class Layer:
    """Like a transformers cache layer: plain attributes, no equality of its own."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        self.keys = keys
        self.values = values
        self.is_initialized = True


class Cache:
    def __init__(self, layers: list[Layer]) -> None:
        self.layers = layers
        self.offloading = False


class Slotted:
    __slots__ = ("hidden", "note")

    def __init__(self, hidden: torch.Tensor, note: str) -> None:
        self.hidden = hidden
        self.note = note


def cache(offset: float = 0.0) -> Cache:
    layers = [Layer(torch.zeros(2, 4), torch.ones(2, 4)) for _ in range(2)]
    layers[1].keys[0, 3] += offset
    return Cache(layers)


def test_an_object_holding_tensors_is_walked_through_its_attributes_down_to_the_element() -> None:
    expected, actual = {"past": cache()}, {"past": cache(offset=0.5)}
    result = compare_outputs(expected, actual, lane="Decoder")
    assert not result.correct
    assert result.mismatches[0].startswith("lane 'Decoder' output['past'].layers[1].keys[0, 3]: ")
    assert result.max_abs_err == pytest.approx(0.5)
    assert compare_outputs({"past": cache()}, {"past": cache()}).correct


def test_slots_cycles_and_shared_references_are_walked_once() -> None:
    shared = torch.ones(3)
    expected = Cache([Layer(shared, shared)])
    expected.layers.append(expected)  # type: ignore[arg-type]  # a cycle
    actual = Cache([Layer(shared.clone(), shared.clone())])
    actual.layers.append(actual)  # type: ignore[arg-type]
    assert compare_outputs(expected, actual).correct
    assert len(list(iter_tensors(expected))) == 1  # one tensor, reached twice, walked once
    slotted = compare_outputs(Slotted(torch.ones(2), "a"), Slotted(torch.ones(2), "b"))
    assert slotted.mismatches == ["output.note: expected 'a', got str"]


def test_numpy_sparse_and_quantized_outputs_compare_by_their_values() -> None:
    array = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert compare_outputs({"a": array}, {"a": array.copy()}).correct
    changed = array.copy()
    changed[1, 2] += 1
    assert compare_outputs({"a": array}, {"a": changed}).mismatches[0].startswith("output['a'][1, 2]: ")
    assert not compare_outputs(np.array(["x", "y"]), np.array(["x", "z"])).correct
    dense = torch.eye(3)
    assert compare_outputs(dense.to_sparse(), dense.clone().to_sparse()).correct
    assert not compare_outputs(dense.to_sparse(), (dense * 2).to_sparse()).correct
    quantized = torch.quantize_per_tensor(torch.ones(4), 0.1, 0, torch.quint8)
    assert compare_outputs(quantized, torch.quantize_per_tensor(torch.ones(4), 0.1, 0, torch.quint8)).correct


def test_what_cannot_be_compared_is_said_with_its_path_never_passed_in_silence() -> None:
    lock = threading.Lock()
    same = compare_outputs({"lock": lock}, {"lock": lock})
    assert same.correct
    assert same.uncomparable == []
    other = compare_outputs({"lock": threading.Lock()}, {"lock": threading.Lock()}, lane="A")
    assert other.correct
    assert other.uncomparable == [
        "lane 'A' output['lock']: a _thread.lock, which has no tensors, attributes or equality to compare"
    ]


class Angry:
    def __eq__(self, other: object) -> bool:
        raise RuntimeError("no comparing me")

    __hash__ = object.__hash__


class Broken(Mapping[str, Any]):
    def __getitem__(self, key: str) -> Any:
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return iter(["x"])

    def __len__(self) -> int:
        return 1


def test_an_equality_that_raises_or_a_comparison_that_fails_costs_one_lane_not_the_measurement() -> None:
    angry = compare_outputs(Angry(), Angry())
    assert angry.uncomparable[0].startswith("output: a test_outputs.Angry whose == raised RuntimeError")
    failed = compare_lanes(["A", "B"], [Broken(), torch.ones(1)], [Broken(), torch.ones(1)])
    assert not failed.correct
    assert failed.mismatches == ["lane 'A' output: could not be compared: KeyError: 'x'"]


class Gen(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> Iterator[torch.Tensor]:
        return (x * i for i in range(3))


class NumpyOut(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> dict[str, Any]:
        return {"array": (x * 2).numpy(), "scale": np.float32(2.0)}


class SparseOut(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x * 2).to_sparse()


class WritesItsInput(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x.add_(1)
        return x * 2


def test_a_generator_output_is_a_usage_error_naming_the_lane() -> None:
    with pytest.raises(
        DualGpuUsageError, match=r"lane 'Gen' returned a generator at output: its work runs only"
    ):
        dual_infer(Gen(), MLP(), torch.ones(2, 64), **QUICK)


def test_numpy_and_sparse_outputs_measure_and_compare_end_to_end() -> None:
    numpy_result = dual_infer(NumpyOut(), NumpyOut(), torch.ones(3, 4), **QUICK)
    assert numpy_result.correct, numpy_result.mismatches
    sparse_result = dual_infer(SparseOut(), SparseOut(), torch.ones(3, 4), **QUICK)
    assert sparse_result.correct, sparse_result.mismatches


def test_a_lane_that_changes_its_own_input_is_named_with_a_hint_to_match() -> None:
    result = dual_infer(WritesItsInput(), MLP(4), torch.ones(3, 4), torch.ones(3, 4), **QUICK)
    assert not result.correct
    assert result.input_writes == ["lane 'WritesItsInput' changes its own input in place (args[0][0, 0])"]
    assert result.mismatches[0] == result.input_writes[0]
    verdict = judge(result, {"dualgpu_correct": Tolerance()})["correct"]
    assert "a lane changes its own input in place" in verdict.message
    clean = dual_infer(MLP(4), MLP(4), torch.ones(3, 4), **QUICK)
    assert clean.input_writes == []


# Property tests: any nesting of containers, dataclasses, named tuples and objects, compared with a copy
# of itself, is correct; with one tensor changed at a random depth, that tensor's path is named.


class Pair(NamedTuple):
    first: Any
    second: Any


@dataclasses.dataclass
class Box:
    content: Any
    extra: Any = None


class Holder:
    def __init__(self, value: Any, other: Any) -> None:
        self.value = value
        self.other = other


def _leaves() -> st.SearchStrategy[Any]:
    tensors = st.builds(
        lambda shape, seed: torch.randn(shape, generator=torch.Generator().manual_seed(seed)),
        st.lists(st.integers(1, 3), min_size=1, max_size=2),
        st.integers(0, 1000),
    )
    return st.one_of(tensors, st.integers(-5, 5), st.none(), st.text(max_size=3))


nested = st.recursive(
    _leaves(),
    lambda children: st.one_of(
        st.lists(children, max_size=3),
        st.lists(children, max_size=3).map(tuple),
        st.dictionaries(st.text("abc", min_size=1, max_size=2), children, max_size=3),
        st.builds(Pair, children, children),
        st.builds(Box, children, children),
        st.builds(Holder, children, children),
    ),
    max_leaves=10,
)


@settings(max_examples=150, deadline=None)
@given(nested)
def test_any_nesting_equals_its_copy(output: Any) -> None:
    result = compare_outputs(output, map_tensors(output, torch.Tensor.clone))
    assert result.correct, result.mismatches
    assert result.uncomparable == []


@settings(max_examples=150, deadline=None)
@given(nested, st.data())
def test_a_changed_tensor_at_any_depth_is_named_by_its_path(output: Any, data: st.DataObject) -> None:
    paths = [path for path, leaf in walk(output) if isinstance(leaf, torch.Tensor)]
    if not paths:
        return
    target = data.draw(st.sampled_from(range(len(paths))))
    order = iter(range(len(paths)))

    def change(tensor: torch.Tensor) -> torch.Tensor:
        return tensor + 1.0 if next(order) == target else tensor.clone()

    result = compare_outputs(output, map_tensors(output, change))
    assert not result.correct
    assert len(result.mismatches) == 1
    assert result.mismatches[0].startswith(paths[target] + "["), (result.mismatches, paths[target])
