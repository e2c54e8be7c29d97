"""Batch mixing on the device: mixup and CutMix, with their label mixing.

Both take a batch of images [B, H, W, C] and soft labels [B, K] (rows are probability
vectors: one-hot, or multi-hot divided by its count), draw one mixing weight
λ ~ Beta(α, α) for the whole batch and mix example i with example B-1-i (the batch in
reversed order), as big_vision does. They are pure functions of ``key`` and jit-able with
a static ``alpha``; ``alpha <= 0`` returns the batch unchanged.

- mixup (Zhang et al., arXiv 1710.09412): x = λ·x_i + (1-λ)·x_rev, y likewise.
- CutMix (Yun et al., arXiv 1905.04899): a box covering a fraction 1-λ of the image,
  centred uniformly at random and clipped to the image, is pasted from x_rev; the labels
  are mixed with the pasted area actually covered after clipping.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def one_hot_targets(labels: jax.Array, num_classes: int, *, normalise: bool = True) -> jax.Array:
    """float32 [B, K] probability rows from integer labels [B] or multi-hot labels [B, K]
    (spread evenly over their classes; an all-zero row stays zero). ``normalise=False``
    keeps multi-hot rows as they are (targets of a sigmoid loss)."""
    if labels.ndim == 1:
        return jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
    target = labels.astype(jnp.float32)
    if not normalise:
        return target
    return target / jnp.maximum(target.sum(-1, keepdims=True), 1.0)


def _mix(a: jax.Array, b: jax.Array, weight: jax.Array) -> jax.Array:
    """weight·a + (1-weight)·b in a's dtype (weight a scalar or broadcastable array)."""
    out = weight * a.astype(jnp.float32) + (1.0 - weight) * b.astype(jnp.float32)
    return out.astype(a.dtype)


def mixup(key: jax.Array, images: jax.Array, labels: jax.Array,
          alpha: float) -> tuple[jax.Array, jax.Array]:
    """Mixup of the batch with its reverse; returns ``(images, labels)`` of the same shapes."""
    if alpha <= 0:
        return images, labels
    lam = jax.random.beta(key, alpha, alpha)
    return _mix(images, images[::-1], lam), _mix(labels, labels[::-1], lam)


def cutmix_mask(key: jax.Array, height: int, width: int, alpha: float) -> jax.Array:
    """bool [H, W], True inside the box to paste (area fraction 1-λ before clipping)."""
    k_lam, k_y, k_x = jax.random.split(key, 3)
    lam = jax.random.beta(k_lam, alpha, alpha)
    cut = jnp.sqrt(1.0 - lam)
    cy = jax.random.uniform(k_y) * height
    cx = jax.random.uniform(k_x) * width
    half_h, half_w = cut * height / 2, cut * width / 2
    y0 = jnp.clip(jnp.round(cy - half_h), 0, height)
    y1 = jnp.clip(jnp.round(cy + half_h), 0, height)
    x0 = jnp.clip(jnp.round(cx - half_w), 0, width)
    x1 = jnp.clip(jnp.round(cx + half_w), 0, width)
    ys = jnp.arange(height)[:, None]
    xs = jnp.arange(width)[None, :]
    return (ys >= y0) & (ys < y1) & (xs >= x0) & (xs < x1)


def cutmix(key: jax.Array, images: jax.Array, labels: jax.Array,
           alpha: float) -> tuple[jax.Array, jax.Array]:
    """CutMix of the batch with its reverse; the label weight of the pasted examples is
    the fraction of pixels actually pasted. Returns ``(images, labels)``."""
    if alpha <= 0:
        return images, labels
    _, height, width, _ = images.shape
    mask = cutmix_mask(key, height, width, alpha)
    pasted = jnp.mean(mask.astype(jnp.float32))
    out = jnp.where(mask[None, :, :, None], images[::-1], images)
    return out, _mix(labels, labels[::-1], 1.0 - pasted)


def mix_batch(key: jax.Array, images: jax.Array, labels: jax.Array, *,
              mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0) -> tuple[jax.Array, jax.Array]:
    """The configured mixing: mixup, CutMix, or (both α > 0) one of them per batch with
    probability 1/2 each, chosen from ``key``."""
    k_choice, k_mix = jax.random.split(key)
    if mixup_alpha > 0 and cutmix_alpha > 0:
        x_m, y_m = mixup(k_mix, images, labels, mixup_alpha)
        x_c, y_c = cutmix(k_mix, images, labels, cutmix_alpha)
        use_cutmix = jax.random.bernoulli(k_choice)
        return jnp.where(use_cutmix, x_c, x_m), jnp.where(use_cutmix, y_c, y_m)
    if cutmix_alpha > 0:
        return cutmix(k_mix, images, labels, cutmix_alpha)
    return mixup(k_mix, images, labels, mixup_alpha)


__all__ = ["cutmix", "cutmix_mask", "mix_batch", "mixup", "one_hot_targets"]
