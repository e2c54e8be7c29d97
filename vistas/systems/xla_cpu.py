"""Defaults for XLA's CPU compiler and runtime: ``XLA_FLAGS`` at import, huge pages at launch.

XLA reads ``XLA_FLAGS`` once, when JAX creates its first backend, so ``import vistas`` adds
the flags below unless the variable already names them (a user's own setting always wins)
or ``VISTAS_XLA_DEFAULTS=0``. They only change how XLA:CPU compiles; GPU and TPU backends
ignore them.

- ``--xla_cpu_experimental_ynn_fusion_type=`` (empty: no YNNPACK fusions). With the jaxlib
  pinned here XLA:CPU hands matmuls, fused with their neighbours, to YNNPACK by default;
  on the x86 CPUs measured, Eigen's matmuls plus XLA's own fusions are faster for every
  model family: ViT-Ti/16 inference 1.7x, ViT-S/16 1.6x, training 1.1-1.2x, BiT-R50x1
  training 1.3x (``benchmarks/peer_throughput.py``; figures in docs/performance.md).

Huge pages for XLA's buffers. XLA:CPU allocates each execution's temporaries as one block
(1.5 GB for a ViT-Ti/16 training step at batch 32) with ``posix_memalign``; glibc serves a
block that large with a fresh ``mmap`` and returns it with ``munmap`` every step, so every
step page-faults it in again, 4 KiB at a time (~390,000 faults and a third of the step in
the kernel), and then runs its matmuls through a TLB sized for 4 KiB pages. glibc 2.35 and
newer can ask the kernel for transparent huge pages on such blocks
(``GLIBC_TUNABLES=glibc.malloc.hugetlb=1``), 512 times fewer faults and TLB entries. glibc
reads that variable only when a process starts, so the ``vistas`` command restarts itself
once with it (``exec``, same process id and arguments) when it would take effect: Linux
with glibc >= 2.35, transparent huge pages set to ``always`` or ``madvise`` in
``/sys/kernel/mm/transparent_hugepage/enabled``, ``GLIBC_TUNABLES`` not already naming
``glibc.malloc.hugetlb`` and ``VISTAS_XLA_DEFAULTS`` not ``0``. Scripts using the Python API
call :func:`restart_with_huge_pages` first thing, or are started with the variable set.

Compiler memory given back. Compiling a training step allocates a few hundred MB on the C
heap (XLA's and LLVM's passes) and frees it, but glibc keeps freed heap pages mapped, and
the step's own block comes from a fresh ``mmap``, so those pages would stay resident
through training on top of it. :func:`release_free_memory` (glibc's ``malloc_trim``) hands
them back; ``vistas train`` calls it once the step is compiled (ViT-Ti/16: peak resident
memory 2.29 -> 2.09 GB, docs/performance.md).
"""

from __future__ import annotations

import os
import platform
import sys
import warnings

DEFAULTS = {"xla_cpu_experimental_ynn_fusion_type": ""}
MALLOC_TUNABLE = "glibc.malloc.hugetlb"
THP_MODE_FILE = "/sys/kernel/mm/transparent_hugepage/enabled"
_RESTARTED = "VISTAS_RESTARTED"  # set in the restarted process: never restart twice
_BEFORE = "VISTAS_GLIBC_TUNABLES_BEFORE"  # GLIBC_TUNABLES as it was before the restart


def flags_with_defaults(current: str) -> str:
    """``current`` XLA_FLAGS plus each default flag it does not name."""
    named = {token.lstrip("-").split("=", 1)[0] for token in current.split()}
    extra = [f"--{name}={value}" for name, value in DEFAULTS.items() if name not in named]
    return " ".join([current.strip(), *extra]).strip()


def _backends_started() -> bool:
    bridge = sys.modules.get("jax._src.xla_bridge")
    return bool(getattr(bridge, "_backends", None))


def configure() -> None:
    """Add the defaults to ``XLA_FLAGS`` (before JAX starts a backend; see the module doc)."""
    if os.environ.get("VISTAS_XLA_DEFAULTS", "1") == "0":
        return
    current = os.environ.get("XLA_FLAGS", "")
    wanted = flags_with_defaults(current)
    if wanted == current.strip():
        return
    if _backends_started():
        warnings.warn("JAX started its backends before vistas was imported, so vistas' XLA:CPU "
                      f"defaults ({wanted[len(current.strip()):].strip()}) are not in effect; import "
                      "vistas first or add them to XLA_FLAGS (docs/performance.md)", stacklevel=3)
        return
    os.environ["XLA_FLAGS"] = wanted


