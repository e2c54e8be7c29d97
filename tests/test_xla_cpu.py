"""The CPU runtime defaults: the restart with huge pages for XLA's buffers."""

import json
import os
import subprocess
import sys

from vistas.systems import xla_cpu


def test_tunables_keep_the_users_own():
    assert xla_cpu.tunables_with_huge_pages("") == "glibc.malloc.hugetlb=1"
    assert (xla_cpu.tunables_with_huge_pages("glibc.malloc.arena_max=2")
            == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1")
    assert xla_cpu.tunables_with_huge_pages("glibc.malloc.hugetlb=0") == "glibc.malloc.hugetlb=0"


def test_restart_is_never_wanted_when_opted_out_or_done():
    assert not xla_cpu.restart_wanted({"VISTAS_XLA_DEFAULTS": "0"})
    assert not xla_cpu.restart_wanted({"VISTAS_RESTARTED": "1"})
    assert not xla_cpu.restart_wanted({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"})


def test_environment_before_restart_is_restored():
    env = {"PATH": "/bin", "GLIBC_TUNABLES": "a=1:glibc.malloc.hugetlb=1",
           "VISTAS_RESTARTED": "1", "VISTAS_GLIBC_TUNABLES_BEFORE": "a=1"}
    assert xla_cpu.environ_before_restart(env) == {"PATH": "/bin", "GLIBC_TUNABLES": "a=1"}
    env = {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1", "VISTAS_RESTARTED": "1",
           "VISTAS_GLIBC_TUNABLES_BEFORE": ""}
    assert xla_cpu.environ_before_restart(env) == {}
    assert xla_cpu.environ_before_restart({"GLIBC_TUNABLES": "x=1"}) == {"GLIBC_TUNABLES": "x=1"}


SCRIPT = """
import json, os, sys
print(json.dumps({"pid": os.getpid(), "stage": "start"}), flush=True)
from vistas.systems import xla_cpu
wanted = xla_cpu.restart_wanted()
xla_cpu.restart_with_huge_pages()
import numpy as np
block = np.ones(512 * 2**20 // 8)  # a 512 MiB block: glibc maps it on its own
huge = 0
with open("/proc/self/smaps_rollup") as f:
    for line in f:
        if line.startswith("AnonHugePages:"):
            huge = int(line.split()[1])
print(json.dumps({"pid": os.getpid(), "stage": "end", "argv": sys.argv[1:], "wanted": wanted,
                  "tunables": os.environ.get("GLIBC_TUNABLES"), "huge_kib": huge,
                  "status": xla_cpu.huge_pages_status()[0]}))
"""


def _run(env_extra):
    env = {k: v for k, v in os.environ.items()
           if k not in ("GLIBC_TUNABLES", "VISTAS_RESTARTED", "VISTAS_XLA_DEFAULTS")}
    env.update(env_extra)
    out = subprocess.run([sys.executable, "-c", SCRIPT, "--flag", "value"], env=env,
                         capture_output=True, text=True, check=True).stdout
    return [json.loads(line) for line in out.splitlines()]


def test_restart_replaces_the_process_with_the_same_arguments():
    lines = _run({})
    end = lines[-1]
    assert end["stage"] == "end" and end["argv"] == ["--flag", "value"]
    if xla_cpu.restart_wanted({}):  # Linux, glibc >= 2.35, THP always/madvise: it restarts
        assert [line["stage"] for line in lines] == ["start", "start", "end"]
        assert len({line["pid"] for line in lines}) == 1  # exec: the same process
        assert "glibc.malloc.hugetlb=1" in end["tunables"] and end["status"]
        assert end["huge_kib"] > 0  # the block is backed by huge pages
    else:
        assert [line["stage"] for line in lines] == ["start", "end"] and end["tunables"] is None
    opted_out = _run({"VISTAS_XLA_DEFAULTS": "0"})
    assert [line["stage"] for line in opted_out] == ["start", "end"] and opted_out[-1]["tunables"] is None


FREED_SCRIPT = r"""
import ctypes, json
from vistas.systems import xla_cpu

def rss_kib():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS"))

libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
blocks = []
for _ in range(50_000):  # 200 MiB in 4 KiB blocks, as a compiler's many small allocations
    p = libc.malloc(4096)
    ctypes.memset(p, 1, 4096)
    blocks.append(p)
fence = libc.malloc(4096)  # keeps the freed space off the top of the heap (no automatic trim)
for p in blocks:
    libc.free(p)
before = rss_kib()
done = xla_cpu.release_free_memory()
print(json.dumps({"done": done, "before": before, "after": rss_kib()}))
"""


def test_release_free_memory_hands_freed_heap_pages_back():
    if not sys.platform.startswith("linux") or xla_cpu._glibc_version() is None:
        assert xla_cpu.release_free_memory() is False
        return
    out = subprocess.run([sys.executable, "-c", FREED_SCRIPT], capture_output=True, text=True, check=True,
                         env={**os.environ, "GLIBC_TUNABLES": ""})
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["done"] is True
    assert result["before"] - result["after"] > 150 * 1024  # most of the 200 MiB freed
