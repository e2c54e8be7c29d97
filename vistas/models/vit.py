"""Vision Transformer (Dosovitskiy et al. 2021) as used in "Scaling Vision Transformers",
with the ViT-22B block options (Dehghani et al. 2023).

Sizes follow big_vision's variant strings ``NAME/PATCH`` (``Ti/16``, ``B/32``, ``G/14``,
``22B/14``...). Pooling is ``gap`` (global average), ``map`` (multi-head attention pooling)
or ``tok`` (class token). The forward pass returns ``(logits, out)`` where ``out`` holds
named intermediates (``stem``, ``encoder/block00``..., ``encoded``, ``pre_logits``,
``logits``).

Block options, each an independent switch (``ViTConfig``):

- ``parallel``: ``y = x + Attn(LN(x)) + MLP(LN(x))`` from one LayerNorm (ViT-22B) instead of
  the sequential pre-LN block; ``fused`` computes it with one input matmul (QKV and the first
  MLP layer) and one output matmul (attention and MLP output projections);
- ``qk_norm``: LayerNorm of queries and keys per head before the dot product;
- ``qkv_bias=False``: no biases in the QKV projections; ``norm_bias=False``: scale-only
  LayerNorms (every LayerNorm of the model). MLP biases are always kept.

Options of timm's ViTs (Touvron et al. 2021, Darcet et al. 2024), each off by default and
then absent from the parameters:

- ``init_values``: LayerScale, a learned per-channel scale on each residual branch of the
  sequential block (``ls1`` after attention, ``ls2`` after the MLP), initialised to it;
- ``reg_tokens``: that many learned register tokens (``registers`` [1, R, D], no position
  embedding) after the class token, taking part in attention and dropped before pooling;
- ``fc_norm``: the final LayerNorm after pooling (``fc_norm``) instead of before it
  (the encoder then has no ``norm``), as timm does with average pooling.

Training options: ``dropout``, ``drop_path`` (stochastic depth, rate increasing linearly
from 0 at the first block to ``drop_path`` at the last; both as :mod:`vistas.models.layers`
defines them), ``dtype`` (compute dtype of the matmuls) separate from ``param_dtype``,
``remat`` (rematerialisation policy per block) and ``scan`` (one ``lax.scan`` over stacked
blocks: parameters live under ``encoder/blocks`` with a leading depth axis instead of
``encoder/block00``...). ``convert_layout`` turns parameters of one layout (scanned or not,
fused or not) into another.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vistas.errors import ConfigError
from vistas.models import checks, fast_layers, layers
from vistas.systems import sharding

# width, depth, mlp_dim, num_heads
SIZES: dict[str, tuple[int, int, int, int]] = {
    "mu": (32, 1, 128, 2),
    "Ti": (192, 12, 768, 3),
    "S": (384, 12, 1536, 6),
    "M": (512, 12, 2048, 8),
    "B": (768, 12, 3072, 12),
    "L": (1024, 24, 4096, 16),
    "H": (1280, 32, 5120, 16),
    "g": (1408, 40, 6144, 16),
    "G": (1664, 48, 8192, 16),
    "e": (1792, 56, 15360, 16),
    "22B": (6144, 48, 24576, 48),
}

# Block options that a named size implies (options given explicitly still win).
SIZE_OPTIONS: dict[str, dict[str, Any]] = {
    "22B": dict(parallel=True, qk_norm=True, qkv_bias=False, norm_bias=False),
}

POOLS = ("gap", "map", "tok")
POSEMBS = ("learn", "sincos2d")
GELUS = ("tanh", "exact")  # tanh approximation (big_vision, flax) or exact erf (timm, PyTorch)
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
# "auto": bfloat16 compute on accelerators (float32 parameters), float32 on CPU, whose
# backend computes bfloat16 arithmetic in float32 anyway and gains nothing from it.
COMPUTE_DTYPES = ("auto", *DTYPES)
# How attention is computed (docs/models.md): "auto" takes cuDNN's fused kernel where the
# backend, dtype and shapes allow it and "recompute" elsewhere; "recompute" is
# ``fast_layers.attention`` (keeps q, k, v and the output, recomputes the weights in the
# backward pass); "xla" is ``jax.nn.dot_product_attention``'s XLA path; "cudnn" insists on
# cuDNN's fused (flash) attention and is an error where it cannot run.
ATTENTIONS = ("auto", "recompute", "xla", "cudnn")
ACCELERATORS = ("gpu", "cuda", "rocm", "tpu")


def resolve_dtype(name: str, backend: str | None = None) -> str:
    """The compute dtype ``name`` stands for on ``backend`` (default: JAX's default backend)."""
    if name != "auto":
        return name
    return "bfloat16" if (backend or jax.default_backend()) in ACCELERATORS else "float32"
REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,  # recompute everything in the block
    "dots": jax.checkpoint_policies.dots_saveable,  # keep matmul outputs
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,  # keep weight matmuls
}

_xavier = nnx.initializers.xavier_uniform()
_zeros = nnx.initializers.zeros_init()
_mlp_bias = nnx.initializers.normal(stddev=1e-6)


