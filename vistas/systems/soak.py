"""Kill-and-resume soak: does a run that is SIGKILLed again and again end where an
uninterrupted one does?

``soak`` trains a reference run (a ``vistas train`` subprocess), then runs the same command
again as subprocesses and SIGKILLs each at a seeded random moment: while it starts
(no step taken yet), at a random step, or while a checkpoint is being written (orbax's
``<step>.orbax-checkpoint-tmp`` directory exists). After every kill it checks that the
checkpoint left behind is complete and loads, and that the next session says it resumes
from exactly that step. When a session finishes, the final parameters and every logged
training loss must equal the reference's bit for bit. ``benchmarks/soak.py`` is the
command-line front end; ``tests/reliability/test_kill.py`` runs a short soak.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pathlib
import random
import re
import signal
import subprocess
import sys
import time
from typing import Any

import numpy as np

from vistas import checkpoint as ckpt_lib
from vistas import config as config_lib
from vistas import presets
from vistas.errors import VistasError

MODES = ("startup", "step", "checkpoint")
TMP_SUFFIX = ".orbax-checkpoint-tmp"


@dataclasses.dataclass
class Kill:
    mode: str  # what the moment was chosen by (MODES)
    at_step: int | None  # last step logged before the kill
    committed: int | None  # last complete checkpoint after the kill
    mid_write: bool  # a checkpoint was being written when the signal was sent
    resumed_at: int | None = None  # the step the next session said it resumed at


def committed_steps(ckpt_dir: pathlib.Path) -> list[int]:
    """Checkpoints orbax has committed (renamed to their bare step number)."""
    if not ckpt_dir.is_dir():
        return []
    return sorted(int(p.name) for p in ckpt_dir.iterdir() if p.is_dir() and p.name.isdigit())


def writing(ckpt_dir: pathlib.Path, after: int) -> bool:
    """Whether a checkpoint of a step past ``after`` is being written (its temporary
    directory exists; one left by an earlier kill is of an earlier step)."""
    with contextlib.suppress(FileNotFoundError):
        return any(p.name.endswith(TMP_SUFFIX) and int(p.name.split(".")[0]) > after
                   for p in ckpt_dir.iterdir())
    return False


def last_logged_step(metrics: pathlib.Path) -> int:
    """The step of the last complete line of ``metrics.jsonl`` (0 when there is none)."""
    with contextlib.suppress(FileNotFoundError):
        lines = metrics.read_text().splitlines()
        for line in reversed(lines):
            m = re.match(r'\{"step": (\d+),.*\}$', line)
            if m:
                return int(m.group(1))
    return 0


def _params(cfg: config_lib.Config, workdir: pathlib.Path) -> list[np.ndarray]:
    import jax

    from vistas import runs

    _, params, _ = runs.final_params(workdir, cfg)
    return [np.asarray(x) for x in jax.tree.leaves(params)]


def _check_loads(cfg: config_lib.Config, workdir: pathlib.Path, step: int) -> None:
    """Restores checkpoint ``step`` of ``workdir`` (parameters, optimizer state, data state)."""
    import jax

    from vistas import experiment
    from vistas.train import step as step_lib

    exp = experiment.build(cfg, with_train=False)
    state = step_lib.init_state(exp.params, exp.tx, cfg.train.seed)
    if cfg.train.nonfinite == "skip":
        state["skipped"] = np.zeros((), np.int32)
    c = ckpt_lib.Checkpointer(workdir / "checkpoints", read_only=True)
    with contextlib.closing(c):
        restored, data = c.restore(step, jax.tree.map(np.asarray, state))
    if int(restored["step"]) != step or not data:
        raise VistasError(f"checkpoint {step} of {workdir} restored step {int(restored['step'])}")


def _losses(workdir: pathlib.Path) -> dict[int, float]:
    from vistas.train.metrics import read_metrics

    return {r["step"]: r["train/loss"] for r in read_metrics(workdir / "metrics.jsonl") if "train/loss" in r}


def _session(cmd: list[str], env: dict, log_path: pathlib.Path) -> subprocess.Popen:
    with open(log_path, "w") as out:
        return subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)


def _kill_when(proc: subprocess.Popen, ready, timeout: float) -> bool:
    """Polls ``ready()`` every millisecond; SIGKILLs ``proc`` when it holds. False when the
    process ended first."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None:
        if ready():
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            return True
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            raise VistasError(f"soak: a session ran past {timeout:.0f} s without reaching its kill moment")
        time.sleep(0.001)
    return False


