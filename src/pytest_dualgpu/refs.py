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

from .errors import DualGpuUsageError

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
                f"{what} {reference!r}: cannot import {location!r} ({error}); is it installed, or did you "
                "mean a file path ending in .py?"
            ) from None
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
    if not path.is_file():
        raise DualGpuUsageError(f"{what} {reference!r}: no such file {str(path)!r}")
    module_name = f"_dualgpu_ref_{abs(hash(path.resolve()))}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise DualGpuUsageError(f"{what} {reference!r}: {str(path)!r} cannot be imported as Python")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.resolve().parent))  # so the file can import its neighbours
    try:
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    except Exception as error:
        del sys.modules[module_name]
        raise DualGpuUsageError(
            f"{what} {reference!r}: importing {str(path)!r} raised {type(error).__name__}: {error}"
        ) from error
    finally:
        sys.path.remove(str(path.resolve().parent))
    return module


@dataclass(frozen=True)
class ModelRef:
    """A model reference; ``load`` gives a fresh model each time (a second copy for a replica pair)."""

    text: str

    @property
    def name(self) -> str:
        return self.text.rpartition(":")[2]

    def load(self) -> torch.nn.Module:
        found = load_object(self.text, "model", MODEL_FORMS)
        if isinstance(found, torch.nn.Module):
            return copy.deepcopy(found)
        if callable(found):
            try:
                made = found()
            except TypeError as error:
                raise DualGpuUsageError(
                    f"model {self.text!r}: calling {self.name}() failed ({error}); a class or factory must "
                    f"work without arguments; use {MODEL_FORMS}"
                ) from None
            except Exception as error:
                raise DualGpuUsageError(
                    f"model {self.text!r}: {self.name}() raised {_described(error)}"
                ) from error
            if isinstance(made, torch.nn.Module):
                return made
            raise DualGpuUsageError(
                f"model {self.text!r}: {self.name}() returned {type(made).__name__}, not an nn.Module"
            )
        raise DualGpuUsageError(f"model {self.text!r} is a {type(found).__name__}; use {MODEL_FORMS}")


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
        """Fresh inputs on the CPU; ``batch`` replaces the first size, ``dtype`` the float dtype."""
        if self.shape is None:
            return _referenced_inputs(self.text, batch)
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
    takes_batch = bool(inspect.signature(found).parameters)
    if batch is not None and not takes_batch:
        raise DualGpuUsageError(f"input {reference!r}: a batch sweep needs a function taking the batch size")
    try:
        return found(batch or EXAMPLE_BATCH) if takes_batch else found()
    except Exception as error:
        raise DualGpuUsageError(f"input {reference!r} raised {_described(error)}") from error


def _described(error: BaseException) -> str:
    return f"{type(error).__name__}: {(str(error).strip().splitlines() or [''])[0]}"


def inputs_for(model: torch.nn.Module, spec: InputSpec | None, batch: int | None = None) -> Any:
    """The inputs of one model: its spec, or its own ``example_inputs(batch)``."""
    if spec is not None:
        return spec.make(batch)
    example = getattr(model, "example_inputs", None)
    if callable(example):
        try:
            return example(batch or EXAMPLE_BATCH)
        except Exception as error:
            raise DualGpuUsageError(
                f"{type(model).__name__}.example_inputs raised {_described(error)}"
            ) from error
    raise DualGpuUsageError(
        f"{type(model).__name__} needs inputs: give --inputs ({INPUT_FORMS}), or give the model an "
        "example_inputs(batch) method"
    )
