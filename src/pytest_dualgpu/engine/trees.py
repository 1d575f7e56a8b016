"""One walk over whatever models take and return: the tensors inside, with the path to each.

Models return more than tensors in tuples: dicts and named tuples, dataclasses, transformers'
``ModelOutput`` (a dict and a dataclass at once), cache objects whose layout changes between
transformers versions (a list of layers, each holding its keys and values), NumPy arrays, and objects of
the user's own that hold tensors in their attributes. Rather than special-casing each class, the walk
goes into any object through its attributes, guarding against cycles and visiting a shared object once.

Every consumer of nested values uses this walk: the comparison of outputs with the reference
(``compare.py``), moving inputs to the device, cloning graph outputs, and the sync checks' search for
inputs that lanes share.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import enum
import types
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch

#: Values compared as they are: equality means what it says for them.
PLAIN = (type(None), bool, int, float, complex, str, bytes, enum.Enum, torch.dtype, torch.device, range)


class Kind(enum.Enum):
    TENSOR = "tensor"
    ARRAY = "array"  # a NumPy array
    PLAIN = "plain"
    MAPPING = "mapping"
    NAMED_TUPLE = "named tuple"
    SEQUENCE = "sequence"
    DATACLASS = "dataclass"
    ITERATOR = "iterator"  # a generator or iterator: its work runs only when someone iterates
    OBJECT = "object"  # anything else with attributes
    OPAQUE = "opaque"  # no attributes and no equality of its own: nothing to compare


def kind(value: Any) -> Kind:
    if isinstance(value, torch.Tensor):
        return Kind.TENSOR
    if is_array(value):
        return Kind.ARRAY
    if isinstance(value, (*PLAIN, type, torch.nn.Module)):
        return Kind.PLAIN  # a module is a model, compared as itself, never walked into
    if isinstance(value, Mapping):
        return Kind.MAPPING
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return Kind.NAMED_TUPLE
    if isinstance(value, (list, tuple)):
        return Kind.SEQUENCE
    if isinstance(value, (types.GeneratorType, types.AsyncGeneratorType)) or (
        isinstance(value, Iterator) and not isinstance(value, (list, tuple, dict, str, bytes))
    ):
        return Kind.ITERATOR
    if dataclasses.is_dataclass(value):
        return Kind.DATACLASS
    if attributes(value):
        return Kind.OBJECT
    if _has_own_equality(value) or isinstance(value, (set, frozenset)):
        return Kind.PLAIN
    return Kind.OPAQUE


def _has_own_equality(value: Any) -> bool:
    """Whether the type says what equal means, rather than inheriting identity from ``object``."""
    own: object = type(value).__eq__
    return own is not object.__eq__


def is_array(value: Any) -> bool:
    """A NumPy array, without importing NumPy (a suite that never uses it should not pay for it)."""
    return type(value).__module__ == "numpy" and type(value).__name__ == "ndarray"


def attributes(value: Any) -> dict[str, Any]:
    """An object's own attributes: ``__dict__`` and ``__slots__``, without its methods or class data."""
    found: dict[str, Any] = {}
    with contextlib.suppress(TypeError):  # no __dict__: slots only, or a value of a C type
        found.update(vars(value))
    for cls in type(value).__mro__:
        for name in getattr(cls, "__slots__", ()):
            if name not in found and name not in ("__dict__", "__weakref__") and hasattr(value, name):
                found[name] = getattr(value, name)
    return found


def children(value: Any, path: str) -> list[tuple[str, Any]]:
    """The parts of a container or object, each with its path."""
    found = kind(value)
    if found is Kind.MAPPING:
        return [(f"{path}[{key!r}]", item) for key, item in value.items()]
    if found is Kind.NAMED_TUPLE:
        return [(f"{path}.{name}", getattr(value, name)) for name in value._fields]
    if found is Kind.SEQUENCE:
        return [(f"{path}[{index}]", item) for index, item in enumerate(value)]
    if found is Kind.DATACLASS:
        return [(f"{path}.{item.name}", getattr(value, item.name)) for item in dataclasses.fields(value)]
    if found is Kind.OBJECT:
        return [(f"{path}.{name}", item) for name, item in attributes(value).items()]
    return []


def walk(tree: Any, path: str = "output") -> Iterator[tuple[str, Any]]:
    """Every leaf (tensor, array, plain value, iterator, opaque object) with its path, depth first; a
    tensor or object reached twice (shared, or a cycle) is walked once, at its first path."""
    seen: set[int] = set()

    def visit(value: Any, where: str) -> Iterator[tuple[str, Any]]:
        found = kind(value)
        if found in (Kind.PLAIN, Kind.ITERATOR, Kind.OPAQUE):
            yield where, value
            return
        if id(value) in seen:
            return
        seen.add(id(value))
        if found in (Kind.TENSOR, Kind.ARRAY):
            yield where, value
            return
        for child_path, child in children(value, where):
            yield from visit(child, child_path)

    yield from visit(tree, path)


def iter_tensors(tree: Any) -> Iterator[torch.Tensor]:
    """Every tensor inside, depth first."""
    for _, leaf in walk(tree):
        if isinstance(leaf, torch.Tensor):
            yield leaf


def map_tensors(tree: Any, function: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """The same structure with ``function`` applied to every tensor; other leaves are kept as they are.

    Containers are rebuilt as their own type; other objects holding tensors are shallow-copied and given
    the new tensors (so a cache object's copy holds the cloned keys and values). Shared objects stay
    shared in the copy, and cycles are kept.
    """
    done: dict[int, Any] = {}

    def rebuild(value: Any) -> Any:
        found = kind(value)
        if found in (Kind.ARRAY, Kind.PLAIN, Kind.ITERATOR, Kind.OPAQUE):
            return value
        if id(value) in done:
            return done[id(value)]
        if found is Kind.TENSOR:
            done[id(value)] = function(value)
            return done[id(value)]
        if found is Kind.MAPPING:
            try:
                rebuilt: Any = copy.copy(value)
                done[id(value)] = rebuilt
                for key, item in value.items():
                    rebuilt[key] = rebuild(item)
            except TypeError:  # a read-only mapping: a plain dict of the same items
                rebuilt = {key: rebuild(item) for key, item in value.items()}
                done[id(value)] = rebuilt
            return rebuilt
        if found is Kind.NAMED_TUPLE:
            return type(value)(*(rebuild(item) for item in value))
        if found is Kind.SEQUENCE:
            items = [rebuild(item) for item in value]
            return items if type(value) is list else type(value)(items)
        rebuilt = copy.copy(value)
        done[id(value)] = rebuilt
        names = (
            [item.name for item in dataclasses.fields(value)]
            if found is Kind.DATACLASS
            else list(attributes(value))
        )
        for name in names:
            object.__setattr__(rebuilt, name, rebuild(getattr(value, name)))
        return rebuilt

    return rebuild(tree)
