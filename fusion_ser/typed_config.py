"""Strict typed dataclass configs: build from mappings, check Literal choices and numeric ranges, dotted overrides.

The generic half of `fusion_ser.config`: nothing here knows fusion-ser's options. An option with a fixed set of
choices is typed `Literal[...]` (its one declaration, read by `choices()`); a number's range is declared with
`ranged` (NaN/inf never pass); unknown keys are errors naming the closest valid key.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import re
import types
import typing
from dataclasses import field
from typing import Any, Literal, Optional, Union

import yaml

from fusion_ser.errors import FusionSerError

class ConfigError(FusionSerError):
    """A config file or override that cannot be turned into a valid config."""


def ranged(default: Any, interval: str) -> Any:
    """A numeric option's default and its valid range in interval notation ("[0, 1)", "(0, inf)")."""
    return field(default=default, metadata={"range": interval})


def _choice(key: str, value: Any, allowed: list) -> Any:
    """`value` when it is one of `allowed` (same type and value), else raise naming the key and the closest choice."""
    if any(type(value) is type(a) and value == a for a in allowed):
        return value
    close = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    raise ConfigError(f"{key}: '{value}' is not one of {allowed}.{hint}")


def _strip_optional(tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


@functools.lru_cache(maxsize=None)
def _hints(cls: type) -> dict[str, Any]:
    """The resolved field types of a config dataclass (the annotations are strings under `from __future__`)."""
    return typing.get_type_hints(cls)


def choices(cls: type, field_name: str) -> list:
    """The allowed values of a Literal option, e.g. choices(Config, "modality") or choices(Config, "pooling.type")."""
    *parents, name = field_name.split(".")
    for part in parents:
        tp = _strip_optional(_hints(cls).get(part)) if dataclasses.is_dataclass(cls) else None
        if not dataclasses.is_dataclass(tp):
            raise ValueError(f"{field_name}: '{part}' is not a section of {cls.__name__}")
        cls = tp
    if not dataclasses.is_dataclass(cls) or name not in _hints(cls):
        raise ValueError(f"{field_name}: {cls.__name__} has no option '{name}'")
    tp = _strip_optional(_hints(cls)[name])
    if typing.get_origin(tp) is not Literal:
        raise ValueError(f"{field_name}: option '{name}' of {cls.__name__} has no fixed set of choices")
    return list(typing.get_args(tp))


def _check_number(key: str, value: Any, interval: Optional[str]) -> None:
    """Raise ConfigError for a NaN or infinite float (also in a list) or a number outside its `ranged` interval."""
    for name, v in [(f"{key}[{i}]", v) for i, v in enumerate(value)] if isinstance(value, list) else [(key, value)]:
        if isinstance(v, float) and not math.isfinite(v):
            raise ConfigError(f"{name}: {v} is not a finite number; give " + (f"one in {interval}" if interval else "one"))
    if interval and isinstance(value, (int, float)):
        low, high = (float(x) for x in interval[1:-1].split(","))
        if value < low or value > high or (value == low and interval[0] == "(") or (value == high and interval[-1] == ")"):
            raise ConfigError(f"{key}: {value} is outside the allowed range {interval}")


def check_choices(obj: Any, prefix: str = "") -> None:
    """Raise ConfigError when a Literal option of a (nested) config dataclass holds a value outside its choices, or
    a numeric option is not finite or outside the range its field declares (`ranged`)."""
    hints = _hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        tp = hints[f.name]
        base = _strip_optional(tp)
        if value is None and base is not tp:
            continue
        if dataclasses.is_dataclass(base) and dataclasses.is_dataclass(value):
            check_choices(value, f"{prefix}{f.name}.")
        elif typing.get_origin(base) is Literal:
            _choice(prefix + f.name, value, list(typing.get_args(base)))
        else:
            _check_number(prefix + f.name, value, f.metadata.get("range"))


_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert a YAML value to the field's declared type, or raise naming the key."""
    optional = typing.get_origin(tp) in (Union, types.UnionType) and type(None) in typing.get_args(tp)
    base = _strip_optional(tp)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{key}: null is not allowed here (expected {getattr(base, '__name__', base)})")
    if dataclasses.is_dataclass(base):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of options, got {value!r}")
        return build_dataclass(base, value, key + ".")
    origin = typing.get_origin(base)
    if origin is Literal:
        return _choice(key, value, list(typing.get_args(base)))
    if origin is list:
        (item_tp,) = typing.get_args(base) or (Any,)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if base is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if base is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if base is float:
        if isinstance(value, str) and _FLOAT.fullmatch(value.strip()):
            return float(value)  # YAML 1.1 reads exponents without a dot (1e-3) as strings
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if base is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return str(value)
    return value


def build_dataclass(cls: type, values: dict, prefix: str = "") -> Any:
    """Build a (nested) config dataclass from a mapping, strictly: unknown keys and wrong types raise ConfigError."""
    hints = _hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for k, v in values.items():
        if k not in names:
            close = difflib.get_close_matches(str(k), names, n=1)
            hint = f" Did you mean '{prefix}{close[0]}'?" if close else f" Valid keys: {', '.join(names)}."
            raise ConfigError(f"unknown config key '{prefix}{k}'.{hint}")
        kwargs[k] = _coerce(v, hints[k], prefix + k)
    return cls(**kwargs)


def _merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def parse_overrides(overrides: list[str]) -> dict:
    """Turn ["optim.lr_head=1e-3", "train.epochs=3"] into a nested dict; values are parsed as YAML."""
    tree: dict = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like key=value, e.g. train.epochs=5")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ConfigError(f"override '{item}' has an empty key")
        value = yaml.safe_load(raw) if raw.strip() else None
        node = tree
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{item}' conflicts with another override of '{p}'")
        node[parts[-1]] = value
    return tree
