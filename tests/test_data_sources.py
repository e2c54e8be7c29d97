"""Tests for vistas.data.sources: IDX, Fashion-MNIST, npz, image folders, split slicing."""

import dataclasses
import gzip
import io
import struct

import numpy as np
import pytest
from PIL import Image

from vistas.data import catalog, sources
from vistas.errors import DataError


def idx_bytes(array: np.ndarray) -> bytes:
    code = {np.dtype(np.uint8): 0x08, np.dtype(np.int32): 0x0C, np.dtype(np.float32): 0x0D}
    header = bytes([0, 0, code[array.dtype], array.ndim])
    header += struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


# --- IDX --------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.float32])
def test_read_idx_roundtrip(tmp_path, gz, dtype):
    array = (np.arange(2 * 3 * 4) * 7 - 20).reshape(2, 3, 4).astype(dtype)
    if dtype == np.uint8:
        array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    data = idx_bytes(array)
    path = tmp_path / ("a.idx.gz" if gz else "a.idx")
    path.write_bytes(gzip.compress(data) if gz else data)
    got = sources.read_idx(path)
    assert got.dtype == np.dtype(dtype) and got.dtype.isnative
    np.testing.assert_array_equal(got, array)


def test_read_idx_labels_1d(tmp_path):
    labels = np.array([3, 1, 4, 1, 5], np.uint8)
    (tmp_path / "l").write_bytes(idx_bytes(labels))
    np.testing.assert_array_equal(sources.read_idx(tmp_path / "l"), labels)


def test_read_idx_truncated(tmp_path):
    data = idx_bytes(np.zeros((4, 5, 5), np.uint8))
    (tmp_path / "t").write_bytes(data[:-3])
    with pytest.raises(DataError, match=r"IDX file .*t is truncated"):
        sources.read_idx(tmp_path / "t")
    (tmp_path / "h").write_bytes(data[:9])  # header cut short
    with pytest.raises(DataError, match="truncated"):
        sources.read_idx(tmp_path / "h")
    (tmp_path / "t.gz").write_bytes(gzip.compress(data)[:-10])  # gzip stream cut short
    with pytest.raises(DataError, match=r"t\.gz"):
        sources.read_idx(tmp_path / "t.gz")


def test_read_idx_bad_magic(tmp_path):
    (tmp_path / "x").write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(DataError, match="not an IDX file"):
        sources.read_idx(tmp_path / "x")
    (tmp_path / "empty").write_bytes(b"")
    with pytest.raises(DataError, match="not an IDX file"):
        sources.read_idx(tmp_path / "empty")


# --- catalog datasets -------------------------------------------------------------------


