"""A small checker for the JSON files devmemtcp keeps (undo journals,
emulated NIC state): every field against its type, and a mismatch named by
its path (``entries[2].before``, ``rings.hds_thresh``) so the error can say
which field of which file is wrong and how to fix it.

Types are Python annotations: plain types, ``X | None``, ``list[X]``,
``dict[str, X]``, dataclasses (built from an object), and ``Literal[...]``
of strings. :func:`check_object` checks an object against a ``{key: type}``
table (required keys, the others optional).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

__all__ = ["SchemaError", "check", "check_fields", "check_object", "json_type"]


class SchemaError(Exception):
    """A field is missing or of the wrong type (``field``: its path)."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"field {field!r} {problem}")
        self.field = field


def words(tp: Any) -> str:
    """``tp`` as the JSON a reader expects: "an integer", "a list of integers", ..."""
    if tp is Any:
        return "any value"
    if tp is type(None):
        return "null"
    if tp is bool:
        return "true or false"
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is str:
        return "a string"
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(words(a) for a in typing.get_args(tp))
    if origin is list or tp is list:
        args = typing.get_args(tp)
        return f"a list of {words(args[0]).removeprefix('an ').removeprefix('a ')}s" if args else "a list"
    if origin is dict or tp is dict or dataclasses.is_dataclass(tp):
        return "an object"
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    return str(tp)


def json_type(value: Any) -> str:
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string", list: "a list",
            dict: "an object", type(None): "null"}.get(type(value), type(value).__name__)


def check(value: Any, tp: Any, field: str) -> Any:
    """``value`` (parsed JSON) as type ``tp``: plain types, ``X | None``,
    ``list[X]``, ``dict[str, X]`` and dataclasses (built from an object).
    Raises SchemaError naming ``field`` when it does not fit."""
    if tp is Any:
        return value
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return check(value, arg, field)
            except SchemaError:
                continue
        raise SchemaError(field, f"must be {words(tp)}, not {json_type(value)}")
    if origin is typing.Literal:
        if value not in typing.get_args(tp) or not isinstance(value, str):
            raise SchemaError(field, f"must be {words(tp)}, not {value!r}")
        return value
    if tp is type(None):
        ok = value is None
    elif tp is bool:
        ok = isinstance(value, bool)
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif tp is str:
        ok = isinstance(value, str)
    elif origin is list or tp is list:
        if not isinstance(value, list):
            raise SchemaError(field, f"must be {words(tp)}, not {json_type(value)}")
        (item,) = typing.get_args(tp) or (Any,)
        return [check(v, item, f"{field}[{i}]") for i, v in enumerate(value)]
    elif origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise SchemaError(field, f"must be {words(tp)}, not {json_type(value)}")
        _key, item = typing.get_args(tp) or (str, Any)
        return {str(k): check(v, item, f"{field}.{k}") for k, v in value.items()}
    elif dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if not isinstance(value, dict):
            raise SchemaError(field, f"must be an object, not {json_type(value)}")
        return tp(**check_fields(tp, value, field))
    else:
        raise TypeError(f"no schema for type {tp!r}")
    if not ok:
        raise SchemaError(field, f"must be {words(tp)}, not {json_type(value)}")
    return value


def check_fields(cls: type, data: dict[str, Any], where: str) -> dict[str, Any]:
    """The keyword arguments of dataclass ``cls`` read from ``data``: each field
    checked against its annotation; a field with a default may be missing
    (older journals), one without is a SchemaError; unknown keys are ignored."""
    hints = typing.get_type_hints(cls)
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        name = f"{where}.{f.name}" if where else f.name
        if f.name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise SchemaError(name, "is missing")
            continue
        out[f.name] = check(data[f.name], hints[f.name], name)
    return out




def check_object(value: Any, schema: dict[str, Any], where: str = "",
                 required: tuple[str, ...] | None = None) -> dict[str, Any]:
    """``value`` as an object whose keys in ``schema`` have their types; keys in
    ``required`` (default: every key of ``schema``) must be present; unknown
    keys are left alone. Raises SchemaError naming the first bad field."""
    if not isinstance(value, dict):
        raise SchemaError(where or "(top level)", f"must be an object, not {json_type(value)}")
    need = tuple(schema) if required is None else required
    for key in need:
        if key not in value:
            raise SchemaError(f"{where}.{key}" if where else key, "is missing")
    for key, tp in schema.items():
        if key in value:
            check(value[key], tp, f"{where}.{key}" if where else key)
    return value
