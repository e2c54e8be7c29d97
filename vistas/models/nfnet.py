"""Normaliser-Free Networks (Brock et al. 2021, "High-Performance Large-Scale Image
Recognition Without Normalization"), as defined by DeepMind's reference implementation and
used in "ConvNets Match Vision Transformers at Scale" (Smith et al. 2023).

Variants ``F0``..``F7`` (stage widths 256, 512, 1536, 1536) and the wider ``F0+``..``F7+``
(384, 768, 2048, 2048). Every convolution is a scaled weight-standardised convolution with a
learnable gain; every activation is multiplied by its gamma constant. A block computes
``h + alpha · skip_gain · f(act(h) · beta)``, where ``beta = 1/sqrt(Var(h))`` is the
analytically expected standard deviation of the residual stream (reset after each transition
block) and ``skip_gain`` starts at zero, so no normalisation layer is needed.

Stochastic depth is :func:`vistas.models.layers.drop_path` with the reference's convention
(DeepMind's ``StochDepth(scale_by_keep=False)``): kept residual branches are not rescaled in
training, unlike the ViT's and BiT's.

The forward pass returns ``(logits, out)``; ``out`` holds ``stem``, ``stage{s}/block{i:02d}``
(the residual stream after every block), ``final_conv``, ``pre_logits`` and ``logits``.
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vistas.errors import ConfigError
from vistas.models import checks, conv_layers, layers


@dataclasses.dataclass(frozen=True)
class Variant:
    depths: tuple[int, ...]
    train_size: int
    test_size: int
    dropout: float


WIDTHS = (256, 512, 1536, 1536)
WIDTHS_PLUS = (384, 768, 2048, 2048)

# Published depths, train/test resolutions and dropout rates of F0..F7.
BASE_VARIANTS: dict[str, Variant] = {
    "F0": Variant((1, 2, 6, 3), 192, 256, 0.2),
    "F1": Variant((2, 4, 12, 6), 224, 320, 0.3),
    "F2": Variant((3, 6, 18, 9), 256, 352, 0.4),
    "F3": Variant((4, 8, 24, 12), 320, 416, 0.4),
    "F4": Variant((5, 10, 30, 15), 384, 512, 0.5),
    "F5": Variant((6, 12, 36, 18), 416, 544, 0.5),
    "F6": Variant((7, 14, 42, 21), 448, 576, 0.5),
    "F7": Variant((8, 16, 48, 24), 480, 608, 0.5),
}
VARIANTS: list[str] = [*BASE_VARIANTS, *(f"{k}+" for k in BASE_VARIANTS)]


@dataclasses.dataclass(frozen=True)
class NFNetConfig:
    """Every architectural choice of an NFNet; defaults are the published F0."""

    num_classes: int
    depths: tuple[int, ...] = (1, 2, 6, 3)
    widths: tuple[int, ...] = WIDTHS
    group_width: int = 128
    expansion: float = 0.5
    se_ratio: float = 0.5
    alpha: float = 0.2
    drop_path: float = 0.1  # stochastic depth rate of the last block (linear in block index)
    dropout: float = 0.2  # before the classifier
    activation: str = "gelu"
    final_conv_mult: int = 2
    stem_widths: tuple[int, ...] = (16, 32, 64)
    image_size: int = 192
    channels: int = 3
    head_zeroinit: bool = True  # False: N(0, 0.01), the reference implementation's init
    head_bias_init: float = 0.0

    def __post_init__(self):
        depths = checks.stages("depths", self.depths, "blocks per stage")
        widths = checks.stages("widths", self.widths, "output channels per stage")
        checks.stages("stem_widths", self.stem_widths, "channels of the first stem convs")
        if len(depths) != len(widths):
            raise ConfigError(
                f"model.depths={list(depths)} and model.widths={list(widths)} must have one "
                "entry per stage each"
            )
        object.__setattr__(self, "depths", depths)
        object.__setattr__(self, "widths", widths)
        object.__setattr__(self, "stem_widths", tuple(self.stem_widths))
        if not (isinstance(self.group_width, int) and self.group_width > 0):
            raise ConfigError(f"model.group_width={self.group_width!r} must be a positive integer")
        for w in widths:
            if int(w * self.expansion) < self.group_width:
                raise ConfigError(
                    f"model.group_width={self.group_width} is wider than the {int(w * self.expansion)} "
                    f"bottleneck channels of a stage of width {w}; use a smaller group_width"
                )
        if widths[0] % 2:
            raise ConfigError(f"model.widths[0]={widths[0]} must be even (the stem ends at half of it)")
        checks.rate("drop_path", self.drop_path)
        checks.rate("dropout", self.dropout)
        conv_layers.scaled_activation(self.activation)  # validates the name


def parse_variant(variant: str) -> tuple[str, tuple[int, ...], Variant]:
    """``"F0"`` / ``"f3+"`` -> (canonical name, stage widths, published settings)."""
    name = variant.upper()
    base, plus = (name[:-1], True) if name.endswith("+") else (name, False)
    if base not in BASE_VARIANTS:
        close = difflib.get_close_matches(name, VARIANTS, n=1)
        hint = f" (did you mean 'nfnet-{close[0]}'?)" if close else ""
        raise ConfigError(
            f"unknown model 'nfnet-{variant}'{hint}; NFNet variants: {', '.join(VARIANTS)}"
        )
    return name, (WIDTHS_PLUS if plus else WIDTHS), BASE_VARIANTS[base]


def variant_stages(variant: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The published stage depths and widths of a variant."""
    _, widths, published = parse_variant(variant)
    return published.depths, widths