def test_idx_dataset_from_data_dir(tmp_path):
    d = tmp_path / "fm"
    d.mkdir()
    rng = np.random.default_rng(1)
    images = {"train": rng.integers(0, 256, (9, 28, 28), dtype=np.uint8),
              "t10k": rng.integers(0, 256, (4, 28, 28), dtype=np.uint8)}
    for prefix, x in images.items():
        (d / f"{prefix}-images-idx3-ubyte").write_bytes(idx_bytes(x))
        (d / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(
            gzip.compress(idx_bytes(np.arange(len(x), dtype=np.uint8))))
    src = sources.load_source("fashion_mnist", "test", data_dir=d)
    assert len(src) == 4 and src.num_classes == 10 and src.image_shape == (28, 28, 1)
    ex = src[2]
    assert ex["image"].shape == (28, 28, 1) and ex["image"].dtype == np.uint8
    assert ex["label"].dtype == np.int32 and ex["label"] == 2
    np.testing.assert_array_equal(ex["image"][..., 0], images["t10k"][2])
    sl = sources.load_source("fashion_mnist", "train[-3:]", data_dir=d, channels=3)
    assert len(sl) == 3 and sl.image_shape == (28, 28, 3)
    assert sl[0]["label"] == 6 and sl[0]["image"].shape == (28, 28, 3)


def test_missing_dataset_tells_how_to_fetch(tmp_path, monkeypatch):
    monkeypatch.delenv("VISTAS_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    info = dataclasses.replace(catalog.CATALOG["fashion_mnist"], system_dir=str(tmp_path / "no"))
    monkeypatch.setitem(catalog.CATALOG, "fashion_mnist", info)
    with pytest.raises(DataError, match=r"vistas data fetch fashion_mnist.*VISTAS_DATA_DIR"):
        sources.load_source("fashion_mnist", "train")


def test_unknown_dataset_and_split():
    with pytest.raises(DataError, match="Did you mean 'fashion_mnist'"):
        sources.load_source("fashion-mnist", "train")
    with pytest.raises(DataError, match=r"no split 'validation'; splits: train, test"):
        sources.load_source("fashion_mnist", "validation")


@pytest.mark.skipif(not catalog.is_present("fashion_mnist"), reason="Fashion-MNIST not installed")
def test_fashion_mnist_real():
    train = sources.load_source("fashion_mnist", "train")
    test = sources.load_source("fashion_mnist", "test")
    assert (len(train), len(test)) == (60000, 10000)
    assert train.num_classes == 10 and train.image_shape == (28, 28, 1)
    ex = train[0]
    assert ex["image"].shape == (28, 28, 1) and ex["image"].dtype == np.uint8
    assert ex["label"].dtype == np.int32
    labels = np.asarray(train.labels)
    assert labels.min() == 0 and labels.max() == 9
    assert np.bincount(labels).tolist() == [6000] * 10
    head = sources.load_source("fashion_mnist", "train[:50000]")
    tail = sources.load_source("fashion_mnist", "train[50000:]")
    assert (len(head), len(tail)) == (50000, 10000)
    np.testing.assert_array_equal(tail[0]["image"], train[50000]["image"])
    assert len(sources.load_source("fashion_mnist", "test[:10%]")) == 1000
    rgb = sources.load_source("fashion_mnist", "test", channels=3)
    assert rgb[0]["image"].shape == (28, 28, 3)
    np.testing.assert_array_equal(rgb[0]["image"][..., 2], test[0]["image"][..., 0])
    # Arrays are read once per process.
    assert np.may_share_memory(sources.load_source("fashion_mnist", "train").images, train.images)


# --- split slicing ----------------------------------------------------------------------


@pytest.mark.parametrize("split,expected", [
    ("train", range(1000)),
    ("train[:500]", range(500)),
    ("train[500:]", range(500, 1000)),
    ("train[:10%]", range(100)),
    ("train[10%:20%]", range(100, 200)),
    ("train[-10:]", range(990, 1000)),
    ("train[:-10%]", range(900)),
    ("train[:5000]", range(1000)),
    ("test[ 3 : 7 ]", range(3, 7)),
])
def test_split_indices(split, expected):
    assert sources.split_indices(split, 1000) == expected


@pytest.mark.parametrize("split", [
    "", "train[", "train[:", "train[a:b]", "train[1:2:3]", "[:10]", "train[%:]", "train[5]",
    "train[:10%%]", "train]",
])
def test_bad_split_syntax(split):
    with pytest.raises(DataError, match=r"bad split .*allowed forms: 'train', 'train\[:50000\]'"):
        sources.split_indices(split, 100)


def test_empty_or_out_of_range_split():
    with pytest.raises(DataError, match="selects no examples"):
        sources.split_indices("train[50:50]", 100)
    with pytest.raises(DataError, match="percentages"):
        sources.split_indices("train[:150%]", 100)


# --- arrays and npz ---------------------------------------------------------------------


def test_array_source_adds_channel():
    src = sources.ArraySource(np.zeros((5, 3, 4), np.uint8), np.arange(5), num_classes=7)
    assert len(src) == 5 and src.image_shape == (3, 4, 1) and src.num_classes == 7
    assert src[4]["image"].shape == (3, 4, 1) and src[4]["label"] == 4
    with pytest.raises(DataError, match="labels must lie in"):
        sources.ArraySource(np.zeros((2, 3, 3), np.uint8), np.array([0, 5]), num_classes=3)
    with pytest.raises(DataError, match="uint8"):
        sources.ArraySource(np.zeros((2, 3, 3), np.float32), np.array([0, 1]))


def test_npz(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (20, 8, 8, 3), dtype=np.uint8)
    y = np.arange(20) % 4
    path = tmp_path / "d.npz"
    np.savez(path, x_train=x, y_train=y, x_test=x[:5], y_test=y[:5])
    src = sources.load_source("npz", "train", path=path)
    assert len(src) == 20 and src.num_classes == 4 and src.image_shape == (8, 8, 3)
    np.testing.assert_array_equal(src[3]["image"], x[3])
    sl = sources.load_npz(path, "train[10:]")
    assert len(sl) == 10 and sl[0]["label"] == y[10]
    gray = sources.load_source("npz", "test", path=path, channels=1)
    assert gray[0]["image"].shape == (8, 8, 1)
    expected = np.asarray(Image.fromarray(x[0]).convert("L"))
    assert np.abs(gray[0]["image"][..., 0].astype(int) - expected).max() <= 1
    np.savez(path, x_train=x, y_train=y, num_classes=np.array(10))
    assert sources.load_npz(path, "train").num_classes == 10


def test_npz_missing_keys_lists_present(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, images=np.zeros((2, 4, 4), np.uint8), labels=np.zeros(2))
    with pytest.raises(DataError, match=r"no arrays 'x_train' and 'y_train'.*keys present: "
                                        r"images, labels"):
        sources.load_npz(path, "train")


def test_npz_refuses_pickled_objects(tmp_path):
    path = tmp_path / "evil.npz"
    objects = np.empty(2, dtype=object)
    objects[:] = [np.zeros((4, 4), np.uint8), {"x": 1}]
    np.savez(path, x_train=objects, y_train=np.zeros(2, np.int64))
    with pytest.raises(DataError, match="pickled.*refused"):
        sources.load_npz(path, "train")


def test_npz_not_a_file(tmp_path):
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="bad.npz"):
        sources.load_source("npz", "train", path=tmp_path / "bad.npz")
    with pytest.raises(DataError, match="does not exist"):
        sources.load_source("npz", "train", path=tmp_path / "none.npz")
    with pytest.raises(DataError, match="needs a path"):
        sources.load_source("npz", "train")


# --- image folders ----------------------------------------------------------------------


def save(img: Image.Image, path, fmt=None, **kw):
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, fmt, **kw)


