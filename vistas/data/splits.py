"""Split and dataset-spec syntax, shared by every reader.

A split is a name with an optional TFDS-style slice: 'train', 'train[:50000]',
'train[50000:]', 'test[:10%]', 'train[10%:20%]' (`parse_split`, `split_indices`). A dataset
spec is a catalog name or a file format with its path: 'fashion_mnist', 'folder:/data/x'
(`parse_dataset_spec`). Pure parsing: nothing here reads data.
"""

from __future__ import annotations

import re

from vistas.errors import DataError

# Dataset names read from a `path` rather than found in the catalog.
FILE_FORMATS = ("npz", "folder", "array_record", "parquet")

# Sub-folder names taken as splits in an image folder (`DIR/<split>/<class>/...`).
COMMON_SPLITS = ("train", "test", "val", "validation", "valid", "eval", "dev")

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


def is_sliced(split: str) -> bool:
    """Whether `split` selects part of its examples ('train[:10%]') rather than all ('train')."""
    _, lo, hi = parse_split(split)
    return lo is not None or hi is not None


def split_indices(split: str, n: int) -> range:
    """The example indices selected by `split` (e.g. 'train[:10%]') among `n` examples."""
    _, lo, hi = parse_split(split)
    start, stop = _bound(lo, n, 0, split), _bound(hi, n, n, split)
    if stop <= start:
        raise DataError(f"split {split!r} selects no examples (out of {n})")
    return range(start, stop)


def parse_dataset_spec(spec: str) -> tuple[str, str | None]:
    """'fashion_mnist' -> ('fashion_mnist', None); 'folder:/data/x' -> ('folder', '/data/x')."""
    name, colon, path = spec.partition(":")
    if name in FILE_FORMATS and not (colon and path):
        raise DataError(f"dataset {spec!r} needs a path: write '{name}:PATH'")
    return name, (path if colon else None)


__all__ = ["COMMON_SPLITS", "FILE_FORMATS", "SPLIT_FORMS", "is_sliced", "parse_dataset_spec",
           "parse_split", "split_indices"]
