"""Parse policy constructor options (strings from ``--policy-option``, or Python values) with clear errors.

The values arrive as strings from ``--policy-option`` (or as Python values from code), and a bad
one must fail with an error naming the option.

One module so every policy (alpamayo, the deadline wrapper, sample selection) accepts the same
spellings ("none" / "null" / "" for unset, "6" or "6.0" for a whole number) and words its errors
the same way.
"""

from __future__ import annotations

import math
from typing import Any

from alpasim_policy.errors import ConfigError

_UNSET = ("", "none", "null")


def _is_unset(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value.strip().lower() in _UNSET)


def parse_choice(name: str, value: Any, allowed: tuple[str, ...]) -> str:
    """``value`` lower-cased and stripped, which must be one of ``allowed``."""
    v = str(value).strip().lower()
    if v not in allowed:
        raise ConfigError(f"option '{name}': {value!r} is not one of {', '.join(allowed)}")
    return v


def parse_int(name: str, value: Any, *, minimum: int | None = None, allow_none: bool = False) -> int | None:
    """A whole number (``"6"``, ``6.0``; not ``6.5``) >= ``minimum``; unset -> None if ``allow_none``."""
    if _is_unset(value):
        if allow_none:
            return None
        raise ConfigError(f"option '{name}': a whole number is required")
    try:
        f = float(value)
        v = int(f)
        if v != f:
            raise ValueError
    except (TypeError, ValueError) as e:
        raise ConfigError(f"option '{name}': {value!r} is not a whole number") from e
    if minimum is not None and v < minimum:
        raise ConfigError(f"option '{name}': must be >= {minimum}, got {v}")
    return v


def parse_number(
    name: str, value: Any, *, minimum: float = 0.0, allow_none: bool = False, what: str = "number"
) -> float | None:
    """A finite float >= ``minimum``; unset -> None if ``allow_none`` (else "a {what} is required")."""
    if _is_unset(value):
        if allow_none:
            return None
        raise ConfigError(f"option '{name}': a {what} is required")
    try:
        v = float(value)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"option '{name}': {value!r} is not a number") from e
    if not math.isfinite(v) or v < minimum:
        raise ConfigError(f"option '{name}': must be a finite number >= {minimum:g}, got {value!r}")
    return v
