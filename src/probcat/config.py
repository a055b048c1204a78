"""Strict configuration: YAML or dicts -> frozen, nested dataclasses.

Every key must name a field, every value must have the field's type, and a field typed
``Literal[...]`` accepts only its listed choices. A mistake is one line naming the key,
what was given and what is allowed (``model.stem: 'patchfy' is not one of 'conv',
'patchify'``), raised before any work starts.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

from probcat.errors import ProbcatValueError

__all__ = ["from_dict", "load_yaml", "to_dict", "choices"]

T = TypeVar("T")


def choices(cls, name: str) -> tuple:
    """The allowed values of a ``Literal`` field ``name`` of dataclass ``cls``."""
    hints = typing.get_type_hints(cls)
    return get_args(hints[name])


def to_dict(cfg) -> dict:
    """A config as plain data (lists for tuples), ready for YAML/JSON."""

    def plain(v):
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v

    return plain(cfg)


def _fail(where: str, msg: str):
    raise ProbcatValueError(f"{where}: {msg}" if where else msg)


def _convert(tp, value, where: str):
    origin = get_origin(tp)
    if origin is Literal:
        allowed = get_args(tp)
        # YAML reads `true`/`yes` as booleans: accept their spelling for string choices
        if isinstance(value, bool) and str(value).lower() in allowed:
            return str(value).lower()
        if value not in allowed or type(value) is not type(allowed[0]):
            _fail(where, f"{value!r} is not one of {', '.join(repr(a) for a in allowed)}")
        return value
    if origin in (types.UnionType, typing.Union):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(inner[0], value, where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            _fail(where, f"expected a list, got {value!r}")
        args = get_args(tp)
        item = args[0]
        return tuple(_convert(item, v, f"{where}[{i}]") for i, v in enumerate(value))
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if tp is bool:
        if not isinstance(value, bool):
            _fail(where, f"expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            _fail(where, f"expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            _fail(where, f"expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            _fail(where, f"expected a string, got {value!r}")
        return value
    return value


def _default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def from_dict(cls: type[T], data: Any, where: str = "") -> T:
    """Build dataclass ``cls`` from a mapping, recursively, rejecting unknown keys, wrong
    types and values outside a ``Literal``'s choices; missing keys take their defaults."""
    if not isinstance(data, dict):
        _fail(where, f"expected a mapping of settings, got {data!r}")
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls) if f.init]
    unknown = [k for k in data if k not in known]
    if unknown:
        key = f"{where}.{unknown[0]}" if where else str(unknown[0])
        _fail("", f"unknown setting {key!r}; known here: {', '.join(known)}")
    kwargs = {}
    defaults = {f.name: f for f in dataclasses.fields(cls)}
    for k, v in data.items():
        base = _default(defaults[k])
        if dataclasses.is_dataclass(base) and isinstance(v, dict):
            v = {**to_dict(base), **v}  # a partial section keeps the field's own defaults
        kwargs[k] = _convert(hints[k], v, f"{where}.{k}" if where else k)
    try:
        return cls(**kwargs)
    except TypeError as e:  # a required field without a default
        _fail(where, str(e))


def load_yaml(cls: type[T], path: str | Path | None, overrides: dict | None = None) -> T:
    """Read ``cls`` from a YAML file (None: all defaults), then apply ``overrides`` (dotted
    keys, e.g. ``{"phases.0.steps": 10}``)."""
    import yaml

    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ProbcatValueError(f"{path}: config file not found")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            first = str(e).splitlines()[0]
            raise ProbcatValueError(f"{path}: not valid YAML ({first})") from e
    for key, value in (overrides or {}).items():
        _set(data, key.split("."), value)
    try:
        return from_dict(cls, data)
    except ProbcatValueError as e:
        if path is None:
            raise
        raise ProbcatValueError(f"{path}: {e}") from None


def _set(data, keys: list[str], value) -> None:
    node = data
    for k in keys[:-1]:
        if isinstance(node, list):
            node = node[int(k)]
        else:
            node = node.setdefault(k, {})
    if isinstance(node, list):
        node[int(keys[-1])] = value
    else:
        node[keys[-1]] = value
