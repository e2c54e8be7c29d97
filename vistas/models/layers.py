"""Regularisation layers shared by every model family (ViT, NFNet, BiT): dropout and
drop-path (stochastic depth), and the splitting of the random key that drives them.

Conventions, the same in every family:

- Both are active only in training, i.e. when a key is given; without one (evaluation)
  or at rate 0 they return their input unchanged.
- Both are *inverted*: what is kept is divided by the keep probability ``1 - rate``, so
  the expectation of the output over keys equals the input and nothing is rescaled at
  evaluation. The one exception is NFNet's drop-path, which keeps its reference's
  convention (``scale_by_keep=False``: kept branches are not rescaled).
- ``dropout`` draws one keep decision per element; ``drop_path`` one per example (the
  whole residual branch of an example is kept or zeroed), broadcast over the other axes.
- The mask is a pure function of the key: the same key gives the same mask.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def _is_zero(rate: float | jax.Array | None) -> bool:
    """Whether ``rate`` is a concrete zero (a traced rate is never known to be zero)."""
    return rate is None or (isinstance(rate, (int, float, np.number)) and float(rate) == 0.0)


def dropout(x: jax.Array, rate: float, rng: jax.Array | None) -> jax.Array:
    """Zeroes each element with probability ``rate`` and divides the kept ones by
    ``1 - rate``; ``x`` itself without ``rng`` or at rate 0."""
    if rng is None or _is_zero(rate):
        return x
    keep = jax.random.bernoulli(rng, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0.0).astype(x.dtype)


def drop_path(x: jax.Array, rate: float | jax.Array | None, rng: jax.Array | None, *,
              scale_by_keep: bool = True) -> jax.Array:
    """Stochastic depth: zeroes a residual branch ``x`` ([B, ...]) for whole examples with
    probability ``rate`` and divides the kept ones by ``1 - rate``.

    ``rate`` may be traced (a per-block rate inside ``scan``); without ``rng`` (evaluation)
    or at rate 0 the branch is returned unchanged. ``scale_by_keep=False`` keeps the kept
    branches as they are: NFNet's reference convention (DeepMind's
    ``StochDepth(scale_by_keep=False)``), which its checkpoints and runs were trained with.
    """
    if rng is None or _is_zero(rate):
        return x
    keep_prob = 1.0 - rate
    keep = jax.random.bernoulli(rng, keep_prob, (x.shape[0],) + (1,) * (x.ndim - 1))
    kept = x / jnp.asarray(keep_prob, x.dtype) if scale_by_keep else x
    return jnp.where(keep, kept, 0.0).astype(x.dtype)


def split_rng(rng: jax.Array | None, n: int) -> list[jax.Array | None]:
    """``n`` independent keys from ``rng``, or ``n`` times ``None`` without one (evaluation)."""
    return [None] * n if rng is None else list(jax.random.split(rng, n))
