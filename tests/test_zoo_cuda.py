"""Real models and compiled models on a GPU, ``pytest -m cuda``: every CUDA mode, and models compiled with
``mode="reduce-overhead"``, whose CUDA graph trees are kept per thread and reuse their output memory."""

from __future__ import annotations

import pytest
import torch
from models import MLP
from realmodels import ZOO

from pytest_dualgpu import dual_infer, place_model

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

FAST = {"budget": 0.2, "warmup": 1.0}


def on_gpu(build: object) -> tuple[torch.nn.Module, dict[str, object]]:
    model, inputs = build()  # type: ignore[operator]
    return place_model(model, "cuda"), {
        k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in inputs.items()
    }


@pytest.mark.parametrize("mode", ["streams", "threads", "graphs"])
@pytest.mark.parametrize("model", list(ZOO))
def test_each_real_model_is_correct_in_every_cuda_mode(model: str, mode: str) -> None:
    (first, first_inputs), (second, second_inputs) = on_gpu(ZOO[model]), on_gpu(ZOO[model])
    result = dual_infer(first, second, first_inputs, second_inputs, mode=mode, **FAST)
    assert result.correct, result.mismatches
    # A model whose forward syncs with the host (or has dynamic shapes) falls back from graphs, saying why.
    assert result.mode == mode or any(probe.error for probe in result.modes)


@pytest.mark.parametrize("mode", ["streams", "threads"])
def test_reduce_overhead_compiled_models_stay_correct_on_lane_threads(mode: str) -> None:
    """CUDA graph trees are per thread: each lane thread records its own graphs (on its first calls, one
    lane at a time), and a replay of any graph of a thread's trees reuses the output memory of the one
    before, so the engine copies each output as its lane returns it, in the race trials too."""
    x = torch.randn(8, 64, device="cuda")
    compiled = [torch.compile(place_model(MLP(), "cuda"), mode="reduce-overhead") for _ in range(2)]
    result = dual_infer(*compiled, x, mode=mode, race_trials=4, **FAST)
    assert result.correct, result.mismatches
    assert (result.sync.race_trials, result.sync.race_failures) == (4, 0), result.sync.first_failure
    assert result.reference is not None
    assert result.reference[0].shape == (8, 64)
