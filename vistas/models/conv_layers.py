"""Layers shared by the ConvNets: weight-standardised convolution, squeeze-excite, pooling
and the gamma-scaled activations of normaliser-free networks. Dropout and stochastic depth,
shared with the ViT, are in :mod:`vistas.models.layers`.

Images and feature maps are NHWC; convolution kernels are HWIO (``[kh, kw, in/groups, out]``),
so the fan-in of an output unit is the product of the first three kernel axes.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vistas.errors import ConfigError
from vistas.models import checks

# gamma such that gamma * act(x) has unit variance for x ~ N(0, 1) (Brock et al. 2021,
# "Characterizing signal propagation to close the performance gap in unnormalized ResNets").
GAMMAS: dict[str, float] = {
    "identity": 1.0,
    "celu": 1.270926833152771,
    "elu": 1.2716004848480225,
    "gelu": 1.7015043497085571,
    "leaky_relu": 1.70590341091156,
    "log_sigmoid": 1.9193484783172607,
    "relu": 1.7139588594436646,
    "relu6": 1.7131484746932983,
    "selu": 1.0008515119552612,
    "sigmoid": 4.803835391998291,
    "silu": 1.7881293296813965,
    "soft_sign": 2.338853120803833,
    "softplus": 1.9203323125839233,
    "tanh": 1.5939117670059204,
}

_ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "identity": lambda x: x,
    "celu": jax.nn.celu,
    "elu": jax.nn.elu,
    "gelu": jax.nn.gelu,
    "leaky_relu": jax.nn.leaky_relu,
    "log_sigmoid": jax.nn.log_sigmoid,
    "relu": jax.nn.relu,
    "relu6": jax.nn.relu6,
    "selu": jax.nn.selu,
    "sigmoid": jax.nn.sigmoid,
    "silu": jax.nn.silu,
    "soft_sign": jax.nn.soft_sign,
    "softplus": jax.nn.softplus,
    "tanh": jnp.tanh,
}


def fan_in_normal(scale: float = 1.0):
    """Initializer N(0, scale/fan_in) (fan-in: every axis but the last), e.g. He/LeCun normal.

    With a concrete key the values are drawn by NumPy from the key's bits: building a model
    eagerly then compiles nothing per parameter shape (XLA compiles a random sampler for
    every distinct shape, about a second each on a CPU, which dominated building a ConvNet).
    Under tracing (abstract models, ``jit``) it is ``jax.random.normal``. Either way the
    values are a pure function of the key.
    """

    def init(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
        std = float(np.sqrt(scale / max(1, int(np.prod(shape[:-1])))))
        try:
            bits = np.asarray(jax.random.key_data(key) if jnp.issubdtype(
                key.dtype, jax.dtypes.prng_key) else key).ravel()
        except jax.errors.TracerArrayConversionError:
            return jax.random.normal(key, shape, dtype) * jnp.asarray(std, dtype)
        values = np.random.default_rng(bits.astype(np.uint64)).standard_normal(shape, np.float32)
        return jnp.asarray(values * std, dtype)

    return init


def scaled_activation(name: str) -> Callable[[jax.Array], jax.Array]:
    """``x -> gamma · act(x)``, variance preserving for unit-Gaussian inputs."""
    checks.one_of("activation", name, sorted(_ACTIVATIONS))
    act, gamma = _ACTIVATIONS[name], GAMMAS[name]
    return lambda x: act(x) * jnp.asarray(gamma, x.dtype)


def activate(name: str, x: jax.Array) -> jax.Array:
    """``gamma · act(x)`` for the activation called ``name``."""
    return scaled_activation(name)(x)


def standardize(kernel: jax.Array, *, scaled: bool, eps: float) -> jax.Array:
    """Standardises each output unit of an HWIO kernel over its fan-in ``N = kh·kw·in``.

    ``scaled=True`` (NFNet): ``(W - mean) / sqrt(max(N·var, eps))``, i.e. variance ``1/N``,
    so that a convolution preserves the variance of unit-variance inputs.
    ``scaled=False`` (BiT): ``(W - mean) / sqrt(var + eps)``, unit variance.
    """
    mean = jnp.mean(kernel, axis=(0, 1, 2), keepdims=True)
    var = jnp.var(kernel, axis=(0, 1, 2), keepdims=True)
    if scaled:
        fan_in = int(np.prod(kernel.shape[:-1]))
        return (kernel - mean) * jax.lax.rsqrt(jnp.maximum(var * fan_in, eps))
    return (kernel - mean) * jax.lax.rsqrt(var + eps)


def grouped_conv(x: jax.Array, kernel: jax.Array, stride: int, padding: str | tuple,
                 groups: int) -> jax.Array:
    """NHWC convolution with an HWIO kernel of ``in/groups`` input channels per output.

    XLA's CPU backend runs grouped convolutions (``feature_group_count > 1``) 10-25 times
    slower than one ordinary convolution per group, forward and backward; on CPU the groups
    are therefore convolved separately and concatenated (the same function of the same
    parameters). Other backends use the grouped convolution.
    """
    conv = functools.partial(
        jax.lax.conv_general_dilated, window_strides=(stride, stride), padding=padding,
        dimension_numbers=("NHWC", "HWIO", "NHWC"))
    if groups == 1 or jax.default_backend() != "cpu":
        return conv(x, kernel, feature_group_count=groups)
    xs = jnp.split(x, groups, axis=-1)
    ws = jnp.split(kernel, groups, axis=-1)
    return jnp.concatenate([conv(a, b) for a, b in zip(xs, ws, strict=True)], axis=-1)


class WSConv(nnx.Module):
    """Weight-standardised 2-D convolution (``kernel``, optional ``gain`` and ``bias``).

    The kernel used is ``gain · standardize(kernel)``. NFNet convolutions have a learnable
    per-output gain and a bias (``scaled=True``, eps 1e-4); BiT's have neither and are
    standardised to unit variance (``scaled=False``, eps 1e-8).
    """

    def __init__(self, in_features: int, out_features: int, kernel_size: int, *,
                 stride: int = 1, groups: int = 1, padding: str | tuple = "SAME",
                 scaled: bool = True, use_gain: bool = True, use_bias: bool = True,
                 eps: float = 1e-4, rngs: nnx.Rngs):
        if in_features % groups or out_features % groups:
            raise ConfigError(
                f"convolution of {in_features} -> {out_features} channels cannot be split in "
                f"{groups} groups"
            )
        shape = (kernel_size, kernel_size, in_features // groups, out_features)
        self.kernel = nnx.Param(fan_in_normal()(rngs.params(), shape))
        # NumPy constants: no compilation per shape when a model is built eagerly
        self.gain = nnx.Param(jnp.asarray(np.ones(out_features, np.float32))) if use_gain else None
        self.bias = nnx.Param(jnp.asarray(np.zeros(out_features, np.float32))) if use_bias else None
        self.stride, self.groups, self.padding = stride, groups, padding
        self.scaled, self.eps = scaled, eps

    def standardized_kernel(self) -> jax.Array:
        w = standardize(self.kernel[...], scaled=self.scaled, eps=self.eps)
        if self.gain is not None:
            w = w * self.gain[...]
        return w

    def __call__(self, x: jax.Array) -> jax.Array:
        w = self.standardized_kernel().astype(x.dtype)
        y = grouped_conv(x, w, self.stride, self.padding, self.groups)
        if self.bias is not None:
            y = y + self.bias[...].astype(y.dtype)
        return y


class SqueezeExcite(nnx.Module):
    """Channel gates ``sigmoid(fc1(relu(fc0(mean_hw(x)))))``, ``[B, 1, 1, C]``."""

    def __init__(self, channels: int, ratio: float, *, rngs: nnx.Rngs):
        hidden = max(1, int(channels * ratio))
        init = fan_in_normal()  # LeCun normal
        self.fc0 = nnx.Linear(channels, hidden, kernel_init=init, rngs=rngs)
        self.fc1 = nnx.Linear(hidden, channels, kernel_init=init, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        h = jnp.mean(x, axis=(1, 2))
        h = self.fc1(jax.nn.relu(self.fc0(h)))
        return jax.nn.sigmoid(h)[:, None, None, :]


def avg_pool_2x2(x: jax.Array) -> jax.Array:
    """2x2 average pool with stride 2 and SAME padding; edges average only valid pixels."""
    window, strides = (1, 2, 2, 1), (1, 2, 2, 1)
    total = jax.lax.reduce_window(x, 0.0, jax.lax.add, window, strides, "SAME")
    ones = jnp.ones((1, *x.shape[1:3], 1), x.dtype)
    count = jax.lax.reduce_window(ones, 0.0, jax.lax.add, window, strides, "SAME")
    return total / count


def max_pool_3x3(x: jax.Array) -> jax.Array:
    """3x3 max pool with stride 2 and one pixel of padding on each side (ResNet stem)."""
    pad = ((0, 0), (1, 1), (1, 1), (0, 0))
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 2, 2, 1), pad)