def _moment(mode: str | None, rng: random.Random, run: pathlib.Path, base: int, total: int,
            kills_left: int):
    """A predicate that becomes true at the kill moment: ``delay`` seconds after the start, a
    step logged past ``base`` chosen at random, or a checkpoint write past ``base``."""
    if mode == "startup":
        delay, t_start = rng.uniform(0.0, 3.0), time.monotonic()
        return lambda: time.monotonic() - t_start > delay
    if mode == "step":
        left = total - base
        target = base + rng.randint(1, max(1, min(left - 1, 2 * left // (kills_left + 1))))
        return lambda: last_logged_step(run / "metrics.jsonl") >= target
    if mode == "checkpoint":
        return lambda: writing(run / "checkpoints", base)
    return lambda: False


def soak(preset: str, overrides: list[str], workdir: str | pathlib.Path, *, kills: int = 5,
         seed: int = 0, env: dict | None = None, timeout: float = 600.0,
         say=print) -> dict[str, Any]:
    """Runs the soak described in the module docstring; returns a report with ``kills``
    (one :class:`Kill` each), ``equal`` (final parameters and losses match the reference)
    and ``lost`` (kills after which a resume did not start from the last complete
    checkpoint)."""
    from vistas import experiment

    workdir = pathlib.Path(workdir)
    overrides = [*overrides, "train.log_every=1"]  # kill moments are chosen by logged step
    cfg = config_lib.apply_overrides(presets.get(preset), list(overrides))
    total = experiment.build(cfg).total_steps
    say(f"soak: {preset} for {total} steps, {kills} kills, seed {seed}")
    t0 = time.monotonic()
    env = {**os.environ, **(env or {})}
    workdir.mkdir(parents=True, exist_ok=True)

    def command(run: pathlib.Path) -> list[str]:
        return [sys.executable, "-m", "vistas.cli", "train", "--preset", preset, "--workdir", str(run),
                "--set", *overrides, "train.progress=False"]

    reference = _session(command(workdir / "reference"), env, workdir / "reference.log")
    if reference.wait() != 0:
        raise VistasError(f"soak: the reference run failed (status {reference.returncode}); "
                          f"see {workdir / 'reference.log'}")
    say(f"soak: reference run done in {time.monotonic() - t0:.0f} s")

    run = workdir / "killed"
    ckpt_dir = run / "checkpoints"
    cmd = command(run)
    rng = random.Random(seed)
    modes = [MODES[i % len(MODES)] for i in range(kills)]
    rng.shuffle(modes)
    done: list[Kill] = []
    session = 0
    while True:
        session += 1
        log = workdir / f"session{session}.log"
        proc = _session(cmd, env, log)
        mode = modes[len(done)] if len(done) < kills else None
        start = (committed_steps(ckpt_dir) or [0])[-1]
        base = max(start, last_logged_step(run / "metrics.jsonl"))  # rows past `start` are redone
        ready = _moment(mode, rng, run, base, total, kills - len(done))
        killed = _kill_when(proc, ready, timeout)
        # the session that just ran had to resume from the last complete checkpoint (one
        # killed while starting may not have said where; the next one that does answers)
        m = re.search(r"resuming at step (\d+)|starting\b", log.read_text())
        if m:
            for k in done:
                if k.resumed_at is None:
                    k.resumed_at = int(m.group(1) or 0)
        if not killed:
            if proc.returncode != 0:
                raise VistasError(f"soak: session {session} failed (status {proc.returncode}); "
                                  f"see {log}")
            break
        mid_write = writing(ckpt_dir, base)
        steps = committed_steps(ckpt_dir)
        kill = Kill(mode, last_logged_step(run / "metrics.jsonl"), steps[-1] if steps else None, mid_write)
        if kill.committed is not None:
            _check_loads(cfg, run, kill.committed)
        done.append(kill)
        say(f"soak: kill {len(done)} ({mode}) after step {kill.at_step}, "
            f"{'during a checkpoint write, ' if mid_write else ''}last complete checkpoint "
            f"{kill.committed}")

    lost = [k for k in done if k.resumed_at != (k.committed or 0)]
    ref, got = _params(cfg, workdir / "reference"), _params(cfg, run)
    same_params = len(ref) == len(got) and all(np.array_equal(a, b) for a, b in zip(ref, got, strict=True))
    same_losses = _losses(workdir / "reference") == _losses(run)
    report = {
        "preset": preset, "overrides": list(overrides), "steps": total, "seed": seed,
        "kills": done, "sessions": session, "mid_write_kills": sum(k.mid_write for k in done),
        "lost": len(lost), "equal_params": same_params, "equal_losses": same_losses,
        "equal": same_params and same_losses, "seconds": time.monotonic() - t0,
    }
    say(f"soak: {len(done)} kills ({report['mid_write_kills']} during a checkpoint write), "
        f"{len(lost)} resumes not from the last complete checkpoint; final parameters "
        f"{'equal' if same_params else 'DIFFER'}, losses {'equal' if same_losses else 'DIFFER'} "
        f"({report['seconds']:.0f} s)")
    return report
