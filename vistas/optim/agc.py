"""Adaptive gradient clipping (Brock et al. 2021, "High-Performance Large-Scale Image
Recognition Without Normalization"), the clipping that lets NFNets train with large batches.

For every unit i of a parameter W (an output unit of a kernel; a whole vector or scalar),
with G its gradient:

    G_i <- G_i · λ · max(‖W_i‖, eps) / ‖G_i‖    where ‖G_i‖ / max(‖W_i‖, eps) > λ

Norms are Frobenius norms over the unit's fan-in: axes (0, 1, 2) of an HWIO convolution
kernel, axis 0 of a [in, out] linear kernel (and of a 3-D multi-head kernel), everything for
parameters that are vectors or scalars once squeezed. As published, the classifier is not
clipped: parameters whose "/"-joined path fully matches a regex of ``exclude`` (default
``head/.*``) pass through unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import optax

from vistas.optim import rules as rules_lib

DEFAULT_EXCLUDE = ("head/.*",)


def unitwise_norm(x: jax.Array) -> jax.Array:
    """‖x_i‖ per unit, broadcastable against ``x`` (a scalar for vectors and scalars)."""
    if jnp.squeeze(x).ndim <= 1:
        return jnp.sqrt(jnp.sum(jnp.square(x)))
    if x.ndim in (2, 3):
        axes = (0,)
    else:  # convolution kernels HWIO (and anything larger): all but the output axis
        axes = tuple(range(x.ndim - 1))
    return jnp.sqrt(jnp.sum(jnp.square(x), axis=axes, keepdims=True))


def clip_unitwise(grad: jax.Array, param: jax.Array, clipping: float, eps: float) -> jax.Array:
    """``grad`` with every unit's norm capped at ``clipping · max(‖param_i‖, eps)``."""
    p_norm = unitwise_norm(param.astype(jnp.float32))
    g_norm = unitwise_norm(grad.astype(jnp.float32))
    max_norm = jnp.maximum(p_norm, eps) * clipping
    # max(., 1e-6) only guards the division; units below the threshold keep their gradient
    scale = jnp.where(g_norm > max_norm, max_norm / jnp.maximum(g_norm, 1e-6), 1.0)
    return (grad * scale).astype(grad.dtype)


def adaptive_grad_clip(clipping: float = 0.01, eps: float = 1e-3,
                       exclude: Sequence[str] = DEFAULT_EXCLUDE) -> optax.GradientTransformation:
    """The AGC transform; stateless, needs ``params`` in ``update``.

    clipping: λ, the largest allowed ratio ‖G_i‖ / max(‖W_i‖, eps).
    eps: floor of the parameter norm (keeps zero-initialised parameters moving).
    exclude: regexes of parameter paths left unclipped (first full match; default the head).
    """
    if isinstance(exclude, str):
        exclude = [exclude]
    compiled = [rules_lib.compile_regex(p, "optim.agc_exclude") for p in exclude]

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError("adaptive gradient clipping needs the parameters: "
                             "call tx.update(grads, state, params)")

        def clip(path, g, w):
            if any(r.fullmatch(rules_lib.path_str(path)) for r in compiled):
                return g
            return clip_unitwise(g, w, clipping, eps)

        return jax.tree_util.tree_map_with_path(clip, updates, params), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


__all__ = ["DEFAULT_EXCLUDE", "adaptive_grad_clip", "clip_unitwise", "unitwise_norm"]
