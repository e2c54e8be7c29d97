"""Reading pickled NumPy arrays without running anything else a pickle may ask for.

A pickle is a program: loading one with ``pickle.load`` can call any importable function.
``load_arrays`` admits exactly the globals a plain ``numpy.ndarray`` pickle refers to (the
array reconstructor, ``ndarray`` and ``dtype``) and refuses everything else, object arrays
included, with a :class:`DataError` naming what was refused.
"""

from __future__ import annotations

import gzip
import io
import os
import pathlib
import pickle

import numpy as np

from vistas.errors import DataError

# (module, name) pairs a pickled numeric ndarray needs; NumPy 2 moved `core` to `_core`.
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
}


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED:
            raise DataError(
                f"refused to unpickle {module}.{name}: only NumPy arrays are read from pickles"
            )
        if name == "_reconstruct":
            from numpy._core.multiarray import _reconstruct

            return _reconstruct
        return np.ndarray if name == "ndarray" else np.dtype

    def persistent_load(self, pid):
        raise DataError("refused to unpickle a persistent reference: only NumPy arrays are read")


def loads_array(data: bytes, what: str = "pickle") -> np.ndarray:
    """The NumPy array pickled in ``data`` (numeric dtypes only)."""
    try:
        value = _ArrayUnpickler(io.BytesIO(data)).load()
    except DataError:
        raise
    except Exception as e:  # a malformed pickle can raise nearly anything
        raise DataError(f"cannot read {what} as a pickled NumPy array: {e}") from None
    if not isinstance(value, np.ndarray):
        raise DataError(f"{what} holds a {type(value).__name__}, not a NumPy array")
    if value.dtype.hasobject:
        raise DataError(f"{what} holds an object array, which is refused for safety")
    return value


def load_array(path: str | os.PathLike) -> np.ndarray:
    """The NumPy array pickled in file ``path`` (gzipped or not)."""
    path = pathlib.Path(path)
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise DataError(f"cannot read {path}: {e}") from None
    return loads_array(raw, str(path))
