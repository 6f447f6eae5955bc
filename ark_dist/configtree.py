"""The typed config tree's machinery: dataclasses from YAML/dicts, dotted overrides, validation.

Every component owns a keyword-only dataclass for its own section; `load_config` builds the whole
tree from a YAML file plus `a.b.c=value` overrides and fails with one `ValueError` that names the
dotted key of the first mistake (unknown key, wrong type, impossible value).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml


def _fail(key: str, message: str) -> ValueError:
    return ValueError(f"config key {key or '<root>'!r}: {message}")


def _convert(value: Any, hint: Any, key: str) -> Any:
    origin, args = get_origin(hint), get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _convert(value, arg, key)
            except ValueError as exc:
                errors.append(exc)
        raise errors[0] if len(errors) == 1 else _fail(key, f"{value!r} matches none of {hint}")
    if origin is Literal:
        if value not in args:
            raise _fail(key, f"{value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, key)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise _fail(key, f"expected a list, got {type(value).__name__} {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise _fail(key, f"expected {len(args)} items, got {len(value)}")
            return tuple(_convert(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        out = [_convert(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, dict):
            raise _fail(key, f"expected a mapping, got {type(value).__name__}")
        kt, vt = args or (Any, Any)
        return {_convert(k, kt, key): _convert(v, vt, f"{key}.{k}") for k, v in value.items()}
    if hint is bool:
        if not isinstance(value, bool):
            raise _fail(key, f"expected true/false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _fail(key, f"expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, str):  # PyYAML (YAML 1.1) reads `1e-5` as a string, not a number
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _fail(key, f"expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise _fail(key, f"expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {hint} at {key}")  # a bug in a schema, not user input


def from_dict(cls, data: Any, key: str = ""):
    """Build dataclass `cls` from a mapping, recursively; unknown keys and bad values raise
    ValueError naming the dotted key. Missing keys take the field defaults. After building, a
    `validate()` method on the dataclass, if any, checks cross-field rules."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise _fail(key, f"expected a mapping, got {type(data).__name__} {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for name in data:
        if name not in fields:
            raise _fail(f"{key}.{name}" if key else str(name),
                        f"unknown key (known here: {', '.join(sorted(fields))})")
    values = {name: _convert(v, hints[name], f"{key}.{name}" if key else name) for name, v in data.items()}
    for name, value in values.items():
        # A mapping section (e.g. per-dataset policies) adds to its defaults instead of replacing them.
        factory = fields[name].default_factory
        if isinstance(value, dict) and factory is not dataclasses.MISSING:
            default = factory()
            if isinstance(default, dict):
                values[name] = {**default, **value}
    obj = cls(**values)
    check = getattr(obj, "validate", None)
    if check is not None:
        try:
            check()
        except ValueError as exc:
            raise ValueError(f"config {key + ': ' if key else ''}{exc}") from None
    return obj


def to_dict(obj) -> Any:
    """The plain-data form of a config (what is saved with runs and checkpoints)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """`a.b.c=value` strings onto a nested dict; the value is parsed as YAML (`0.1`, `[1, 2]`, `null`)."""
    for item in overrides:
        dotted, sep, raw = item.partition("=")
        if not sep or not dotted:
            raise ValueError(f"override {item!r}: expected dotted.key=value")
        node = data
        parts = dotted.split(".")
        for part in parts[:-1]:
            if node.get(part) is None:  # absent, or an empty YAML section
                node[part] = {}
            node = node[part]
            if not isinstance(node, dict):
                raise ValueError(f"override {item!r}: {part!r} is not a section")
        node[parts[-1]] = yaml.safe_load(raw)
    return data


def merge(base: dict, child: dict) -> dict:
    """`child` over `base`, section by section; a child's scalar or list replaces the base's."""
    out = dict(base)
    for key, value in child.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def read_yaml(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict:
    """A recipe as a plain dict. A top-level `base: other.yaml` (relative to this file) is read
    first and this file's keys are merged over it, so a recipe states only what it changes."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of config sections, got {type(data).__name__}")
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ValueError(f"{path}: `base` must be a file name, got {base!r}")
    base_path = (path.parent / base).resolve()
    if base_path in _seen:
        raise ValueError(f"{path}: `base: {base}` makes a cycle")
    return merge(read_yaml(base_path, (*_seen, path.resolve())), data)


def load_config(cls, path: str | Path | None = None, overrides: list[str] | None = None):
    """A YAML file (or nothing: all defaults) plus dotted overrides -> a validated `cls`."""
    data = read_yaml(path) if path is not None else {}
    return from_dict(cls, apply_overrides(data, overrides or []))
