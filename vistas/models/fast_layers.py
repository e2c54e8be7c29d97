"""Linear, LinearGeneral and LayerNorm with backward passes that suit XLA:CPU; GELU,
softmax, MLP, attention and LayerNorm-then-linear functions that keep less for the
backward pass.

Drop-in subclasses of the ``flax.nnx`` layers: same parameters, names, shapes and outputs
(within float rounding). On the CPU backend their gradients are written by hand so that
every reduction over the batch and token rows (bias and LayerNorm scale/bias gradients,
the kernel gradient) is a matrix product. XLA:CPU lowers a column reduction of a
``[rows, features]`` gradient to a slow windowed reduction, while a matrix-vector product
runs in its multi-threaded matmul kernels; on the ViT-Ti/16 training step this is worth
about 10% (``benchmarks/peer_throughput.py``, docs/performance.md). On other backends
the layers are exactly the ``nnx`` ones.

:func:`gelu` and :func:`softmax` compute what ``jax.nn.gelu`` and ``jax.nn.softmax`` do,
on every backend, with hand-written gradients that keep one array for the backward pass
(GELU: its input; softmax: its output). Differentiated automatically, the tanh GELU keeps
six arrays the size of the MLP's hidden layer and softmax two of the attention weights'
size; with these, the arrays a ViT-Ti/16 keeps for its backward pass at batch 32 go from
2.1 to 1.1 GiB and XLA's temporaries for the training step from 1.56 to 1.33 GB.
:func:`attention` keeps less again, recomputing the attention weights from queries and keys
in the backward pass; on CPU :func:`norm_dense` and :func:`norm_mlp` (through
:meth:`LayerNorm.dense` and the ViT's blocks) fuse a LayerNorm with the layers it feeds and
recompute its output there. What a backward pass recomputes is made to depend on the
cotangent (:func:`_after`): XLA:CPU would otherwise merge it with the identical forward
computation or schedule it into the forward pass, keeping the arrays anyway (this had
undone the MLP's recomputation of its GELU output). XLA's temporaries for the training
step, batch 32: ViT-Ti/16 1,269 -> 840 MiB (attention, ``_after``) -> 735 MiB (LayerNorm
fused), ViT-S/16 2,520 -> 1,662 -> 1,451 MiB.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from flax import nnx


def _on_cpu() -> bool:
    return jax.default_backend() == "cpu"


def _column_sum(g2: jax.Array) -> jax.Array:
    """``g2.sum(0)`` for a ``[rows, n]`` array, as a vector-matrix product."""
    return jnp.ones((g2.shape[0],), g2.dtype) @ g2


@jax.custom_vjp
def affine(x: jax.Array, kernel: jax.Array, bias: jax.Array) -> jax.Array:
    """``x @ kernel + bias`` for ``x [..., K]``, ``kernel [K, N]``, ``bias [N]``."""
    return x @ kernel + bias


def _affine_fwd(x, kernel, bias):
    return x @ kernel + bias, (x, kernel)


def _affine_bwd(res, g):
    x, kernel = res
    g2, x2 = g.reshape(-1, g.shape[-1]), x.reshape(-1, x.shape[-1])
    return g @ kernel.T, x2.T @ g2, _column_sum(g2)


affine.defvjp(_affine_fwd, _affine_bwd)


@jax.custom_vjp
def matmul(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """``x @ kernel`` for ``x [..., K]``, ``kernel [K, N]``; the kernel gradient as one 2-D matmul."""
    return x @ kernel


def _matmul_fwd(x, kernel):
    return x @ kernel, (x, kernel)


def _matmul_bwd(res, g):
    x, kernel = res
    return g @ kernel.T, x.reshape(-1, x.shape[-1]).T @ g.reshape(-1, g.shape[-1])


matmul.defvjp(_matmul_fwd, _matmul_bwd)


def _row_mean(x: jax.Array) -> jax.Array:
    return jnp.mean(x, axis=-1, keepdims=True)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _layer_norm(x, scale, bias, eps):
    """LayerNorm over the last axis; statistics in float32, output in ``x``'s dtype."""
    return _ln_fwd(x, scale, bias, eps)[0]


