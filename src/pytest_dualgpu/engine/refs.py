"""What the ``dualgpu`` command is told to measure: model references and input specs.

A model is named the way entry points name objects, ``package.module:name`` or ``path/to/file.py:name``;
the name may be a module instance, an ``nn.Module`` class or a zero-argument factory. Inputs are a shape
(``1x3x224x224``, optionally ``:float16``) or a reference to a value or a function that makes them. A
model with an ``example_inputs(batch)`` method needs no input spec at all.
"""

from __future__ import annotations

import copy
import importlib
import importlib.util
import inspect
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pytest_dualgpu.engine.trees import iter_tensors, map_tensors
from pytest_dualgpu.errors import DualGpuError, DualGpuUsageError, described

MODEL_FORMS = (
    "package.module:name or path/to/file.py:name, where name is an nn.Module instance, an nn.Module class "
    "or a function that takes no arguments and returns a model"
)
INPUT_FORMS = (
    "a shape such as 1x3x224x224, optionally with a dtype (1x3x224x224:float16, 8x128:int64), or "
    "package.module:name / path/to/file.py:name naming a tensor, a tuple, a dict, or a function that "
    "returns one (given the batch size if it takes an argument)"
)
DTYPES = {
    name: getattr(torch, name)
    for name in ("float32", "float16", "bfloat16", "float64", "int64", "int32", "int8", "uint8", "bool")
}
INTEGER_HIGH = 100  # integer inputs are drawn from [0, 100): token ids any small vocabulary accepts
EXAMPLE_BATCH = 8  # the batch of a model's own example_inputs when no sweep chooses one
_SHAPE = re.compile(r"\d+(x\d+)*")


def load_object(reference: str, what: str, forms: str) -> Any:
    """The object a ``module:name`` or ``file.py:name`` reference names."""
    location, _, name = reference.rpartition(":")
    if not location or not name.isidentifier():
        raise DualGpuUsageError(f"{what} {reference!r} is not a reference; use {forms}")
    if location.endswith(".py") or "/" in location or "\\" in location:
        module = _module_from_file(Path(location), reference, what)
    else:
        try:
            module = importlib.import_module(location)
        except ImportError as error:
            raise DualGpuUsageError(
                f"{what} {reference!r}: cannot import {location!r} ({error}); is it installed (or in the "
                "current directory), or did you mean a file path ending in .py?"
            ) from None
        except Exception as error:
            raise DualGpuUsageError(
                f"{what} {reference!r}: importing {location!r} raised {described(error)}"
            ) from error
    try:
        return getattr(module, name)
    except AttributeError:
        public = sorted(
            item
            for item, value in vars(module).items()
            if not item.startswith("_") and callable(value) and not inspect.ismodule(value)
        )
        raise DualGpuUsageError(
            f"{what} {reference!r}: {location} has no {name!r} "
            f"(it has: {', '.join(public[:12]) or 'nothing public'})"
        ) from None


