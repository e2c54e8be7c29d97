"""Per-example image transforms on NumPy uint8 [H, W, C] images (resizing through PIL).

`make_train_transform` / `make_eval_transform` build the callables the pipeline applies:
uint8 [H, W, C] (+ a `np.random.Generator` for training) -> float32 [size, size, C] scaled to
`value_range`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import numpy as np
from PIL import Image

from vistas.errors import DataError

TRAIN_CROPS = ("inception", "random_pad", "none")
PAD_MODES = ("constant", "edge", "reflect")


def _hw(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, (int, np.integer)) else (int(size[0]), int(size[1]))


_PIL_MODES = {1: "L", 3: "RGB"}  # RGBA would be resized with premultiplied alpha
_BILINEAR = Image.Resampling.BILINEAR


def _resize_box(image: np.ndarray, box: tuple[int, int, int, int] | None, hw: tuple[int, int]):
    """Crops `box` = (x, y, w, h) out of uint8 [H, W, C] `image`, resizes it to `hw` (bilinear)."""
    h, w = hw
    pil_box = None if box is None else (box[0], box[1], box[0] + box[2], box[1] + box[3])
    ih, iw, c = image.shape
    mode = _PIL_MODES.get(c)
    if mode is None:  # Any other channel count: one plane at a time.
        planes = [_resize_box(image[:, :, i:i + 1], box, hw) for i in range(c)]
        return np.concatenate(planes, axis=-1)
    # frombuffer/tobytes: a few microseconds cheaper than fromarray/asarray on small images.
    pil = Image.frombuffer(mode, (iw, ih), np.ascontiguousarray(image), "raw", mode, 0, 1)
    out = pil.resize((w, h), _BILINEAR, box=pil_box)
    return np.frombuffer(out.tobytes(), np.uint8).reshape(h, w, c)


def resize(image: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Bilinear resize of uint8 [H, W, C] to `size` (int: square, or (h, w)); no-op if same size."""
    hw = _hw(size)
    if image.shape[:2] == hw:
        return image
    return _resize_box(image, None, hw)


def resize_short_side(image: np.ndarray, short: int) -> np.ndarray:
    """Resize so that the shorter side is `short`, keeping the aspect ratio."""
    h, w = image.shape[:2]
    if min(h, w) == short:
        return image
    if h <= w:
        return resize(image, (short, max(1, round(w * short / h))))
    return resize(image, (max(1, round(h * short / w)), short))