@dataclasses.dataclass(frozen=True)
class ViTConfig:
    """Every architectural and numerical choice of a ViT."""

    num_classes: int
    patch: int = 16
    width: int = 768
    depth: int = 12
    mlp_dim: int = 3072
    num_heads: int = 12
    image_size: int | tuple[int, int] = 224  # int: square images; (height, width) otherwise
    channels: int = 3
    pool: str = "gap"
    posemb: str = "learn"
    head_zeroinit: bool = True
    head_bias_init: float = 0.0
    representation_size: int | None = None  # a tanh "pre_logits" layer before the head
    fc_norm: bool = False  # the final LayerNorm after pooling (timm's fc_norm), none before it
    init_values: float | None = None  # LayerScale (ls1, ls2 per block) initialised to this
    reg_tokens: int = 0  # learned register tokens, dropped before pooling
    dropout: float = 0.0
    drop_path: float = 0.0
    parallel: bool = False
    fused: bool = False
    qk_norm: bool = False
    qkv_bias: bool = True
    norm_bias: bool = True
    gelu: str = "tanh"
    dtype: str = "auto"
    param_dtype: str = "float32"
    attention: str = "auto"
    remat: str = "none"
    scan: bool = False

    def __post_init__(self):
        checks.one_of("pool", self.pool, POOLS)
        checks.one_of("posemb", self.posemb, POSEMBS)
        checks.one_of("gelu", self.gelu, GELUS)
        checks.one_of("dtype", self.dtype, COMPUTE_DTYPES)
        checks.one_of("attention", self.attention, ATTENTIONS)
        checks.one_of("param_dtype", self.param_dtype, DTYPES)
        checks.one_of("remat", self.remat, REMAT_POLICIES)
        if self.width % self.num_heads:
            raise ConfigError(
                f"model width {self.width} is not divisible by num_heads {self.num_heads}"
            )
        for side in self.image_hw:
            if side <= 0:
                raise ConfigError(f"image size {self.image_size} must be positive")
            if side % self.patch:
                raise ConfigError(
                    f"image size {self.image_size} is not a multiple of the patch size {self.patch}"
                )
        if self.posemb == "sincos2d" and self.width % 4:
            raise ConfigError(f"sincos2d position embedding needs width divisible by 4, got {self.width}")
        for key in ("dropout", "drop_path"):
            if not 0.0 <= getattr(self, key) < 1.0:
                raise ConfigError(f"model.{key}={getattr(self, key)} must be in [0, 1)")
        if self.fused and not self.parallel:
            raise ConfigError("model.fused=True needs model.parallel=True: only the parallel block "
                              "has matmuls to fuse")
        if self.representation_size is not None and self.representation_size <= 0:
            raise ConfigError(f"model.representation_size={self.representation_size} must be positive")
        if isinstance(self.reg_tokens, bool) or not isinstance(self.reg_tokens, int) or self.reg_tokens < 0:
            raise ConfigError(f"model.reg_tokens={self.reg_tokens!r} must be a whole number >= 0")
        if self.init_values is not None:
            if isinstance(self.init_values, bool) or not (np.isfinite(self.init_values) and self.init_values > 0):
                raise ConfigError(f"model.init_values={self.init_values!r} must be a positive number "
                                  "(LayerScale's initial scale) or None (no LayerScale)")
            if self.parallel:
                raise ConfigError("model.init_values (LayerScale) needs the sequential block; the "
                                  "parallel block has no LayerScale")

    @property
    def num_prefix(self) -> int:
        """Tokens before the patch tokens: the class token (``tok``) and the registers."""
        return (1 if self.pool == "tok" else 0) + self.reg_tokens

    @property
    def image_hw(self) -> tuple[int, int]:
        s = self.image_size
        return (s, s) if isinstance(s, int) else (int(s[0]), int(s[1]))

    @property
    def grid(self) -> tuple[int, int]:
        """Patch grid (rows, columns)."""
        h, w = self.image_hw
        return h // self.patch, w // self.patch

    @property
    def head_dim(self) -> int:
        return self.width // self.num_heads

    @property
    def compute_dtype(self) -> Any:
        return DTYPES[resolve_dtype(self.dtype)]

    @property
    def params_dtype(self) -> Any:
        return DTYPES[self.param_dtype]

    def drop_path_rates(self) -> np.ndarray:
        """Per-block stochastic-depth rates: 0 at the first block, ``drop_path`` at the last."""
        return np.linspace(0.0, self.drop_path, self.depth, dtype=np.float32)


