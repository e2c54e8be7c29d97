"""Parquet files of encoded images with labels, read from local files (needs ``pyarrow``).

The layout of a Hugging Face dataset exported to Parquet is understood as it is: the files
of split ``s`` are ``path/s-*.parquet``, ``path/s/*.parquet`` or ``path/data/s-*.parquet``
(or ``path`` is one ``.parquet`` file); the image column holds encoded bytes, either plain
binary or the ``{"bytes", "path"}`` struct of the ``Image`` feature; the label column holds
integer class indices. Class names come from the ``ClassLabel`` names stored in the
schema's Hugging Face metadata when present.

Labels are read whole when the source opens; images are read one row group at a time
(the last one is kept) and decoded on access by `vistas.data.decode`.
"""

from __future__ import annotations

import json
import os
import pathlib
import threading

import numpy as np

from vistas.data.decode import decode_bytes
from vistas.errors import DataError


def _pyarrow():
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError("reading Parquet files needs pyarrow: pip install 'vistas[parquet]'") from None
    return pq


def split_files(path: str | os.PathLike, split: str) -> list[pathlib.Path]:
    path = pathlib.Path(path)
    if path.is_file():
        return [path]
    for pattern in (f"{split}-*.parquet", f"{split}.parquet", f"{split}/*.parquet", f"data/{split}-*.parquet"):
        found = sorted(path.glob(pattern))
        if found:
            return found
    raise DataError(f"no Parquet files for split {split!r} in {path} (looked for {split}-*.parquet, "
                    f"{split}/*.parquet and data/{split}-*.parquet)")


def _class_names(schema, label_key: str) -> tuple[str, ...] | None:
    meta = (schema.metadata or {}).get(b"huggingface")
    if not meta:
        return None
    try:
        features = json.loads(meta)["info"]["features"]
        names = features[label_key].get("names")
    except (KeyError, TypeError, ValueError, AttributeError):
        return None
    return tuple(names) if names else None


class ParquetSource:
    """One split of Parquet files: ``src[i] -> {"image": uint8 [H, W, C], "label": int32}``."""

    def __init__(self, path: str | os.PathLike, split: str, channels: int = 3,
                 draft_size: int | None = None, *, image_key: str = "image", label_key: str = "label"):
        pq = _pyarrow()
        self.files = split_files(path, split)
        self.channels, self.draft_size = channels, draft_size
        self.image_key, self.label_key = image_key, label_key
        labels, groups, names = [], [], None
        for f in self.files:
            try:
                meta = pq.ParquetFile(f)
            except Exception as e:
                raise DataError(f"cannot read Parquet file {f}: {e}") from None
            columns = meta.schema_arrow.names
            for key in (image_key, label_key):
                if key not in columns:
                    raise DataError(f"Parquet file {f} has no column {key!r}; columns: {', '.join(columns)}")
            names = names or _class_names(meta.schema_arrow, label_key)
            labels.append(meta.read(columns=[label_key]).column(0).to_numpy())
            for g in range(meta.num_row_groups):
                groups.append((f, g, meta.metadata.row_group(g).num_rows))
        self.labels = np.concatenate(labels).astype(np.int32) if labels else np.zeros(0, np.int32)
        if len(self.labels) and self.labels.min() < 0:
            raise DataError(f"Parquet labels of {path}:{split} must be class indices >= 0, "
                            f"got {self.labels.min()}")
        self.class_names = names
        self.num_classes = len(names) if names else int(self.labels.max()) + 1 if len(self.labels) else 0
        self.image_shape = None
        self.multi_label = False
        self._groups = groups
        self._starts = np.cumsum([0] + [n for _, _, n in groups])
        self._lock = threading.Lock()
        self._cached: tuple[int, list] | None = None

    def __getstate__(self):  # picklable for worker processes: the cache stays behind
        state = dict(self.__dict__)
        state["_lock"], state["_cached"] = None, None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.labels)

    def _row_group(self, k: int) -> list:
        with self._lock:
            cached = self._cached
        if cached is not None and cached[0] == k:
            return cached[1]
        f, g, _ = self._groups[k]
        try:
            column = _pyarrow().ParquetFile(f).read_row_group(g, columns=[self.image_key]).column(0)
        except Exception as e:
            raise DataError(f"cannot read row group {g} of Parquet file {f}: {e}") from None
        values = column.to_pylist()
        with self._lock:
            self._cached = (k, values)
        return values

    def __getitem__(self, i: int) -> dict:
        i = int(i)
        k = int(np.searchsorted(self._starts, i, side="right")) - 1
        value = self._row_group(k)[i - self._starts[k]]
        data = value.get("bytes") if isinstance(value, dict) else value
        f, g, _ = self._groups[k]
        where = f"row {i - self._starts[k]} of row group {g} of {f}"
        if not data:
            raise DataError(f"{where} holds no image bytes")
        return {"image": decode_bytes(data, self.channels, where, self.draft_size),
                "label": self.labels[i]}


__all__ = ["ParquetSource", "split_files"]
