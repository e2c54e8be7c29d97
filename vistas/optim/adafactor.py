"""Adafactor as modified in "Scaling Vision Transformers" (Zhai et al. 2021): `adafactor_bv`.

The direction `u(g)` (learning rate, schedule and weight decay are applied by the builder):

    β2(t)  = min(β2_cap, 1 - (t + 1)^(-decay))            t = 0, 1, 2, ...  (β2(0) = 0)
    factored parameter (its two largest dims both >= min_dim_to_factor):
        r ← β2 r + (1 - β2) mean_c(g² + eps)               row statistics  (one dim reduced)
        c ← β2 c + (1 - β2) mean_r(g² + eps)               column statistics (the other)
        v̂ = r ⊗ c / mean(r)                                 rank-1 second moment
    otherwise:
        v ← β2 v + (1 - β2) (g² + eps),  v̂ = v
    n = g / √v̂                                              RMS normalisation
    n ← n / max(1, RMS(n) / clip)                           only when `clip` is set
    m ← b1 m + (1 - b1) n        (stored in `mu_dtype`, bfloat16 by default)
    u = m

Differences from the original Adafactor (Shazeer & Stern 2018), as in the paper:

- **First momentum, kept in bfloat16** (b1 = 0.9), applied AFTER the RMS normalisation; the
  original has no momentum (b1 = 0). It is an EMA without bias correction, like the paper's
  code, so the first updates are smaller (an implicit warmup on top of the schedule's).
- **β2 is capped at 0.999**: `1 - (t+1)^-0.8` alone tends to 1 and the second moment stops
  adapting in long runs.
- **No parameter-scale step**: the original multiplies the step by `max(1e-3, RMS(θ))`
  ("relative step size"); here the learning rate is absolute, like Adam's.
- **No update clipping by default** (the original clips the update RMS at d = 1).
- Factoring: the original factors 2-D matrices; here any parameter whose two largest dims
  are both >= 32 is factored over those two dims (so attention kernels `[D, H, Dh]` are
  factored over D and Dh), smaller ones keep a full second moment. eps = 1e-30 as in the
  original.

State per parameter: the bfloat16 momentum (2 bytes) plus, for factored parameters, the
row and column statistics (negligible), so about 2 bytes per parameter for a ViT.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax


class FactoredMoment(NamedTuple):
    """Second-moment statistics of one parameter: `v_row`/`v_col` if factored, else `v`."""

    v_row: Any
    v_col: Any
    v: Any


class AdafactorBVState(NamedTuple):
    count: jax.Array  # int32 step t
    mu: Any  # first momentum, like the parameters, in mu_dtype
    nu: Any  # FactoredMoment per parameter


def factored_dims(shape: tuple[int, ...], min_dim_to_factor: int) -> tuple[int, int] | None:
    """`(d0, d1)`: the two largest dims (d1 the largest), or None when not factored."""
    if len(shape) < 2:
        return None
    order = np.argsort(shape, kind="stable")
    d0, d1 = int(order[-2]), int(order[-1])
    if shape[d0] < min_dim_to_factor:
        return None
    return d0, d1


def beta2_at(count: Any, decay: float, cap: float) -> jax.Array:
    """β2(t) = min(cap, 1 - (t + 1)^-decay): 0 at t = 0, so the first step sees v = g²."""
    t = jnp.asarray(count, jnp.float32) + 1.0
    return jnp.minimum(cap, 1.0 - t ** (-decay))


def scale_by_adafactor_bv(
    *,
    b1: float = 0.9,
    decay: float = 0.8,
    beta2_cap: float = 0.999,
    eps: float = 1e-30,
    min_dim_to_factor: int = 32,
    clip: float | None = None,
    mu_dtype: Any = jnp.bfloat16,
) -> optax.GradientTransformation:
    """The paper's Adafactor direction (module docstring). b1 = 0 turns the momentum off."""
    mu_dtype = None if mu_dtype is None else jnp.dtype(mu_dtype)

    def init_moment(p):
        dims = factored_dims(p.shape, min_dim_to_factor)
        if dims is None:
            return FactoredMoment(v_row=(), v_col=(), v=jnp.zeros(p.shape, jnp.float32))
        d0, d1 = dims
        row = tuple(s for i, s in enumerate(p.shape) if i != d1)
        col = tuple(s for i, s in enumerate(p.shape) if i != d0)
        return FactoredMoment(v_row=jnp.zeros(row, jnp.float32),
                              v_col=jnp.zeros(col, jnp.float32), v=())

    def init_fn(params):
        mu = (
            jax.tree.map(lambda p: jnp.zeros(p.shape, mu_dtype or p.dtype), params)
            if b1 else ()
        )
        nu = jax.tree.map(init_moment, params)
        return AdafactorBVState(count=jnp.zeros((), jnp.int32), mu=mu, nu=nu)

    def normalise(g, moment, beta2):
        g32 = g.astype(jnp.float32)
        g2 = g32 * g32 + eps
        dims = factored_dims(g.shape, min_dim_to_factor)
        if dims is None:
            v = beta2 * moment.v + (1.0 - beta2) * g2
            return g32 * jax.lax.rsqrt(v), FactoredMoment(v_row=(), v_col=(), v=v)
        d0, d1 = dims
        v_row = beta2 * moment.v_row + (1.0 - beta2) * jnp.mean(g2, axis=d1)
        v_col = beta2 * moment.v_col + (1.0 - beta2) * jnp.mean(g2, axis=d0)
        d0_in_row = d0 if d0 < d1 else d0 - 1  # axis of dim d0 once d1 is reduced away
        row_mean = jnp.mean(v_row, axis=d0_in_row, keepdims=True)
        row_factor = jax.lax.rsqrt(v_row / row_mean)
        col_factor = jax.lax.rsqrt(v_col)
        n = g32 * jnp.expand_dims(row_factor, d1) * jnp.expand_dims(col_factor, d0)
        return n, FactoredMoment(v_row=v_row, v_col=v_col, v=())

    def update_fn(updates, state, params=None):
        del params
        beta2 = beta2_at(state.count, decay, beta2_cap)
        flat, treedef = jax.tree.flatten(updates)
        moments = treedef.flatten_up_to(state.nu)
        pairs = [normalise(g, m, beta2) for g, m in zip(flat, moments, strict=True)]
        normed = [n for n, _ in pairs]
        nu = treedef.unflatten([m for _, m in pairs])
        if clip is not None:
            normed = [
                n / jnp.maximum(1.0, jnp.sqrt(jnp.mean(n * n)) / clip) for n in normed
            ]
        if b1:
            mus = treedef.flatten_up_to(state.mu)
            new_mu32 = [b1 * m.astype(jnp.float32) + (1.0 - b1) * n
                        for m, n in zip(mus, normed, strict=True)]
            mu = treedef.unflatten([m.astype(mu_dtype or g.dtype)
                                    for m, g in zip(new_mu32, flat, strict=True)])
            out = [m.astype(g.dtype) for m, g in zip(new_mu32, flat, strict=True)]
        else:
            mu = state.mu
            out = [n.astype(g.dtype) for n, g in zip(normed, flat, strict=True)]
        count = optax.safe_int32_increment(state.count)
        return treedef.unflatten(out), AdafactorBVState(count=count, mu=mu, nu=nu)

    return optax.GradientTransformation(init_fn, update_fn)


__all__ = ["AdafactorBVState", "FactoredMoment", "beta2_at", "factored_dims",
           "scale_by_adafactor_bv"]
