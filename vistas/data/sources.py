"""Random-access data sources: `len(src)`, `src[i] -> {"image": uint8 [H, W, C], "label": int32}`.

Every source also has `num_classes` and `image_shape` ((H, W, C), or None when images vary
in size). `load_source` is the one entry point: catalog datasets, `.npz` arrays, image
folders, ArrayRecord shards and Parquet files, with TFDS-style split slicing
(`train[:50000]`, `test[:10%]`). Multi-label sources (`multi_label = True`) give multi-hot
labels, int32 [num_classes].

This module only re-exports: each format is read by its own module in
`vistas.data.readers`, images are decoded by `vistas.data.decode` (whose
`MAX_IMAGE_PIXELS` is the limit every format enforces) and splits are parsed by
`vistas.data.splits`.
"""

from vistas.data.decode import MAX_IMAGE_PIXELS, decode_image
from vistas.data.readers.arrays import ArraySource, load_npz
from vistas.data.readers.base import ChannelSource, PairSource, Source, Subset
from vistas.data.readers.factory import load_derived, load_source
from vistas.data.readers.folder import IMAGE_EXTENSIONS, ImageFolderSource, load_folder
from vistas.data.readers.idx import load_idx_dataset, read_idx
from vistas.data.readers.mixture import MixtureSource, load_mixture
from vistas.data.readers.packaged import READERS, class_split_indices, load_package_dataset
from vistas.data.splits import (
    FILE_FORMATS,
    SPLIT_FORMS,
    parse_dataset_spec,
    parse_split,
    split_indices,
)

__all__ = [
    "FILE_FORMATS", "IMAGE_EXTENSIONS", "MAX_IMAGE_PIXELS", "READERS", "SPLIT_FORMS",
    "ArraySource", "ChannelSource", "ImageFolderSource", "MixtureSource", "PairSource", "Source",
    "Subset", "class_split_indices", "decode_image", "load_derived", "load_folder",
    "load_idx_dataset", "load_mixture", "load_npz", "load_package_dataset", "load_source",
    "parse_dataset_spec", "parse_split", "read_idx", "split_indices",
]
