"""Every form a model comes in, in every mode the CPU offers: plain functions, bound methods, scripted,
traced and compiled modules, modules under autocast, channels-last conv nets, modules with buffers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from models import MLP, SmallCNN
from quick import QUICK

from pytest_dualgpu import dual_infer

MODES = ["sequential", "threads"]


def doubled_relu(x: torch.Tensor) -> torch.Tensor:
    return torch.relu(x) * 2


class Projector:
    """A plain object whose bound method is the model."""

    def __init__(self) -> None:
        self.weight = torch.randn(64, 64, generator=torch.Generator().manual_seed(1))

    def project(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight


class Scaled(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(64, 64)
        self.register_buffer("scale", torch.full((64,), 2.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) * self.scale


def channels_last_cnn() -> torch.nn.Module:
    return SmallCNN().eval().to(memory_format=torch.channels_last)  # type: ignore[call-overload, no-any-return]


def rows() -> torch.Tensor:
    return torch.randn(4, 64, generator=torch.Generator().manual_seed(0))


def images() -> torch.Tensor:
    return torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)).to(
        memory_format=torch.channels_last
    )


FORMS: dict[str, tuple[Callable[[], Any], Callable[[], torch.Tensor], str]] = {
    "function": (lambda: doubled_relu, rows, "doubled_relu"),
    "bound method": (lambda: Projector().project, rows, "Projector.project"),
    "scripted module": (lambda: torch.jit.script(MLP().eval()), rows, "MLP"),
    "traced module": (lambda: torch.jit.trace(MLP().eval(), rows()), rows, "MLP"),
    "module with buffers": (lambda: Scaled().eval(), rows, "Scaled"),
    "channels-last conv net": (channels_last_cnn, images, "SmallCNN"),
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("form", list(FORMS))
def test_every_form_is_correct_in_every_cpu_mode_and_named_after_its_model(form: str, mode: str) -> None:
    make, inputs, name = FORMS[form]
    result = dual_infer(make(), make(), inputs(), mode=mode, **QUICK)
    assert result.mode == mode
    assert result.correct, result.mismatches
    assert result.lane_names == [name, f"{name}-2"]


@pytest.mark.parametrize("mode", MODES)
def test_modules_under_autocast_run_in_bfloat16_on_every_lane(mode: str) -> None:
    with torch.autocast("cpu", dtype=torch.bfloat16):
        result = dual_infer(MLP().eval(), MLP().eval(), rows(), mode=mode, **QUICK)
    assert result.correct, result.mismatches
    assert result.outputs is not None
    assert result.reference is not None
    assert all(output.dtype == torch.bfloat16 for output in result.outputs)
    assert all(output.dtype == torch.bfloat16 for output in result.reference)


def test_compiled_modules_are_compiled_one_at_a_time_before_they_run_at_once() -> None:
    compiled = [torch.compile(MLP().eval()), torch.compile(MLP().eval())]
    for mode in MODES:
        result = dual_infer(*compiled, rows(), mode=mode, warmup=3, budget=0.1, max_budget=3)
        assert result.correct, result.mismatches
        assert result.lane_names == ["MLP", "MLP-2"]
        # The first call compiles; it is bounded by the timeout, not counted against the warm-up cap.
        assert not any("did not settle" in warning for warning in result.warnings), result.warnings
