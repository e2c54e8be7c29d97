"""IDX files (the MNIST format): `read_idx`, and the catalog datasets stored as IDX files
(Fashion-MNIST, MNIST, ... as downloaded or as the Debian package installs them), read by
`load_idx_dataset` into an `ArraySource` with the arrays cached in-process.
"""

from __future__ import annotations

import functools
import gzip
import os
import pathlib

import numpy as np

from vistas.data import catalog
from vistas.data.readers.arrays import ArraySource
from vistas.errors import DataError

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


__all__ = ["load_idx_dataset", "read_idx"]