def _ln_fwd(x, scale, bias, eps):
    xf = x.astype(jnp.float32)
    centred = xf - _row_mean(xf)
    inv = jax.lax.rsqrt(_row_mean(centred * centred) + eps)
    xhat = centred * inv
    y = xhat * scale.astype(jnp.float32) + bias.astype(jnp.float32)
    return y.astype(x.dtype), (xhat, inv, scale, bias)


def _ln_bwd(eps, res, g):
    xhat, inv, scale, bias = res
    n, g_dtype = g.shape[-1], g.dtype
    g = g.astype(jnp.float32)
    d = g * scale.astype(jnp.float32)
    dx = inv * (d - _row_mean(d) - xhat * _row_mean(d * xhat))
    dscale = _column_sum((g * xhat).reshape(-1, n)).astype(scale.dtype)
    dbias = _column_sum(g.reshape(-1, n)).astype(bias.dtype)
    return dx.astype(g_dtype), dscale, dbias


_layer_norm.defvjp(_ln_fwd, _ln_bwd)


_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_GELU_CUBIC = 0.044715


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def gelu(x: jax.Array, approximate: bool = True) -> jax.Array:
    """``jax.nn.gelu(x, approximate)`` whose backward pass keeps only ``x``."""
    return jax.nn.gelu(x, approximate=approximate)


def _gelu_fwd(x, approximate):
    return jax.nn.gelu(x, approximate=approximate), x


def _gelu_slope(x: jax.Array, approximate: bool) -> jax.Array:
    """d gelu / dx, in float32."""
    xf = x.astype(jnp.float32)
    if approximate:  # d/dx 0.5 x (1 + tanh(u)), u = sqrt(2/pi) (x + 0.044715 x^3)
        t = jnp.tanh(_SQRT_2_OVER_PI * (xf + _GELU_CUBIC * xf * xf * xf))
        return 0.5 * (1.0 + t) + 0.5 * xf * (1.0 - t * t) * _SQRT_2_OVER_PI * (1.0 + 3.0 * _GELU_CUBIC * xf * xf)
    # d/dx x Phi(x) = Phi(x) + x phi(x)
    return 0.5 * (1.0 + jax.lax.erf(xf / math.sqrt(2.0))) + xf * jnp.exp(-0.5 * xf * xf) / math.sqrt(2.0 * math.pi)


def _gelu_bwd(approximate, x, g):
    return ((g.astype(jnp.float32) * _gelu_slope(x, approximate)).astype(x.dtype),)


