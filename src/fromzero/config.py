"""Typed configs: dataclasses filled from YAML files and `key.sub=value` overrides.

Every config in fromzero is a (nested) dataclass. `build(cls, data)` validates a plain dict against
it: unknown keys name the keys that exist (with a did-you-mean), wrong types say what was expected.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from fromzero.errors import FromzeroError

T = TypeVar("T")


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, with clear errors for a missing file or malformed content."""
    path = Path(path)
    if not path.is_file():
        raise FromzeroError(f"config file not found: {path} (check the path, e.g. configs/quickstart.yaml)")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise FromzeroError(f"{path} is not valid YAML: {e}".replace("\n", " ")) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise FromzeroError(f"{path} must hold a mapping of keys to values, got {type(data).__name__}")
    return data


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """Turn ["train.lr=3e-4", "model.n_layer=4"] into a nested dict (values parsed as YAML)."""
    out: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise FromzeroError(f"override '{item}' must look like key.sub=value (e.g. train.max_steps=100)")
        key, _, raw = item.partition("=")
        value = yaml.safe_load(raw) if raw.strip() else ""
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise FromzeroError(f"override '{item}' conflicts with another override of '{part}'")
        node[parts[-1]] = value
    return out


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge `extra` into a copy of `base`."""
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def build(cls: type[T], data: dict[str, Any] | None, where: str = "") -> T:
    """Build dataclass `cls` from `data`, validating keys and types recursively."""
    data = data or {}
    if not isinstance(data, dict):
        raise FromzeroError(f"'{where or cls.__name__}' must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else key
        if key not in fields:
            close = difflib.get_close_matches(key, fields, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise FromzeroError(
                f"unknown config key '{path}'.{hint} Valid keys{' under ' + where if where else ''}: "
                f"{', '.join(sorted(fields))}"
            )
        kwargs[key] = _coerce(value, hints[key], path)
    try:
        return cls(**kwargs)
    except FromzeroError:
        raise
    except (TypeError, ValueError) as e:
        raise FromzeroError(f"invalid config{' for ' + where if where else ''}: {e}") from None


def to_dict(obj: Any) -> Any:
    """Dataclass (nested) → plain dict, for saving next to checkpoints."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(x) for x in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, path)
            except FromzeroError as e:
                errors.append(e)
        raise FromzeroError(
            f"config key '{path}' expects {' or '.join(_type_name(a) for a in args)}, got {value!r}"
        )
    if origin is typing.Literal:
        if value not in args:
            raise FromzeroError(f"config key '{path}' must be one of {', '.join(map(repr, args))}, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        return build(tp, value, path)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            if isinstance(value, str) and origin is list:
                value = [value]
            else:
                raise FromzeroError(f"config key '{path}' expects a list, got {value!r}")
        inner = args[0] if args else Any
        items = [_coerce(v, inner, f"{path}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise FromzeroError(f"config key '{path}' expects a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise FromzeroError(f"config key '{path}' expects true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise FromzeroError(f"config key '{path}' expects an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)  # YAML reads "3e-4" as a string
            except ValueError:
                pass
        raise FromzeroError(f"config key '{path}' expects a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise FromzeroError(f"config key '{path}' expects a string, got {value!r}")
    return value
