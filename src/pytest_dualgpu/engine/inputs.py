"""Turning the user's models and inputs into lanes, with every check that must pass before anything runs."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Sequence
from typing import Any

import torch

from pytest_dualgpu.engine.devices import model_devices, same_device
from pytest_dualgpu.engine.executor import Lane
from pytest_dualgpu.engine.trees import map_tensors
from pytest_dualgpu.errors import DualGpuUsageError


def make_lanes(
    models: Sequence[Callable[..., Any]],
    inputs: Sequence[Any],
    names: Sequence[str] | None,
    device: torch.device,
) -> list[Lane]:
    lane_names = lane_names_for(models, names)
    check_models(models, inputs, lane_names, device)
    return [
        Lane(lane_name, model, *arguments(to_device(lane_inputs, device)))
        for lane_name, model, lane_inputs in zip(lane_names, models, inputs, strict=True)
    ]


def lane_names_for(models: Sequence[Callable[..., Any]], names: Sequence[str] | None) -> list[str]:
    if not isinstance(models, Sequence):
        raise DualGpuUsageError(
            f"models must be a list of models, got {type(models).__name__}; "
            "e.g. dual_infer.many([m1, m2], [x1, x2])"
        )
    if len(models) < 2:
        raise DualGpuUsageError(
            f"dual_infer needs at least 2 models to run concurrently, got {len(models)}"
            + (" (an empty list)" if not models else "")
        )
    for number, model in enumerate(models, start=1):
        if isinstance(model, type) and issubclass(model, torch.nn.Module):
            raise DualGpuUsageError(
                f"model {number} is the class {model.__name__}; pass an instance, {model.__name__}()"
            )
        if not callable(model):
            raise DualGpuUsageError(
                f"model {number} is a {type(model).__name__}, which is not callable; "
                "pass an nn.Module or a function"
            )
    if names is not None:
        names = list(names)
        if len(names) != len(models) or not all(isinstance(item, str) and item for item in names):
            raise DualGpuUsageError(
                f"names must be {len(models)} non-empty strings, one per model, got {names!r}"
            )
        if len(set(names)) != len(names):
            raise DualGpuUsageError(f"lane names must be unique, got {names!r}")
        return names
    unique: list[str] = []
    for model in models:
        base = _model_name(model)
        candidate, count = base, 1
        while candidate in unique:
            count += 1
            candidate = f"{base}-{count}"
        unique.append(candidate)
    return unique


def _model_name(model: Callable[..., Any]) -> str:
    """The name a person knows the model by: the class of the module that a compiled, scripted or traced
    wrapper holds, ``Class.method`` for a bound method, a function's name."""
    if isinstance(model, functools.partial):
        return _model_name(model.func)
    original = getattr(model, "_orig_mod", None)  # torch.compile's OptimizedModule
    if isinstance(original, torch.nn.Module):
        return _model_name(original)
    if isinstance(model, torch.jit.ScriptModule):
        return str(getattr(model, "original_name", type(model).__name__))
    if isinstance(model, torch.nn.Module) or not hasattr(model, "__name__"):
        return type(model).__name__
    owner = getattr(model, "__self__", None)
    if owner is not None and not isinstance(owner, type(sys)):
        return f"{type(owner).__name__}.{model.__name__}"
    return str(model.__name__)


def check_models(
    models: Sequence[Callable[..., Any]], inputs: Sequence[Any], names: list[str], device: torch.device
) -> None:
    if isinstance(inputs, (torch.Tensor, str, bytes, dict)) or not isinstance(inputs, Sequence):
        raise DualGpuUsageError(
            f"inputs must be a list with one entry per model, got {type(inputs).__name__}; "
            f"to give every model the same input, pass [x] * {len(models)}"
        )
    if len(inputs) != len(models):
        raise DualGpuUsageError(
            f"{len(models)} models but {len(inputs)} inputs: "
            "give one input (tensor, tuple, list or dict) per model"
        )
    for lane_name, model in zip(names, models, strict=True):
        for found in model_devices(model):
            if not same_device(found, device):
                other = f", or pass device='{found}'" if found.type in ("cpu", "cuda") else ""
                if found.type == "meta":
                    other = " (a meta model has no weights yet: load them first, e.g. with to_empty())"
                raise DualGpuUsageError(
                    f"model {lane_name!r} has parameters on {found} but dual_infer runs on {device}: "
                    f"place it with place_model(model) or model.to('{device}'){other}"
                )


def arguments(inputs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """A tensor -> ``model(x)``; a tuple/list -> ``model(*args)``; a dict -> ``model(**kwargs)``."""
    if isinstance(inputs, dict):
        return (), inputs
    if isinstance(inputs, (tuple, list)):
        return tuple(inputs), {}
    return (inputs,), {}


def to_device(tree: Any, device: torch.device) -> Any:
    """Tensors inside nested inputs, on the device (copies only where they were elsewhere)."""
    return map_tensors(
        tree, lambda tensor: tensor if same_device(tensor.device, device) else tensor.to(device)
    )
