"""Build the optax optimizer from config: direction, per-parameter multipliers, decoupled wd.

THE UPDATE RULE (big_vision / "Scaling Vision Transformers"), for every parameter θ:

    Δθ = -sched(t) · ( lr · lr_mult(θ) · u(g)  +  wd · wd_mult(θ) · θ )

- `u(g)` is the optimizer direction of the (globally clipped, optionally adaptively
  clipped: `agc_clip`, `vistas.optim.agc`) gradient: Adam's m̂ / (√v̂ + eps), or SGD's
  momentum trace.
- `sched(t)` is the schedule MULTIPLIER in [0, 1] (`vistas.optim.schedules`); it scales
  the weight decay too.
- WEIGHT DECAY IS DECOUPLED FROM THE LEARNING RATE. This is NOT torch/optax AdamW, whose
  decay is `lr · wd · θ`: here `wd` is the per-step shrink factor itself. wd=1e-4 with
  lr=1e-3 here equals AdamW with weight_decay=0.1; in general AdamW(lr, λ) == (lr, wd=lr·λ).
- `wd_mults` / `lr_mults` are rules `(regex on "/"-joined path, multiplier)`, first full
  match wins (`vistas.optim.rules`). Unmatched parameters get wd_mult 0 (NO decay) and
  lr_mult 1. The paper's strong-head / weak-body decay is
  `wd_mults=[(".*head/kernel", 100.0), (".*/kernel", 1.0)]`.
- `frozen` regexes: those parameters get zero updates, hold NO optimizer state and are
  left out of the gradient-clipping norm.

The optimizer state is addressed by NAMES, never only by positions in a chain, so a
checkpoint stays readable when the chain changes:

    PartitionState(inner_states={                      # optax.multi_transform
        "train": MaskedState(inner_state={                # optax.named_chain
            "clip": ..., "agc": ..., "direction": <e.g. ScaleByAdamState(count, mu, nu)>,
            "lr": ..., "weight_decay": ..., "schedule": ScaleByScheduleState(count)}),
        "frozen": MaskedState(inner_state=EmptyState()),
    })

Frozen parameters appear in the "train" state only as empty `optax.MaskedNode()`s.

Every named stage is always present (e.g. "clip" is an identity when clipping is off), so
turning an option on or off does not move state around. The schedule step count lives in
the optimizer state (`optax.scale_by_schedule`), so a resumed run continues the schedule.

New optimizers are one entry in `OPTIMIZERS`: a function taking the hyperparameters as
keywords (b1, b2, eps, mu_dtype, momentum; it uses those it needs), plus its own options
as keyword-only arguments with defaults named after it (`shampoo_block_size`...; an
`OptimConfig` field of the same name reaches it), and returning the direction transform
`u`, without lr, schedule or weight decay. Optimizers: "adam", "sgd", "adafactor_bv"
(`vistas.optim.adafactor`), "shampoo" (`vistas.optim.shampoo`); SAM (`vistas.optim.sam`)
changes the gradient in the train step and combines with any of them.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax

from vistas.errors import ConfigError
from vistas.optim import adafactor as adafactor_lib
from vistas.optim import agc as agc_lib
from vistas.optim import rules as rules_lib
from vistas.optim import shampoo as shampoo_lib

TRAIN, FROZEN = "train", "frozen"
_MU_DTYPES = {None: None, "float32": jnp.float32, "bfloat16": jnp.bfloat16}


def check_mu_dtype(mu_dtype: Any) -> None:
    """A one-line ConfigError for a first-moment dtype other than None, float32 or bfloat16
    (the check of ``config.validate`` too)."""
    if not (mu_dtype is None or isinstance(mu_dtype, str)) or mu_dtype not in _MU_DTYPES:
        raise ConfigError(f"optim.mu_dtype={mu_dtype!r} is not known; use None, 'float32' or 'bfloat16'")


def _adam(
    *, b1: float, b2: float, eps: float, mu_dtype: Any, **_: Any
) -> optax.GradientTransformation:
    """Adam direction m̂/(√v̂ + eps); `mu_dtype=bfloat16` is the paper's bf16 first moment."""
    return optax.scale_by_adam(b1=b1, b2=b2, eps=eps, mu_dtype=mu_dtype)


def _sgd(*, momentum: float, mu_dtype: Any, sgd_nesterov: bool = False,
         **_: Any) -> optax.GradientTransformation:
    """SGD direction: the gradient, or its momentum trace (heavy ball, or Nesterov)."""
    if not isinstance(sgd_nesterov, bool):
        raise ConfigError(f"optimizer sgd_nesterov={sgd_nesterov!r} is invalid; use True or False")
    if not momentum:
        return optax.identity()
    return optax.trace(decay=momentum, nesterov=sgd_nesterov, accumulator_dtype=mu_dtype)