gelu.defvjp(_gelu_fwd, _gelu_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def softmax(x: jax.Array, axis: int = -1) -> jax.Array:
    """``jax.nn.softmax(x, axis)`` whose backward pass keeps only its output."""
    return jax.nn.softmax(x, axis=axis)


def _softmax_fwd(x, axis):
    y = jax.nn.softmax(x, axis=axis)
    return y, y


def _softmax_bwd(axis, y, g):
    return (y * (g - jnp.sum(g * y, axis=axis, keepdims=True)),)


softmax.defvjp(_softmax_fwd, _softmax_bwd)


def _after(x: jax.Array, g: jax.Array) -> jax.Array:
    """``x``, made to depend on the cotangent ``g`` (plus ``0 * g[0]``; NaN if that is not
    finite), so that what a backward pass recomputes from ``x`` is computed there. Without
    it XLA:CPU merges the recomputation with the forward pass's identical one, or schedules
    it back into the forward pass, and keeps the very array it was meant to drop (its
    optimization barriers are removed before it schedules)."""
    return x + (g.reshape(-1)[:1] * 0).astype(x.dtype).reshape((1,) * x.ndim)


@jax.custom_vjp
def attention(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
    """Softmax attention of ``[B, Nq, H, Dh]`` queries over ``[B, Nk, H, Dh]`` keys and
    values (logits scaled by ``1/sqrt(Dh)``, softmax in float32), whose backward pass keeps
    ``q``, ``k``, ``v``, the output and the softmax's log-normaliser instead of the
    ``[B, H, Nq, Nk]`` attention weights.

    The weights are recomputed in the backward pass (one batched matmul and an
    exponential), as flash attention does; the output is the out-projection's input, which
    its gradient keeps anyway. For ViT-Ti/16 at batch 32 that is 14 MB less per block.
    """
    return _attention_fwd(q, k, v)[0]


def _attention_logits(q: jax.Array, k: jax.Array) -> jax.Array:
    q = q / jnp.sqrt(q.shape[-1]).astype(q.dtype)
    return jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32)


def _attention_fwd(q, k, v):
    logits = _attention_logits(q, k)
    top = jax.lax.stop_gradient(jnp.max(logits, -1, keepdims=True))
    e = jnp.exp(logits - top)
    total = jnp.sum(e, -1, keepdims=True)
    out = jnp.einsum("bhqk,bkhd->bqhd", (e / total).astype(v.dtype), v)
    return out, (q, k, v, out, top + jnp.log(total))


def _attention_bwd(res, g):
    q, k, v, out, lse = res
    weights = jnp.exp(_attention_logits(_after(q, g), k) - lse)  # recomputed
    dv = jnp.einsum("bhqk,bqhd->bkhd", weights.astype(v.dtype), g)
    dw = jnp.einsum("bqhd,bkhd->bhqk", g, v).astype(jnp.float32)
    # softmax backward: w (dw - sum_k w dw), and sum_k w dw = sum_d g out (the output's row)
    row = jnp.einsum("bqhd,bqhd->bhq", g.astype(jnp.float32), out.astype(jnp.float32))[..., None]
    dlogits = (weights * (dw - row)).astype(q.dtype)
    scale = (1.0 / jnp.sqrt(q.shape[-1])).astype(q.dtype)
    dq = jnp.einsum("bhqk,bkhd->bqhd", dlogits, k) * scale
    dk = jnp.einsum("bhqk,bqhd->bkhd", dlogits, q * scale)
    return dq, dk, dv


attention.defvjp(_attention_fwd, _attention_bwd)


def _identity(x: jax.Array) -> jax.Array:
    return x


def _rows_sum(g2: jax.Array) -> jax.Array:
    return _column_sum(g2) if _on_cpu() else g2.sum(0)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6))
def mlp(x: jax.Array, w1: jax.Array, b1: jax.Array, w2: jax.Array, b2: jax.Array,
        approximate: bool = True, constrain=_identity) -> jax.Array:
    """``gelu(x @ w1 + b1) @ w2 + b2`` whose backward pass keeps ``x`` and ``x @ w1 + b1``.

    The GELU output, which the second matmul's gradient needs, is recomputed in the backward
    pass (an element-wise op fused with the GELU slope there) instead of being kept: one
    array of the hidden layer's size less per block. ``constrain`` lays out the hidden
    activations (and their gradient) under a device mesh.
    """
    return jax.nn.gelu(constrain(x @ w1 + b1), approximate=approximate) @ w2 + b2


def _mlp_fwd(x, w1, b1, w2, b2, approximate, constrain):
    h = constrain(x @ w1 + b1)
    return jax.nn.gelu(h, approximate=approximate) @ w2 + b2, (x, h, w1, w2)


def _mlp_bwd(approximate, constrain, res, g):
    x, h, w1, w2 = res
    a = jax.nn.gelu(_after(h, g), approximate=approximate)  # recomputed, as in the forward pass
    g2, a2 = g.reshape(-1, g.shape[-1]), a.reshape(-1, a.shape[-1])
    dh = constrain(((g @ w2.T).astype(jnp.float32) * _gelu_slope(h, approximate)).astype(h.dtype))
    dh2, x2 = dh.reshape(-1, dh.shape[-1]), x.reshape(-1, x.shape[-1])
    return dh @ w1.T, x2.T @ dh2, _rows_sum(dh2), a2.T @ g2, _rows_sum(g2)


