"""Image folders: `root/<class name>/<image>` (`ImageFolderSource`), optionally under split
folders `root/<split>/<class name>/<image>` (`load_folder`).

Files are listed once (sorted, hidden ones skipped, symlinks followed) and decoded on access
by `vistas.data.decode`, so images may differ in size. A symbolic link to a directory is
followed unless that directory was already read (through another path, or as a class
folder) or holds the directory being read (a loop): such links are skipped, counted in
`ImageFolderSource.skipped_dirs` and reported once with a warning, so no image is listed
twice or under another class.

A folder without split folders is sliced (``train[:90%]``, ``train[90%:]``) in an order that
interleaves its classes (``stratified_order``), so that a held-out slice holds every class.
"""

from __future__ import annotations

import os
import pathlib
import warnings

import numpy as np

from vistas.data.decode import decode_image
from vistas.data.readers.base import Subset, sliced
from vistas.data.splits import COMMON_SPLITS, is_sliced, parse_split
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
        walk = _Walk(root, class_dirs)
        paths, labels = [], []
        for d in class_dirs:
            if d.name not in index:
                raise DataError(f"class folder {d} is not a class of this dataset "
                                f"({len(names)} classes: {', '.join(names[:10])}"
                                f"{', ...' if len(names) > 10 else ''}); every split must use the "
                                "training split's classes")
            label = index[d.name]
            files = walk.images(d)
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
        self.skipped_dirs = len(walk.skipped)  # symbolic links to directories not followed
        if walk.skipped:
            warnings.warn(f"image folder {root}: skipped {len(walk.skipped)} symbolic "
                          f"link{'s' if len(walk.skipped) > 1 else ''} to directories already read "
                          f"or holding the folder itself (a loop), e.g. {walk.skipped[0]}; every "
                          "image is listed once", stacklevel=2)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict:
        return {"image": decode_image(self.paths[i], self.channels), "label": self.labels[i]}


def _above(real: str) -> set[str]:
    """``real`` and every directory above it."""
    found = {real}
    while (parent := os.path.dirname(real)) != real:
        found.add(parent)
        real = parent
    return found


class _Walk:
    """Lists the images of the class folders of one image folder, each real directory once.

    Symbolic links are followed, but a directory is not entered when its real path was
    already entered (reached through another link, or another class's folder) or when it
    holds a directory on the way to it (a link to a parent or to the dataset root: a loop).
    The paths of the links so skipped are in ``skipped``.
    """

    def __init__(self, root: pathlib.Path, class_dirs: list[pathlib.Path]):
        self.root_real = os.path.realpath(root)
        reals = {}
        for d in class_dirs:
            real = os.path.realpath(d)
            if real in _above(self.root_real):
                raise DataError(f"class folder {d} is a symbolic link to {real}, which holds the image "
                                f"folder {root} itself (a loop); remove the link")
            if real in reals:
                raise DataError(f"class folders {reals[real]} and {d} are the same directory {real} "
                                "(a symbolic link); each image may belong to one class: remove one")
            reals[real] = d
        self.seen = {self.root_real, *reals}  # each class folder is read as its own class only
        self.skipped: list[str] = []

    def images(self, directory: pathlib.Path) -> list[str]:
        found = []
        top = str(directory)
        # per directory to enter: the real paths on the way to it, and every directory above them
        holding = {top: _above(self.root_real) | _above(os.path.realpath(top))}
        for dirpath, dirnames, filenames in os.walk(top, followlinks=True):
            here = holding.pop(dirpath)
            keep = []
            for d in sorted(d for d in dirnames if not d.startswith(".")):
                path = os.path.join(dirpath, d)
                real = os.path.realpath(path)
                if real in self.seen or real in here:
                    self.skipped.append(path)
                    continue
                self.seen.add(real)
                holding[path] = here | _above(real)
                keep.append(d)
            dirnames[:] = keep
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
    if class_names is None and is_sliced(split):
        # files are listed class by class: 'train[90%:]' of that order would hold the last
        # class only; sliced in an order that interleaves the classes, every slice holds each
        # class in proportion (and slices that do not overlap share no image)
        source = Subset(source, stratified_order(source.labels))
    return sliced(source, split)


def stratified_order(labels: np.ndarray) -> np.ndarray:
    """Indices of ``labels`` ordered so that every contiguous run holds each class in its
    share of the whole: the k-th of a class's n examples sits at (k + 1/2) / n of the order
    (ties broken by class, then file order)."""
    labels = np.asarray(labels)
    position = np.empty(len(labels), np.float64)
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        position[members] = (np.arange(len(members)) + 0.5) / len(members)
    return np.lexsort((np.arange(len(labels)), labels, position))


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
