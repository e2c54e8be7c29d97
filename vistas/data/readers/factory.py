"""`load_source`: the one entry point from a dataset name and split to a source.

File formats (`FILE_READERS`, keyed by `vistas.data.splits.FILE_FORMATS`) read the `path`
they are given; catalog datasets are found by `vistas.data.catalog` and read by the reader
their entry's kind names (`CATALOG_READERS`: IDX files, a package's files, or pairs derived
from another catalog dataset). Every reader gets the split with its slice and returns a
source of the selected examples; a `channels` the source does not have already is
converted last.
"""

from __future__ import annotations

import os
import pathlib

from vistas.data import catalog
from vistas.data.readers.array_record import ArrayRecordSource
from vistas.data.readers.arrays import load_npz
from vistas.data.readers.base import ChannelSource, PairSource, sliced
from vistas.data.readers.folder import load_folder
from vistas.data.readers.idx import load_idx_dataset
from vistas.data.readers.packaged import load_package_dataset
from vistas.data.readers.parquet import ParquetSource
from vistas.data.splits import FILE_FORMATS, parse_split
from vistas.errors import DataError

# --- file formats: reader(path, split, channels, decode_size) -> source ------------------------


def _read_npz(path, split: str, channels: int | None, decode_size: int | None):
    return load_npz(path, split)


def _read_folder(path, split: str, channels: int | None, decode_size: int | None):
    return load_folder(path, split, channels=channels or 3)


def _read_array_record(path, split: str, channels: int | None, decode_size: int | None):
    name, _, _ = parse_split(split)
    return sliced(ArrayRecordSource(path, name, channels or 3, decode_size), split)


def _read_parquet(path, split: str, channels: int | None, decode_size: int | None):
    name, _, _ = parse_split(split)
    return sliced(ParquetSource(path, name, channels or 3, decode_size), split)


FILE_READERS = {
    "npz": _read_npz,
    "folder": _read_folder,
    "array_record": _read_array_record,
    "parquet": _read_parquet,
}


# --- catalog datasets: reader(info, directory, split name, data_dir) -> unsliced source --------


def load_derived(info: catalog.DatasetInfo, split: str, data_dir) -> PairSource:
    """Pairs (`PairSource`) of the catalog dataset ``info.derived_from``'s split ``split``."""
    parent = load_source(info.derived_from, split, data_dir=data_dir)
    seed = {"train": 1, "test": 2}.get(split, 3)
    return PairSource(parent, seed=seed)


def _read_derived(info: catalog.DatasetInfo, directory: pathlib.Path, split: str, data_dir):
    return load_derived(info, split, data_dir)


def _read_package(info: catalog.DatasetInfo, directory: pathlib.Path, split: str, data_dir):
    return load_package_dataset(directory, info, split)


def _read_idx(info: catalog.DatasetInfo, directory: pathlib.Path, split: str, data_dir):
    return load_idx_dataset(directory, info, split)


CATALOG_READERS = {"derived": _read_derived, "package": _read_package, "idx": _read_idx}


def catalog_kind(info: catalog.DatasetInfo) -> str:
    """The key of `CATALOG_READERS` that reads the catalog dataset ``info``."""
    if info.derived_from:
        return "derived"
    return "package" if info.package is not None else "idx"


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
        source = FILE_READERS[name](path, split, channels, decode_size)
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
        source = sliced(CATALOG_READERS[catalog_kind(info)](info, directory, split_name, where), split)
    # Folders, shards and Parquet files decode to `channels` themselves (their image_shape is None).
    if channels is not None and source.image_shape is not None and source.image_shape[-1] != channels:
        source = ChannelSource(source, channels)
    return source


__all__ = ["CATALOG_READERS", "FILE_READERS", "catalog_kind", "load_derived", "load_source"]
