"""Real third-party models end to end: transformers models built from small configs (``realmodels.py``),
correct in every CPU mode through the API and through a real inner pytest session under
``dualgpu_correct`` and ``dualgpu_sync``; a value broken deep inside a cache object is caught by its path."""

from __future__ import annotations

import json

import pytest
import torch
from quick import QUICK, QUICK_ARGS
from realmodels import ZOO, CacheCorruptedEachCall, gpt2

from pytest_dualgpu import dual_infer
from pytest_dualgpu.engine.trees import walk


@pytest.mark.parametrize("mode", ["sequential", "threads"])
@pytest.mark.parametrize("model", list(ZOO))
def test_each_real_model_beside_another_is_correct_in_every_cpu_mode(model: str, mode: str) -> None:
    (first, first_inputs), (second, second_inputs) = ZOO[model](), ZOO[model]()
    result = dual_infer(first, second, first_inputs, second_inputs, mode=mode, **QUICK)
    assert result.correct, result.mismatches
    assert result.uncomparable == []
    assert result.reliable or result.problems  # measured, whatever this VM made of the timing


def test_a_value_broken_deep_inside_a_cache_is_caught_with_its_path() -> None:
    broken = CacheCorruptedEachCall()
    decoder, inputs = gpt2()
    result = dual_infer(broken, decoder, inputs["input_ids"], inputs, **QUICK)
    assert not result.correct
    with torch.no_grad():
        output = decoder(**inputs)
    key = next(key for key, value in output.items() if value is output.past_key_values)
    cache_paths = [
        path
        for path, leaf in walk(output.past_key_values, f"output[{key!r}]")
        if isinstance(leaf, torch.Tensor)
    ]
    expected = f"lane 'CacheCorruptedEachCall' {cache_paths[2]}[0, 0, 3, 2]: Tensor-likes are not close!"
    assert result.mismatches[0].startswith(expected), (result.mismatches[0], expected)
    assert len(result.mismatches) == 1  # the decoder beside it, and the rest of the cache, are right


INNER = """
import pytest
import torch
from realmodels import ZOO


@pytest.mark.dualgpu_correct
@pytest.mark.dualgpu_sync(trials=2)
@pytest.mark.parametrize("model", list(ZOO))
def test_real_pair(dual_infer, model):
    (first, first_inputs), (second, second_inputs) = ZOO[model](), ZOO[model]()
    dual_infer(first, second, first_inputs, second_inputs)
"""


def test_real_models_pass_the_correct_and_sync_markers_in_an_inner_session(suite: pytest.Pytester) -> None:
    # The inner session runs in this process and imports the suite's own realmodels, already loaded here.
    suite.makepyfile(test_real=INNER)
    result = suite.runpytest(
        *QUICK_ARGS, "-p", "no:randomly", "--dualgpu-report=json:out.json",
        f"--rootdir={suite.path}", "-W", "ignore::DeprecationWarning",
    )  # fmt: skip
    result.assert_outcomes(passed=len(ZOO))
    rows = json.loads((suite.path / "out.json").read_text())["results"]
    assert [row["verdicts"]["correct"] for row in rows] == ["pass"] * len(ZOO)
    assert [row["verdicts"]["sync"] for row in rows] == ["pass"] * len(ZOO)
    assert all(row["sync"]["race_trials"] == 2 for row in rows)
