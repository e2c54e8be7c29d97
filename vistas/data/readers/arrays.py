"""In-memory arrays as a source (`ArraySource`), and `.npz` files of them (`load_npz`).

`ArraySource` is also what the catalog readers (IDX files, datasets inside packages) return.
`.npz` files are read with `allow_pickle=False`: object arrays are refused. A file that is
not a `.npz` archive at all (random bytes, a cut-short download, a `.npy` file, a zip of
other files) is said to be so, never blamed on pickles: NumPy's own error for a file that is
not a zip is the one for a pickle (`np.load` takes any other file for one).
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import zipfile
import zlib
from collections.abc import Iterator, Sequence

import numpy as np

from vistas.data.readers.base import sliced
from vistas.data.splits import parse_split
from vistas.errors import DataError

MAX_INFERRED_CLASSES = 100_000  # a class count read off the labels beyond this is a mistake


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


def _not_npz(path: pathlib.Path, why: object) -> DataError:
    return DataError(f"{path} is not a readable .npz archive ({why}); write it with np.savez")


@contextlib.contextmanager
def open_npz(path: str | os.PathLike) -> Iterator[np.lib.npyio.NpzFile]:
    """``np.load(path, allow_pickle=False)`` of a ``.npz`` file, a one-line DataError when
    the file cannot be read or is not a zip archive (read its arrays with ``npz_array``)."""
    path = pathlib.Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(6)
    except OSError as e:
        raise DataError(f"cannot read {path} as a .npz file: {e}") from None
    if not zipfile.is_zipfile(path):
        raise _not_npz(path, "the file is empty" if not head else
                       "a NumPy .npy file, not an archive of them" if head == b"\x93NUMPY"
                       else "not a zip file: cut short, or another kind of file")
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise _not_npz(path, e) from None
    with archive:
        yield archive


def npz_array(archive: np.lib.npyio.NpzFile, key: str, path: str | os.PathLike) -> np.ndarray:
    """The array ``key`` of an archive opened by ``open_npz``; object (pickled) arrays and
    members that are not arrays are one-line DataErrors."""
    try:
        value = archive[key]
    except ValueError as e:
        if "allow_pickle" in str(e):  # NumPy: "Object arrays cannot be loaded when allow_pickle=False"
            raise DataError(
                f"{path} holds object (pickled) arrays, which are refused for safety; "
                "save plain numeric arrays (np.savez with uint8 images and int labels)"
            ) from None
        raise _not_npz(pathlib.Path(path), f"member {key!r}: {e}") from None
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise _not_npz(pathlib.Path(path), f"member {key!r}: {e}") from None
    if not isinstance(value, np.ndarray):
        raise _not_npz(pathlib.Path(path), f"member {key!r} is not a NumPy array")
    return value


def load_npz(path: str | os.PathLike, split: str) -> ArraySource:
    """Arrays `x_<split>` (uint8 [N, H, W(, C)]) and `y_<split>` (int [N]) from a `.npz` file.

    The number of classes is the file's `num_classes`, or else one more than the largest
    label of the training split (`y_train`), for every split: a test label beyond the
    training split's classes is an error, not a class the model never had."""
    path = pathlib.Path(path)
    name, _, _ = parse_split(split)
    with open_npz(path) as data:
        keys = list(data.keys())
        xk, yk = f"x_{name}", f"y_{name}"
        if xk not in keys or yk not in keys:
            raise DataError(
                f"{path} has no arrays {xk!r} and {yk!r} for split {name!r}; "
                f"keys present: {', '.join(keys) or 'none'}"
            )
        images, labels = npz_array(data, xk, path), npz_array(data, yk, path)
        num_classes = None
        if "num_classes" in keys:
            stored = npz_array(data, "num_classes", path)
            if stored.size != 1 or not np.issubdtype(stored.dtype, np.integer) or int(stored) < 0:
                raise DataError(f"{path}: num_classes must be one integer >= 0, got {stored.dtype} "
                                f"of shape {stored.shape}")
            num_classes = int(stored)
        if num_classes is None and labels.ndim == 1 and np.issubdtype(labels.dtype, np.integer):
            # the dataset's class count, the same for every split: the training split's
            reference = npz_array(data, "y_train", path) if "y_train" in keys else labels
            num_classes = int(reference.max()) + 1 if len(reference) else 0
            if num_classes > MAX_INFERRED_CLASSES:
                raise DataError(
                    f"{path}: the largest label {reference.max()} would make {num_classes:,} "
                    f"classes (more than {MAX_INFERRED_CLASSES:,}); labels must be class indices "
                    "0..K-1, or store num_classes in the file if there really are that many")
    try:
        source = ArraySource(images, labels, num_classes)
    except DataError as e:
        raise DataError(f"{path} ({xk}, {yk}): {e}") from None
    return sliced(source, split)


__all__ = ["ArraySource", "load_npz", "npz_array", "open_npz"]
