"""Learning-rate schedules as multipliers in [0, 1], and durations in any unit.

A schedule here is a MULTIPLIER: the base learning rate (and the decoupled weight decay)
are applied by `vistas.optim.builder`. The paper's "train forever, cool down post hoc"
schedule is `make_schedule(decay="rsqrt", warmup_steps=..., cooldown_steps=...)`:
linear warmup -> rsqrt decay -> linear cooldown to 0.

Durations (`parse_duration`) are accepted as steps (`1000` or `"1000"`), epochs
(`"3ep"`), examples (`"50000ex"`) or percent of training (`"10%"`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

import jax.numpy as jnp

from vistas.errors import ConfigError

DECAYS = ("rsqrt", "cosine", "linear", "constant")

_DURATION = re.compile(r"([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*(ep|ex|%)?")
_DURATION_HELP = (
    "use steps (1000), epochs ('3ep'), examples ('50000ex') or percent of training ('10%')"
)


def _round(x: float) -> int:
    """Round half up (2.5 -> 3), unlike Python's round-half-to-even."""
    return math.floor(x + 0.5)


def parse_duration(
    value: Any,
    *,
    name: str,
    steps_per_epoch: float | None = None,
    batch_size: int | None = None,
    total_steps: int | None = None,
) -> int:
    """A duration in steps, rounded to the nearest step (halves round up).

    `value` is a non-negative number of steps (int, or integral float such as 1e4) or a
    string: `"1000"` (steps), `"3ep"` / `"2.5ep"` (epochs, needs `steps_per_epoch`),
    `"50000ex"` (examples, needs `batch_size`) or `"10%"` (percent of `total_steps`, at
    most 100%). `name` is the config field (e.g. `train.warmup`), used in error messages.
    """
    shown = f"{name}={value!r}"
    if isinstance(value, bool):
        raise ConfigError(f"{shown} is not a duration; {_DURATION_HELP}")
    if isinstance(value, (int, float)) or hasattr(value, "__index__"):
        number = float(value)
        if not math.isfinite(number) or number < 0:
            raise ConfigError(f"{shown} is not a duration; {_DURATION_HELP}")
        return _round(number)
    if not isinstance(value, str):
        raise ConfigError(f"{shown} is not a duration; {_DURATION_HELP}")
    match = _DURATION.fullmatch(value.strip().lower())
    if match is None:
        raise ConfigError(f"{shown} is not a duration; {_DURATION_HELP}")
    number, unit = float(match.group(1)), match.group(2)
    if unit is None:
        return _round(number)
    if unit == "ep":
        if steps_per_epoch is None:
            raise ConfigError(
                f"{shown} is in epochs but the number of steps per epoch is unknown here; "
                "give it in steps (1000) or examples ('50000ex')"
            )
        return _round(number * steps_per_epoch)
    if unit == "ex":
        if not batch_size:
            raise ConfigError(
                f"{shown} is in examples but the batch size is unknown here; "
                "give it in steps (1000) or epochs ('3ep')"
            )
        return _round(number / batch_size)
    if total_steps is None:
        raise ConfigError(
            f"{shown} is a percent of training but the training length is unknown here; "
            "give it in steps (1000), epochs ('3ep') or examples ('50000ex')"
        )
    if number > 100:
        raise ConfigError(f"{shown} is over 100% of training; use a percent between 0% and 100%")
    return _round(number / 100 * total_steps)


def make_schedule(
    *,
    total_steps: int,
    warmup_steps: int = 0,
    decay: str = "cosine",
    timescale: int = 10_000,
    cooldown_steps: int = 0,
    min_value: float = 0.0,
) -> Callable[[Any], jnp.ndarray]:
    """A jittable `step -> multiplier` (float32 in [0, 1]) for steps 0 .. total_steps-1.

    - warmup: `min(1, (step + 1) / warmup_steps)`, so step 0 already moves (by
      1/warmup_steps) instead of being a wasted zero-lr step; the multiplier is 1 from
      step `warmup_steps - 1` on.
    - decay after warmup, with `t = step - warmup_steps`:
      `"rsqrt"`: `1 / sqrt(1 + t / timescale)` (no fixed end: "train forever");
      `"cosine"`: half cosine from 1 down to `min_value` at `total_steps`;
      `"linear"`: straight line from 1 down to `min_value` at `total_steps`;
      `"constant"`: 1.
    - cooldown (optional): over the last `cooldown_steps` steps, multiply by
      `(total_steps - step) / cooldown_steps`, a line from 1 to 0 at `total_steps`
      (the final step, `total_steps - 1`, gets 1/cooldown_steps, so it is not wasted
      either). warmup -> rsqrt -> cooldown is the paper's schedule.
    """
    if decay not in DECAYS:
        raise ConfigError(f"schedule decay={decay!r} is unknown; use one of {', '.join(DECAYS)}")
    for field, value in (
        ("total_steps", total_steps),
        ("warmup_steps", warmup_steps),
        ("cooldown_steps", cooldown_steps),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(
                f"schedule {field}={value!r} is invalid; use a whole number of steps >= 0"
            )
    if total_steps < 1:
        raise ConfigError(f"schedule total_steps={total_steps!r} is invalid; use at least 1 step")
    if warmup_steps + cooldown_steps > total_steps:
        raise ConfigError(
            f"schedule warmup_steps={warmup_steps} + cooldown_steps={cooldown_steps} exceeds "
            f"total_steps={total_steps}; shorten warmup or cooldown to fit in training"
        )
    if decay == "rsqrt" and not timescale > 0:
        raise ConfigError(f"schedule timescale={timescale!r} is invalid; use a number of steps > 0")
    if not 0.0 <= min_value <= 1.0:
        raise ConfigError(
            f"schedule min_value={min_value!r} is invalid; use a multiplier in [0, 1]"
        )
    if min_value and decay in ("rsqrt", "constant"):
        raise ConfigError(
            f"schedule min_value={min_value!r} has no effect with decay={decay!r}; "
            "use min_value with 'cosine' or 'linear', or set it to 0"
        )
    decay_steps = max(total_steps - warmup_steps, 1)

    def schedule(step):
        step = jnp.asarray(step, jnp.float32)
        t = step - warmup_steps
        if decay == "rsqrt":
            value = jnp.where(t > 0, 1.0 / jnp.sqrt(1.0 + jnp.maximum(t, 0.0) / timescale), 1.0)
        elif decay in ("cosine", "linear"):
            progress = jnp.clip(t / decay_steps, 0.0, 1.0)
            if decay == "cosine":
                shape = 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
            else:
                shape = 1.0 - progress
            value = min_value + (1.0 - min_value) * shape
        else:
            value = jnp.ones_like(step)
        if warmup_steps:
            value = value * jnp.minimum(1.0, (step + 1.0) / warmup_steps)
        if cooldown_steps:
            value = value * jnp.clip((total_steps - step) / cooldown_steps, 0.0, 1.0)
        return value.astype(jnp.float32)

    return schedule
