"""Checks of model options shared by every family, each failing with a one-line
:class:`~vistas.errors.ConfigError` that names the option (``model.NAME``) and what is allowed.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import Any

from vistas.errors import ConfigError


def known_options(family: str, options: Iterable[str], accepted: Collection[str],
                  listed: Iterable[str] | None = None) -> None:
    """Every name in ``options`` must be in ``accepted``; ``listed`` (default ``accepted``)
    are the options the error names, e.g.
    ``model.pool is not an option of NFNet models; their options: activation, ...``."""
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        allowed = sorted(accepted if listed is None else listed)
        raise ConfigError(
            f"model.{unknown[0]} is not an option of {family} models; their options: "
            f"{', '.join(allowed)}"
        )


def one_of(key: str, value: Any, allowed: Iterable[Any]) -> None:
    """``value`` of option ``key`` must be one of ``allowed`` (named in the given order)."""
    allowed = list(allowed)
    if value not in allowed:
        raise ConfigError(f"model.{key}={value!r} is not known; use one of {', '.join(map(str, allowed))}")


def rate(name: str, value: float) -> float:
    """A probability in [0, 1) (dropout, drop-path)."""
    if not (isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < 1):
        raise ConfigError(f"model.{name}={value!r} must be a number in [0, 1)")
    return float(value)


def stages(name: str, values: list | tuple, what: str) -> tuple[int, ...]:
    """A per-stage list of positive integers, or a one-line error."""
    ok = isinstance(values, (list, tuple)) and len(values) > 0 and all(
        isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values)
    if not ok:
        raise ConfigError(f"model.{name}={values!r} must be a non-empty list of positive integers "
                          f"({what})")
    return tuple(values)
