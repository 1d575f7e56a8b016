"""The engine on CPU: deterministic timing controls, real models in every mode, the result's fields."""

from __future__ import annotations

import json
import sys
import threading
import time

import pytest
import torch
from lockholder import lock_held_here
from models import MLP, GilLane, SleepLane, SmallCNN, TinyTransformer, in_lane_thread, text_inputs

from pytest_dualgpu import DualResult, dual_infer
from pytest_dualgpu.engine.backends import Backend
from pytest_dualgpu.modes import MODES
from pytest_dualgpu.results import Measurement

#: Timing here comes from pairs of like sleeping or GIL-holding lanes: nothing to warm up, and nothing the
#: settling pauses guard against (OpenMP workers, or a GIL-holding lane beside a nearly free one). The small
#: real models are checked for their outputs, not their speed.
FAST = {"budget": 0.1, "max_budget": 3, "warmup": 0, "settle": 0}


def test_sleeping_lanes_overlap_almost_perfectly() -> None:
    result = dual_infer(SleepLane(), SleepLane(), torch.ones(4), mode="threads", **FAST)
    assert result.mode == "threads"
    assert result.speedup > 1.6
    assert result.overlap > 0.8
    assert result.ideal_speedup == pytest.approx(2.0, rel=0.1)
    assert result.efficiency is not None
    assert result.efficiency > 0.6
    assert result.correct


def test_lanes_holding_the_gil_do_not_overlap() -> None:
    result = dual_infer(GilLane(), GilLane(), torch.ones(4), mode="threads", **FAST)
    assert result.speedup < 1.3
    assert result.efficiency is not None
    assert result.efficiency < 0.3
    # The interpreter hands the GIL over every 5 ms, so 10 ms calls are time-sliced: their envelopes may
    # overlap although nothing ran at once. Efficiency is what says the overlap did not pay.


def test_sequential_mode_does_not_overlap() -> None:
    result = dual_infer(SleepLane(), SleepLane(), torch.ones(4), mode="sequential", **FAST)
    assert result.mode == "sequential"
    assert result.overlap < 0.05
    assert 0.8 < result.speedup < 1.2


@pytest.mark.parametrize("mode", ["auto", *MODES])
def test_real_models_give_correct_outputs_in_every_mode(mode: str) -> None:
    image_model, text_model = SmallCNN().eval(), TinyTransformer().eval()
    images = torch.randn(2, 3, 16, 16)
    result = dual_infer(image_model, text_model, images, text_inputs(), mode=mode, **FAST)
    assert result.correct, result.mismatches
    assert result.max_abs_err < 1e-5
    assert result.lane_names == ["SmallCNN", "TinyTransformer"]
    with torch.no_grad():
        torch.testing.assert_close(result.outputs[0], image_model(images))
        expected_text = text_model(**text_inputs())
    torch.testing.assert_close(result.outputs[1], expected_text)
    if mode in ("streams", "graphs"):
        assert result.mode == "threads"
        assert any(f"mode {mode!r} needs CUDA" in warning for warning in result.warnings)
    else:
        assert result.mode == ("threads" if mode == "auto" else mode)


