"""Running a sweep: every member a plain vistas run, failures recorded, finished ones skipped.

``run(spec, out)`` runs each group (the members of one model and data size; in branch mode
the rsqrt source first, then its cooldown branches) in its own Python process, ``parallel``
at a time. Inside a group the members run one after the other; a member that raises is
recorded (``error.txt`` in its folder, status ``failed`` in the results) and the next one
starts; a group process that dies is recorded for each of its unfinished members.
Re-running the same command skips finished members and resumes interrupted ones from
their last checkpoint (the training loop's exact resume).

Per member folder, besides the run's own files: ``accounting.json`` (wall time summed
over sessions, devices, FLOPs per step and where that figure comes from, parameters) and
``error.txt`` when it failed. The sweep folder holds ``sweep.json`` (the resolved spec),
``logs/<group>.log``, and the results table ``results.csv`` / ``results.jsonl``
(``vistas.scaling.results``). Reading that folder (``load_out``, ``member_status``,
``status``) is ``vistas.scaling.folder``'s, shared with the results table; the names are
importable from here too.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import os
import pathlib
import shlex
import socket
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

from vistas.errors import ConfigError, VistasError
from vistas.files import atomic_write
from vistas.scaling import results
from vistas.scaling import spec as spec_lib
from vistas.scaling.folder import (
    ACCOUNTING,
    ERROR,
    RUNNING,
    is_finished,
    load_out,
    member_status,
    read_json,
    status,
    write_spec,
)
from vistas.scaling.spec import Group, SweepSpec

INTERRUPTED_STATUS = 130  # exit status of a group stopped by SIGTERM/SIGINT (checkpoint saved)


def _select(spec: SweepSpec, only: str | None) -> list[Group]:
    """The groups ``only`` names (a group, a model, or a member: then its group with just it)."""
    groups = spec.groups()
    if only is None:
        return groups
    chosen = [g for g in groups if only in (g.id, g.model.name)]
    chosen += [dataclasses.replace(g, members=tuple(m for m in g.members if m.id == only))
               for g in groups if any(m.id == only for m in g.members)]
    if not chosen:
        ids = [g.id for g in groups]
        raise ConfigError(f"--only {only!r} names no group, model or member of sweep {spec.name}; "
                          f"groups: {', '.join(ids)}")
    return chosen


# --- one group, in this process --------------------------------------------------------


def _update_accounting(workdir: pathlib.Path, **fields: Any) -> dict:
    path = workdir / ACCOUNTING
    acc = {**read_json(path), **fields}
    workdir.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps(acc, indent=2))
    return acc


def _record_failure(workdir: pathlib.Path, message: str, detail: str = "") -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    atomic_write(workdir / ERROR, message.strip() + "\n" + (f"\n{detail}" if detail else ""))


def _error_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}".splitlines()[0]


class Interrupted(VistasError):
    """A run stopped on SIGTERM/SIGINT after saving a checkpoint: the group stops too."""


def _train(cfg: Any, workdir: pathlib.Path, flops_cache: dict, say: Callable[[str], None]) -> None:
    """Trains (or resumes) one run and records its compute accounting."""
    import jax

    from vistas.models import registry
    from vistas.systems import flops
    from vistas.train import loop

    (workdir / ERROR).unlink(missing_ok=True)
    tick = time.perf_counter()
    try:
        summary = loop.train(cfg, workdir, quiet=True)
    finally:
        acc = read_json(workdir / ACCOUNTING)
        _update_accounting(workdir, wall_s=acc.get("wall_s", 0.0) + time.perf_counter() - tick,
                           sessions=acc.get("sessions", 0) + 1, devices=jax.device_count(),
                           device_kind=jax.devices()[0].device_kind)
    if not summary["finished"]:
        raise Interrupted(f"{workdir} stopped at step {summary['step']}; run the sweep again to resume")
    num_classes = int(loop.build_sources(cfg, with_train=False)[2])
    key = json.dumps([cfg.to_dict()["model"], cfg.data.batch_size, cfg.data.image_size,
                      cfg.data.channels, cfg.to_dict()["optim"], num_classes])
    if key not in flops_cache:
        import flax.nnx as nnx

        sf = flops.step_flops(cfg, num_classes)
        model = nnx.eval_shape(lambda: loop.build_model(cfg, num_classes))
        flops_cache[key] = {"flops_per_step": sf.flops, "flops_source": sf.source,
                            "analytic_flops_per_step": sf.analytic,
                            "params": registry.count_params(model)}
    _update_accounting(workdir, **flops_cache[key])
    say(f"  {workdir.name}: step {summary['step']}/{summary['total_steps']}, "
        + ", ".join(f"{k}={v:.4f}" for k, v in summary.items() if k.startswith("eval/") and k.endswith(("top1", "loss"))))


def run_group(spec: SweepSpec, group: Group, out: pathlib.Path,
              say: Callable[[str], None] = print) -> dict[str, str]:
    """Runs the members of ``group`` here, in order; returns {member id: status}."""
    from vistas.train import cooldown

    flops_cache: dict = {}
    status: dict[str, str] = {}
    marker = out / group.id / RUNNING
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
    try:
        source_error = None
        todo = [m for m in group.members if not is_finished(out / m.id)]
        for m in group.members:
            if m not in todo:
                status[m.id] = "done"
        if todo and group.source:
            src = out / group.source
            if not is_finished(src):
                say(f"{group.id}: source run ({group.source_steps} steps, rsqrt)")
                try:
                    _train(spec_lib.source_config(spec, group), src, flops_cache, say)
                except Interrupted:
                    raise
                except Exception as e:  # noqa: BLE001 - recorded, the sweep goes on
                    source_error = f"source run {group.source} failed: {_error_line(e)}"
                    _record_failure(src, _error_line(e), traceback.format_exc())
        for m in todo:
            workdir = out / m.id
            if source_error:
                _record_failure(workdir, source_error)
                status[m.id] = "failed"
                continue
            say(f"{m.id}: " + (f"cooldown branch from step {m.branch_step} for {m.cooldown_steps} steps"
                               if m.branch_step else f"{m.budget} steps"))
            try:
                if m.branch_step:
                    cfg = cooldown.branch(out / group.source, m.branch_step, m.cooldown_steps, workdir)
                else:
                    cfg = spec_lib.member_config(spec, m)
                _train(cfg, workdir, flops_cache, say)
                status[m.id] = "done"
            except Interrupted:
                raise
            except Exception as e:  # noqa: BLE001 - recorded, the next member starts
                _record_failure(workdir, _error_line(e), traceback.format_exc())
                say(f"{m.id}: FAILED: {_error_line(e)}")
                status[m.id] = "failed"
    finally:
        marker.unlink(missing_ok=True)
    return status


# --- the whole sweep -----------------------------------------------------------------------


def _cli() -> list[str]:
    return [sys.executable, "-m", "vistas.cli"]


def _log_name(group: Group) -> str:
    return group.id.replace("/", "_") + ".log"


def _spawn_group(spec_arg: str, out: pathlib.Path, group: Group, spec: SweepSpec) -> str:
    """Runs one group in a child process; records members the child left unrecorded."""
    log = out / "logs" / _log_name(group)
    log.parent.mkdir(parents=True, exist_ok=True)
    cmd = [*_cli(), "sweep", "run", spec_arg, "--out", str(out), "--only", group.id, "--in-process"]
    tick = time.perf_counter()
    with open(log, "a") as f:
        f.write(f"$ {shlex.join(cmd)}\n")
        f.flush()
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL).returncode
    if rc not in (0, INTERRUPTED_STATUS):  # interrupted members stay "partial"
        tail = [line for line in log.read_text().splitlines() if line.strip()][-1:] or ["(no output)"]
        for m in group.members:
            wd = out / m.id
            if not is_finished(wd) and not (wd / ERROR).exists():
                _record_failure(wd, f"the group process exited with status {rc}: {tail[0]}",
                                f"log: {log}")
    (out / group.id / RUNNING).unlink(missing_ok=True)
    states = [member_status(out, m)[0] for m in group.members]
    return f"{group.id}: {', '.join(f'{s} {states.count(s)}' for s in sorted(set(states)))} " \
           f"({time.perf_counter() - tick:.0f} s)"


def run(spec_arg: str, out: str | pathlib.Path, *, parallel: int = 1, only: str | None = None,
        in_process: bool = False, say: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Runs the sweep ``spec_arg`` (a spec file or preset name) into ``out``; returns the
    results table (also written to ``out/results.csv`` and ``out/results.jsonl``)."""
    if parallel < 1:
        raise ConfigError(f"--parallel {parallel} must be at least 1")
    spec = spec_lib.load(spec_arg)
    out = pathlib.Path(out).absolute()
    write_spec(spec, out)
    groups = _select(spec, only)
    if in_process:
        for g in groups:
            run_group(spec, g, out, say)
        return results.collect(out)
    path = pathlib.Path(spec_arg)
    spec_arg = str(path.absolute()) if path.suffix in (".toml", ".json") else spec_arg
    todo = [g for g in groups if not all(is_finished(out / m.id) for m in g.members)]
    say(f"sweep {spec.name}: {len(spec.members())} members in {len(spec.groups())} groups; "
        f"{len(groups) - len(todo)} group(s) already finished, running {len(todo)} "
        f"({parallel} at a time); logs in {out / 'logs'}")
    with concurrent.futures.ThreadPoolExecutor(parallel) as pool:
        futures = [pool.submit(_spawn_group, spec_arg, out, g, spec) for g in todo]
        for i, fut in enumerate(concurrent.futures.as_completed(futures), 1):
            say(f"[{i}/{len(todo)}] {fut.result()}")
    rows = results.collect(out)
    failed = [r for r in rows if r["status"] == "failed"]
    say(f"results: {out / 'results.csv'} ({len(rows) - len(failed)} done, {len(failed)} failed)")
    return rows


