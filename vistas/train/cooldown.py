"""Train once, cool down many times ("Scaling Vision Transformers", Section 3.4).

A run with an rsqrt (or constant) schedule has no fixed end. A cooldown BRANCH takes its
checkpoint at step S and continues it for N steps while the learning rate is annealed
linearly to zero, in a new workdir:

    multiplier(t) = src(t)                         t < S    (the source run's own schedule)
    multiplier(t) = src(t) · (S + N - t) / N       S <= t < S + N

which is the schedule of one run of S + N steps with `schedule.cooldown = N`: a branch is
exactly the run that would have been trained with that length from the start, at the cost
of N steps. The branch's config is the source's with `train.duration = S + N`,
`schedule.cooldown = N`, warmup and timescale resolved to steps, and
`train.branched_from = "SRC@S"`. Its first checkpoint is a byte copy of the source's
checkpoint S (parameters, optimizer state, step, RNG and the data iterator's position), and
its `metrics.jsonl` starts with the source's rows up to S. The source is only read.

Branch points must be checkpoints the source kept: train it with `train.keep_every=M`.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vistas import checkpoint as ckpt_lib
from vistas import config as config_lib
from vistas import experiment, runs
from vistas.config import Config
from vistas.errors import ConfigError
from vistas.files import atomic_write
from vistas.optim import schedules
from vistas.train import loop


def branch_config(src_cfg: Config, src: str | pathlib.Path, step: int, steps: Any,
                  steps_per_epoch: float) -> Config:
    """The config of a cooldown branch of `src_cfg` (run in `src`) at `step`, for `steps` steps.

    `steps` is a duration: steps, epochs ('1ep'), examples, or percent OF `step` ('20%').
    Raises ConfigError when the source's schedule up to `step` cannot be followed exactly
    (a decay that depends on the run's length, or `step` inside the source's own cooldown).
    """
    resolved = experiment.schedule_of(src_cfg, steps_per_epoch)
    src_fn, src_total = resolved.fn, resolved.total_steps
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or not 0 < step <= src_total:
        raise ConfigError(
            f"branch step {step!r} is invalid; use a step in 1..{src_total} of the source run"
        )
    step = int(step)
    n = schedules.parse_duration(steps, name="cooldown steps", steps_per_epoch=steps_per_epoch,
                                 batch_size=src_cfg.data.batch_size, total_steps=step)
    if n < 1:
        raise ConfigError(f"cooldown steps={steps!r} gives {n} steps; use at least 1")
    cfg = Config.from_dict(src_cfg.to_dict())
    cfg.train.duration = step + n
    cfg.schedule.warmup = resolved.warmup
    cfg.schedule.timescale = resolved.timescale
    cfg.schedule.cooldown = n
    cfg.train.branched_from = f"{pathlib.Path(src).absolute()}@{step}"
    config_lib.validate(cfg)
    dst_fn = experiment.schedule_of(cfg, steps_per_epoch).fn
    t = jnp.arange(step)
    if not np.array_equal(np.asarray(src_fn(t)), np.asarray(dst_fn(t))):
        s = src_cfg.schedule
        if s.decay not in ("rsqrt", "constant"):
            why = (f"its decay {s.decay!r} depends on the run's length; train the source with "
                   "schedule.decay='rsqrt' (or 'constant') to branch cooldowns from it")
        else:
            why = (f"step {step} lies in the source's own cooldown "
                   f"(its last {resolved.cooldown} steps); branch from an earlier step")
        raise ConfigError(f"cannot branch at step {step}: the schedule would differ before it; "
                          + why)
    return cfg


def _copy_metrics(src: pathlib.Path, dst: pathlib.Path, step: int) -> None:
    path = src / "metrics.jsonl"
    if not path.exists():
        return
    rows = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a row cut short by a kill
        if isinstance(row, dict) and row.get("step", step + 1) <= step:
            rows.append(json.dumps(row))
    atomic_write(dst / "metrics.jsonl", "".join(r + "\n" for r in rows))


def _inside(path: pathlib.Path, parent: pathlib.Path) -> bool:
    path, parent = path.resolve(), parent.resolve()
    return path == parent or parent in path.parents


def branch(src: str | pathlib.Path, step: int, steps: Any,
           dst: str | pathlib.Path) -> Config:
    """Prepares the cooldown branch `dst` of run `src` at `step` (no training); its config.

    Writes `dst/config.json`, `dst/checkpoints/<step>` (a copy of the source's) and the
    source's metrics up to `step`. If `dst` already holds this branch, it is left as it is
    (training it again resumes); a different run there is refused. `src` is never written.
    """
    src, dst = pathlib.Path(src).absolute(), pathlib.Path(dst).absolute()
    if _inside(dst, src) or _inside(src, dst):
        raise ConfigError(f"the branch directory {dst} must lie outside the source run {src} "
                          "(and not contain it): the source is never written")
    src_cfg = runs.load_config(src)
    train_source, _, _ = experiment.build_sources(src_cfg, with_train=True)
    cfg = branch_config(src_cfg, src, step, steps, len(train_source) / src_cfg.data.batch_size)
    ckpt_dir = dst / "checkpoints"
    if ckpt_dir.is_dir() and any(p.name.isdigit() for p in ckpt_dir.iterdir()):
        return cfg  # branched before: training resumes it (and refuses a different run)
    if jax.process_index() == 0:
        dst.mkdir(parents=True, exist_ok=True)
        ckpt_lib.copy_step(src / "checkpoints", step, ckpt_dir)
        _copy_metrics(src, dst, step)
        runs.write_config(dst, cfg)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("vistas cooldown branch")
    return cfg


def branch_dir(dst: str | pathlib.Path, step: int, several: bool) -> pathlib.Path:
    """Where the branch at `step` goes: `dst` itself, or `dst/from_<step>` for several."""
    return pathlib.Path(dst) / f"from_{step}" if several else pathlib.Path(dst)


def cooldown(src: str | pathlib.Path, from_steps: Sequence[int], steps: Any,
             dst: str | pathlib.Path, *, quiet: bool = False) -> list[dict[str, Any]]:
    """Branches `src` at each of `from_steps`, cools each down over `steps`, evaluates it.

    One branch point: the branch is `dst`; several: `dst/from_<step>` each. Returns the
    training summaries (with `branched_from` and `from_step` added).
    """
    if not from_steps:
        raise ConfigError("give at least one branch step (--from-step S [S ...])")
    if len(set(from_steps)) != len(from_steps):
        raise ConfigError(f"branch steps {list(from_steps)} repeat a step; give each once")
    summaries = []
    for step in from_steps:
        workdir = branch_dir(dst, step, len(from_steps) > 1)
        cfg = branch(src, step, steps, workdir)
        summary = loop.train(cfg, workdir, quiet=quiet)
        summaries.append({"from_step": step, "branched_from": cfg.train.branched_from, **summary})
    return summaries


__all__ = ["branch", "branch_config", "branch_dir", "cooldown"]