def _tunables(text: str) -> dict[str, str]:
    """``a=1:b=2`` -> ``{"a": "1", "b": "2"}`` (a name without a value maps to "")."""
    return dict((item.split("=", 1) + [""])[:2] for item in text.split(":") if item)


def tunables_with_huge_pages(current: str) -> str:
    """``current`` GLIBC_TUNABLES plus ``glibc.malloc.hugetlb=1`` unless it names that tunable."""
    if MALLOC_TUNABLE in _tunables(current):
        return current
    return ":".join([*filter(None, [current]), f"{MALLOC_TUNABLE}=1"])


def _thp_mode(path: str = THP_MODE_FILE) -> str | None:
    """The kernel's transparent-huge-page mode (``always``, ``madvise``, ``never``), if known."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return None
    start, end = text.find("["), text.find("]")
    return text[start + 1:end] if 0 <= start < end else None


def _glibc_version() -> tuple[int, ...] | None:
    name, version = platform.libc_ver()
    if name != "glibc" or not version:
        return None
    try:
        return tuple(int(part) for part in version.split(".")[:2])
    except ValueError:
        return None


def huge_pages_status(environ: dict | None = None) -> tuple[bool, str]:
    """Whether this process allocates with huge pages, and why (a short phrase)."""
    env = os.environ if environ is None else environ
    tunables = env.get("GLIBC_TUNABLES", "")
    mode = _thp_mode()
    setting = _tunables(tunables)
    if MALLOC_TUNABLE in setting:
        on = setting[MALLOC_TUNABLE] not in ("0", "") and mode in ("always", "madvise")
        return on, f"GLIBC_TUNABLES={tunables}, transparent huge pages: {mode or 'unknown'}"
    if mode == "always":
        return True, "transparent huge pages: always"
    return False, f"transparent huge pages: {mode or 'unknown'}, GLIBC_TUNABLES does not name {MALLOC_TUNABLE}"


def restart_wanted(environ: dict | None = None) -> bool:
    """Whether restarting with ``glibc.malloc.hugetlb=1`` would change this process's allocator."""
    env = os.environ if environ is None else environ
    if env.get("VISTAS_XLA_DEFAULTS", "1") == "0" or env.get(_RESTARTED):
        return False
    if not sys.platform.startswith("linux") or (_glibc_version() or (0,)) < (2, 35):
        return False
    if _thp_mode() not in ("always", "madvise"):
        return False
    current = env.get("GLIBC_TUNABLES", "")
    return tunables_with_huge_pages(current) != current


def restart_with_huge_pages() -> None:
    """Re-``exec`` this Python process with huge pages for large blocks, when that helps.

    Call it first thing in a script (before any work: the process is replaced and starts
    over with the same arguments); it returns at once when nothing would change (see the
    module doc). ``sys.orig_argv`` restarts ``python script.py``, ``python -m module`` and
    console scripts alike.
    """
    if not restart_wanted():
        return
    env = dict(os.environ)
    env[_BEFORE] = env.get("GLIBC_TUNABLES", "")
    env["GLIBC_TUNABLES"] = tunables_with_huge_pages(env[_BEFORE])
    env[_RESTARTED] = "1"
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
    except OSError as e:  # cannot restart (exotic launcher): carry on without huge pages
        warnings.warn(f"could not restart with huge pages ({e}); continuing without", stacklevel=2)


def environ_before_restart(environ: dict | None = None) -> dict:
    """The environment as it was before :func:`restart_with_huge_pages` (for child processes
    that should run as the user started them, e.g. a peer in a benchmark)."""
    env = dict(os.environ if environ is None else environ)
    if env.pop(_RESTARTED, None):
        before = env.pop(_BEFORE, "")
        if before:
            env["GLIBC_TUNABLES"] = before
        else:
            env.pop("GLIBC_TUNABLES", None)
    return env


def release_free_memory() -> bool:
    """Return the C heap's free pages to the operating system (glibc's ``malloc_trim(0)``);
    False where the C library has no such call. Cheap (milliseconds); call it after a
    compilation, before the memory-hungry work."""
    if not sys.platform.startswith("linux") or _glibc_version() is None:
        return False
    import ctypes

    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return False
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    trim(0)
    return True