# --- commands for a cluster -------------------------------------------------------------


def commands(spec_arg: str, out: str | pathlib.Path) -> tuple[list[str], str]:
    """One shell command per member (in an order that trains each source before its
    branches), and a SLURM array script with one task per group; both are also written
    to ``out/commands.txt`` and ``out/slurm_array.sh``."""
    spec = spec_lib.load(spec_arg)
    out = pathlib.Path(out).absolute()
    path = pathlib.Path(spec_arg)
    spec_arg = str(path.absolute()) if path.suffix in (".toml", ".json") else spec_arg
    base = ["vistas", "sweep", "run", spec_arg, "--out", str(out)]
    lines = [shlex.join([*base, "--only", m.id, "--in-process"]) for m in spec.members()]
    groups = [g.id for g in spec.groups()]
    script = "\n".join([
        "#!/bin/bash",
        f"#SBATCH --job-name=vistas-{spec.name}",
        f"#SBATCH --array=0-{len(groups) - 1}",
        f"#SBATCH --output={out}/logs/slurm_%a.log",
        f"# sweep {spec.name}: {len(spec.members())} members in {len(groups)} groups, one task per group",
        "# (in branch mode a group's members share one source run, so they run in one task).",
        "# Collect the results afterwards: vistas sweep status " + shlex.quote(str(out)),
        "SWEEP_GROUPS=(" + " ".join(shlex.quote(g) for g in groups) + ")",
        shlex.join([*base, "--in-process"]) + ' --only "${SWEEP_GROUPS[$SLURM_ARRAY_TASK_ID]}"',
        "",
    ])
    write_spec(spec, out)
    atomic_write(out / "commands.txt", "\n".join(lines) + "\n")
    atomic_write(out / "slurm_array.sh", script)
    return lines, script


__all__ = ["INTERRUPTED_STATUS", "Interrupted", "commands", "is_finished", "load_out", "member_status", "run", "run_group", "status"]