def make_mixed_folder(root):
    """Class 'a': L png, RGBA png, P png with transparency; class 'b': CMYK jpeg, I;16 png,
    RGB webp-free jpeg with an upper-case extension. Different sizes."""
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)
    save(Image.fromarray(rgb[..., 0], "L"), root / "a" / "gray.png")
    rgba = np.concatenate([rgb, np.full((10, 12, 1), 128, np.uint8)], -1)
    save(Image.fromarray(rgba, "RGBA"), root / "a" / "alpha.png")
    pal = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    pal.info["transparency"] = 0
    save(pal, root / "a" / "pal.png", transparency=0)
    save(Image.fromarray(rgb).convert("CMYK"), root / "b" / "cmyk.jpg", "JPEG")
    deep = (np.arange(7 * 9, dtype=np.uint16).reshape(7, 9) * 1000)
    deep[0, 0] = 65535
    save(Image.fromarray(deep), root / "b" / "deep.png")
    save(Image.fromarray(rgb[:5]), root / "b" / "UPPER.JPEG", "JPEG")
    (root / "b" / "notes.txt").write_text("not an image")
    return rgb


def test_image_folder_modes(tmp_path):
    make_mixed_folder(tmp_path)
    assert Image.open(tmp_path / "b" / "deep.png").mode.startswith("I")
    assert Image.open(tmp_path / "b" / "cmyk.jpg").mode == "CMYK"
    assert Image.open(tmp_path / "a" / "pal.png").mode == "P"
    src = sources.ImageFolderSource(tmp_path)
    assert src.class_names == ("a", "b") and src.num_classes == 2 and src.image_shape is None
    assert len(src) == 6
    assert [int(src[i]["label"]) for i in range(6)] == [0, 0, 0, 1, 1, 1]
    shapes = set()
    for i in range(len(src)):
        ex = src[i]
        assert ex["image"].dtype == np.uint8 and ex["image"].shape[2] == 3
        assert ex["label"].dtype == np.int32
        shapes.add(ex["image"].shape)
    assert shapes == {(10, 12, 3), (7, 9, 3), (5, 12, 3)}
    deep = next(src[i]["image"] for i in range(6) if src.paths[i].endswith("deep.png"))
    assert deep[0, 0, 0] == 255 and deep[0, 1, 0] == 1000 >> 8  # 16 bits scaled to 8
    gray = sources.ImageFolderSource(tmp_path, channels=1)
    assert all(gray[i]["image"].shape[2] == 1 for i in range(len(gray)))


