"""Build frozen, typed config dataclasses from YAML mappings: the one place that coerces and validates.

A config class is a (frozen) dataclass whose field annotations say what a value may be: ``float``
(any finite number, stored as float), ``int`` (an integer, not a bool), ``bool``, ``str``,
``Literal[...]`` (one of the choices), ``X | None``, ``tuple[float, ...]`` / fixed-length tuples, a
mapping, or a nested config dataclass (a nested YAML mapping). Bounds and extra checks ride in the
field's metadata (:func:`setting`). :func:`from_mapping` applies all of it and raises
:class:`~alpasim_policy.errors.ConfigError` naming the source and the dotted field
(``env config envs/x.yaml: field 'tracker.q_lon' must be a number >= 0, got -1``).
"""

from __future__ import annotations

import dataclasses
import math
import types
from collections.abc import Callable, Mapping
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

from alpasim_policy.errors import ConfigError

T = TypeVar("T")


def setting(
    default: Any,
    *,
    ge: float | None = None,
    gt: float | None = None,
    check: Callable[[Any, str], Any] | None = None,
) -> Any:
    """A dataclass field with bounds (``ge`` / ``gt``) and an optional ``check(value, where)`` that
    may raise ConfigError or return the value to store."""
    meta = {"ge": ge, "gt": gt, "check": check}
    if isinstance(default, dict | list):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def from_mapping(cls: type[T], data: Any, where: str, prefix: str = "") -> T:
    """``cls`` built from ``data`` (a mapping, None for all defaults, or already a ``cls``)."""
    if isinstance(data, cls):
        return data
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: field {prefix.rstrip('.') or '(top level)'!r} must be a mapping, got {data!r}")
    hints = get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(str(k) for k in data if k not in known)
    if unknown:
        raise ConfigError(
            f"{where}: unknown field(s) {[prefix + k for k in unknown]}; known: {sorted(known)}"
        )
    kw = {name: _coerce(hints[name], value, where, prefix + name, known[name].metadata)
          for name, value in data.items()}  # fmt: skip
    return cls(**kw)


def to_dict(config: Any) -> Any:
    """Plain JSON-ready dicts / lists of a config dataclass (the inverse of :func:`from_mapping`)."""
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return {f.name: to_dict(getattr(config, f.name)) for f in dataclasses.fields(config)}
    if isinstance(config, Mapping):
        return {str(k): to_dict(v) for k, v in config.items()}
    if isinstance(config, tuple | list):
        return [to_dict(v) for v in config]
    return config


def _fail(where: str, key: str, what: str, value: Any) -> ConfigError:
    return ConfigError(f"{where}: field {key!r} must be {what}, got {value!r}")


def _coerce(tp: Any, value: Any, where: str, key: str, meta: Mapping[str, Any]) -> Any:
    origin, args = get_origin(tp), get_args(tp)
    if origin in (Union, types.UnionType):
        if value is None:
            if type(None) in args:
                return None
            raise _fail(where, key, "set", value)
        rest = [a for a in args if a is not type(None)]
        if len(rest) != 1:
            raise TypeError(f"{key}: only 'X | None' unions are supported, got {tp}")
        return _coerce(rest[0], value, where, key, meta)
    if origin is Literal:
        if value not in args:
            raise _fail(where, key, "one of " + ", ".join(repr(a) for a in args), value)
        out = value
    elif dataclasses.is_dataclass(tp):
        out = from_mapping(tp, value, where, key + ".")
    elif tp is bool:
        if not isinstance(value, bool):
            raise _fail(where, key, "true or false", value)
        out = value
    elif tp is int or tp is float:
        name = "an integer" if tp is int else "a number"
        ok = not isinstance(value, bool) and isinstance(value, int if tp is int else int | float)
        if not ok or not math.isfinite(value):
            raise _fail(where, key, name + _bounds(meta), value)
        out = tp(value)
        if (meta.get("ge") is not None and not out >= meta["ge"]) or (
            meta.get("gt") is not None and not out > meta["gt"]
        ):
            raise _fail(where, key, name + _bounds(meta), value)
    elif tp is str:
        if not isinstance(value, str):
            raise _fail(where, key, "a string", value)
        out = value
    elif origin is tuple:
        if not isinstance(value, list | tuple):
            raise _fail(where, key, "a list", value)
        items = args[:1] * len(value) if len(args) == 2 and args[1] is Ellipsis else args
        if len(items) != len(value):
            raise _fail(where, key, f"a list of {len(items)} values", value)
        sub = {"ge": meta.get("ge"), "gt": meta.get("gt")}
        out = tuple(_coerce(t, v, where, key, sub) for t, v in zip(items, value, strict=True))
    elif origin in (dict, Mapping) or tp in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise _fail(where, key, "a mapping", value)
        out = dict(value)
    else:
        raise TypeError(f"{key}: unsupported config field type {tp}")
    check = meta.get("check")
    if check is not None:
        res = check(out, f"{where}: field {key!r}")
        out = out if res is None else res
    return out


def _bounds(meta: Mapping[str, Any]) -> str:
    if meta.get("gt") is not None:
        return f" > {meta['gt']}"
    if meta.get("ge") is not None:
        return f" >= {meta['ge']}"
    return ""
