"""Bad input is refused with one line naming the culprit: image files, arrays, checkpoints
and configs. Cases already covered elsewhere are listed in docs/reliability.md with their
tests (truncated, empty and non-image files, empty class folders, wrong types, unknown keys,
batch sizes not divisible by the devices, another model's interop weights)."""

import os
import shutil
import struct
import zlib

import numpy as np
import pytest
from conftest import requires_fashion_mnist
from PIL import Image
from reliability_helpers import tiny

from vistas import config as config_lib
from vistas.data import sources
from vistas.errors import ConfigError, DataError, VistasError
from vistas.models import interop
from vistas.optim import builder
from vistas.train import loop


def one_line(e) -> str:
    msg = str(e.value)
    assert "\n" not in msg and msg
    return msg


# --- image files --------------------------------------------------------------------------


def png_claiming(width: int, height: int) -> bytes:
    """A small PNG file that claims ``width`` x ``height`` pixels: what a decompression bomb
    looks like before it is decoded."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit gray
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 1024))
            + chunk(b"IEND", b""))


def test_a_decompression_bomb_is_refused_before_decoding(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "bomb.png").write_bytes(png_claiming(8200, 8200))
    (tmp_path / "a" / "huge.png").write_bytes(png_claiming(100_000, 100_000))
    Image.new("RGB", (20, 10)).save(tmp_path / "a" / "ok.png")
    src = sources.ImageFolderSource(tmp_path)
    with pytest.raises(DataError) as e:
        src[0]
    msg = one_line(e)
    assert "bomb.png is 8200x8200 = 67,240,000 pixels" in msg
    assert f"limit of {sources.MAX_IMAGE_PIXELS:,}" in msg and "decompression bomb" in msg
    with pytest.raises(DataError, match=r"cannot decode image .*huge.png: .*decompression bomb"):
        src[1]  # past PIL's own limit PIL refuses it first
    assert src[2]["image"].shape == (10, 20, 3)
    with pytest.raises(DataError, match=r"ok.png is 20x10 = 200 pixels, more than the limit of 199"):
        sources.decode_image(tmp_path / "a" / "ok.png", max_pixels=199)


def test_unreadable_files_are_named(tmp_path):
    (tmp_path / "a").mkdir()
    os.symlink(tmp_path / "gone.png", tmp_path / "a" / "dangling.png")
    locked = tmp_path / "a" / "locked.png"
    Image.new("L", (4, 4)).save(locked)
    locked.chmod(0)
    src = sources.ImageFolderSource(tmp_path)
    assert [os.path.basename(p) for p in src.paths] == ["dangling.png", "locked.png"]
    with pytest.raises(DataError, match=r"cannot decode image .*dangling.png: .*No such file") as e:
        src[0]
    one_line(e)
    if os.geteuid() != 0:  # root reads any file, whatever its mode
        with pytest.raises(DataError, match=r"cannot decode image .*locked.png: .*Permission denied"):
            src[1]


def test_image_modes_are_converted_to_the_right_pixels(tmp_path):
    """Gray, gray+alpha, RGBA, palette (with transparency), CMYK and 16-bit files give the
    pixels PIL's own conversion to RGB gives (alpha dropped, 16 bits scaled by 1/256)."""
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)
    images = {
        "gray.png": Image.fromarray(rgb[..., 0], "L"),
        "la.png": Image.fromarray(np.stack([rgb[..., 0], rgb[..., 1]], -1), "LA"),
        "rgba.png": Image.fromarray(np.concatenate([rgb, rgb[..., :1]], -1), "RGBA"),
        "pal.png": Image.fromarray(rgb).quantize(colors=6),
        "cmyk.tif": Image.fromarray(rgb).convert("CMYK"),
    }
    for name, img in images.items():
        img.save(tmp_path / name, transparency=0) if name == "pal.png" else img.save(tmp_path / name)
        want = np.asarray(Image.open(tmp_path / name).convert("RGBA" if name == "pal.png" else "RGB").convert("RGB"))
        np.testing.assert_array_equal(sources.decode_image(tmp_path / name, 3), want, err_msg=name)
        gray = sources.decode_image(tmp_path / name, 1)
        assert gray.shape == (6, 5, 1) and gray.dtype == np.uint8
    deep = (rng.integers(0, 65536, (6, 5))).astype(np.uint16)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    np.testing.assert_array_equal(sources.decode_image(tmp_path / "deep.png", 1)[..., 0], deep >> 8)


# --- arrays -----------------------------------------------------------------------------------


def npz(tmp_path, x, y, **extra):
    path = tmp_path / "data.npz"
    np.savez(path, x_train=x, y_train=y, **extra)
    return path


IMAGES = np.zeros((4, 8, 8), np.uint8)
NAN_IMAGES = np.where(np.arange(4 * 64).reshape(4, 8, 8) % 7 == 0, np.nan, 0.5).astype(np.float32)