def test_image_folder_corrupt_files(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG")
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "cut.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (tmp_path / "c" / "empty.png").write_bytes(b"")
    (tmp_path / "c" / "text.png").write_bytes(b"hello, not a png")
    src = sources.ImageFolderSource(tmp_path)
    for i, name in enumerate(["cut.jpg", "empty.png", "text.png"]):
        with pytest.raises(DataError, match=rf"cannot decode image .*{name}: \S"):
            src[i]


def test_image_folder_structure_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        sources.ImageFolderSource(tmp_path / "nope")
    with pytest.raises(DataError, match="no class sub-folders"):
        sources.ImageFolderSource(tmp_path)
    save(Image.new("RGB", (4, 4)), tmp_path / "full" / "x.png")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("hi")
    with pytest.raises(DataError, match=r"class folder .*empty has no images"):
        sources.ImageFolderSource(tmp_path)
    with pytest.raises(DataError, match="channels must be 1 or 3"):
        sources.ImageFolderSource(tmp_path, channels=2)


def test_symlink_loops_in_an_image_folder_are_read_once(tmp_path):
    """A class folder holding a symbolic link to its parent (the dataset root) and one to
    the root by its absolute path: each real image is listed once, with its own class;
    the skipped links are counted and reported once. A link to a folder outside the
    dataset is still followed, and a loop inside that folder is skipped too."""
    import os
    import warnings

    root, extra = tmp_path / "ds", tmp_path / "more_dogs"
    for c, n in (("cat", 3), ("dog", 2)):
        for i in range(n):
            save(Image.new("RGB", (4, 4), (i, 0, 0)), root / c / f"{i}.png")
    for i in range(2):
        save(Image.new("RGB", (4, 4), (0, i, 0)), extra / f"{i}.png")
    os.symlink("..", root / "cat" / "up")  # the parent, which is the dataset root
    os.symlink(extra, root / "dog" / "more")  # outside the dataset: followed
    os.symlink(".", extra / "again")  # a loop inside the linked folder
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        src = sources.ImageFolderSource(root)
    assert len(src) == 7, f"{len(src)} images listed, the folder holds 7"
    os.symlink(root, root / "cat" / "top")  # the dataset root by its absolute path
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        src = sources.ImageFolderSource(root)
    assert len(src) == 7 and list(src.labels) == [0, 0, 0, 1, 1, 1, 1]
    assert [os.path.relpath(p, tmp_path) for p in src.paths] == [
        "ds/cat/0.png", "ds/cat/1.png", "ds/cat/2.png", "ds/dog/0.png", "ds/dog/1.png",
        "ds/dog/more/0.png", "ds/dog/more/1.png"]
    assert src.skipped_dirs == 3  # cat/top, cat/up, dog/more/again
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and "skipped 3 " in messages[0] and "\n" not in messages[0]


def test_folder_splits(tmp_path):
    for split, n in [("train", 3), ("test", 2)]:
        for c in ("cat", "dog"):
            for i in range(n):
                save(Image.new("RGB", (6, 5), (i, 0, 0)), tmp_path / "ds" / split / c / f"{i}.png")
    train = sources.load_source("folder", "train", path=tmp_path / "ds")
    test = sources.load_source("folder", "test[:3]", path=tmp_path / "ds", channels=1)
    assert len(train) == 6 and len(test) == 3 and test.num_classes == 2
    assert test[0]["image"].shape == (5, 6, 1)
    with pytest.raises(DataError, match=r"no split folder 'validation'; splits present: test, tr"):
        sources.load_source("folder", "validation", path=tmp_path / "ds")
    flat = sources.load_source("folder", "train", path=tmp_path / "ds" / "test")  # no split dirs
    assert len(flat) == 4 and flat.class_names == ("cat", "dog")


def test_slices_of_a_folder_without_split_folders_hold_every_class(tmp_path):
    """Files are listed class by class; a held-out slice ('train[80%:]') used to be the last
    class alone. Sliced in an interleaved order, each slice holds each class in proportion."""
    pixel = np.zeros((4, 4, 3), np.uint8)
    counts = {"a": 10, "b": 20, "c": 30}
    for name, n in counts.items():
        for i in range(n):
            save(Image.fromarray(pixel), tmp_path / name / f"{i:02d}.png")
    head = sources.load_folder(tmp_path, "train[:80%]")
    tail = sources.load_folder(tmp_path, "train[80%:]")
    assert len(head) == 48 and len(tail) == 12
    assert np.bincount(head.labels, minlength=3).tolist() == [8, 16, 24]
    assert np.bincount(tail.labels, minlength=3).tolist() == [2, 4, 6]
    paths = lambda s: {s.parent.parent.paths[i] for i in s.parent.indices[s.indices]}  # noqa: E731
    assert not paths(head) & paths(tail) and len(paths(head) | paths(tail)) == 60
    whole = sources.load_folder(tmp_path, "train")  # unsliced: the listing order, as before
    assert whole.labels.tolist() == [0] * 10 + [1] * 20 + [2] * 30
