"""Vision Transformer (Dosovitskiy et al. 2021) as used in "Scaling Vision Transformers".

Sizes follow big_vision's variant strings ``NAME/PATCH`` (``Ti/16``, ``B/32``, ``G/14``...).
Pooling is ``gap`` (global average), ``map`` (multi-head attention pooling) or ``tok``
(class token). The forward pass returns ``(logits, out)`` where ``out`` holds named
intermediates (``stem``, ``encoder/block00``..., ``encoded``, ``pre_logits``, ``logits``).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vistas.errors import ConfigError

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
}

POOLS = ("gap", "map", "tok")
POSEMBS = ("learn", "sincos2d")

_xavier = nnx.initializers.xavier_uniform()
_zeros = nnx.initializers.zeros_init()


@dataclasses.dataclass(frozen=True)
class ViTConfig:
    """Every architectural choice of a ViT; ``None`` sizes come from the variant."""

    num_classes: int
    patch: int = 16
    width: int = 768
    depth: int = 12
    mlp_dim: int = 3072
    num_heads: int = 12
    image_size: int = 224
    channels: int = 3
    pool: str = "gap"
    posemb: str = "learn"
    head_zeroinit: bool = True
    head_bias_init: float = 0.0
    dropout: float = 0.0

    def __post_init__(self):
        if self.pool not in POOLS:
            raise ConfigError(f"model.pool={self.pool!r} is not known; use one of {', '.join(POOLS)}")
        if self.posemb not in POSEMBS:
            raise ConfigError(
                f"model.posemb={self.posemb!r} is not known; use one of {', '.join(POSEMBS)}"
            )
        if self.width % self.num_heads:
            raise ConfigError(
                f"model width {self.width} is not divisible by num_heads {self.num_heads}"
            )
        if self.image_size % self.patch:
            raise ConfigError(
                f"image size {self.image_size} is not a multiple of the patch size {self.patch}"
            )
        if self.posemb == "sincos2d" and self.width % 4:
            raise ConfigError(f"sincos2d position embedding needs width divisible by 4, got {self.width}")

    @property
    def grid(self) -> int:
        return self.image_size // self.patch


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


def posemb_sincos_2d(grid: int, width: int, temperature: float = 10_000.0) -> jax.Array:
    """Fixed 2-D sine-cosine position embedding, [1, grid*grid, width]."""
    y, x = np.mgrid[:grid, :grid]
    omega = np.arange(width // 4) / (width // 4 - 1 if width > 4 else 1)
    omega = 1.0 / (temperature**omega)
    y = np.einsum("m,d->md", y.flatten(), omega)
    x = np.einsum("m,d->md", x.flatten(), omega)
    pe = np.concatenate([np.sin(x), np.cos(x), np.sin(y), np.cos(y)], axis=1)
    return jnp.asarray(pe, jnp.float32)[None]


def dropout(x: jax.Array, rate: float, rng: jax.Array | None) -> jax.Array:
    if rate == 0.0 or rng is None:
        return x
    keep = jax.random.bernoulli(rng, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0.0).astype(x.dtype)


def _split(rng: jax.Array | None, n: int) -> list[jax.Array | None]:
    return [None] * n if rng is None else list(jax.random.split(rng, n))


class Attention(nnx.Module):
    """Multi-head dot-product attention with per-head query/key/value kernels [D, H, Dh]."""

    def __init__(self, width: int, num_heads: int, *, rngs: nnx.Rngs):
        head_dim = width // num_heads
        self.num_heads = num_heads
        for name in ("query", "key", "value"):
            setattr(
                self,
                name,
                nnx.LinearGeneral(width, (num_heads, head_dim), kernel_init=_xavier, rngs=rngs),
            )
        self.out = nnx.LinearGeneral(
            (num_heads, head_dim), width, axis=(-2, -1), kernel_init=_xavier, rngs=rngs
        )

    def __call__(self, q_in: jax.Array, kv_in: jax.Array) -> jax.Array:
        q = self.query(q_in)  # [B, Nq, H, Dh]
        k = self.key(kv_in)  # [B, Nk, H, Dh]
        v = self.value(kv_in)
        q = q / jnp.sqrt(q.shape[-1]).astype(q.dtype)
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k)
        weights = jax.nn.softmax(logits, axis=-1)
        y = jnp.einsum("bhqk,bkhd->bqhd", weights, v)
        return self.out(y)


class MLP(nnx.Module):
    def __init__(self, width: int, mlp_dim: int, *, rngs: nnx.Rngs):
        bias_init = nnx.initializers.normal(stddev=1e-6)
        self.fc1 = nnx.Linear(width, mlp_dim, kernel_init=_xavier, bias_init=bias_init, rngs=rngs)
        self.fc2 = nnx.Linear(mlp_dim, width, kernel_init=_xavier, bias_init=bias_init, rngs=rngs)

    def __call__(self, x: jax.Array, rate: float = 0.0, rng: jax.Array | None = None) -> jax.Array:
        x = jax.nn.gelu(self.fc1(x))
        return self.fc2(dropout(x, rate, rng))


class EncoderBlock(nnx.Module):
    """Pre-LayerNorm block: ``x + Attn(LN(x))`` then ``x + MLP(LN(x))``."""

    def __init__(self, cfg: ViTConfig, *, rngs: nnx.Rngs):
        self.norm1 = nnx.LayerNorm(cfg.width, epsilon=1e-6, rngs=rngs)
        self.attn = Attention(cfg.width, cfg.num_heads, rngs=rngs)
        self.norm2 = nnx.LayerNorm(cfg.width, epsilon=1e-6, rngs=rngs)
        self.mlp = MLP(cfg.width, cfg.mlp_dim, rngs=rngs)
        self.rate = cfg.dropout

    def __call__(self, x: jax.Array, rng: jax.Array | None = None) -> jax.Array:
        r1, r2, r3 = _split(rng, 3)
        y = self.norm1(x)
        x = x + dropout(self.attn(y, y), self.rate, r1)
        y = self.mlp(self.norm2(x), self.rate, r2)
        return x + dropout(y, self.rate, r3)


class MAPHead(nnx.Module):
    """Multi-head attention pooling: a learned probe attends over the tokens."""

    def __init__(self, cfg: ViTConfig, *, rngs: nnx.Rngs):
        self.probe = nnx.Param(_xavier(rngs.params(), (1, 1, cfg.width)))
        self.attn = Attention(cfg.width, cfg.num_heads, rngs=rngs)
        self.norm = nnx.LayerNorm(cfg.width, epsilon=1e-6, rngs=rngs)
        self.mlp = MLP(cfg.width, cfg.mlp_dim, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        probe = jnp.broadcast_to(self.probe[...], (x.shape[0], 1, x.shape[-1])).astype(x.dtype)
        x = self.attn(probe, x)
        x = x + self.mlp(self.norm(x))
        return x[:, 0]


class Encoder(nnx.Module):
    def __init__(self, cfg: ViTConfig, *, rngs: nnx.Rngs):
        self.depth = cfg.depth
        for i in range(cfg.depth):
            setattr(self, f"block{i:02d}", EncoderBlock(cfg, rngs=rngs))
        self.norm = nnx.LayerNorm(cfg.width, epsilon=1e-6, rngs=rngs)

    def __call__(self, x: jax.Array, out: dict, rng: jax.Array | None = None) -> jax.Array:
        for i, r in enumerate(_split(rng, self.depth)):
            x = getattr(self, f"block{i:02d}")(x, r)
            out[f"encoder/block{i:02d}"] = x
        return self.norm(x)


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
            rngs=rngs,
        )
        n = cfg.grid * cfg.grid
        if cfg.posemb == "learn":
            init = nnx.initializers.normal(stddev=1.0 / np.sqrt(cfg.width))
            self.pos_embedding = nnx.Param(init(rngs.params(), (1, n, cfg.width)))
        if cfg.pool == "tok":
            self.cls = nnx.Param(jnp.zeros((1, 1, cfg.width)))
        self.encoder = Encoder(cfg, rngs=rngs)
        if cfg.pool == "map":
            self.map_head = MAPHead(cfg, rngs=rngs)
        self.reset_head(cfg.num_classes, rngs=rngs)

    def reset_head(self, num_classes: int, *, rngs: nnx.Rngs) -> None:
        """Replace the classifier (e.g. for transfer); zero-initialised when configured."""
        cfg = self.cfg
        kernel_init = _zeros if cfg.head_zeroinit else _xavier
        bias_init = nnx.initializers.constant(cfg.head_bias_init)
        self.head = nnx.Linear(
            cfg.width, num_classes, kernel_init=kernel_init, bias_init=bias_init, rngs=rngs
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
        """[B, H, W, C] images -> [B, D] pooled features and the named intermediates."""
        out: dict[str, jax.Array] = {}
        x = self._patchify(images)  # [B, h, w, D]
        out["stem"] = x
        b, h, w, d = x.shape
        x = x.reshape(b, h * w, d)  # [B, N, D]
        if self.cfg.posemb == "learn":
            x = x + self.pos_embedding[...]
        else:
            x = x + posemb_sincos_2d(h, d).astype(x.dtype)
        out["with_posemb"] = x
        if self.cfg.pool == "tok":
            x = jnp.concatenate([jnp.broadcast_to(self.cls[...], (b, 1, d)), x], axis=1)
        r_drop, r_enc = _split(rng, 2)
        x = dropout(x, self.cfg.dropout, r_drop)
        x = self.encoder(x, out, r_enc)
        out["encoded"] = x
        if self.cfg.pool == "gap":
            x = jnp.mean(x, axis=1)
        elif self.cfg.pool == "map":
            x = self.map_head(x)
        else:
            x = x[:, 0]
        out["pre_logits"] = x
        return x, out

    def forward_head(self, features: jax.Array) -> jax.Array:
        return self.head(features)

    def __call__(self, images: jax.Array, *, rng: jax.Array | None = None) -> tuple[jax.Array, dict]:
        """Returns ``(logits, out)``; pass ``rng`` to enable dropout (training)."""
        features, out = self.forward_features(images, rng)
        logits = self.forward_head(features)
        out["logits"] = logits
        return logits, out
