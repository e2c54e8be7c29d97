"""Files written whole or not at all.

Every file a run, a branch, a cache or a pack writes goes through ``atomic_write`` (or
``atomic_path`` for writers that want a path): the content goes to a temporary file beside
the target, which is then renamed over it, so a kill or a full disk leaves either the old
file or the new one, never half of one. A failed write is one clear line.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
from collections.abc import Iterator

from vistas.errors import VistasError


def _failed(path: pathlib.Path, e: OSError) -> VistasError:
    return VistasError(f"could not write {path}: {e.strerror or e}; free space, then resume")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[pathlib.Path]:
    """Yields a temporary path beside ``path``; when the block ends without an exception it
    is renamed to ``path``, otherwise removed. ``suffix`` ends the temporary name (for
    writers that insist on an extension, e.g. ``np.savez`` and ``.npz``)."""
    path = pathlib.Path(path)
    tmp = path.with_name(f"{path.name}.tmp{suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise _failed(path, e) from e
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def atomic_write(path: str | os.PathLike, data: str | bytes) -> None:
    """Writes ``data`` (text as UTF-8) to ``path`` whole or not at all."""
    with atomic_path(path) as tmp:
        if isinstance(data, bytes):
            tmp.write_bytes(data)
        else:
            tmp.write_text(data)


__all__ = ["atomic_path", "atomic_write"]