@pytest.mark.parametrize("x, y, extra, culprit", [
    (NAN_IMAGES, np.zeros(4, np.int64), {}, "images must be uint8 (0..255), got float32 with 37 NaN values"),
    (IMAGES.astype(np.int16), np.zeros(4, np.int64), {}, "images must be uint8 (0..255), got int16"),
    (np.zeros((4, 64), np.uint8), np.zeros(4, np.int64), {}, "shape [N, H, W] or [N, H, W, C], got (4, 64)"),
    (IMAGES, np.zeros(3, np.int64), {}, "labels must have shape [4]"),
    (IMAGES, np.array([0, 1, 2, 10]), {"num_classes": 10}, "labels must lie in [0, 10), got [0, 10]"),
    (IMAGES, np.array([0, -1, 2, 3]), {}, "labels must lie in [0, 4), got [-1, 3]"),
    (IMAGES, np.zeros(4, np.float32), {}, "labels must be integers, got float32"),
])
def test_bad_arrays_name_the_file_and_the_problem(tmp_path, x, y, extra, culprit):
    path = npz(tmp_path, x, y, **extra)
    with pytest.raises(DataError) as e:
        sources.load_source("npz", "train", path=path)
    msg = one_line(e)
    assert msg.startswith(f"{path} (x_train, y_train): ") and culprit in msg


# --- checkpoints ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def run8(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("ckpt") / "run"
    loop.train(tiny("train.duration=8", "train.ckpt_every=4", "train.eval_every=8"), workdir, quiet=True)
    return workdir


@requires_fashion_mnist
@pytest.mark.parametrize("override, culprit", [
    ("model.width=64", "shapes differ: params/embedding/bias (32,) saved, (64,) wanted"),
    ("model.depth=2", "missing from the checkpoint: params/encoder/block01/"),
    ("model.pool=tok", "missing from the checkpoint: params/cls"),
])
def test_a_checkpoint_of_another_model_names_keys_and_shapes(run8, override, culprit):
    cfg = config_lib.apply_overrides(loop.load_config(run8), [override])
    with pytest.raises(VistasError) as e:
        loop.final_params(run8, cfg)
    msg = one_line(e)
    assert f"checkpoint 8 in {run8 / 'checkpoints'} is of another model or config: " in msg and culprit in msg


@requires_fashion_mnist
@pytest.mark.parametrize("damage", ["truncated data", "garbled metadata"])
def test_a_damaged_checkpoint_is_named_with_the_one_to_fall_back_to(run8, tmp_path, damage):
    """(Bytes overwritten inside the array data, which still decode: the digests saved with
    each checkpoint, tests/reliability/test_checksums.py.)"""
    workdir = tmp_path / "run"
    shutil.copytree(run8, workdir)
    step_dir = workdir / "checkpoints" / "8" / "state"
    if damage == "truncated data":
        data = max((p for p in step_dir.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
        data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    else:
        (step_dir / "_METADATA").write_text('{"tree_metadata": {"params": [')
    cfg = tiny("train.duration=8", "train.ckpt_every=4", "train.eval_every=8")
    with pytest.raises(VistasError) as e:
        loop.train(cfg, workdir, quiet=True)  # resuming reads the whole state
    msg = one_line(e)
    assert f"checkpoint 8 in {workdir / 'checkpoints'} cannot be read, it is damaged or incomplete" in msg
    assert f"move {workdir / 'checkpoints' / '8'} away to use checkpoint 4" in msg
    shutil.move(workdir / "checkpoints" / "8", tmp_path / "damaged8")  # as the message says
    if damage == "truncated data":
        summary = loop.train(cfg, workdir, quiet=True)
        assert summary["finished"] and summary["step"] == 8


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
def test_truncated_or_foreign_weight_files_are_one_line(tmp_path, suffix):
    path = tmp_path / f"weights{suffix}"
    for content in (b"", b"PK\x03\x04 cut short", os.urandom(256)):
        path.write_bytes(content)
        with pytest.raises(VistasError) as e:
            interop.read(path)
        assert str(path) in one_line(e)


# --- configs ----------------------------------------------------------------------------------


@pytest.mark.parametrize("overrides, culprit", [
    (["data.batch_size=0"], "data.batch_size=0 must be positive"),
    (["train.duration=-5"], "train.duration=-5 is not a duration"),
    (["train.duration=0"], "train.duration=0 is empty; a run needs at least one step"),
    (["train.duration='0ep'"], "train.duration='0ep' is empty"),
    (["schedule.warmup='5 epochs'"], "schedule.warmup='5 epochs' is not a duration"),
    (["optim.lr=-0.1"], "optim.lr=-0.1 must be a positive, finite number"),
    (["data.randaug_ops=2", "data.autoaugment=True"], "data.autoaugment=True and data.randaug_ops > 0: choose one"),
])
def test_bad_values_and_conflicts_are_one_line(overrides, culprit):
    with pytest.raises(ConfigError) as e:
        config_lib.apply_overrides(config_lib.Config(), overrides)
    assert culprit in one_line(e)


def test_unknown_optimizer_suggests_the_closest_name():
    cfg = config_lib.apply_overrides(config_lib.Config(), ["optim.name=adamm"])
    with pytest.raises(ConfigError) as e:
        builder.from_config({"w": np.zeros(3, np.float32)}, cfg.optim, lambda s: 1.0)
    msg = one_line(e)
    assert "'adamm'" in msg and "'adam'" in msg
