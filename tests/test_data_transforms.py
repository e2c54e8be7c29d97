"""Tests for vistas.data.transforms."""

import math

import numpy as np
import pytest
from PIL import Image

from vistas.data import transforms as T
from vistas.errors import DataError


def image(h=28, w=28, c=1, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, c), dtype=np.uint8)


@pytest.mark.parametrize("c", [1, 3, 4, 2])
def test_resize_matches_pil_bilinear(c):
    img = image(20, 30, c)
    out = T.resize(img, (12, 17))
    assert out.shape == (12, 17, c) and out.dtype == np.uint8
    for i in range(c):
        ref = np.asarray(Image.fromarray(img[..., i]).resize((17, 12), Image.Resampling.BILINEAR))
        np.testing.assert_array_equal(out[..., i], ref)
    assert T.resize(img, (20, 30)) is img


def test_central_crop_and_flip():
    img = image(10, 8, 3)
    np.testing.assert_array_equal(T.central_crop(img, 4), img[3:7, 2:6])
    np.testing.assert_array_equal(T.flip_lr(img), img[:, ::-1])
    with pytest.raises(DataError, match="cannot central-crop"):
        T.central_crop(img, 9)


def test_inception_crop_area_and_aspect():
    img = image(60, 80, 3)
    rng = np.random.default_rng(0)
    for _ in range(200):
        crop = T.inception_crop(img, rng, area_range=(0.2, 0.6), aspect_range=(0.5, 2.0))
        h, w = crop.shape[:2]
        assert 0.2 * 0.85 <= h * w / (60 * 80) <= 0.6 * 1.15
        assert 0.5 * 0.85 <= w / h <= 2.0 * 1.15
    out = T.inception_crop(img, rng, size=32)
    assert out.shape == (32, 32, 3)


def test_inception_crop_fallback_is_central():
    img = image(40, 100, 1)  # aspect 2.5 > 4/3: central crop of width round(40 * 4/3)
    crop = T.inception_crop(img, np.random.default_rng(0), attempts=0)
    np.testing.assert_array_equal(crop, img[:, 23:23 + 53])
    square = image(30, 30, 1)
    np.testing.assert_array_equal(T.inception_crop(square, np.random.default_rng(0), attempts=0),
                                  square)


@pytest.mark.parametrize("crop", T.TRAIN_CROPS)
@pytest.mark.parametrize("shape", [(28, 28, 1), (28, 28, 3), (40, 31, 3)])
def test_train_transform_shapes_range_determinism(crop, shape):
    tf = T.make_train_transform(image_size=24, crop=crop, value_range=(-1.0, 1.0))
    img = image(*shape)
    outs = [tf(img, np.random.default_rng(s)) for s in range(8)]
    for out in outs:
        assert out.shape == (24, 24, shape[2]) and out.dtype == np.float32
        assert out.min() >= -1.0 and out.max() <= 1.0
    again = [tf(img, np.random.default_rng(s)) for s in range(8)]
    for a, b in zip(outs, again, strict=True):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(outs[0], o) for o in outs[1:])  # random (flip at least)


def test_value_range_scaling():
    img = np.array([[[0], [255]], [[128], [64]]], np.uint8)
    tf = T.make_train_transform(image_size=2, crop="none", flip=False, value_range=(0.0, 1.0))
    np.testing.assert_allclose(tf(img, np.random.default_rng(0))[..., 0],
                               [[0.0, 1.0], [128 / 255, 64 / 255]], rtol=1e-6)
    ev = T.make_eval_transform(image_size=2, value_range=(-2.0, 3.0))
    expected = [[-2.0, 3.0], [-2 + 5 * 128 / 255, -2 + 5 * 64 / 255]]
    np.testing.assert_allclose(ev(img)[..., 0], expected, rtol=1e-6)
    big = np.tile(np.arange(256, dtype=np.uint8), 64 * 3).reshape(128, 128, 3)  # large-image path
    out = T.make_eval_transform(image_size=128, value_range=(-2.1, 3.7))(big)
    assert out.min() == np.float32(-2.1) and abs(out.max() - 3.7) < 1e-5


def test_random_pad_is_a_shifted_window():
    img = image(8, 8, 1, seed=3)
    tf = T.make_train_transform(image_size=8, crop="random_pad", pad=2, flip=False,
                                value_range=(0.0, 255.0))
    padded = np.pad(img, ((2, 2), (2, 2), (0, 0)))
    windows = {padded[y:y + 8, x:x + 8].tobytes() for y in range(5) for x in range(5)}
    seen = set()
    for s in range(60):
        out = tf(img, np.random.default_rng(s)).astype(np.uint8)
        assert out.tobytes() in windows
        seen.add(out.tobytes())
    assert len(seen) > 5
    edge = T.make_train_transform(image_size=8, crop="random_pad", pad=2, pad_mode="edge")
    assert edge(img, np.random.default_rng(0)).shape == (8, 8, 1)


def test_eval_transform():
    img = image(28, 28, 1)
    ev = T.make_eval_transform(image_size=28)
    np.testing.assert_allclose(ev(img), img.astype(np.float32) * (2 / 255) - 1, atol=1e-6)
    ev = T.make_eval_transform(image_size=28, crop_fraction=0.875)
    out = ev(image(40, 60, 3))
    assert out.shape == (28, 28, 3) and out.dtype == np.float32
    # Short side resized to 32 (= 28 / 0.875), then central 28 x 28.
    ref = T.central_crop(T.resize(image(40, 60, 3), (32, 48)), 28)
    np.testing.assert_allclose(out, ref.astype(np.float32) * (2 / 255) - 1, atol=1e-6)


@pytest.mark.parametrize("kwargs,match", [
    ({"image_size": 28, "crop": "random_crop"}, "unknown crop 'random_crop'; allowed: incep"),
    ({"image_size": 0}, "image_size must be a positive integer"),
    ({"image_size": 28.0}, "image_size must be a positive integer"),
    ({"image_size": 28, "value_range": (1.0, -1.0)}, "lo < hi"),
    ({"image_size": 28, "value_range": (1.0, 1.0)}, "lo < hi"),
    ({"image_size": 28, "inception_area": (0.5, 0.1)}, "inception_area"),
    ({"image_size": 28, "pad": -1}, "pad must be"),
    ({"image_size": 28, "pad_mode": "wrap"}, "allowed: constant, edge, reflect"),
])
def test_invalid_train_options(kwargs, match):
    with pytest.raises(DataError, match=match):
        T.make_train_transform(**kwargs)


def test_invalid_eval_options():
    with pytest.raises(DataError, match=r"crop_fraction must lie in \[0.05, 1\]"):
        T.make_eval_transform(image_size=28, crop_fraction=1.5)
    with pytest.raises(DataError, match=r"crop_fraction must lie in \[0.05, 1\], got 1e-23"):
        T.make_eval_transform(image_size=28, crop_fraction=1e-23)  # would ask for a 10^24-pixel side
    with pytest.raises(DataError, match="lo < hi"):
        T.make_eval_transform(image_size=28, value_range=(0, 0))


def test_inception_aspect_sampling_is_log_uniform():
    img = image(100, 100, 1)
    rng = np.random.default_rng(1)
    ratios = []
    for _ in range(400):
        c = T.inception_crop(img, rng, area_range=(0.3, 0.3))
        ratios.append(math.log(c.shape[1] / c.shape[0]))
    assert abs(np.mean(ratios)) < 0.05  # symmetric around aspect 1 in log space
