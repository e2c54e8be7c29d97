"""The sweep folder: the files a sweep keeps there and the state of each member.

``sweep.json`` (the resolved spec), one folder per member (the run's own files plus
``accounting.json`` and, when it failed, ``error.txt``) and, in each group's folder,
``.running`` while a process runs that group. Both the runner (``sweep``) and the results
table (``results``) read it; neither imports the other for it.
"""

from __future__ import annotations

import json
import os
import pathlib
import socket

from vistas.errors import ConfigError, VistasError
from vistas.files import atomic_write
from vistas.scaling import spec as spec_lib
from vistas.scaling.spec import Member, SweepSpec

ACCOUNTING = "accounting.json"
ERROR = "error.txt"
RUNNING = ".running"


def read_json(path: pathlib.Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def is_finished(workdir: pathlib.Path) -> bool:
    return bool(read_json(workdir / "summary.json").get("finished"))


def write_spec(spec: SweepSpec, out: pathlib.Path) -> None:
    """Records the spec in ``out/sweep.json``; refuses an out dir that holds another sweep."""
    path = out / "sweep.json"
    now = spec.to_dict()
    if path.exists():
        old = read_json(path)
        if old and old != now:
            diff = sorted(k for k in set(old) | set(now) if old.get(k) != now.get(k))
            raise ConfigError(f"{out} holds a different sweep (differs in {', '.join(diff)}); "
                              "use a new --out, or the same spec to resume")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps(now, indent=2))


def load_out(out: str | pathlib.Path) -> SweepSpec:
    """The spec of the sweep in ``out`` (from its ``sweep.json``)."""
    path = pathlib.Path(out) / "sweep.json"
    if not path.exists():
        raise VistasError(f"{out} holds no sweep (no sweep.json); start one with `vistas sweep run`")
    return spec_lib.from_dict(read_json(path), str(path))


def _alive(marker: pathlib.Path) -> bool:
    info = read_json(marker)
    if info.get("host") != socket.gethostname():
        return bool(info)  # another machine's run: trust the marker
    try:
        os.kill(int(info["pid"]), 0)
    except (KeyError, ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def _latest_step(workdir: pathlib.Path) -> int | None:
    ckpt = workdir / "checkpoints"
    steps = [int(p.name) for p in ckpt.iterdir() if p.name.isdigit()] if ckpt.is_dir() else []
    return max(steps) if steps else None


def member_status(out: pathlib.Path, member: Member) -> tuple[str, str]:
    """(status, detail): done, running, failed, partial (interrupted) or pending."""
    wd = out / member.id
    if is_finished(wd):
        return "done", ""
    if _alive(out / member.group / RUNNING):
        step = _latest_step(wd)
        return "running", f"checkpoint {step}" if step else ""
    if (wd / ERROR).exists():
        return "failed", (wd / ERROR).read_text().splitlines()[0]
    step = _latest_step(wd)
    if step is not None:
        return "partial", f"checkpoint {step}/{member.budget}; resumes on the next run"
    return "pending", ""


def status(out: str | pathlib.Path) -> list[dict[str, str]]:
    out = pathlib.Path(out)
    spec = load_out(out)
    return [{"member": m.id, "status": s, "detail": d}
            for m in spec.members() for s, d in [member_status(out, m)]]


__all__ = ["ACCOUNTING", "ERROR", "RUNNING", "is_finished", "load_out", "member_status", "read_json",
           "status", "write_spec"]