def parse_variant(variant: str) -> tuple[str, int]:
    """``"B/16"`` -> ``("B", 16)``; a clear error for anything else."""
    name, sep, patch = variant.partition("/")
    if not sep or name not in SIZES or not patch.isdigit() or int(patch) <= 0:
        import difflib

        known = [f"{k}/16" for k in SIZES]
        close = difflib.get_close_matches(variant, known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(
            f"unknown ViT variant {variant!r}{hint}; use NAME/PATCH with NAME in "
            f"{', '.join(SIZES)} and PATCH a positive integer, e.g. 'B/16'"
        )
    return name, int(patch)


def variant_config(variant: str, *, num_classes: int, **options: Any) -> ViTConfig:
    """The config of ``"B/16"``-style variants; ``options`` override sizes and switches."""
    size, patch = parse_variant(variant)
    width, depth, mlp_dim, num_heads = SIZES[size]
    kwargs = dict(patch=patch, width=width, depth=depth, mlp_dim=mlp_dim, num_heads=num_heads,
                  **SIZE_OPTIONS.get(size, {}))
    kwargs.update({k: v for k, v in options.items() if v is not None})
    return ViTConfig(num_classes=num_classes, **kwargs)


def build(variant: str, *, num_classes: int, rngs: nnx.Rngs, **options: Any) -> VisionTransformer:
    """The registry's builder for ``vit-NAME/PATCH``; ``options`` are ``ViTConfig`` fields."""
    parse_variant(variant)
    fields = {f.name for f in dataclasses.fields(ViTConfig)}
    checks.known_options("ViT", options, fields, listed=fields - {"num_classes", "patch"})
    return VisionTransformer(variant_config(variant, num_classes=num_classes, **options), rngs=rngs)


def posemb_sincos_2d(grid: int | tuple[int, int], width: int, temperature: float = 10_000.0) -> jax.Array:
    """Fixed 2-D sine-cosine position embedding, [1, rows*cols, width]."""
    gh, gw = (grid, grid) if isinstance(grid, int) else grid
    y, x = np.mgrid[:gh, :gw]
    omega = np.arange(width // 4) / (width // 4 - 1 if width > 4 else 1)
    omega = 1.0 / (temperature**omega)
    y = np.einsum("m,d->md", y.flatten(), omega)
    x = np.einsum("m,d->md", x.flatten(), omega)
    pe = np.concatenate([np.sin(x), np.cos(x), np.sin(y), np.cos(y)], axis=1)
    return jnp.asarray(pe, jnp.float32)[None]


def _path_rngs(rng: jax.Array | None) -> list[jax.Array | None]:
    """Two drop-path keys per block, independent of the block's dropout keys."""
    return layers.split_rng(None if rng is None else jax.random.fold_in(rng, 3), 2)


def _layer_norm(cfg: ViTConfig, features: int, rngs: nnx.Rngs) -> nnx.LayerNorm:
    return fast_layers.LayerNorm(features, epsilon=1e-6, use_bias=cfg.norm_bias, dtype=cfg.compute_dtype,
                         param_dtype=cfg.params_dtype, rngs=rngs)


def attend(q: jax.Array, k: jax.Array, v: jax.Array, implementation: str = "auto") -> jax.Array:
    """Softmax attention of [B, Nq, H, Dh] queries over [B, Nk, H, Dh] keys and values.

    The softmax runs in float32 whatever the compute dtype. ``implementation`` (``ATTENTIONS``):
    "recompute" is ``fast_layers.attention``, whose backward pass recomputes the attention
    weights instead of keeping them; "xla" and "cudnn" are ``jax.nn.dot_product_attention``'s
    two paths; "auto" takes cuDNN's fused kernel for self-attention in 16-bit floats on a
    GPU (where JAX accepts the shapes) and "recompute" everywhere else.
    """
    if implementation == "auto":
        implementation = "recompute"
        if _cudnn_candidate(q, k):
            try:
                return jax.nn.dot_product_attention(q, k, v, implementation="cudnn")
            except (NotImplementedError, ValueError, RuntimeError, TypeError):
                pass  # this cuDNN, dtype or shape is not supported: the portable path
    if implementation == "recompute":
        return fast_layers.attention(q, k, v)
    if implementation == "cudnn":
        if jax.default_backend() not in ("gpu", "cuda"):
            raise ConfigError(f"model.attention='cudnn' needs a CUDA GPU, not the "
                              f"{jax.default_backend()} backend; use 'auto', 'recompute' or 'xla'")
        try:
            return jax.nn.dot_product_attention(q, k, v, implementation="cudnn")
        except (NotImplementedError, ValueError, RuntimeError, TypeError) as e:
            raise ConfigError(f"model.attention='cudnn' cannot run here ({str(e).splitlines()[0]}); "
                              "use 'auto', which falls back where cuDNN cannot") from None
    return jax.nn.dot_product_attention(q, k, v, implementation="xla")


def _cudnn_candidate(q: jax.Array, k: jax.Array) -> bool:
    """Self-attention in bfloat16/float16 on a CUDA GPU, head size a multiple of 8 up to 128:
    what cuDNN's fused attention takes (JAX checks the rest and may still refuse)."""
    return (jax.default_backend() in ("gpu", "cuda") and q.dtype in (jnp.bfloat16, jnp.float16)
            and q.shape[1] == k.shape[1] and q.shape[-1] % 8 == 0 and q.shape[-1] <= 128)


# Activation layouts under a device mesh (``jax.set_mesh``; no-ops without one): the batch
# split over the data and FSDP axes, attention heads and MLP hidden units over ``model``
# (the ViT-22B paper's tensor parallelism), the residual stream whole on each device.
def _tokens(x: jax.Array) -> jax.Array:  # [B, N, D]
    return sharding.constrain(x, sharding.BATCH, None, None)


def _heads(x: jax.Array) -> jax.Array:  # [B, N, H, Dh]
    return sharding.constrain(x, sharding.BATCH, None, "model", None)


def _hidden(x: jax.Array) -> jax.Array:  # [B, N, M]
    return sharding.constrain(x, sharding.BATCH, None, "model")


class Attention(nnx.Module):
    """Multi-head dot-product attention with per-head query/key/value kernels [D, H, Dh]."""

    def __init__(self, cfg: ViTConfig, *, rngs: nnx.Rngs):
        kw = dict(kernel_init=_xavier, dtype=cfg.compute_dtype, param_dtype=cfg.params_dtype,
                  rngs=rngs)
        shape = (cfg.num_heads, cfg.head_dim)
        self.query = fast_layers.LinearGeneral(cfg.width, shape, use_bias=cfg.qkv_bias, **kw)
        self.key = fast_layers.LinearGeneral(cfg.width, shape, use_bias=cfg.qkv_bias, **kw)
        self.value = fast_layers.LinearGeneral(cfg.width, shape, use_bias=cfg.qkv_bias, **kw)
        self.out = fast_layers.LinearGeneral(shape, cfg.width, axis=(-2, -1), **kw)
        if cfg.qk_norm:
            self.query_norm = _layer_norm(cfg, cfg.head_dim, rngs)
            self.key_norm = _layer_norm(cfg, cfg.head_dim, rngs)
        self.qk_norm = cfg.qk_norm
        self.implementation = cfg.attention

    def __call__(self, q_in: jax.Array, kv_in: jax.Array) -> jax.Array:
        q = _heads(self.query(q_in))  # [B, Nq, H, Dh]
        k = _heads(self.key(kv_in))  # [B, Nk, H, Dh]
        v = _heads(self.value(kv_in))
        return self._attend(q, k, v)

    def self_attend(self, x: jax.Array, norm: nnx.LayerNorm) -> jax.Array:
        """``self(norm(x), norm(x))``; on CPU the LayerNorm and the three projections are one
        ``fast_layers.norm_dense``, whose backward pass recomputes the LayerNorm's output."""
        dense = getattr(norm, "dense", None)  # a fast_layers.LayerNorm
        qkv = dense(x, (self.query, self.key, self.value)) if dense else None
        if qkv is None:
            y = norm(x)
            return self(y, y)
        return self._attend(*(_heads(t) for t in qkv))

    def _attend(self, q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
        if self.qk_norm:
            q, k = self.query_norm(q), self.key_norm(k)
        return _tokens(self.out(attend(q, k, v, self.implementation)))


class MLP(nnx.Module):
    def __init__(self, cfg: ViTConfig, *, rngs: nnx.Rngs):
        kw = dict(kernel_init=_xavier, bias_init=_mlp_bias, dtype=cfg.compute_dtype,
                  param_dtype=cfg.params_dtype, rngs=rngs)
        self.fc1 = fast_layers.Linear(cfg.width, cfg.mlp_dim, **kw)
        self.fc2 = fast_layers.Linear(cfg.mlp_dim, cfg.width, **kw)
        self.approximate = cfg.gelu == "tanh"

    def __call__(self, x: jax.Array, rate: float = 0.0, rng: jax.Array | None = None,
                 norm: nnx.LayerNorm | None = None) -> jax.Array:
        """``MLP(x)``, or ``MLP(norm(x))`` with ``norm`` (on CPU and without dropout between
        the layers, one ``fast_layers.norm_mlp`` that keeps less for the backward pass)."""
        if norm is not None:
            fused = self._normed(x, norm) if rate == 0.0 or rng is None else None
            if fused is not None:
                return fused
            x = norm(x)
        if rate == 0.0 or rng is None:  # no dropout between the layers: the fused form
            kernel1, bias1, kernel2, bias2 = self.fc1.promote_dtype(
                (self.fc1.kernel[...], self.fc1.bias[...], self.fc2.kernel[...], self.fc2.bias[...]),
                dtype=self.fc1.dtype)
            (x,) = self.fc1.promote_dtype((x,), dtype=self.fc1.dtype)
            return _tokens(fast_layers.mlp(x, kernel1, bias1, kernel2, bias2, self.approximate, _hidden))
        x = fast_layers.gelu(_hidden(self.fc1(x)), self.approximate)
        return _tokens(self.fc2(layers.dropout(x, rate, rng)))

    def _normed(self, x: jax.Array, norm: nnx.LayerNorm) -> jax.Array | None:
        prepared = norm.prepared(x) if isinstance(norm, fast_layers.LayerNorm) else None
        if prepared is None:
            return None
        x, scale, bias = prepared
        parts = [self.fc1.parts(x.dtype), self.fc2.parts(x.dtype)]
        if any(p is None for p in parts):
            return None
        (w1, b1, _), (w2, b2, _) = parts
        return _tokens(fast_layers.norm_mlp(x, scale, bias, w1, b1, w2, b2, norm.epsilon,
                                            self.approximate, _hidden))


class LayerScale(nnx.Module):
    """A learned per-channel scale of a residual branch (CaiT, DeiT III; timm's ``ls1``)."""

    def __init__(self, cfg: ViTConfig, *, rngs: nnx.Rngs):
        del rngs  # a constant initialisation
        self.scale = nnx.Param(jnp.full((cfg.width,), cfg.init_values, cfg.params_dtype))

    def __call__(self, x: jax.Array) -> jax.Array:
        return x * self.scale[...].astype(x.dtype)


class EncoderBlock(nnx.Module):
    """Pre-LayerNorm block: ``x + Attn(LN(x))`` then ``x + MLP(LN(x))``; with LayerScale
    (``init_values``) ``x + ls1 * Attn(LN(x))`` then ``x + ls2 * MLP(LN(x))``."""

    def __init__(self, cfg: ViTConfig, *, rngs: nnx.Rngs):
        self.norm1 = _layer_norm(cfg, cfg.width, rngs)
        self.attn = Attention(cfg, rngs=rngs)
        self.norm2 = _layer_norm(cfg, cfg.width, rngs)
        self.mlp = MLP(cfg, rngs=rngs)
        if cfg.init_values is not None:
            self.ls1 = LayerScale(cfg, rngs=rngs)
            self.ls2 = LayerScale(cfg, rngs=rngs)
        self.layer_scale = cfg.init_values is not None
        self.rate = cfg.dropout

    def __call__(self, x: jax.Array, rng: jax.Array | None = None,
                 path_rate: float | jax.Array = 0.0) -> jax.Array:
        r1, r2, r3 = layers.split_rng(rng, 3)
        p1, p2 = _path_rngs(rng)
        y = layers.dropout(self.attn.self_attend(x, self.norm1), self.rate, r1)
        if self.layer_scale:
            y = self.ls1(y)
        x = x + layers.drop_path(y, path_rate, p1)
        y = layers.dropout(self.mlp(x, self.rate, r2, norm=self.norm2), self.rate, r3)
        if self.layer_scale:
            y = self.ls2(y)
        return _tokens(x + layers.drop_path(y, path_rate, p2))


class ParallelBlock(nnx.Module):
    """ViT-22B block: ``x + Attn(LN(x)) + MLP(LN(x))`` with one LayerNorm."""

    def __init__(self, cfg: ViTConfig, *, rngs: nnx.Rngs):
        self.norm = _layer_norm(cfg, cfg.width, rngs)
        self.attn = Attention(cfg, rngs=rngs)
        self.mlp = MLP(cfg, rngs=rngs)
        self.rate = cfg.dropout

    def __call__(self, x: jax.Array, rng: jax.Array | None = None,
                 path_rate: float | jax.Array = 0.0) -> jax.Array:
        _, r2, r3 = layers.split_rng(rng, 3)
        p1, _ = _path_rngs(rng)
        y = self.norm(x)
        y = self.attn(y, y) + self.mlp(y, self.rate, r2)
        return _tokens(x + layers.drop_path(layers.dropout(y, self.rate, r3), path_rate, p1))


class FusedIn(nnx.Module):
    """The fused input matmul: [D] -> [3·H·Dh (q, k, v) + M (MLP hidden)].

    Its bias covers q, k, v and the MLP with ``qkv_bias``, only the MLP part without.
    """

    def __init__(self, cfg: ViTConfig, *, rngs: nnx.Rngs):
        d, hd, m = cfg.width, cfg.num_heads * cfg.head_dim, cfg.mlp_dim
        parts = [_xavier(rngs.params(), (d, hd), cfg.params_dtype) for _ in range(3)]
        parts.append(_xavier(rngs.params(), (d, m), cfg.params_dtype))
        self.kernel = nnx.Param(jnp.concatenate(parts, axis=1))
        bias = _mlp_bias(rngs.params(), (m,), cfg.params_dtype)
        if cfg.qkv_bias:
            bias = jnp.concatenate([jnp.zeros((3 * hd,), cfg.params_dtype), bias])
        self.bias = nnx.Param(bias)


class FusedParallelBlock(nnx.Module):
    """The parallel block with one input and one output matmul (same function as unfused).

    ``in_proj``: kernel [D, 3·H·Dh + M]; ``out_proj``: kernel [H·Dh + M, D] and one bias
    (the sum of the attention and MLP output biases).
    """

    def __init__(self, cfg: ViTConfig, *, rngs: nnx.Rngs):
        self.norm = _layer_norm(cfg, cfg.width, rngs)
        self.in_proj = FusedIn(cfg, rngs=rngs)
        if cfg.qk_norm:
            self.query_norm = _layer_norm(cfg, cfg.head_dim, rngs)
            self.key_norm = _layer_norm(cfg, cfg.head_dim, rngs)
        hd = cfg.num_heads * cfg.head_dim

        def out_init(key: jax.Array, shape: tuple, dtype: Any = jnp.float32) -> jax.Array:
            k1, k2 = jax.random.split(key)  # attention and MLP parts, each Xavier on its own
            return jnp.concatenate([_xavier(k1, (hd, shape[1]), dtype),
                                    _xavier(k2, (shape[0] - hd, shape[1]), dtype)])

        self.out_proj = fast_layers.Linear(hd + cfg.mlp_dim, cfg.width, kernel_init=out_init,
                                   bias_init=_mlp_bias, dtype=cfg.compute_dtype,
                                   param_dtype=cfg.params_dtype, rngs=rngs)
        self.cfg = cfg

    def __call__(self, x: jax.Array, rng: jax.Array | None = None,
                 path_rate: float | jax.Array = 0.0) -> jax.Array:
        cfg = self.cfg
        _, r2, r3 = layers.split_rng(rng, 3)
        p1, _ = _path_rngs(rng)
        b, n, _ = x.shape
        h, dh = cfg.num_heads, cfg.head_dim
        y = self.norm(x)
        kernel = self.in_proj.kernel[...].astype(y.dtype)
        z = _hidden(y @ kernel)  # [B, N, 3·H·Dh + M]
        bias = self.in_proj.bias[...].astype(z.dtype)
        if not cfg.qkv_bias:
            bias = jnp.concatenate([jnp.zeros((3 * h * dh,), z.dtype), bias])
        z = z + bias
        q, k, v = (z[..., i * h * dh:(i + 1) * h * dh].reshape(b, n, h, dh) for i in range(3))
        hidden = fast_layers.gelu(z[..., 3 * h * dh:], cfg.gelu == "tanh")
        if cfg.qk_norm:
            q, k = self.query_norm(q), self.key_norm(k)
        a = attend(q, k, v, cfg.attention).reshape(b, n, h * dh)
        y = self.out_proj(jnp.concatenate([a, layers.dropout(hidden, cfg.dropout, r2)], axis=-1))
        return _tokens(x + layers.drop_path(layers.dropout(y, cfg.dropout, r3), path_rate, p1))


def block_class(cfg: ViTConfig) -> type[nnx.Module]:
    if not cfg.parallel:
        return EncoderBlock
    return FusedParallelBlock if cfg.fused else ParallelBlock


class Encoder(nnx.Module):
    """The blocks and the final LayerNorm (none with ``fc_norm``, which moves it after
    pooling); a Python loop, or one ``lax.scan`` with ``scan``."""

    def __init__(self, cfg: ViTConfig, *, rngs: nnx.Rngs):
        self.depth = cfg.depth
        self.scan = cfg.scan
        self.policy = cfg.remat
        self.path_rates = tuple(float(r) for r in cfg.drop_path_rates())
        block = block_class(cfg)
        if cfg.scan:
            @nnx.split_rngs(splits=cfg.depth)
            @nnx.vmap(in_axes=(0,), out_axes=0)
            def stacked(rngs: nnx.Rngs) -> nnx.Module:
                return block(cfg, rngs=rngs)

            self.blocks = stacked(rngs)
        else:
            for i in range(cfg.depth):
                setattr(self, f"block{i:02d}", block(cfg, rngs=rngs))
        if not cfg.fc_norm:
            self.norm = _layer_norm(cfg, cfg.width, rngs)
        self.final_norm = not cfg.fc_norm

    def _apply(self, graphdef: nnx.GraphDef) -> Any:
        """``(state, x, rng, rate) -> x`` for one block, rematerialised as configured."""

        def apply(state: Any, x: jax.Array, rng: jax.Array | None, rate: Any) -> jax.Array:
            return nnx.merge(graphdef, state)(x, rng, rate)

        policy = REMAT_POLICIES[self.policy]
        if self.policy == "none":
            return apply
        return jax.checkpoint(apply, policy=policy, prevent_cse=not self.scan)

    def __call__(self, x: jax.Array, out: dict, rng: jax.Array | None = None) -> jax.Array:
        rngs = layers.split_rng(rng, self.depth)
        if self.scan:
            graphdef, state = nnx.split(self.blocks)
            apply = self._apply(graphdef)
            keys = None if rng is None else jnp.stack(rngs)
            rates = jnp.asarray(self.path_rates, jnp.float32) if any(self.path_rates) else None

            def body(x, xs):
                st, key, rate = xs
                x = apply(st, x, key, rate)
                return x, x

            x, ys = jax.lax.scan(body, x, (state, keys, rates))
            for i in range(self.depth):
                out[f"encoder/block{i:02d}"] = ys[i]
        else:
            for i, r in enumerate(rngs):
                block = getattr(self, f"block{i:02d}")
                rate = self.path_rates[i]
                if self.policy == "none":
                    x = block(x, r, rate)
                else:
                    graphdef, state = nnx.split(block)
                    x = self._apply(graphdef)(state, x, r, rate)
                out[f"encoder/block{i:02d}"] = x
        return self.norm(x) if self.final_norm else x


class MAPHead(nnx.Module):
    """Multi-head attention pooling: a learned probe attends over the tokens."""

    def __init__(self, cfg: ViTConfig, *, rngs: nnx.Rngs):
        self.probe = nnx.Param(_xavier(rngs.params(), (1, 1, cfg.width), cfg.params_dtype))
        self.attn = Attention(cfg, rngs=rngs)
        self.norm = _layer_norm(cfg, cfg.width, rngs)
        self.mlp = MLP(cfg, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        probe = jnp.broadcast_to(self.probe[...], (x.shape[0], 1, x.shape[-1])).astype(x.dtype)
        x = self.attn(probe, x)
        x = x + self.mlp(self.norm(x))
        return x[:, 0]


class VisionTransformer(nnx.Module):
    """ViT with the timm-style API: ``forward_features``, ``forward_head``, ``reset_head``."""

    def __init__(self, cfg: ViTConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.embedding = nnx.Conv(
            cfg.channels,
            cfg.width,
            kernel_size=(cfg.patch, cfg.patch),
            strides=(cfg.patch, cfg.patch),
            padding="VALID",
            param_dtype=cfg.params_dtype,
            rngs=rngs,
        )
        gh, gw = cfg.grid
        if cfg.posemb == "learn":
            init = nnx.initializers.normal(stddev=1.0 / np.sqrt(cfg.width))
            self.pos_embedding = nnx.Param(init(rngs.params(), (1, gh * gw, cfg.width), cfg.params_dtype))
        if cfg.pool == "tok":
            self.cls = nnx.Param(jnp.zeros((1, 1, cfg.width), cfg.params_dtype))
        if cfg.reg_tokens:  # as timm: near zero, but not equal (equal tokens would stay so)
            init = nnx.initializers.normal(stddev=1e-6)
            self.registers = nnx.Param(init(rngs.params(), (1, cfg.reg_tokens, cfg.width), cfg.params_dtype))
        self.encoder = Encoder(cfg, rngs=rngs)
        if cfg.pool == "map":
            self.map_head = MAPHead(cfg, rngs=rngs)
        if cfg.fc_norm:
            self.fc_norm = _layer_norm(cfg, cfg.width, rngs)
        if cfg.representation_size:
            self.pre_logits = fast_layers.Linear(cfg.width, cfg.representation_size,
                                         param_dtype=cfg.params_dtype, rngs=rngs)
        self.reset_head(cfg.num_classes, rngs=rngs)

    @property
    def uses_rng(self) -> bool:
        """Whether training needs an ``rng`` (dropout or stochastic depth)."""
        return self.cfg.dropout > 0 or self.cfg.drop_path > 0

    @property
    def num_features(self) -> int:
        return self.cfg.representation_size or self.cfg.width

    def reset_head(self, num_classes: int, *, rngs: nnx.Rngs) -> None:
        """Replace the classifier (e.g. for transfer); zero-initialised when configured."""
        cfg = self.cfg
        kernel_init = _zeros if cfg.head_zeroinit else _xavier
        bias_init = nnx.initializers.constant(cfg.head_bias_init)
        self.head = fast_layers.Linear(
            self.num_features, num_classes, kernel_init=kernel_init, bias_init=bias_init,
            param_dtype=cfg.params_dtype, rngs=rngs,
        )
        self.cfg = dataclasses.replace(cfg, num_classes=num_classes)

    def _patchify(self, images: jax.Array) -> jax.Array:
        """The stride-``patch`` convolution written as one matmul (much faster on CPU)."""
        p = self.cfg.patch
        b, h, w, c = images.shape
        if h % p or w % p:
            raise ValueError(f"image size {h}x{w} is not a multiple of the patch size {p}")
        x = images.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
        kernel = self.embedding.kernel[...].reshape(p * p * c, -1)  # [p*p*C, D]
        x = x.reshape(b, h // p, w // p, p * p * c) @ kernel.astype(x.dtype)
        return x + self.embedding.bias[...].astype(x.dtype)

    def forward_features(self, images: jax.Array, rng: jax.Array | None = None) -> tuple[jax.Array, dict]:
        """[B, H, W, C] images -> [B, F] pooled features (float32) and the named intermediates."""
        cfg = self.cfg
        out: dict[str, jax.Array] = {}
        x = self._patchify(images.astype(cfg.compute_dtype))  # [B, h, w, D]
        out["stem"] = x
        b, h, w, d = x.shape
        x = x.reshape(b, h * w, d)  # [B, N, D]
        if cfg.posemb == "learn":
            x = x + self.pos_embedding[...].astype(x.dtype)
        else:
            x = x + posemb_sincos_2d((h, w), d).astype(x.dtype)
        out["with_posemb"] = x
        prefix = []  # [class token] + registers, before the patch tokens
        if cfg.pool == "tok":
            prefix.append(jnp.broadcast_to(self.cls[...].astype(x.dtype), (b, 1, d)))
        if cfg.reg_tokens:
            prefix.append(jnp.broadcast_to(self.registers[...].astype(x.dtype), (b, cfg.reg_tokens, d)))
        if prefix:
            x = jnp.concatenate([*prefix, x], axis=1)
        r_drop, r_enc = layers.split_rng(rng, 2)
        x = layers.dropout(x, cfg.dropout, r_drop)
        x = self.encoder(x, out, r_enc)
        out["encoded"] = x
        if cfg.pool == "gap":
            x = jnp.mean(x[:, cfg.num_prefix:], axis=1)
        elif cfg.pool == "map":
            x = self.map_head(x[:, cfg.num_prefix:])
        else:
            x = x[:, 0]
        if cfg.fc_norm:
            x = self.fc_norm(x)
        x = x.astype(jnp.float32)
        if cfg.representation_size:
            x = jnp.tanh(self.pre_logits(x))
        out["pre_logits"] = x
        return x, out

    def forward_head(self, features: jax.Array) -> jax.Array:
        return self.head(features)

    def __call__(self, images: jax.Array, *, rng: jax.Array | None = None) -> tuple[jax.Array, dict]:
        """Returns ``(logits, out)``; pass ``rng`` to enable dropout and drop-path (training)."""
        features, out = self.forward_features(images, rng)
        logits = self.forward_head(features)
        out["logits"] = logits
        return logits, out


# ----------------------------------------------------------------------------------------
# Parameter layouts: scanned <-> unscanned, fused <-> unfused parallel blocks.


def is_scanned(params: Mapping) -> bool:
    return "blocks" in params.get("encoder", {})


def stack_blocks(params: Mapping) -> dict:
    """``encoder/block00..`` -> ``encoder/blocks`` with a leading depth axis."""
    enc = params["encoder"]
    names = sorted(k for k in enc if k.startswith("block") and k[5:].isdigit())
    if not names:
        return dict(params)
    blocks = jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *[enc[n] for n in names])
    rest = {k: v for k, v in enc.items() if k not in names}
    return {**params, "encoder": {"blocks": blocks, **rest}}


def unstack_blocks(params: Mapping) -> dict:
    """``encoder/blocks`` (leading depth axis) -> ``encoder/block00..``."""
    enc = params["encoder"]
    if "blocks" not in enc:
        return dict(params)
    stacked = enc["blocks"]
    depth = int(np.shape(jax.tree.leaves(stacked)[0])[0])
    blocks = {f"block{i:02d}": jax.tree.map(lambda x, i=i: np.asarray(x)[i], stacked) for i in range(depth)}
    rest = {k: v for k, v in enc.items() if k != "blocks"}
    return {**params, "encoder": {**blocks, **rest}}


def fuse_block(block: Mapping) -> dict:
    """Parameters of a ``ParallelBlock`` -> those of a ``FusedParallelBlock`` (same function).

    Works on stacked (scanned) blocks too: leading axes are kept.
    """
    a, m = block["attn"], block["mlp"]
    lead = np.shape(a["query"]["kernel"])[:-3]
    d = np.shape(a["query"]["kernel"])[-3]
    flat = [np.asarray(a[n]["kernel"]).reshape(*lead, d, -1) for n in ("query", "key", "value")]
    kernel = np.concatenate([*flat, np.asarray(m["fc1"]["kernel"])], axis=-1)
    bias = np.asarray(m["fc1"]["bias"])
    if "bias" in a["query"]:
        qkv = [np.asarray(a[n]["bias"]).reshape(*lead, -1) for n in ("query", "key", "value")]
        bias = np.concatenate([*qkv, bias], axis=-1)
    out_k = np.asarray(a["out"]["kernel"])
    out_k = np.concatenate([out_k.reshape(*lead, -1, out_k.shape[-1]), np.asarray(m["fc2"]["kernel"])], axis=-2)
    fused = {
        "norm": block["norm"],
        "in_proj": {"kernel": kernel, "bias": bias},
        "out_proj": {"kernel": out_k, "bias": np.asarray(a["out"]["bias"]) + np.asarray(m["fc2"]["bias"])},
    }
    for n in ("query_norm", "key_norm"):
        if n in a:
            fused[n] = a[n]
    return fused


def unfuse_block(block: Mapping, num_heads: int, mlp_dim: int) -> dict:
    """Parameters of a ``FusedParallelBlock`` -> a ``ParallelBlock``'s.

    The fused output bias is the sum of two biases; it is given to the MLP's ``fc2`` and
    the attention output bias is zero, which computes the same function.
    """
    kernel = np.asarray(block["in_proj"]["kernel"])
    *lead, d, total = kernel.shape
    hd = (total - mlp_dim) // 3
    if hd * 3 + mlp_dim != total or hd % num_heads:
        raise ConfigError(f"fused input kernel of shape {list(kernel.shape)} does not split into "
                          f"q, k, v of {num_heads} heads and an MLP of {mlp_dim}")
    dh = hd // num_heads
    bias = np.asarray(block["in_proj"]["bias"])
    has_qkv_bias = bias.shape[-1] == total
    attn: dict[str, Any] = {}
    for i, n in enumerate(("query", "key", "value")):
        attn[n] = {"kernel": kernel[..., i * hd:(i + 1) * hd].reshape(*lead, d, num_heads, dh)}
        if has_qkv_bias:
            attn[n]["bias"] = bias[..., i * hd:(i + 1) * hd].reshape(*lead, num_heads, dh)
    out_k = np.asarray(block["out_proj"]["kernel"])
    out_b = np.asarray(block["out_proj"]["bias"])
    attn["out"] = {"kernel": out_k[..., :hd, :].reshape(*lead, num_heads, dh, out_k.shape[-1]),
                   "bias": np.zeros_like(out_b)}
    for n in ("query_norm", "key_norm"):
        if n in block:
            attn[n] = block[n]
    mlp = {"fc1": {"kernel": kernel[..., 3 * hd:], "bias": bias[..., -mlp_dim:]},
           "fc2": {"kernel": out_k[..., hd:, :], "bias": out_b}}
    return {"norm": block["norm"], "attn": attn, "mlp": mlp}


def _blocks(params: Mapping) -> list[str]:
    return sorted(k for k in params["encoder"] if k == "blocks" or (k.startswith("block") and k[5:].isdigit()))


def convert_layout(params: Mapping, like: Mapping) -> dict:
    """``params`` rearranged into the layout of ``like`` (scanned or not, fused or not).

    Shapes and the rest of the tree are left to ``adapt.adapt_params``; call this first.
    """
    if "encoder" not in params or "encoder" not in like:
        return dict(params)
    out = dict(params)
    src_blocks, tgt_blocks = _blocks(params), _blocks(like)
    if not src_blocks or not tgt_blocks:
        return out
    sample_src = params["encoder"][src_blocks[0]]
    sample_tgt = like["encoder"][tgt_blocks[0]]
    src_fused, tgt_fused = "in_proj" in sample_src, "in_proj" in sample_tgt
    if src_fused != tgt_fused:
        if tgt_fused:
            convert = fuse_block
        else:
            if "attn" not in sample_tgt:
                return out  # a standard block: adapt_params names what is missing
            kshape = np.shape(sample_tgt["attn"]["query"]["kernel"])
            heads, mlp_dim = kshape[-2], np.shape(sample_tgt["mlp"]["fc1"]["kernel"])[-1]

            def convert(block):
                return unfuse_block(block, heads, mlp_dim)

        enc = dict(out["encoder"])
        for name in src_blocks:
            enc[name] = convert(enc[name])
        out["encoder"] = enc
    if is_scanned(out) and not is_scanned(like):
        out = unstack_blocks(out)
    elif is_scanned(like) and not is_scanned(out):
        out = stack_blocks(out)
    return out
