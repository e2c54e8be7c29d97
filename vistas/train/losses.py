"""Classification losses on logits [B, K] and integer labels [B] or multi-hot labels [B, K]."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from vistas.errors import ConfigError


def softmax_xent(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-example softmax cross-entropy, [B]; multi-hot labels are spread evenly over
    their classes."""
    if labels.ndim == 2:
        target = labels.astype(jnp.float32)
        target = target / jnp.maximum(target.sum(-1, keepdims=True), 1.0)
        return optax.softmax_cross_entropy(logits.astype(jnp.float32), target)
    return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)


def sigmoid_xent(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-example sigmoid cross-entropy summed over classes, [B] (multi-label style).

    Pair it with ``model.head_bias_init`` (e.g. -10) so the initial loss is small, as in
    the ViT-22B and big_vision recipes.
    """
    if labels.ndim == 2:  # multi-hot already
        onehot = labels.astype(jnp.float32)
    else:
        onehot = jax.nn.one_hot(labels, logits.shape[-1], dtype=jnp.float32)
    return optax.sigmoid_binary_cross_entropy(logits.astype(jnp.float32), onehot).sum(-1)


def smooth_labels(labels: jax.Array, num_classes: int, eps: float, *,
                  normalise: bool = True) -> jax.Array:
    """Label smoothing (Szegedy et al., arXiv 1512.00567): (1-eps)·y + eps/K, float [B, K].

    ``y`` is the one-hot row of an integer label, or a [B, K] (multi-hot or already mixed)
    row, divided by its sum when ``normalise`` (softmax targets).
    """
    if labels.ndim == 1:
        target = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
    else:
        target = labels.astype(jnp.float32)
        if normalise:
            target = target / jnp.maximum(target.sum(-1, keepdims=True), 1.0)
    return (1.0 - eps) * target + eps / num_classes


LOSSES: dict[str, Callable[[jax.Array, jax.Array], jax.Array]] = {
    "softmax_xent": softmax_xent,
    "sigmoid_xent": sigmoid_xent,
}


def check(name: str, label_smoothing: float = 0.0) -> None:
    """One-line ConfigErrors for an unknown loss or a label smoothing outside [0, 1) (the
    checks of ``config.validate`` too)."""
    if name not in LOSSES:
        raise ConfigError(f"train.loss={name!r} is not known; use one of {', '.join(LOSSES)}")
    if not 0.0 <= label_smoothing < 1.0:
        raise ConfigError(f"train.label_smoothing={label_smoothing} must be in [0, 1)")


def get(name: str, label_smoothing: float = 0.0) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """The loss ``name``; with ``label_smoothing`` > 0 its targets are smoothed first."""
    check(name, label_smoothing)
    fn = LOSSES[name]
    if not label_smoothing:
        return fn

    def smoothed(logits: jax.Array, labels: jax.Array) -> jax.Array:
        targets = smooth_labels(labels, logits.shape[-1], label_smoothing,
                                normalise=name == "softmax_xent")
        return fn(logits, targets)

    return smoothed
