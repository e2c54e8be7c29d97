"""Paths named by data (archive members, manifest entries) stay inside their directory."""

from __future__ import annotations

import os
import pathlib

from vistas.errors import VistasError


def inside(root: str | os.PathLike, name: str, what: str = "path") -> pathlib.Path:
    """``root / name``, refused with a one-line error when ``name`` is absolute, climbs out
    with ``..``, or resolves (through symbolic links) to somewhere outside ``root``."""
    root = pathlib.Path(root)
    parts = pathlib.PurePosixPath(name.replace("\\", "/")).parts
    if not name or pathlib.PurePath(name).is_absolute() or name.startswith(("/", "\\")) or ".." in parts:
        raise VistasError(f"{what} {name!r} is refused: it must be a relative path inside {root} "
                          "(no '..', no absolute path)")
    path = root / name
    real_root = os.path.realpath(root)
    if os.path.commonpath([real_root, os.path.realpath(path)]) != real_root:
        raise VistasError(f"{what} {name!r} is refused: it leads out of {root} through a symbolic link")
    return path
