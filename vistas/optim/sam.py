"""Sharpness-aware minimisation (Foret et al. 2021), as used to fine-tune NFNets.

SAM replaces the gradient at θ by the gradient at the worst nearby point of an L2 ball:

    g   = ∇L(θ)
    ε   = ρ · g / ‖g‖            (‖·‖ the global L2 norm over the trained parameters)
    g_S = ∇L(θ + ε)

and the optimizer (Adam, SGD, ... with its learning rate, weight decay and schedule) is then
applied to `g_S` at θ. It costs a second forward and backward pass per step and no
optimizer state. Frozen parameters are not perturbed.

In the train step the gradient is that of the whole global batch (the mean over all devices),
so ε and the result do not depend on how many devices the batch is split over ("m = batch
size" in the paper's terms).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax


def perturbation(grads: Any, rho: float, trainable: Any = None) -> Any:
    """ε = ρ · g / ‖g‖ over the trainable leaves (`trainable`: a pytree of bools or None)."""
    if trainable is not None:
        grads = jax.tree.map(lambda g, t: g if t else jnp.zeros_like(g), grads, trainable)
    norm = optax.tree.norm(grads)
    scale = rho / jnp.maximum(norm, 1e-12)
    return jax.tree.map(lambda g: (scale * g).astype(g.dtype), grads)


def value_and_sam_grad(fn: Callable, rho: float, trainable: Any = None) -> Callable:
    """Like `jax.value_and_grad(fn, has_aux=True)`, with the gradient taken at θ + ε.

    `fn(params) -> (loss, aux)`. Returns `((loss, aux), g_S)`: loss and aux at θ (what is
    logged), the SAM gradient at θ + ε (what the optimizer uses).
    """
    grad_fn = jax.value_and_grad(fn, has_aux=True)

    def wrapped(params):
        (loss, aux), grads = grad_fn(params)
        eps = perturbation(grads, rho, trainable)
        perturbed = jax.tree.map(lambda p, e: p + e.astype(p.dtype), params, eps)
        _, sam_grads = grad_fn(perturbed)
        return (loss, aux), sam_grads

    return wrapped


__all__ = ["perturbation", "value_and_sam_grad"]
