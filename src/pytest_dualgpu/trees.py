"""Walking the nested containers models take and return (tuples, lists, dicts, named tuples, dataclasses)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import torch


def iter_tensors(tree: Any) -> Iterator[torch.Tensor]:
    """Every tensor inside a nested structure, depth first."""
    if isinstance(tree, torch.Tensor):
        yield tree
    elif isinstance(tree, dict):
        for value in tree.values():
            yield from iter_tensors(value)
    elif isinstance(tree, (list, tuple)):
        for value in tree:
            yield from iter_tensors(value)
    elif dataclasses.is_dataclass(tree) and not isinstance(tree, type):
        for item in dataclasses.fields(tree):
            yield from iter_tensors(getattr(tree, item.name))


def map_tensors(tree: Any, function: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """The same structure with ``function`` applied to every tensor; other leaves are kept as they are."""
    if isinstance(tree, torch.Tensor):
        return function(tree)
    if isinstance(tree, dict):
        return type(tree)((key, map_tensors(value, function)) for key, value in tree.items())
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):
        return type(tree)(*(map_tensors(value, function) for value in tree))
    if isinstance(tree, (tuple, list)):
        return type(tree)(map_tensors(value, function) for value in tree)
    if dataclasses.is_dataclass(tree) and not isinstance(tree, type):
        changes = {
            item.name: map_tensors(getattr(tree, item.name), function)
            for item in dataclasses.fields(tree)
            if item.init
        }
        return dataclasses.replace(tree, **changes)
    return tree