def _module_from_file(path: Path, reference: str, what: str) -> Any:
    """The file imported under its own name, its folder on ``sys.path`` as ``python file.py`` would have
    it: a neighbour that imports it by name then gets the same module, not a second copy of its classes."""
    if not path.is_file():
        raise DualGpuUsageError(f"{what} {reference!r}: no such file {str(path)!r}")
    folder = str(path.resolve().parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    module_name = path.stem
    loaded = sys.modules.get(module_name)
    if loaded is not None and Path(getattr(loaded, "__file__", "") or "").resolve() == path.resolve():
        return loaded
    if loaded is not None:
        module_name = f"_dualgpu_{abs(hash(path.resolve()))}_{path.stem}"  # the name is someone else's
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise DualGpuUsageError(f"{what} {reference!r}: {str(path)!r} cannot be imported as Python")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as error:
        del sys.modules[module_name]
        raise DualGpuUsageError(
            f"{what} {reference!r}: importing {str(path)!r} raised {described(error)}"
        ) from error
    return module


class ModelBuildError(DualGpuError):
    """The user's own code raised while building a model or its inputs: that model failed, not the usage."""


@dataclass(frozen=True)
class ModelRef:
    """A model reference; ``load`` gives a fresh model each time (a second copy for a replica pair)."""

    text: str

    @property
    def name(self) -> str:
        return self.text.rpartition(":")[2]

    def lane_name(self, model: torch.nn.Module) -> str:
        """The name a lane of ``model`` (built from this reference) goes by: the referenced name, or the
        model's class where the reference is a factory (``make_detector`` builds a Detector)."""
        found = load_object(self.text, "model", MODEL_FORMS)
        if isinstance(found, (type, torch.nn.Module)):
            return self.name
        return type(model).__name__

    def load(self) -> torch.nn.Module:
        found = load_object(self.text, "model", MODEL_FORMS)
        if isinstance(found, torch.nn.Module):
            return copy.deepcopy(found)
        if not callable(found):
            raise DualGpuUsageError(f"model {self.text!r} is a {type(found).__name__}; use {MODEL_FORMS}")
        try:
            inspect.signature(found).bind()
        except TypeError as error:
            raise DualGpuUsageError(
                f"model {self.text!r}: {self.name}() cannot be called without arguments ({error}); use "
                f"{MODEL_FORMS}"
            ) from None
        except ValueError:
            pass  # no signature to read (a builtin): calling it tells
        try:
            made = found()
        except Exception as error:
            raise ModelBuildError(f"model {self.text!r}: {self.name}() raised {described(error)}") from error
        if isinstance(made, torch.nn.Module):
            return made
        raise DualGpuUsageError(
            f"model {self.text!r}: {self.name}() returned {type(made).__name__}, not an nn.Module"
        )


@dataclass(frozen=True)
class InputSpec:
    """Inputs for one model: a shape and dtype, or a reference (``text`` as given)."""

    text: str
    shape: tuple[int, ...] | None = None
    dtype: torch.dtype | None = None

    @classmethod
    def parse(cls, text: str) -> InputSpec:
        shape_text, _, dtype_text = text.partition(":")
        if _SHAPE.fullmatch(shape_text):
            if dtype_text and dtype_text not in DTYPES:
                raise DualGpuUsageError(
                    f"input {text!r}: unknown dtype {dtype_text!r}; use one of {', '.join(DTYPES)}"
                )
            shape = tuple(int(size) for size in shape_text.split("x"))
            if 0 in shape:
                raise DualGpuUsageError(f"input {text!r}: every size must be at least 1")
            return cls(text, shape, DTYPES[dtype_text] if dtype_text else None)
        if ":" in text:
            return cls(text)
        raise DualGpuUsageError(f"input {text!r} is not an input spec; use {INPUT_FORMS}")

    def make(self, batch: int | None = None, dtype: torch.dtype | None = None) -> Any:
        """Fresh inputs on the CPU; ``batch`` replaces the first size; ``dtype`` is the float dtype where
        the spec names none (an explicit one wins)."""
        if self.shape is None:
            return _cast(_referenced_inputs(self.text, batch), dtype)
        shape = self.shape if batch is None else (batch, *self.shape[1:])
        chosen = self.dtype or dtype or torch.float32
        if chosen.is_floating_point:
            return torch.randn(shape, dtype=chosen)
        if chosen == torch.bool:
            return torch.ones(shape, dtype=torch.bool)
        return torch.randint(0, INTEGER_HIGH, shape, dtype=chosen)


def _referenced_inputs(reference: str, batch: int | None) -> Any:
    found = load_object(reference, "input", INPUT_FORMS)
    if not callable(found):
        if batch is not None:
            raise DualGpuUsageError(
                f"input {reference!r} is a fixed value; a batch sweep needs a shape spec or a function "
                "that takes the batch size"
            )
        return found
    try:
        takes_batch = bool(inspect.signature(found).parameters)
    except ValueError:
        raise DualGpuUsageError(
            f"input {reference!r} is a builtin whose arguments cannot be read; wrap it in a function "
            "(def inputs(batch): ...)"
        ) from None
    if batch is not None and not takes_batch:
        raise DualGpuUsageError(f"input {reference!r}: a batch sweep needs a function taking the batch size")
    try:
        made = found(batch or EXAMPLE_BATCH) if takes_batch else found()
    except Exception as error:
        raise ModelBuildError(f"input {reference!r} raised {described(error)}") from error
    if batch is not None:
        _check_batch(made, batch, f"input {reference!r}")
    return made


def _check_batch(inputs: Any, batch: int, source: str) -> None:
    """Throughput is batch / time: inputs of another batch size would make it a lie."""
    first = next(iter_tensors(inputs), None)
    if first is not None and first.dim() > 0 and first.shape[0] != batch:
        raise DualGpuUsageError(f"{source} gave a batch of {first.shape[0]} for batch size {batch}")


def _cast(inputs: Any, dtype: torch.dtype | None) -> Any:
    if dtype is None:
        return inputs
    return map_tensors(inputs, lambda tensor: tensor.to(dtype) if tensor.is_floating_point() else tensor)


def inputs_for(
    model: torch.nn.Module, spec: InputSpec | None, batch: int | None = None, dtype: torch.dtype | None = None
) -> Any:
    """The inputs of one model: its spec, or its own ``example_inputs(batch)``; floats in ``dtype``."""
    if spec is not None:
        return spec.make(batch, dtype)
    example = getattr(model, "example_inputs", None)
    if not callable(example):
        raise DualGpuUsageError(
            f"{type(model).__name__} needs inputs: give --inputs ({INPUT_FORMS}), or give the model an "
            "example_inputs(batch) method"
        )
    try:
        made = example(batch or EXAMPLE_BATCH)
    except Exception as error:
        raise ModelBuildError(f"{type(model).__name__}.example_inputs raised {described(error)}") from error
    if batch is not None:
        _check_batch(made, batch, f"{type(model).__name__}.example_inputs")
    return _cast(made, dtype)
