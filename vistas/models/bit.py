"""BiT ResNet-v2 (Kolesnikov et al. 2020, "Big Transfer"): the teachers and students of
"Knowledge distillation: a good teacher is patient and consistent" (Beyer et al. 2021).

A pre-activation bottleneck ResNet in which every BatchNorm is a GroupNorm (32 groups) and
every convolution is weight-standardised (to unit variance over its fan-in, no bias). Variants
``R{depth}x{k}``: depth 50, 101 or 152 (stage depths 3-4-6-3, 3-4-23-3, 3-8-36-3) and width
multiplier k (bottleneck widths 64k, 128k, 256k, 512k; stage outputs four times that).
Root: 7x7 convolution with stride 2, then a 3x3 max pool with stride 2. The stride of a stage
sits in the 3x3 convolution of its first unit. The classifier is zero-initialised.

The forward pass returns ``(logits, out)``; ``out`` holds ``stem``, ``stage{s}/block{i:02d}``
(after every unit), ``pre_logits`` and ``logits``.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from vistas.errors import ConfigError
from vistas.models import checks, conv_layers, layers

DEPTHS: dict[int, tuple[int, ...]] = {
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
}
BASE_WIDTHS = (64, 128, 256, 512)
VARIANTS: list[str] = [f"R{d}x{k}" for d in DEPTHS for k in (1, 2, 3, 4)]


@dataclasses.dataclass(frozen=True)
class BiTConfig:
    """Every architectural choice of a BiT ResNet-v2; defaults are R50x1."""

    num_classes: int
    depths: tuple[int, ...] = DEPTHS[50]
    widths: tuple[int, ...] = BASE_WIDTHS  # bottleneck widths; a stage outputs 4x
    norm_groups: int = 32
    drop_path: float = 0.0
    dropout: float = 0.0
    image_size: int = 224
    channels: int = 3
    head_zeroinit: bool = True
    head_bias_init: float = 0.0

    def __post_init__(self):
        depths = checks.stages("depths", self.depths, "units per stage")
        widths = checks.stages("widths", self.widths, "bottleneck channels per stage")
        if len(depths) != len(widths):
            raise ConfigError(
                f"model.depths={list(depths)} and model.widths={list(widths)} must have one "
                "entry per stage each"
            )
        object.__setattr__(self, "depths", depths)
        object.__setattr__(self, "widths", widths)
        checks.rate("drop_path", self.drop_path)
        checks.rate("dropout", self.dropout)


def parse_variant(variant: str) -> tuple[str, tuple[int, ...], tuple[int, ...]]:
    """``"R50x1"`` / ``"r152x2"`` -> (canonical name, stage depths, bottleneck widths)."""
    m = re.fullmatch(r"[rR](\d+)[xX](\d+)", variant)
    if not m or int(m.group(1)) not in DEPTHS or not 1 <= int(m.group(2)) <= 4:
        close = difflib.get_close_matches(variant.upper().replace("X", "x"), VARIANTS, n=1)
        hint = f" (did you mean 'bit-{close[0]}'?)" if close else ""
        raise ConfigError(
            f"unknown model 'bit-{variant}'{hint}; BiT variants: R50, R101, R152 with x1..x4, "
            "e.g. 'bit-R50x1'"
        )
    depth, k = int(m.group(1)), int(m.group(2))
    return f"R{depth}x{k}", DEPTHS[depth], tuple(w * k for w in BASE_WIDTHS)


def _group_norm(channels: int, groups: int, rngs: nnx.Rngs) -> nnx.GroupNorm:
    """GroupNorm with ``groups`` groups, or the largest divisor of ``channels`` below it."""
    return nnx.GroupNorm(channels, num_groups=math.gcd(groups, channels), epsilon=1e-5, rngs=rngs)


def _conv(in_ch: int, out_ch: int, k: int, stride: int, rngs: nnx.Rngs) -> conv_layers.WSConv:
    pad = (((k - 1) // 2, (k - 1) // 2),) * 2
    return conv_layers.WSConv(in_ch, out_ch, k, stride=stride, padding=pad, scaled=False,
                         use_gain=False, use_bias=False, eps=1e-8, rngs=rngs)


def variant_stages(variant: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The published stage depths and bottleneck widths of a variant."""
    return parse_variant(variant)[1:]