class NFBlock(nnx.Module):
    """Bottleneck block: 1x1 -> grouped 3x3 -> grouped 3x3 -> 1x1, squeeze-excite, skip gain."""

    def __init__(self, in_ch: int, out_ch: int, *, stride: int, beta: float, drop_path: float,
                 cfg: NFNetConfig, rngs: nnx.Rngs):
        width = int(out_ch * cfg.expansion)
        groups = width // cfg.group_width
        width = groups * cfg.group_width  # rounded to whole groups
        self.activation = cfg.activation
        self.beta, self.alpha, self.stride, self.drop_path = beta, cfg.alpha, stride, drop_path
        self.conv0 = conv_layers.WSConv(in_ch, width, 1, rngs=rngs)
        self.conv1 = conv_layers.WSConv(width, width, 3, stride=stride, groups=groups, rngs=rngs)
        self.conv1b = conv_layers.WSConv(width, width, 3, groups=groups, rngs=rngs)
        self.conv2 = conv_layers.WSConv(width, out_ch, 1, rngs=rngs)
        self.conv_shortcut = (
            conv_layers.WSConv(in_ch, out_ch, 1, rngs=rngs) if stride > 1 or in_ch != out_ch else None
        )
        self.se = conv_layers.SqueezeExcite(out_ch, cfg.se_ratio, rngs=rngs)
        self.skip_gain = nnx.Param(jnp.asarray(np.zeros((), np.float32)))  # SkipInit

    def __call__(self, x: jax.Array, rng: jax.Array | None = None) -> jax.Array:
        out = conv_layers.activate(self.activation, x) * self.beta
        shortcut = x
        if self.stride > 1:
            shortcut = conv_layers.avg_pool_2x2(out)
            if self.conv_shortcut is not None:
                shortcut = self.conv_shortcut(shortcut)
        elif self.conv_shortcut is not None:
            shortcut = self.conv_shortcut(out)
        out = self.conv0(out)
        out = self.conv1(conv_layers.activate(self.activation, out))
        out = self.conv1b(conv_layers.activate(self.activation, out))
        out = self.conv2(conv_layers.activate(self.activation, out))
        out = 2.0 * self.se(out) * out  # SE gates average 1/2 at init: scaled back by 2
        out = layers.drop_path(out, self.drop_path, rng, scale_by_keep=False)
        return shortcut + out * (self.alpha * self.skip_gain[...]).astype(out.dtype)


class Stage(nnx.Module):
    def __init__(self, blocks: list[NFBlock]):
        self.depth = len(blocks)
        for i, block in enumerate(blocks):
            setattr(self, f"block{i:02d}", block)

    def __call__(self, x: jax.Array, out: dict, prefix: str, rng: jax.Array | None) -> jax.Array:
        for i, r in enumerate(layers.split_rng(rng, self.depth)):
            x = getattr(self, f"block{i:02d}")(x, r)
            out[f"{prefix}/block{i:02d}"] = x
        return x