def _adafactor_bv(
    *,
    b1: float,
    mu_dtype: Any,
    adafactor_decay: float = 0.8,
    adafactor_beta2_cap: float = 0.999,
    adafactor_eps: float = 1e-30,
    adafactor_min_dim: int = 32,
    adafactor_clip: float | None = None,
    **_: Any,
) -> optax.GradientTransformation:
    """The paper's Adafactor (`vistas.optim.adafactor`); momentum b1 in bfloat16 by default."""
    _check_number("adafactor_decay", adafactor_decay, low_open=True)
    _check_number("adafactor_beta2_cap", adafactor_beta2_cap, high=1.0, high_open=True)
    _check_number("adafactor_eps", adafactor_eps)
    _check_int("adafactor_min_dim", adafactor_min_dim, low=1)
    if adafactor_clip is not None:
        _check_number("adafactor_clip", adafactor_clip, low_open=True)
    return adafactor_lib.scale_by_adafactor_bv(
        b1=b1, decay=adafactor_decay, beta2_cap=adafactor_beta2_cap, eps=adafactor_eps,
        min_dim_to_factor=adafactor_min_dim, clip=adafactor_clip,
        mu_dtype=jnp.bfloat16 if mu_dtype is None else mu_dtype,
    )


def _shampoo(
    *,
    b1: float,
    b2: float,
    eps: float,
    mu_dtype: Any,
    shampoo_block_size: int = 128,
    shampoo_every: int = 10,
    shampoo_start: int = 10,
    shampoo_root: int = 4,
    shampoo_eps: float = 1e-6,
    shampoo_graft: str = "adam",
    **_: Any,
) -> optax.GradientTransformation:
    """Block-diagonal Shampoo grafted to Adam or SGD (`vistas.optim.shampoo`)."""
    _check_int("shampoo_block_size", shampoo_block_size, low=1)
    _check_int("shampoo_every", shampoo_every, low=1)
    _check_int("shampoo_start", shampoo_start, low=0)
    _check_int("shampoo_root", shampoo_root, low=1)
    _check_number("shampoo_eps", shampoo_eps, low_open=True)
    if shampoo_graft not in shampoo_lib.GRAFTS:
        raise ConfigError(
            f"optimizer shampoo_graft={shampoo_graft!r} is unknown; "
            f"use one of {', '.join(shampoo_lib.GRAFTS)}"
        )
    return shampoo_lib.scale_by_shampoo(
        block_size=shampoo_block_size, every=shampoo_every, start=shampoo_start,
        root=shampoo_root, eps=shampoo_eps, graft=shampoo_graft, b1=b1, b2=b2, graft_eps=eps,
        mu_dtype=mu_dtype,
    )


# name -> builder of the direction transform u(g).
OPTIMIZERS: dict[str, Callable[..., optax.GradientTransformation]] = {
    "adam": _adam,
    "sgd": _sgd,
    "adafactor_bv": _adafactor_bv,
    "shampoo": _shampoo,
}
# The hyperparameters every direction builder is given (each uses those it needs).
_COMMON = ("b1", "b2", "eps", "mu_dtype", "momentum")


def direction_options() -> dict[str, Any]:
    """Optimizer-specific options (`adafactor_*`, `shampoo_*`) -> their defaults."""
    options = {}
    for fn in OPTIMIZERS.values():
        for param in inspect.signature(fn).parameters.values():
            if param.kind is param.KEYWORD_ONLY and param.name not in _COMMON:
                options[param.name] = param.default
    return options