class Unit(nnx.Module):
    """Pre-activation bottleneck: GN-ReLU, 1x1, GN-ReLU, 3x3 (stride), GN-ReLU, 1x1."""

    def __init__(self, in_ch: int, mid: int, *, stride: int, drop_path: float, groups: int,
                 rngs: nnx.Rngs):
        out_ch = 4 * mid
        self.stride, self.drop_path = stride, drop_path
        self.gn1 = _group_norm(in_ch, groups, rngs)
        self.conv_proj = (_conv(in_ch, out_ch, 1, stride, rngs)
                          if stride > 1 or in_ch != out_ch else None)
        self.conv1 = _conv(in_ch, mid, 1, 1, rngs)
        self.gn2 = _group_norm(mid, groups, rngs)
        self.conv2 = _conv(mid, mid, 3, stride, rngs)
        self.gn3 = _group_norm(mid, groups, rngs)
        self.conv3 = _conv(mid, out_ch, 1, 1, rngs)

    def __call__(self, x: jax.Array, rng: jax.Array | None = None) -> jax.Array:
        y = jax.nn.relu(self.gn1(x))
        shortcut = self.conv_proj(y) if self.conv_proj is not None else x
        y = self.conv1(y)
        y = self.conv2(jax.nn.relu(self.gn2(y)))
        y = self.conv3(jax.nn.relu(self.gn3(y)))
        return shortcut + layers.drop_path(y, self.drop_path, rng)


class Stage(nnx.Module):
    def __init__(self, units: list[Unit]):
        self.depth = len(units)
        for i, unit in enumerate(units):
            setattr(self, f"block{i:02d}", unit)

    def __call__(self, x: jax.Array, out: dict, prefix: str, rng: jax.Array | None) -> jax.Array:
        for i, r in enumerate(layers.split_rng(rng, self.depth)):
            x = getattr(self, f"block{i:02d}")(x, r)
            out[f"{prefix}/block{i:02d}"] = x
        return x


class ResNetV2(nnx.Module):
    """BiT ResNet-v2 with the timm-style API: ``forward_features``, ``forward_head``,
    ``reset_head``."""

    def __init__(self, cfg: BiTConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        root = cfg.widths[0]
        self.conv_root = _conv(cfg.channels, root, 7, 2, rngs)
        ch = root
        num_blocks, index = sum(cfg.depths), 0
        for s, (mid, depth) in enumerate(zip(cfg.widths, cfg.depths, strict=True)):
            units = []
            for i in range(depth):
                units.append(Unit(ch, mid, stride=2 if s > 0 and i == 0 else 1,
                                  drop_path=cfg.drop_path * index / num_blocks,
                                  groups=cfg.norm_groups, rngs=rngs))
                ch = 4 * mid
                index += 1
            setattr(self, f"stage{s}", Stage(units))
        self.num_features = ch
        self.norm = _group_norm(ch, cfg.norm_groups, rngs)
        self.reset_head(cfg.num_classes, rngs=rngs)

    def reset_head(self, num_classes: int, *, rngs: nnx.Rngs) -> None:
        """Replace the classifier (e.g. for transfer); zero-initialised as in BiT."""
        cfg = self.cfg
        kernel_init = (nnx.initializers.zeros_init() if cfg.head_zeroinit
                       else conv_layers.fan_in_normal())  # LeCun normal
        self.head = nnx.Linear(self.num_features, num_classes, kernel_init=kernel_init,
                               bias_init=nnx.initializers.constant(cfg.head_bias_init), rngs=rngs)
        self.cfg = dataclasses.replace(cfg, num_classes=num_classes)

    def forward_features(self, images: jax.Array, rng: jax.Array | None = None
                         ) -> tuple[jax.Array, dict]:
        """[B, H, W, C] images -> [B, 4·widths[-1]] pooled features and named intermediates."""
        out: dict[str, jax.Array] = {}
        x = conv_layers.max_pool_3x3(self.conv_root(images))
        out["stem"] = x
        for s, r in enumerate(layers.split_rng(rng, len(self.cfg.depths))):
            x = getattr(self, f"stage{s}")(x, out, f"stage{s}", r)
        x = jax.nn.relu(self.norm(x))
        x = jnp.mean(x, axis=(1, 2))
        out["pre_logits"] = x
        return x, out

    def forward_head(self, features: jax.Array, rng: jax.Array | None = None) -> jax.Array:
        return self.head(layers.dropout(features, self.cfg.dropout, rng))

    def __call__(self, images: jax.Array, *, rng: jax.Array | None = None
                 ) -> tuple[jax.Array, dict]:
        """Returns ``(logits, out)``; pass ``rng`` for dropout and stochastic depth (training)."""
        r_features, r_head = layers.split_rng(rng, 2)
        features, out = self.forward_features(images, r_features)
        logits = self.forward_head(features, r_head)
        out["logits"] = logits
        return logits, out


OPTIONS = ("depths", "widths", "drop_path", "dropout", "image_size", "channels",
           "head_zeroinit", "head_bias_init")


def build(variant: str, *, num_classes: int, rngs: nnx.Rngs, **options: Any) -> ResNetV2:
    """The registry's builder for ``bit-R{depth}x{k}`` (published shape unless overridden)."""
    _, depths, widths = parse_variant(variant)
    checks.known_options("BiT", options, OPTIONS)
    kwargs: dict[str, Any] = dict(depths=depths, widths=widths)
    kwargs.update({k: v for k, v in options.items() if v is not None})
    return ResNetV2(BiTConfig(num_classes=num_classes, **kwargs), rngs=rngs)
