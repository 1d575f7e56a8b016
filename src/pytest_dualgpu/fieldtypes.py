"""A loaded result's fields have the types its dataclasses declare, or the report is refused. Torch-free.

``from_dict`` copies what a file says: a hand-edited ``"speedup": "1.2"`` would load and then crash the
session when it is compared or drawn, after every test has run. Checking the declared types right after
loading names the field and the file instead, while nothing has been measured yet.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from functools import cache
from typing import Any


class FieldTypeError(ValueError):
    """A field whose value does not have its declared type; the message names the field's path."""


def check_fields(value: Any, path: str) -> None:
    """Raise ``FieldTypeError`` for the first field of the dataclass ``value`` (deeply) of a wrong type."""
    cls: type = type(value)
    for name, hint in _hints(cls).items():
        _check(getattr(value, name), hint, f"{path}.{name}")


@cache
def _hints(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {field.name: hints[field.name] for field in dataclasses.fields(cls) if field.compare}


def _check(value: Any, hint: Any, path: str) -> None:
    origin, arguments = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return
    if origin in (types.UnionType, typing.Union):
        if value is None and type(None) in arguments:
            return
        options = [argument for argument in arguments if argument is not type(None)]
        if len(options) == 1:
            _check(value, options[0], path)
        return
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        if not isinstance(value, hint):
            raise FieldTypeError(f"{path} is {_shown(value)}, expected an object")
        check_fields(value, path)
        return
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise FieldTypeError(f"{path} is {_shown(value)}, expected a number")
        return
    if hint in (int, bool, str):
        if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
            raise FieldTypeError(f"{path} is {_shown(value)}, expected {_kind(hint)}")
        return
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise FieldTypeError(f"{path} is {_shown(value)}, expected a list")
        items = (
            arguments[:1] if origin is list or (len(arguments) == 2 and arguments[1] is ...) else arguments
        )
        for index, item in enumerate(value):
            _check(item, items[min(index, len(items) - 1)], f"{path}[{index}]")
        return
    if origin is dict:
        if not isinstance(value, dict):
            raise FieldTypeError(f"{path} is {_shown(value)}, expected an object")
        for key, item in value.items():
            _check(item, arguments[1], f"{path}.{key}")


def _kind(hint: type) -> str:
    return {int: "an integer", bool: "true or false", str: "a string"}[hint]


def _shown(value: Any) -> str:
    kind = {str: "the string", bool: "the boolean", type(None): "null"}.get(type(value), type(value).__name__)
    return kind if value is None else f"{kind} {value!r}"
