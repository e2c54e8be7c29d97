"""RandAugment and AutoAugment on uint8 [H, W, C] NumPy images (through PIL).

RandAugment (Cubuk et al., arXiv 1909.13719) applies ``num_ops`` operations drawn
uniformly from the paper's 14 (identity, auto-contrast, equalize, rotate, solarize, color,
posterize, contrast, brightness, sharpness, shear x/y, translate x/y), each at magnitude
``M`` on the paper's 0..10 scale (larger values extrapolate, as big_vision's levels 15
and 20 do). AutoAugment (Cubuk et al., arXiv 1805.09501) applies one of the 25
sub-policies of its ImageNet policy ("v0", as in the TPU EfficientNet code), each op
with its own probability and magnitude.

Magnitudes map to arguments as in the TPU reference code, except for posterize and
solarize, where the reference makes magnitude 0 the strongest; here, as in the paper,
a larger magnitude is always a stronger distortion (posterize keeps 8 - 4·M/10 bits,
solarize inverts pixels above 256 - 256·M/10). Geometric ops fill with grey (128) and
take a random sign. Every random choice comes from the ``np.random.Generator`` passed
in, so the pipeline's per-example generator makes the augmentation deterministic by
seed and example position.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from vistas.errors import DataError

_FILL = 128
MAX_LEVEL = 10.0


def _signed(value: float, rng: np.random.Generator) -> float:
    return -value if rng.random() < 0.5 else value


def _affine(img: Image.Image, coeffs: tuple) -> Image.Image:
    fill = _FILL if img.mode == "L" else (_FILL,) * 3
    return img.transform(img.size, Image.Transform.AFFINE, coeffs, Image.Resampling.NEAREST,
                         fillcolor=fill)


def _enhance(cls) -> Callable:
    # the reference's factor 0.1 + 1.8·M/10: M=0 is a strong change (factor 0.1)
    return lambda img, m, rng: cls(img).enhance(0.1 + 1.8 * m / MAX_LEVEL)


def _rotate(img, m, rng):
    fill = _FILL if img.mode == "L" else (_FILL,) * 3
    return img.rotate(_signed(30.0 * m / MAX_LEVEL, rng), Image.Resampling.NEAREST, fillcolor=fill)


def _shear_x(img, m, rng):
    return _affine(img, (1, _signed(0.3 * m / MAX_LEVEL, rng), 0, 0, 1, 0))


def _shear_y(img, m, rng):
    return _affine(img, (1, 0, 0, _signed(0.3 * m / MAX_LEVEL, rng), 1, 0))


def _translate_x(img, m, rng):  # up to 0.45 of the width at M=10 (100 px at 224)
    return _affine(img, (1, 0, _signed(0.45 * m / MAX_LEVEL, rng) * img.size[0], 0, 1, 0))


def _translate_y(img, m, rng):
    return _affine(img, (1, 0, 0, 0, 1, _signed(0.45 * m / MAX_LEVEL, rng) * img.size[1]))


def _posterize(img, m, rng):
    return ImageOps.posterize(img, int(np.clip(8 - int(4 * m / MAX_LEVEL), 1, 8)))


def _solarize(img, m, rng):
    return ImageOps.solarize(img, int(np.clip(256 - 256 * m / MAX_LEVEL, 0, 256)))


def _solarize_add(img, m, rng):  # AutoAugment only: add to the pixels below 128
    a = np.asarray(img, np.int16)
    add = int(110 * m / MAX_LEVEL)
    out = np.where(a < 128, np.clip(a + add, 0, 255), a).astype(np.uint8)
    return Image.fromarray(out, img.mode)


OPS: dict[str, Callable[[Image.Image, float, np.random.Generator], Image.Image]] = {
    "Identity": lambda img, m, rng: img,
    "AutoContrast": lambda img, m, rng: ImageOps.autocontrast(img),
    "Equalize": lambda img, m, rng: ImageOps.equalize(img),
    "Rotate": _rotate,
    "Solarize": _solarize,
    "Color": _enhance(ImageEnhance.Color),
    "Posterize": _posterize,
    "Contrast": _enhance(ImageEnhance.Contrast),
    "Brightness": _enhance(ImageEnhance.Brightness),
    "Sharpness": _enhance(ImageEnhance.Sharpness),
    "ShearX": _shear_x,
    "ShearY": _shear_y,
    "TranslateX": _translate_x,
    "TranslateY": _translate_y,
    # used by the AutoAugment policy, not by RandAugment
    "Invert": lambda img, m, rng: ImageOps.invert(img),
    "SolarizeAdd": _solarize_add,
}
RANDAUGMENT_OPS = tuple(list(OPS)[:14])

# AutoAugment's ImageNet policy: 25 sub-policies of two (op, probability, magnitude)
AUTOAUGMENT_V0 = (
    (("Equalize", 0.8, 1), ("ShearY", 0.8, 4)),
    (("Color", 0.4, 9), ("Equalize", 0.6, 3)),
    (("Color", 0.4, 1), ("Rotate", 0.6, 8)),
    (("Solarize", 0.8, 3), ("Equalize", 0.4, 7)),
    (("Solarize", 0.4, 2), ("Solarize", 0.6, 2)),
    (("Color", 0.2, 0), ("Equalize", 0.8, 8)),
    (("Equalize", 0.4, 8), ("SolarizeAdd", 0.8, 3)),
    (("ShearX", 0.2, 9), ("Rotate", 0.6, 8)),
    (("Color", 0.6, 1), ("Equalize", 1.0, 2)),
    (("Invert", 0.4, 9), ("Rotate", 0.6, 0)),
    (("Equalize", 1.0, 9), ("ShearY", 0.6, 3)),
    (("Color", 0.4, 7), ("Equalize", 0.6, 0)),
    (("Posterize", 0.4, 6), ("AutoContrast", 0.4, 7)),
    (("Solarize", 0.6, 8), ("Color", 0.6, 9)),
    (("Solarize", 0.2, 4), ("Rotate", 0.8, 9)),
    (("Rotate", 1.0, 7), ("TranslateY", 0.8, 9)),
    (("ShearX", 0.0, 0), ("Solarize", 0.8, 4)),
    (("ShearY", 0.8, 0), ("Color", 0.6, 4)),
    (("Color", 1.0, 0), ("Rotate", 0.6, 2)),
    (("Equalize", 0.8, 4), ("Equalize", 0.0, 8)),
    (("Equalize", 1.0, 4), ("AutoContrast", 0.6, 2)),
    (("ShearY", 0.4, 7), ("SolarizeAdd", 0.6, 7)),
    (("Posterize", 0.8, 2), ("Solarize", 0.6, 10)),
    (("Solarize", 0.6, 8), ("Equalize", 0.6, 1)),
    (("Color", 0.8, 6), ("Rotate", 0.4, 5)),
)

_MODES = {1: "L", 3: "RGB"}


def _to_pil(image: np.ndarray) -> Image.Image:
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] not in _MODES:
        raise DataError(f"augmentation needs uint8 [H, W, 1 or 3] images, got {image.dtype} "
                        f"{list(image.shape)}")
    return Image.fromarray(np.ascontiguousarray(image[:, :, 0] if image.shape[2] == 1 else image))


def _from_pil(img: Image.Image, channels: int) -> np.ndarray:
    out = np.asarray(img, np.uint8)
    return out[:, :, None] if channels == 1 else out


@dataclasses.dataclass(frozen=True)
class RandAugment:
    """``num_ops`` random ops at ``magnitude``: uint8 [H, W, C] + rng -> same shape and dtype."""

    num_ops: int = 2
    magnitude: float = 10.0
    ops: tuple[str, ...] = RANDAUGMENT_OPS

    def __post_init__(self):
        if not isinstance(self.num_ops, int) or self.num_ops < 0:
            raise DataError(f"RandAugment num_ops={self.num_ops!r} must be a non-negative integer")
        if not 0 <= self.magnitude <= 30:
            raise DataError(f"RandAugment magnitude={self.magnitude!r} must lie in [0, 30]")
        unknown = [op for op in self.ops if op not in OPS]
        if unknown or not self.ops:
            raise DataError(f"unknown RandAugment ops {unknown}; allowed: {', '.join(OPS)}")

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if not self.num_ops:
            return image
        img = _to_pil(image)
        for k in rng.integers(0, len(self.ops), self.num_ops):
            img = OPS[self.ops[k]](img, self.magnitude, rng)
        return _from_pil(img, image.shape[2])


@dataclasses.dataclass(frozen=True)
class AutoAugment:
    """One sub-policy of ``policy`` per image: uint8 [H, W, C] + rng -> same shape and dtype."""

    policy: tuple = AUTOAUGMENT_V0

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        img = _to_pil(image)
        for name, prob, magnitude in self.policy[int(rng.integers(len(self.policy)))]:
            if rng.random() < prob:
                img = OPS[name](img, magnitude, rng)
        return _from_pil(img, image.shape[2])


def make(*, randaug_ops: int = 0, randaug_magnitude: float = 10.0,
         autoaugment: bool = False) -> Callable[[np.ndarray, np.random.Generator], np.ndarray] | None:
    """The configured policy, or None when augmentation is off."""
    if autoaugment and randaug_ops:
        raise DataError("choose AutoAugment or RandAugment, not both")
    if autoaugment:
        return AutoAugment()
    if randaug_ops:
        return RandAugment(int(randaug_ops), float(randaug_magnitude))
    return None


__all__ = ["AUTOAUGMENT_V0", "OPS", "RANDAUGMENT_OPS", "AutoAugment", "RandAugment", "make"]