class Stem(nnx.Module):
    """3x3 convs to 16, 32, 64 and widths[0]/2 channels; stride 2 at the first and last."""

    def __init__(self, cfg: NFNetConfig, *, rngs: nnx.Rngs):
        chans = [cfg.channels, *cfg.stem_widths, cfg.widths[0] // 2]
        self.activation = cfg.activation
        self.num = len(chans) - 1
        for i in range(self.num):
            stride = 2 if i in (0, self.num - 1) else 1
            setattr(self, f"conv{i}", conv_layers.WSConv(chans[i], chans[i + 1], 3, stride=stride, rngs=rngs))

    def __call__(self, x: jax.Array) -> jax.Array:
        for i in range(self.num):
            x = getattr(self, f"conv{i}")(x)
            if i < self.num - 1:
                x = conv_layers.activate(self.activation, x)
        return x


class NFNet(nnx.Module):
    """NFNet with the timm-style API: ``forward_features``, ``forward_head``, ``reset_head``."""

    def __init__(self, cfg: NFNetConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.activation = cfg.activation
        self.stem = Stem(cfg, rngs=rngs)
        ch = cfg.widths[0] // 2
        num_blocks = sum(cfg.depths)
        index = 0
        expected_std = 1.0
        for s, (width, depth) in enumerate(zip(cfg.widths, cfg.depths, strict=True)):
            blocks = []
            for i in range(depth):
                blocks.append(NFBlock(
                    ch, width, stride=(2 if s > 0 else 1) if i == 0 else 1,
                    beta=1.0 / expected_std, drop_path=cfg.drop_path * index / num_blocks,
                    cfg=cfg, rngs=rngs))
                ch = width
                index += 1
                if i == 0:  # a transition block resets the variance, then it grows by alpha²
                    expected_std = 1.0
                expected_std = (expected_std**2 + cfg.alpha**2) ** 0.5
            setattr(self, f"stage{s}", Stage(blocks))
        self.num_features = cfg.final_conv_mult * ch
        self.final_conv = conv_layers.WSConv(ch, self.num_features, 1, rngs=rngs)
        self.reset_head(cfg.num_classes, rngs=rngs)

    def reset_head(self, num_classes: int, *, rngs: nnx.Rngs) -> None:
        """Replace the classifier (e.g. for transfer)."""
        cfg = self.cfg
        kernel_init = (nnx.initializers.zeros_init() if cfg.head_zeroinit
                       else nnx.initializers.normal(stddev=0.01))
        self.head = nnx.Linear(self.num_features, num_classes, kernel_init=kernel_init,
                               bias_init=nnx.initializers.constant(cfg.head_bias_init), rngs=rngs)
        self.cfg = dataclasses.replace(cfg, num_classes=num_classes)

    def forward_features(self, images: jax.Array, rng: jax.Array | None = None
                         ) -> tuple[jax.Array, dict]:
        """[B, H, W, C] images -> [B, 2·widths[-1]] pooled features and named intermediates."""
        out: dict[str, jax.Array] = {}
        x = self.stem(images)
        out["stem"] = x
        rngs = layers.split_rng(rng, len(self.cfg.depths))
        for s, r in enumerate(rngs):
            x = getattr(self, f"stage{s}")(x, out, f"stage{s}", r)
        x = conv_layers.activate(self.activation, self.final_conv(x))
        out["final_conv"] = x
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



OPTIONS = ("depths", "widths", "group_width", "stem_widths", "drop_path", "dropout", "activation",
           "image_size", "channels", "head_zeroinit", "head_bias_init")


def build(variant: str, *, num_classes: int, rngs: nnx.Rngs, **options: Any) -> NFNet:
    """The registry's builder for ``nfnet-VARIANT`` (published settings unless overridden)."""
    _, widths, published = parse_variant(variant)
    checks.known_options("NFNet", options, OPTIONS)
    kwargs: dict[str, Any] = dict(depths=published.depths, widths=widths,
                                  dropout=published.dropout, image_size=published.train_size)
    kwargs.update({k: v for k, v in options.items() if v is not None})
    return NFNet(NFNetConfig(num_classes=num_classes, **kwargs), rngs=rngs)
