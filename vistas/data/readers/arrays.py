"""In-memory arrays as a source (`ArraySource`), and `.npz` files of them (`load_npz`).

`ArraySource` is also what the catalog readers (IDX files, datasets inside packages) return.
`.npz` files are read with `allow_pickle=False`: object arrays are refused.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Sequence

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


def load_npz(path: str | os.PathLike, split: str) -> ArraySource:
    """Arrays `x_<split>` (uint8 [N, H, W(, C)]) and `y_<split>` (int [N]) from a `.npz` file.

    The number of classes is the file's `num_classes`, or else one more than the largest
    label of the training split (`y_train`), for every split: a test label beyond the
    training split's classes is an error, not a class the model never had."""
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
            if num_classes is None and labels.ndim == 1 and np.issubdtype(labels.dtype, np.integer):
                # the dataset's class count, the same for every split: the training split's
                reference = data["y_train"] if "y_train" in keys else labels
                num_classes = int(reference.max()) + 1 if len(reference) else 0
                if num_classes > MAX_INFERRED_CLASSES:
                    raise DataError(
                        f"{path}: the largest label {reference.max()} would make {num_classes:,} "
                        f"classes (more than {MAX_INFERRED_CLASSES:,}); labels must be class indices "
                        "0..K-1, or store num_classes in the file if there really are that many")
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
    return sliced(source, split)


__all__ = ["ArraySource", "load_npz"]