mlp.defvjp(_mlp_fwd, _mlp_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def norm_dense(x: jax.Array, scale: jax.Array, bias: jax.Array, eps: float,
               kernels: tuple[jax.Array, ...], biases: tuple[jax.Array | None, ...]) -> tuple[jax.Array, ...]:
    """``(LayerNorm(x) @ k + b for k, b in zip(kernels, biases))`` whose backward pass keeps
    the LayerNorm's statistics, not its output: the output is recomputed there (one
    element-wise op) instead of being kept for the kernels' gradients. ``kernels`` are
    ``[D, N_i]``; a bias may be None."""
    return _norm_dense_fwd(x, scale, bias, eps, kernels, biases)[0]


def _dense(y: jax.Array, kernel: jax.Array, bias: jax.Array | None) -> jax.Array:
    return y @ kernel if bias is None else y @ kernel + bias


def _norm_dense_fwd(x, scale, bias, eps, kernels, biases):
    y, ln_res = _ln_fwd(x, scale, bias, eps)
    return tuple(_dense(y, k, b) for k, b in zip(kernels, biases, strict=True)), (ln_res, kernels, biases)


def _ln_output(ln_res, dtype, g: jax.Array) -> jax.Array:
    """The LayerNorm's output, recomputed in the backward pass (after the cotangent ``g``)."""
    xhat, _, scale, bias = ln_res
    return (_after(xhat, g) * scale.astype(jnp.float32) + bias.astype(jnp.float32)).astype(dtype)


def _norm_dense_bwd(eps, res, gs):
    ln_res, kernels, biases = res
    y = _ln_output(ln_res, gs[0].dtype, gs[0])
    y2 = y.reshape(-1, y.shape[-1])
    dy, dkernels, dbiases = None, [], []
    for g, k, b in zip(gs, kernels, biases, strict=True):
        g2 = g.reshape(-1, g.shape[-1])
        dy = g @ k.T if dy is None else dy + g @ k.T
        dkernels.append(y2.T @ g2)
        dbiases.append(None if b is None else _rows_sum(g2).astype(b.dtype))
    dx, dscale, dbias = _ln_bwd(eps, ln_res, dy)
    return dx, dscale, dbias, tuple(dkernels), tuple(dbiases)


norm_dense.defvjp(_norm_dense_fwd, _norm_dense_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(7, 8, 9))
def norm_mlp(x: jax.Array, scale: jax.Array, bias: jax.Array, w1: jax.Array, b1: jax.Array,
             w2: jax.Array, b2: jax.Array, eps: float, approximate: bool = True,
             constrain=_identity) -> jax.Array:
    """``mlp(LayerNorm(x), ...)`` keeping the LayerNorm's statistics and the MLP's hidden
    pre-activation for the backward pass, which recomputes the rest (see :func:`mlp`)."""
    return _norm_mlp_fwd(x, scale, bias, w1, b1, w2, b2, eps, approximate, constrain)[0]


def _norm_mlp_fwd(x, scale, bias, w1, b1, w2, b2, eps, approximate, constrain):
    y, ln_res = _ln_fwd(x, scale, bias, eps)
    out, (_, h, _, _) = _mlp_fwd(y, w1, b1, w2, b2, approximate, constrain)
    return out, (ln_res, h, w1, w2)


def _norm_mlp_bwd(eps, approximate, constrain, res, g):
    ln_res, h, w1, w2 = res
    dy, dw1, db1, dw2, db2 = _mlp_bwd(approximate, constrain, (_ln_output(ln_res, h.dtype, g), h, w1, w2), g)
    dx, dscale, dbias = _ln_bwd(eps, ln_res, dy)
    return dx, dscale, dbias, dw1, db1, dw2, db2


norm_mlp.defvjp(_norm_mlp_fwd, _norm_mlp_bwd)


class Linear(nnx.Linear):
    """``nnx.Linear`` whose gradient reductions are matmuls on CPU."""

    def __call__(self, inputs: jax.Array, out_sharding=None) -> jax.Array:
        if not _on_cpu() or out_sharding is not None or self.preferred_element_type is not None:
            return super().__call__(inputs, out_sharding)
        kernel = self.kernel[...]
        bias = self.bias[...] if self.bias is not None else None
        inputs, kernel, bias = self.promote_dtype((inputs, kernel, bias), dtype=self.dtype)
        return matmul(inputs, kernel) if bias is None else affine(inputs, kernel, bias)

    def parts(self, dtype) -> tuple[jax.Array, jax.Array | None, tuple[int, ...]] | None:
        """``(kernel [D, N], bias, (N,))`` for inputs of ``dtype``, for :func:`norm_dense`;
        None where this layer would not take its CPU path or would cast its inputs."""
        if not _on_cpu() or self.preferred_element_type is not None:
            return None
        return _promoted_parts(self, dtype, self.kernel[...], self.bias, (self.out_features,))


def _promoted_parts(layer, dtype, kernel, bias_param, out_shape):
    bias = bias_param[...] if bias_param is not None else None
    kernel, bias = layer.promote_dtype((kernel, bias), dtype=layer.dtype or jnp.result_type(
        dtype, kernel, *([] if bias is None else [bias])))
    if kernel.dtype != dtype:
        return None
    return kernel, None if bias is None else bias.reshape(-1), out_shape


class LinearGeneral(nnx.LinearGeneral):
    """``nnx.LinearGeneral`` over trailing axes (no batch axes), with matmul gradients on CPU."""

    def __call__(self, inputs: jax.Array, out_sharding=None) -> jax.Array:
        n_in = len(self.axis) if isinstance(self.axis, tuple) else 1
        axes = tuple(a % inputs.ndim for a in (self.axis if isinstance(self.axis, tuple) else (self.axis,)))
        trailing = axes == tuple(range(inputs.ndim - n_in, inputs.ndim))
        if (not _on_cpu() or self.batch_axis or not trailing or out_sharding is not None
                or self.preferred_element_type is not None):
            return super().__call__(inputs, out_sharding)
        kernel = self.kernel[...]
        bias = self.bias[...] if self.bias is not None else None
        inputs, kernel, bias = self.promote_dtype((inputs, kernel, bias), dtype=self.dtype)
        k_in = math.prod(kernel.shape[:n_in])
        out_shape = kernel.shape[n_in:]
        x2 = inputs.reshape(inputs.shape[:inputs.ndim - n_in] + (k_in,))
        k2 = kernel.reshape(k_in, -1)
        y = matmul(x2, k2) if bias is None else affine(x2, k2, bias.reshape(-1))
        return y.reshape(x2.shape[:-1] + out_shape)

    def parts(self, dtype) -> tuple[jax.Array, jax.Array | None, tuple[int, ...]] | None:
        """As :meth:`Linear.parts`, for a layer over the last axis only."""
        if (not _on_cpu() or self.batch_axis or self.axis not in (-1, (-1,))
                or self.preferred_element_type is not None):
            return None
        kernel = self.kernel[...]
        return _promoted_parts(self, dtype, kernel.reshape(kernel.shape[0], -1), self.bias, kernel.shape[1:])


class LayerNorm(nnx.LayerNorm):
    """``nnx.LayerNorm`` over the last axis with matmul parameter gradients on CPU."""

    def __call__(self, x: jax.Array, *, mask=None) -> jax.Array:
        prepared = None if mask is not None else self.prepared(x)
        if prepared is None:
            return super().__call__(x, mask=mask)
        return _layer_norm(*prepared, self.epsilon)

    def dense(self, x: jax.Array, layers) -> tuple[jax.Array, ...] | None:
        """``tuple(layer(self(x)) for layer in layers)`` for :class:`Linear` /
        :class:`LinearGeneral` layers, as one :func:`norm_dense` that keeps less for the
        backward pass; None where any of them would not take its CPU path."""
        prepared = self.prepared(x)
        if prepared is None:
            return None
        x, scale, bias = prepared
        parts = [layer.parts(x.dtype) for layer in layers]
        if any(p is None for p in parts):
            return None
        outs = norm_dense(x, scale, bias, self.epsilon, tuple(p[0] for p in parts), tuple(p[1] for p in parts))
        return tuple(o.reshape(o.shape[:-1] + p[2]) for o, p in zip(outs, parts, strict=True))

    def prepared(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array] | None:
        """``(x, scale, bias)`` in the compute dtype where this layer takes its CPU path."""
        last = tuple(a % x.ndim for a in (self.reduction_axes if isinstance(self.reduction_axes, tuple)
                                          else (self.reduction_axes,))) == (x.ndim - 1,)
        if not _on_cpu() or not last or self.feature_axes not in (-1, (-1,)):
            return None
        scale = self.scale[...] if self.scale is not None else None
        bias = self.bias[...] if self.bias is not None else None
        dtype = self.dtype or jnp.result_type(x, *(p for p in (scale, bias) if p is not None))
        n = x.shape[-1]
        return (x.astype(dtype), jnp.ones((n,), jnp.float32) if scale is None else scale,
                jnp.zeros((n,), jnp.float32) if bias is None else bias)
