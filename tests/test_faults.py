"""Bad input is refused before anything runs; a failing lane never hangs, leaks or poisons the next call."""

from __future__ import annotations

import sys
import threading
import time
from typing import Any

import pytest
import torch
from models import MLP, BlockingLane, ConcurrentRaiser, RaisingLane, SleepLane, in_lane_thread
from quick import QUICK

from pytest_dualgpu import DualGpuUsageError, LaneError, LaneTimeoutError, dual_infer


class CallCounter(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return x


def assert_healthy_afterwards(threads_before: int) -> None:
    """The next call measures normally and the process is as it was."""
    result = dual_infer(SleepLane(0.005), SleepLane(0.005), torch.ones(2), mode="threads", **QUICK)
    assert result.correct
    assert result.speedup > 1.4
    deadline = time.monotonic() + 5
    while threading.active_count() > threads_before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert threading.active_count() == threads_before


def test_a_lane_that_raises_alone_is_named_with_its_cause() -> None:
    with pytest.raises(LaneError, match=r"lane 'RaisingLane' raised ValueError in the alone run") as info:
        dual_infer(MLP(), RaisingLane(), torch.randn(2, 64), **QUICK)
    assert isinstance(info.value.__cause__, ValueError)
    assert info.value.lane == "RaisingLane"


def test_a_lane_that_raises_concurrently_lets_the_others_finish() -> None:
    finished: list[str] = []

    class Recorder(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            time.sleep(0.02)
            if in_lane_thread():
                finished.append("concurrent")
            return x

    threads_before = threading.active_count()
    switch_interval, intra_op = sys.getswitchinterval(), torch.get_num_threads()
    with pytest.raises(
        LaneError, match=r"lane 'ConcurrentRaiser' raised RuntimeError in the concurrent run"
    ) as info:
        dual_infer(ConcurrentRaiser(), Recorder(), torch.ones(2), mode="threads", **QUICK)
    assert isinstance(info.value.__cause__, RuntimeError)
    assert finished == ["concurrent"]
    assert sys.getswitchinterval() == switch_interval
    assert torch.get_num_threads() == intra_op
    assert_healthy_afterwards(threads_before)


def test_a_lane_that_never_returns_times_out_naming_it() -> None:
    threads_before = threading.active_count()
    blocking = BlockingLane()
    started = time.perf_counter()
    try:
        with pytest.raises(
            LaneTimeoutError, match=r"lane 'BlockingLane' did not return within 0.5 s"
        ) as info:
            dual_infer(MLP(width=4), blocking, torch.ones(1, 4), mode="threads", timeout=0.5, **QUICK)
        assert info.value.lanes == ["BlockingLane"]
        assert time.perf_counter() - started < 5
        assert torch.get_num_threads() >= 1
    finally:
        blocking.release.set()
    assert_healthy_afterwards(threads_before)


def _bad_calls() -> list[Any]:
    mlp = MLP(width=4)
    x = torch.ones(1, 4)
    meta_model = torch.nn.Linear(4, 4, device="meta")
    return [
        pytest.param(lambda: dual_infer.many([], []), "at least 2 models.*an empty list", id="empty"),
        pytest.param(
            lambda: dual_infer.many([mlp], [x]), "at least 2 models to run concurrently, got 1", id="one"
        ),
        pytest.param(lambda: dual_infer.many([mlp, mlp, mlp], [x, x]), "3 models but 2 inputs", id="counts"),
        pytest.param(
            lambda: dual_infer.many([mlp, mlp], x), r"one entry per model, got Tensor.*\[x\] \* 2", id="x"
        ),
        pytest.param(
            lambda: dual_infer(mlp, "model", x), "model 2 is a str, which is not callable", id="callable"
        ),
        pytest.param(
            lambda: dual_infer(mlp, torch.nn.ReLU, x),
            r"model 2 is the class ReLU; pass an instance, ReLU\(\)",
            id="class",
        ),
        pytest.param(
            lambda: dual_infer(mlp, meta_model, x),
            r"has parameters on meta but dual_infer runs on cpu.*place_model\(model\) or model.to\('cpu'\) "
            r"\(a meta model has no weights yet",
            id="device",
        ),
        pytest.param(
            lambda: dual_infer(mlp, mlp, x, budget=0),
            r"budget must be a number of seconds > 0 \(of measuring per call",
            id="budget",
        ),
        pytest.param(lambda: dual_infer(mlp, mlp, x, budget=-1.0), "budget", id="negative-budget"),
        pytest.param(lambda: dual_infer(mlp, mlp, x, timeout=0), "timeout must be", id="timeout"),
        pytest.param(
            lambda: dual_infer(mlp, mlp, x, mode="fast"), "mode 'fast' is not one of auto", id="mode"
        ),
        pytest.param(
            lambda: dual_infer(mlp, mlp, x, bugdet=1), "unknown setting.*bugdet.*accepts", id="typo"
        ),
        pytest.param(
            lambda: dual_infer(mlp, mlp, x, names=["a", "a"]), "lane names must be unique", id="names"
        ),
        pytest.param(
            lambda: dual_infer(mlp, mlp, x, names=["a"]), "names must be 2 non-empty strings", id="nnames"
        ),
        pytest.param(lambda: dual_infer(mlp, mlp, x, atol=1e-3), "give both, or neither", id="tolerance"),
        pytest.param(
            lambda: dual_infer(mlp, mlp, x, min_rounds=0), "min_rounds must be an integer >= 1", id="rounds"
        ),
        pytest.param(lambda: dual_infer(mlp, mlp, x, device="tpu"), "'tpu' is not a device", id="bad-device"),
    ]


@pytest.mark.parametrize(("call", "message"), _bad_calls())
def test_bad_input_is_a_clear_error_before_anything_runs(call: Any, message: str) -> None:
    with pytest.raises(DualGpuUsageError, match=message):
        call()


def test_nothing_runs_when_the_input_is_bad() -> None:
    counter = CallCounter()
    with pytest.raises(DualGpuUsageError):
        dual_infer.many([counter, counter, counter], [torch.ones(1)] * 2)
    with pytest.raises(DualGpuUsageError):
        dual_infer(counter, counter, torch.ones(1), budget=0)
    assert counter.calls == 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_asking_for_cuda_without_it_says_so() -> None:
    with pytest.raises(DualGpuUsageError, match=r"CUDA is not available.*use device='cpu' or 'auto'"):
        dual_infer(MLP(), MLP(), torch.ones(1, 64), device="cuda")


class ExitsOnLaneThreads(torch.nn.Module):
    """Raises ``raised`` from its own code once it runs at once, on a lane thread."""

    def __init__(self, raised: type[BaseException]) -> None:
        super().__init__()
        self.raised = raised

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if in_lane_thread():
            raise self.raised("the model's own code")
        return x * 2


@pytest.mark.parametrize("raised", [SystemExit, KeyboardInterrupt])
@pytest.mark.parametrize("where", ["first call", "lane thread"])
def test_an_exit_raised_inside_a_model_fails_its_lane_not_the_session(
    raised: type[BaseException], where: str
) -> None:
    threads_before = threading.active_count()
    model = RaisingExit(raised) if where == "first call" else ExitsOnLaneThreads(raised)
    with pytest.raises(
        LaneError, match=f"lane 'Exits' raised {raised.__name__} in the .*the model's own code"
    ):
        dual_infer(model, SleepLane(0.001), torch.ones(2), names=["Exits", "Fine"], mode="threads", **QUICK)
    assert_healthy_afterwards(threads_before)


class RaisingExit(torch.nn.Module):
    def __init__(self, raised: type[BaseException]) -> None:
        super().__init__()
        self.raised = raised

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise self.raised("the model's own code")


def test_a_model_left_in_training_mode_is_named_as_the_cause_of_wrong_outputs() -> None:
    from pytest_dualgpu.plugin.verdicts import judge
    from pytest_dualgpu.specs import Tolerance

    def with_dropout() -> torch.nn.Module:
        return torch.nn.Sequential(
            torch.nn.Linear(16, 16), torch.nn.Dropout(0.5)
        )  # training mode: the default

    x = torch.randn(4, 16)
    result = dual_infer(with_dropout(), with_dropout(), x, names=["Drops", "Drops too"], **QUICK)
    assert not result.correct
    assert [lane.training for lane in result.lanes] == [True, True]
    verdict = judge(result, {"dualgpu_correct": Tolerance()})["correct"]
    assert verdict.status == "fail"
    assert "lane 'Drops' is in training mode (dropout or batch norm active)" in verdict.message
    assert "model.eval()" in verdict.message
    evaluated = dual_infer(with_dropout().eval(), with_dropout().eval(), x, **QUICK)
    assert evaluated.correct
    assert [lane.training for lane in evaluated.lanes] == [False, False]