def _unknown_optimizer(name: Any) -> ConfigError:
    known = ", ".join(sorted(OPTIMIZERS))
    close = difflib.get_close_matches(str(name).lower(), OPTIMIZERS, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return ConfigError(f"optimizer {name!r} is unknown; {hint}known optimizers: {known}")


def _check_number(
    name: str,
    value: Any,
    *,
    low: float = 0.0,
    low_open: bool = False,
    high: float | None = None,
    high_open: bool = False,
) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = value > low if low_open else value >= low
        if high is not None:
            ok = ok and (value < high if high_open else value <= high)
    if not ok:
        left = "(" if low_open else "["
        right = ")" if high_open else "]"
        allowed = f"a number in {left}{low}, {high if high is not None else 'inf'}{right}"
        raise ConfigError(f"optimizer {name}={value!r} is invalid; use {allowed}")
    return float(value)


def _check_int(name: str, value: Any, *, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"optimizer {name}={value!r} is invalid; use a whole number >= {low}")
    return value


def _check_mults(name: str, mults: Sequence[tuple[str, Any]]) -> None:
    for regex, mult in rules_lib.compile_rules(mults, name):
        pattern = regex.pattern
        if isinstance(mult, bool) or not isinstance(mult, (int, float)) or not math.isfinite(mult):
            raise ConfigError(
                f"{name} multiplier {mult!r} for {pattern!r} is not a number; "
                f"use e.g. ({pattern!r}, 1.0)"
            )


def _per_path(fn: Callable[[str, Any, Any], Any]) -> Callable[..., Any]:
    """tree_map over `(updates, params)` calling `fn(path, update, param)`, path "/"-joined."""

    def apply(updates, params):
        if params is None:
            return jax.tree_util.tree_map_with_path(
                lambda p, u: fn(rules_lib.path_str(p), u, None), updates
            )
        return jax.tree_util.tree_map_with_path(
            lambda p, u, w: fn(rules_lib.path_str(p), u, w), updates, params
        )

    return apply


def _scale_by_lr(lr: float, lr_mults: Sequence[tuple[str, Any]]) -> optax.GradientTransformation:
    """u -> lr · lr_mult(path) · u. Stateless; multipliers are looked up at trace time."""
    compiled = rules_lib.compile_rules(lr_mults, "optim.lr_mults")

    def update_fn(updates, state, params=None):
        del params
        scale = _per_path(lambda path, u, _: u * (lr * rules_lib.first_match(path, compiled, 1.0)))
        return scale(updates, None), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def _add_decoupled_wd(
    wd: float, wd_mults: Sequence[tuple[str, Any]]
) -> optax.GradientTransformation:
    """x -> x + wd · wd_mult(path) · θ (NOT multiplied by lr). Unmatched paths: no decay."""
    compiled = rules_lib.compile_rules(wd_mults, "optim.wd_mults")

    def decay(path, u, w):
        mult = wd * rules_lib.first_match(path, compiled, 0.0)
        if mult == 0.0:
            return u
        return u + mult * w.astype(u.dtype)

    def update_fn(updates, state, params=None):
        if wd == 0.0:
            return updates, state
        if params is None:
            raise ValueError(
                "weight decay needs the parameters: call tx.update(grads, state, params)"
            )
        return _per_path(decay)(updates, params), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def frozen_labels(params: Any, frozen: Sequence[str] | str = ()) -> Any:
    """Pytree like `params` of "frozen" / "train" labels from the `frozen` regexes."""
    if isinstance(frozen, str):
        frozen = [frozen]
    return rules_lib.match_rules(
        params, [(pattern, FROZEN) for pattern in frozen], TRAIN, name="optim.frozen"
    )


def build_optimizer(
    params: Any,
    *,
    name: str = "adam",
    lr: float,
    schedule: Callable[[Any], Any],
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    mu_dtype: str | None = None,
    momentum: float = 0.9,
    wd: float = 0.0,
    wd_mults: Sequence[tuple[str, float]] = ((".*/kernel", 1.0),),
    lr_mults: Sequence[tuple[str, float]] = (),
    frozen: Sequence[str] | str = (),
    grad_clip_norm: float | None = 1.0,
    agc_clip: float | None = None,
    agc_eps: float = 1e-3,
    agc_exclude: Sequence[str] = agc_lib.DEFAULT_EXCLUDE,
    **options: Any,
) -> optax.GradientTransformation:
    """The optimizer for `params` (a pytree of arrays, or of shapes: only its paths are read).

    Per parameter θ (see the module docstring, and mind the DECOUPLED weight decay):

        Δθ = -schedule(t) · (lr · lr_mult(θ) · u(clip(g)) + wd · wd_mult(θ) · θ)

    name: a key of `OPTIMIZERS`: "adam" (m̂/(√v̂+eps)), "sgd" (momentum trace),
      "adafactor_bv" (`vistas.optim.adafactor`), "shampoo" (`vistas.optim.shampoo`).
    lr: base learning rate; `schedule`: `step -> multiplier` (`make_schedule`), applied to
      both terms from the step count kept in the optimizer state.
    mu_dtype: "bfloat16" stores Adam's first moment (SGD's momentum) in bf16, as in the
      paper; "float32" stores it in float32; None keeps the parameters' dtype.
    wd: decoupled decay, NOT multiplied by lr (AdamW(lr, λ) corresponds to wd = lr·λ).
    wd_mults / lr_mults: `(regex, mult)` rules on "/"-joined paths, first full match wins;
      unmatched parameters get wd_mult 0 (no decay) and lr_mult 1.
    frozen: regexes of parameters that get zero updates and no optimizer state.
    grad_clip_norm: clip the global norm of the non-frozen gradients first; None: no clip.
    agc_clip: adaptive gradient clipping λ (`vistas.optim.agc`), after the global clip and
      before the direction; None: off. `agc_eps` floors parameter norms; parameters matching
      an `agc_exclude` regex (default the classifier, `head/.*`) are not clipped.
    options: optimizer-specific options, `adafactor_*` and `shampoo_*` (`direction_options()`
      lists them with their defaults); each optimizer reads only its own.

    Use with `params` passed to `update` (weight decay needs them):
    `updates, state = tx.update(grads, state, params)`, then
    `params = optax.apply_updates(params, updates)`.
    """
    if not isinstance(name, str) or name.lower() not in OPTIMIZERS:
        raise _unknown_optimizer(name)
    check_mu_dtype(mu_dtype)
    if not callable(schedule):
        raise ConfigError(
            f"optimizer schedule={schedule!r} is not a function of the step; "
            "build one with make_schedule"
        )
    lr = _check_number("lr", lr)
    wd = _check_number("wd", wd)
    b1 = _check_number("b1", b1, high=1.0, high_open=True)
    b2 = _check_number("b2", b2, high=1.0, high_open=True)
    eps = _check_number("eps", eps)
    momentum = _check_number("momentum", momentum, high=1.0, high_open=True)
    if grad_clip_norm is not None:
        ok = isinstance(grad_clip_norm, (int, float)) and not isinstance(grad_clip_norm, bool)
        if not (ok and math.isfinite(grad_clip_norm) and grad_clip_norm > 0):
            raise ConfigError(
                f"optimizer grad_clip_norm={grad_clip_norm!r} is invalid; "
                "use a number > 0, or None for no clipping"
            )
    _check_mults("optim.wd_mults", wd_mults)
    _check_mults("optim.lr_mults", lr_mults)
    frozen_labels(params, frozen)  # validates the regexes now, not at the first step
    known = direction_options()
    for key in options:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ConfigError(
                f"optimizer option {key!r} is unknown; {hint}known: {', '.join(sorted(known))}"
            )

    direction = OPTIMIZERS[name.lower()](
        b1=b1, b2=b2, eps=eps, mu_dtype=_MU_DTYPES[mu_dtype], momentum=momentum, **options
    )
    clip = (
        optax.clip_by_global_norm(grad_clip_norm)
        if grad_clip_norm is not None
        else optax.identity()
    )
    agc_eps = _check_number("agc_eps", agc_eps)
    agc = agc_lib.adaptive_grad_clip(exclude=agc_exclude)  # validates the rules even when off
    if agc_clip is not None:
        agc = agc_lib.adaptive_grad_clip(
            _check_number("agc_clip", agc_clip, low_open=True), agc_eps, agc_exclude)
    else:
        agc = optax.identity()
    train = optax.named_chain(
        ("clip", clip),
        ("agc", agc),
        ("direction", direction),
        ("lr", _scale_by_lr(lr, lr_mults)),
        ("weight_decay", _add_decoupled_wd(wd, wd_mults)),
        ("schedule", optax.scale_by_schedule(lambda count: -schedule(count))),
    )
    return optax.multi_transform(
        {TRAIN: train, FROZEN: optax.set_to_zero()}, lambda tree: frozen_labels(tree, frozen)
    )


def from_config(
    params: Any, optim: Any, schedule: Callable[[Any], Any]
) -> optax.GradientTransformation:
    """`build_optimizer` from an `OptimConfig`: every field that is one of its keywords or an
    optimizer-specific option is passed (other fields, e.g. `sam_rho`, belong to the step)."""
    keywords = set(inspect.signature(build_optimizer).parameters) - {"params", "schedule"}
    keywords |= set(direction_options())
    kwargs = {
        f.name: getattr(optim, f.name)
        for f in dataclasses.fields(optim)
        if f.name in keywords
    }
    return build_optimizer(params, schedule=schedule, **kwargs)


def current_lr(schedule: Callable[[Any], Any], lr: float, step: Any) -> jax.Array:
    """The effective base learning rate `lr · schedule(step)` (float32 array; works under jit)."""
    return jnp.asarray(lr, jnp.float32) * schedule(step)


__all__ = [
    "OPTIMIZERS", "build_optimizer", "current_lr", "direction_options", "from_config",
    "frozen_labels",
]