def central_crop(image: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """The central `size` crop (a view); DataError if the image is smaller."""
    ch, cw = _hw(size)
    h, w = image.shape[:2]
    if ch > h or cw > w:
        raise DataError(f"cannot central-crop {ch}x{cw} out of a {h}x{w} image")
    y, x = (h - ch) // 2, (w - cw) // 2
    return image[y:y + ch, x:x + cw]


def flip_lr(image: np.ndarray) -> np.ndarray:
    """Left-right mirror (a view)."""
    return image[:, ::-1]


def _inception_box(h, w, rng, area_range, aspect_range, attempts):
    area = h * w
    log_lo, log_hi = math.log(aspect_range[0]), math.log(aspect_range[1])
    for _ in range(attempts):
        u = rng.random(4)
        target = area * (area_range[0] + (area_range[1] - area_range[0]) * u[0])
        aspect = math.exp(log_lo + (log_hi - log_lo) * u[1])
        cw = round(math.sqrt(target * aspect))
        ch = round(math.sqrt(target / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            return int(u[3] * (w - cw + 1)), int(u[2] * (h - ch + 1)), cw, ch
    # Fallback: the largest central crop whose aspect ratio lies in aspect_range.
    ratio = w / h
    if ratio < aspect_range[0]:
        cw, ch = w, max(1, min(h, round(w / aspect_range[0])))
    elif ratio > aspect_range[1]:
        cw, ch = max(1, min(w, round(h * aspect_range[1]))), h
    else:
        cw, ch = w, h
    return (w - cw) // 2, (h - ch) // 2, cw, ch


def inception_crop(
    image: np.ndarray,
    rng: np.random.Generator,
    *,
    area_range: tuple[float, float] = (0.05, 1.0),
    aspect_range: tuple[float, float] = (3 / 4, 4 / 3),
    attempts: int = 10,
    size: int | tuple[int, int] | None = None,
) -> np.ndarray:
    """Random crop covering `area_range` of the image with aspect ratio in `aspect_range`
    (log-uniform), falling back to a central crop after `attempts` misses.

    With `size`, the crop is resized to it (bilinear) in the same PIL call ("random-resized crop").
    """
    h, w = image.shape[:2]
    x, y, cw, ch = _inception_box(h, w, rng, area_range, aspect_range, attempts)
    if size is None:
        return image[y:y + ch, x:x + cw]
    return _resize_box(image, (x, y, cw, ch), _hw(size))


def _scale_table(value_range: tuple[float, float]) -> np.ndarray:
    """uint8 value -> float32 in value_range, as a 256-entry lookup table."""
    lo, hi = value_range
    return (np.arange(256, dtype=np.float64) * ((hi - lo) / 255.0) + lo).astype(np.float32)


def _scale(image: np.ndarray, table: np.ndarray) -> np.ndarray:
    """uint8 image -> float32 through the `_scale_table` (fastest way for small vs large images)."""
    if image.size <= 8192:
        return table.take(image)
    out = image.astype(np.float32)
    out *= np.float32((float(table[255]) - float(table[0])) / 255.0)
    out += table[0]
    return out


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _check_common(image_size, value_range) -> None:
    if not _is_int(image_size) or image_size <= 0:
        raise DataError(f"image_size must be a positive integer, got {image_size!r}")
    try:
        lo, hi = (float(v) for v in value_range)
    except (TypeError, ValueError):
        raise DataError(
            f"value_range must be a pair (lo, hi) with lo < hi, got {value_range!r}"
        ) from None
    if not lo < hi:
        raise DataError(f"value_range must be (lo, hi) with lo < hi, got {value_range!r}")


@dataclasses.dataclass(frozen=True)
class TrainTransform:
    """uint8 [H, W, C] + rng -> float32 [image_size, image_size, C]; see `make_train_transform`."""

    image_size: int
    crop: str
    inception_area: tuple[float, float]
    aspect_range: tuple[float, float]
    pad: int
    pad_mode: str
    flip: bool
    value_range: tuple[float, float]
    table: np.ndarray = dataclasses.field(repr=False, compare=False)
    augment: Callable[[np.ndarray, np.random.Generator], np.ndarray] | None = None

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        s = self.image_size
        if self.crop == "inception":
            image = inception_crop(image, rng, area_range=self.inception_area,
                                   aspect_range=self.aspect_range, size=s)
        else:
            image = resize(image, s)  # no-op when already s x s
            if self.crop == "random_pad" and self.pad > 0:
                p = self.pad
                if self.pad_mode == "constant":
                    padded = np.zeros((s + 2 * p, s + 2 * p, image.shape[2]), np.uint8)
                    padded[p:p + s, p:p + s] = image
                else:
                    padded = np.pad(image, ((p, p), (p, p), (0, 0)), mode=self.pad_mode)
                u = rng.random(2)
                dy, dx = int(u[0] * (2 * p + 1)), int(u[1] * (2 * p + 1))
                image = padded[dy:dy + s, dx:dx + s]
        if self.flip and rng.random() < 0.5:
            image = image[:, ::-1]
        if self.augment is not None:  # RandAugment / AutoAugment on the uint8 crop
            image = self.augment(image, rng)
        return _scale(image, self.table)


def check_crop(crop: str, inception_area: tuple[float, float], *, names: tuple[str, str] = ("crop", "inception_area"),
               error: type[Exception] = DataError) -> None:
    """One-line errors for an unknown training crop or an inception area outside
    0 < lo <= hi <= 1; ``names``: what to call them (``config.validate`` names its keys)."""
    if crop not in TRAIN_CROPS:
        raise error(f"unknown {names[0]} {crop!r}; allowed: {', '.join(TRAIN_CROPS)}")
    try:
        a0, a1 = (float(v) for v in inception_area)
    except (TypeError, ValueError):
        a0, a1 = 1.0, 0.0
    if not 0.0 < a0 <= a1 <= 1.0:
        raise error(f"{names[1]} must satisfy 0 < lo <= hi <= 1, got {inception_area!r}")


def check_crop_fraction(crop_fraction: float, *, name: str = "crop_fraction",
                        error: type[Exception] = DataError) -> None:
    """A one-line error for an evaluation crop fraction outside [MIN_CROP_FRACTION, 1]."""
    if not isinstance(crop_fraction, (int, float)) or not MIN_CROP_FRACTION <= crop_fraction <= 1.0:
        raise error(f"{name} must lie in [{MIN_CROP_FRACTION}, 1], got {crop_fraction!r}")


def make_train_transform(
    *,
    image_size: int,
    crop: str = "inception",
    inception_area: tuple[float, float] = (0.05, 1.0),
    aspect_range: tuple[float, float] = (3 / 4, 4 / 3),
    pad: int = 4,
    pad_mode: str = "constant",
    flip: bool = True,
    value_range: tuple[float, float] = (-1.0, 1.0),
    augment: Callable[[np.ndarray, np.random.Generator], np.ndarray] | None = None,
) -> TrainTransform:
    """Training augmentation: crop ("inception": random-resized crop; "random_pad": pad by `pad`
    pixels and crop back at random, the classic small-image augmentation; "none": resize only),
    optional random left-right flip, `augment` (``vistas.data.randaugment``) on the uint8
    crop, then scaling of [0, 255] to `value_range`.
    """
    _check_common(image_size, value_range)
    check_crop(crop, inception_area)
    a0, a1 = (float(v) for v in inception_area)
    r0, r1 = (float(v) for v in aspect_range)
    if not 0.0 < r0 <= r1:
        raise DataError(f"aspect_range must satisfy 0 < lo <= hi, got {aspect_range!r}")
    if not _is_int(pad) or pad < 0:
        raise DataError(f"pad must be a non-negative integer, got {pad!r}")
    if pad_mode not in PAD_MODES:
        raise DataError(f"unknown pad_mode {pad_mode!r}; allowed: {', '.join(PAD_MODES)}")
    value_range = (float(value_range[0]), float(value_range[1]))
    return TrainTransform(
        image_size=int(image_size), crop=crop, inception_area=(a0, a1), aspect_range=(r0, r1),
        pad=int(pad), pad_mode=pad_mode, flip=bool(flip), value_range=value_range,
        table=_scale_table(value_range), augment=augment,
    )


@dataclasses.dataclass(frozen=True)
class EvalTransform:
    """uint8 [H, W, C] -> float32 [image_size, image_size, C]; see `make_eval_transform`."""

    image_size: int
    crop_fraction: float
    value_range: tuple[float, float]
    table: np.ndarray = dataclasses.field(repr=False, compare=False)

    def __call__(self, image: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        s = self.image_size
        if image.shape[0] != s or image.shape[1] != s or self.crop_fraction != 1.0:
            short = max(s, round(s / self.crop_fraction))
            image = central_crop(resize_short_side(image, short), s)
        return _scale(image, self.table)


# The smallest eval crop fraction: the short side is resized to image_size / fraction, so a
# tiny fraction would ask for an enormous image.
MIN_CROP_FRACTION = 0.05


def make_eval_transform(
    *,
    image_size: int,
    crop_fraction: float = 1.0,
    value_range: tuple[float, float] = (-1.0, 1.0),
) -> EvalTransform:
    """Evaluation preprocessing: resize the short side to image_size / crop_fraction, take the
    central image_size crop, scale [0, 255] to `value_range`.
    """
    _check_common(image_size, value_range)
    check_crop_fraction(crop_fraction)
    value_range = (float(value_range[0]), float(value_range[1]))
    return EvalTransform(image_size=int(image_size), crop_fraction=float(crop_fraction),
                         value_range=value_range, table=_scale_table(value_range))
