"""Image folders: `root/<class name>/<image>` (`ImageFolderSource`), optionally under split
folders `root/<split>/<class name>/<image>` (`load_folder`).

Files are listed once (sorted, hidden ones skipped, symlinks followed) and decoded on access
by `vistas.data.decode`, so images may differ in size.
"""

from __future__ import annotations

import os
import pathlib

import numpy as np

from vistas.data.decode import decode_image
from vistas.data.readers.base import sliced
from vistas.data.splits import COMMON_SPLITS, parse_split
from vistas.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")


class ImageFolderSource:
    """Images in `root/<class name>/...`; labels are indices of the sorted class names, or of
    ``class_names`` when given (the dataset's class list, which a split may cover in part).

    Decodes lazily; images may differ in size (so `image_shape` is None).
    """

    def __init__(self, root: str | os.PathLike, channels: int = 3,
                 class_names: tuple[str, ...] | None = None):
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
        names = tuple(d.name for d in class_dirs) if class_names is None else tuple(class_names)
        index = {name: i for i, name in enumerate(names)}
        paths, labels = [], []
        for d in class_dirs:
            if d.name not in index:
                raise DataError(f"class folder {d} is not a class of this dataset "
                                f"({len(names)} classes: {', '.join(names[:10])}"
                                f"{', ...' if len(names) > 10 else ''}); every split must use the "
                                "training split's classes")
            label = index[d.name]
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
        self.class_names = names
        self.num_classes = len(names)
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


def split_folders(src: pathlib.Path) -> dict[str, pathlib.Path]:
    """The split folders of `src` by name (`COMMON_SPLITS` present), or {'train': src}."""
    splits = {d.name: d for d in sorted(src.iterdir()) if d.is_dir() and d.name in COMMON_SPLITS}
    return splits or {"train": src}


def load_folder(path: str | os.PathLike, split: str, channels: int = 3):
    """Image folder `path/<split>/<class>/...`, or `path/<class>/...` without split folders."""
    root = pathlib.Path(path)
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist or is not a directory")
    name, _, _ = parse_split(split)
    class_names = None
    if (root / name).is_dir():
        class_names = dataset_classes(root)
        root = root / name
    else:
        present = sorted(d.name for d in root.iterdir() if d.is_dir() and d.name in COMMON_SPLITS)
        if present:
            raise DataError(
                f"image folder {path} has no split folder {name!r}; splits present: "
                f"{', '.join(present)}"
            )
    source = ImageFolderSource(root, channels=channels, class_names=class_names)
    if source.num_classes < 2:
        raise DataError(f"image folder {path} has {source.num_classes} class "
                        f"({', '.join(source.class_names)}); a classifier needs at least 2 class folders")
    return sliced(source, split)


def _class_dirs(root: pathlib.Path) -> list[str]:
    return sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))


def dataset_classes(root: str | os.PathLike) -> tuple[str, ...]:
    """The class list of a folder dataset with split folders: the training split's class
    folders (sorted), so that every split numbers classes the same way; without a ``train``
    folder, the sorted union of the split folders' classes (as ``vistas data pack`` does)."""
    root = pathlib.Path(root)
    splits = split_folders(root)
    if "train" in splits and splits["train"] != root:
        return tuple(_class_dirs(splits["train"]))
    return tuple(sorted({c for d in splits.values() for c in _class_dirs(d)}))


__all__ = ["IMAGE_EXTENSIONS", "ImageFolderSource", "dataset_classes", "load_folder", "split_folders"]