def test_many_lanes_get_unique_names_and_share_the_intra_op_threads() -> None:
    seen: dict[str, list[int]] = {"lane": [], "baseline": []}

    class ThreadCounter(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen["lane" if in_lane_thread() else "baseline"].append(torch.get_num_threads())
            return x + 1

    before = torch.get_num_threads()
    models = [ThreadCounter(), ThreadCounter(), MLP()]
    inputs = [torch.ones(2, 64)] * 3
    result = dual_infer.many(models, inputs, mode="threads", **FAST)
    assert result.lane_names == ["ThreadCounter", "ThreadCounter-2", "MLP"]
    assert result.name == "ThreadCounter+ThreadCounter-2+MLP"
    assert result.ideal_speedup <= 3.0
    assert set(seen["baseline"]) == {before}
    assert set(seen["lane"]) == {max(1, before // 3)}
    assert torch.get_num_threads() == before


@pytest.mark.parametrize(
    ("inputs", "expected"),
    [
        (torch.ones(2), ((torch.ones(2),), {})),
        ((torch.ones(2), 3), ((torch.ones(2), 3), {})),
        ([torch.ones(2)], ((torch.ones(2),), {})),
        ({"x": torch.ones(2), "scale": 2}, ((), {"x": torch.ones(2), "scale": 2})),
    ],
)
def test_inputs_are_passed_as_tensor_args_or_kwargs(inputs: object, expected: tuple[object, object]) -> None:
    received: list[tuple[object, object]] = []

    def recorder(*args: object, **kwargs: object) -> torch.Tensor:
        received.append((args, kwargs))
        return torch.zeros(1)

    dual_infer(recorder, MLP(width=2), inputs, torch.ones(2), names=["rec", "mlp"], mode="sequential", **FAST)
    torch.testing.assert_close(received[0], expected)


def test_models_are_not_modified() -> None:
    model = MLP().train()
    before = {key: value.clone() for key, value in model.state_dict().items()}
    dual_infer(model, MLP(), torch.randn(3, 64), **FAST)
    assert model.training
    torch.testing.assert_close(model.state_dict(), before)


def test_result_fields_and_json_round_trip() -> None:
    result = dual_infer(
        MLP(), MLP(), torch.randn(4, 64), name="pair", min_rounds=9, budget=0.1, max_budget=10
    )
    assert result.name == "pair"
    assert result.device == "cpu"
    assert result.rounds >= 9
    assert result.sequential.n == result.concurrent.n == result.rounds
    assert all(lane.alone.n == result.rounds for lane in result.lanes)
    lo, hi = result.speedup_ci
    assert lo <= result.speedup <= hi
    assert result.memory is None
    assert result.kernel_overlap is None
    assert [probe.mode for probe in result.modes] == ["threads"]
    assert result.modes[0].chosen
    assert {line.lane for line in result.timelines["concurrent"]} == {"MLP", "MLP-2"}
    assert all(len(line.intervals) == result.reps for line in result.timelines["concurrent"])
    data = json.loads(json.dumps(result.to_dict()))
    assert "outputs" not in data
    assert "reference" not in data
    again = DualResult.from_dict(data)
    assert again == result
    assert again.outputs is None


def test_process_settings_are_restored_after_a_call() -> None:
    interval, threads, alive = sys.getswitchinterval(), torch.get_num_threads(), threading.active_count()
    dual_infer(GilLane(0.001), SleepLane(0.001), torch.ones(1), mode="threads", **FAST)
    assert sys.getswitchinterval() == interval
    assert torch.get_num_threads() == threads
    assert threading.active_count() == alive


def test_bound_settings_apply_and_calls_can_override_them() -> None:
    results: list[DualResult] = []
    bound = dual_infer.bind(mode="sequential", budget=0.01, on_result=results.append)
    first = bound(SleepLane(0.001), SleepLane(0.001), torch.ones(1))
    second = bound(SleepLane(0.001), SleepLane(0.001), torch.ones(1), mode="threads")
    assert (first.mode, second.mode) == ("sequential", "threads")
    assert results == [first, second]


def test_noisy_measurements_are_flagged() -> None:
    steady = Measurement.from_samples([1.0, 1.0, 1.01, 1.0])
    noisy = Measurement.from_samples([1.0, 2.0, 1.0, 2.0, 1.5])
    assert not steady.noisy
    assert noisy.noisy
    assert noisy.relative_iqr > 0.1


def test_auto_probes_each_mode_and_keeps_the_fastest(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Backend, "concurrent_modes", ("sequential", "threads"))
    result = dual_infer(SleepLane(), SleepLane(), torch.ones(2), **FAST)
    assert [probe.mode for probe in result.modes] == ["sequential", "threads"]
    sequential, threads = result.modes
    assert result.mode == "threads"
    assert threads.chosen
    assert not sequential.chosen
    assert sequential.concurrent is not None
    assert threads.concurrent is not None
    assert threads.concurrent < sequential.concurrent
    assert sequential.speedup == pytest.approx(1.0, abs=0.2)


def test_measuring_waits_for_the_device_lock_and_says_so() -> None:
    results: list[DualResult] = []
    with lock_held_here():
        worker = threading.Thread(
            target=lambda: results.append(
                dual_infer(SleepLane(0.001), SleepLane(0.001), torch.ones(1), **FAST)
            )
        )
        worker.start()
        time.sleep(1.2)
        assert not results
    worker.join(timeout=30)
    assert any("waited" in warning and "measuring lock" in warning for warning in results[0].warnings)


def test_lane_threads_inherit_the_callers_autocast() -> None:
    with torch.autocast("cpu", dtype=torch.bfloat16):
        result = dual_infer(MLP(), MLP(), torch.randn(4, 64), mode="threads", **FAST)
    assert result.correct, result.mismatches
    assert [output.dtype for output in result.outputs] == [torch.bfloat16, torch.bfloat16]
