"""Files written whole or not at all.

Every file a run, a branch, a cache or a pack writes goes through ``atomic_write`` (or
``atomic_path`` for writers that want a path): the content goes to a temporary file beside
the target, which is then renamed over it, so a kill or a full disk leaves either the old
file or the new one, never half of one. A failed write is one clear line. The file gets the
permissions a plain ``open()`` gives a new file (``0o666`` less the umask), whatever mode
the writer gave its temporary file (safetensors makes its own ``0600``).
"""

from __future__ import annotations

import contextlib
import errno
import os
import pathlib
import re
import threading
from collections.abc import Iterator

from vistas.errors import VistasError


def _failed(path: pathlib.Path, e: OSError) -> VistasError:
    return VistasError(f"could not write {path}: {e.strerror or e}; {advice(e)}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[pathlib.Path]:
    """Yields a temporary path beside ``path``; when the block ends without an exception it
    is renamed to ``path``, otherwise removed. ``suffix`` ends the temporary name (for
    writers that insist on an extension, e.g. ``np.savez`` and ``.npz``). The temporary name
    is the writer's own (process and thread), so that two writers of the same file (the
    group processes of a sweep writing its spec) never rename each other's file away."""
    path = pathlib.Path(path)
    tmp = path.with_name(f"{path.name}.{os.getpid()}-{threading.get_native_id()}.tmp{suffix}")
    try:
        yield tmp
        _as_if_opened(tmp)
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise _failed(path, e) from e
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def umask() -> int:
    """This process's umask, read without changing it where the system shows it (Linux's
    /proc/self/status); elsewhere set and restored at once."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _as_if_opened(tmp: pathlib.Path) -> None:
    """Gives the regular file ``tmp`` the mode ``open()`` gives a new file: 0o666 & ~umask."""
    if tmp.is_file() and not tmp.is_symlink():
        with contextlib.suppress(OSError):  # a file system without modes keeps its own
            os.chmod(tmp, 0o666 & ~umask())


PERMISSION_ERRNOS = (errno.EACCES, errno.EPERM, errno.EROFS)
SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def advice(e: BaseException) -> str:
    """What to do about a failed write, by its cause: permission (or a read-only or
    immutable folder) vs space."""
    code = getattr(e, "errno", None)
    if code is None:  # wrapped by a library: "... os_error_code=28 ..."
        m = re.search(r"os_error_code='?(\d+)", str(e))
        code = int(m.group(1)) if m else None
    if code in PERMISSION_ERRNOS:
        return "no permission to write there (check the folder's owner, mode, immutable flag or read-only mount)"
    if code in SPACE_ERRNOS:
        return "free space, then resume"
    return "check the folder, then resume"


def check_writable(directory: str | os.PathLike) -> None:
    """Creates ``directory`` if needed and writes and removes a probe file in it: a folder a
    run cannot write is one line naming the cause before any training step, rather than a
    failed checkpoint later."""
    directory = pathlib.Path(directory)
    probe = directory / f".vistas-write-test-{os.getpid()}"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise VistasError(f"cannot write in {directory}: {e.strerror or e}; {advice(e)}") from None


def atomic_write(path: str | os.PathLike, data: str | bytes) -> None:
    """Writes ``data`` (text as UTF-8) to ``path`` whole or not at all."""
    with atomic_path(path) as tmp:
        if isinstance(data, bytes):
            tmp.write_bytes(data)
        else:
            tmp.write_text(data)


__all__ = ["advice", "atomic_path", "atomic_write", "check_writable", "umask"]
