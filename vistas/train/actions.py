"""Periodic actions: what happens between training steps, each on its own cadence.

The loop runs the step and then every action that is due; it knows none of them by name.
An action has ``due(run) -> bool`` and ``__call__(run)``; ``run`` (a :class:`Run`) holds
what the loop holds: the state, the last step's metrics (still on the device), the data
iterator's position, the metrics writer and the progress display. Only actions fetch
device values, so steps where nothing is due never wait for the device.

- :class:`LogMetrics` writes the training metrics, throughput and MFU;
- :class:`Evaluate` runs one :class:`Evaluator` (classification, distillation agreement,
  few-shot) and records its results;
- :class:`Checkpoint` saves the state (and keeps branch points for cooldowns).

Before any action runs, the loop checks the non-finite watch (:class:`NonfiniteWatch`):
the step of the first non-finite loss, gradient or update is recorded on the device, so
the run stops at exactly that step no matter how rarely it looks. Under
``data.on_bad_image=skip`` it then checks the bad-image watch (:class:`BadImageWatch`):
the images skipped so far (``data/skipped_images`` in the log rows) against their cap.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
import time
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from vistas.errors import DataError, VistasError
from vistas.evaluate.evaluators import Evaluator
from vistas.train import step as step_lib


class TrainingDiverged(VistasError):
    """The loss became NaN or infinite."""


@dataclasses.dataclass
class Run:
    """What the loop holds, as the actions see it."""

    exp: Any
    workdir: pathlib.Path
    mesh: Any
    writer: Any
    progress: Any
    checkpointer: Any
    state: Any
    step: int
    last_saved: int | None
    metrics: dict | None = None
    data_state: Any = None
    results: dict = dataclasses.field(default_factory=dict)  # the last evaluation, for the summary
    stopping: bool = False
    compute: Any = None  # FLOPs per step (MFU), when measured
    skipped_images: int | None = None  # bad images skipped so far, all processes (on_bad_image=skip)
    tick: float = dataclasses.field(default_factory=time.perf_counter)
    tick_step: int = 0
    excluded: float = 0.0  # seconds since ``tick`` spent outside training steps

    def __post_init__(self):
        self.tick_step = self.step

    @property
    def last(self) -> bool:
        return self.step >= self.exp.total_steps

    def exclude(self, since: float) -> None:
        """The time since ``since`` (a ``time.perf_counter()``) was spent outside training
        steps (compiling, evaluating, saving) and does not count in the throughput."""
        self.excluded += time.perf_counter() - since


class Action(Protocol):
    def due(self, run: Run) -> bool: ...

    def __call__(self, run: Run) -> None: ...


def periodic(run: Run, every: int) -> bool:
    return run.step % every == 0 or run.last


@dataclasses.dataclass
class Evaluate:
    """Runs the evaluators of one row (``Evaluator.row``) and writes their results together."""

    evaluators: list[Evaluator]

    def due(self, run: Run) -> bool:
        return periodic(run, self.evaluators[0].every)

    def __call__(self, run: Run) -> None:
        since = time.perf_counter()
        results: dict[str, float] = {}
        plain: dict[str, float] = {}
        for ev in self.evaluators:
            metrics, text = ev.fn(run.state)
            results.update(metrics)
            if ev.summary:
                run.results.update(metrics)
            if text is None:
                plain.update(metrics)
            else:
                run.progress.print(f"step {run.step}: {ev.name}\n{text}")
        run.writer.write(run.step, results)
        if plain:
            run.progress.print(f"step {run.step}: " + "  ".join(f"{k}={v:.4f}" for k, v in plain.items()))
        run.exclude(since)


def evaluations(evaluators: list[Evaluator]) -> list[Evaluate]:
    """One :class:`Evaluate` per row, in the order the rows first appear."""
    rows: dict[str, list[Evaluator]] = {}
    for ev in evaluators:
        rows.setdefault(ev.row, []).append(ev)
    return [Evaluate(row) for row in rows.values()]


@dataclasses.dataclass
class LogMetrics:
    """Writes the step's training metrics with throughput, MFU and epoch."""

    every: int
    batch_size: int

    def due(self, run: Run) -> bool:
        return periodic(run, self.every)

    def __call__(self, run: Run) -> None:
        row = {k: float(v) for k, v in jax.device_get(run.metrics).items()}  # waits for the step
        now = time.perf_counter()
        steps_per_sec = (run.step - run.tick_step) / max(now - run.tick - run.excluded, 1e-9)
        row["train/examples_per_sec"] = steps_per_sec * self.batch_size
        if run.compute is not None:
            row.update(run.compute.metrics(steps_per_sec))
        row["train/epoch"] = run.step / run.exp.steps_per_epoch
        if run.skipped_images is not None:
            row["data/skipped_images"] = run.skipped_images
        run.tick, run.tick_step, run.excluded = now, run.step, 0.0
        run.writer.write(run.step, row)
        eta = (run.exp.total_steps - run.step) / max(steps_per_sec, 1e-9)
        run.progress.update(run.step, f"loss {row['train/loss']:.4f}  {row['train/examples_per_sec']:.0f} img/s  "
                                      f"eta {eta / 60:.1f} min", log_line=True)


def diverged(what: str, last_saved: int | None, ckpt_dir: pathlib.Path) -> str:
    kept = (f"the last good checkpoint (step {last_saved}) is kept in {ckpt_dir}"
            if last_saved is not None else "no checkpoint had been saved")
    return f"{what}; stopped without saving; {kept}; lower optim.lr or check the data"


_all_finite = jax.jit(step_lib.all_finite)


@dataclasses.dataclass
class Checkpoint:
    """Saves the state every ``every`` steps, at the kept branch points (``keep_every``), at
    the end and when the run stops; never a state with a non-finite value."""

    every: int
    keep_every: int | None

    def due(self, run: Run) -> bool:
        kept = self.keep_every is not None and run.step % self.keep_every == 0
        return periodic(run, self.every) or kept or run.stopping

    def __call__(self, run: Run) -> None:
        if not bool(_all_finite(run.state)):  # a finite loss can come with non-finite updates
            raise TrainingDiverged(diverged(
                f"parameters or optimizer state are non-finite at step {run.step}", run.last_saved,
                run.checkpointer.directory))
        since = time.perf_counter()
        run.checkpointer.save(run.step, run.state, run.data_state)
        run.last_saved = run.step
        run.exclude(since)


class NonfiniteWatch:
    """Records on the device the first step that ends the run: under ``train.nonfinite=stop``
    the first step with a non-finite loss, gradient or update; under ``skip`` the first step
    after which more than ``train.max_skipped`` steps were skipped. ``check`` (one fetch)
    raises :class:`TrainingDiverged` naming that exact step; the loop calls it before every
    action, so no checkpoint or log row is written after it."""

    def __init__(self, policy: str, max_skipped: int):
        self.policy, self.max_skipped = policy, max_skipped
        # [fatal step, its loss, its finite flag, skipped count then]; step -1: none yet
        self.record = jnp.array([-1.0, 0.0, 1.0, 0.0], jnp.float32)
        self.reported_skips = None

        def update(record, metrics, step):
            finite = metrics["train/finite"] > 0
            fatal = ~finite if policy == "stop" else metrics["train/skipped"] > max_skipped
            now = jnp.stack([step.astype(jnp.float32), metrics["train/loss"].astype(jnp.float32),
                             metrics["train/finite"].astype(jnp.float32),
                             metrics.get("train/skipped", jnp.zeros((), jnp.int32)).astype(jnp.float32)])
            return jnp.where((record[0] < 0) & fatal, now, record)

        self._update = jax.jit(update)

    def observe(self, metrics: dict, step: int) -> None:
        """After step ``step`` (counted from 1); asynchronous."""
        self.record = self._update(self.record, metrics, jnp.asarray(step, jnp.int32))

    def check(self, run: Run) -> None:
        step, loss, _, skipped = (float(x) for x in jax.device_get(self.record))
        if step >= 0:
            what = (f"loss is {loss}" if not math.isfinite(loss)
                    else f"gradients or updated parameters are non-finite (loss {loss:.4g})")
            if self.policy == "stop":
                what = f"{what} at step {int(step)}"
            else:
                what = (f"{int(skipped)} non-finite steps skipped, more than "
                        f"train.max_skipped={self.max_skipped} ({what} at step {int(step)})")
            raise TrainingDiverged(diverged(what, run.last_saved, run.checkpointer.directory))
        if self.policy == "skip" and "skipped" in run.state:
            skipped = int(run.state["skipped"])
            if self.reported_skips is not None and skipped > self.reported_skips:
                run.progress.print(f"step {run.step}: {skipped} non-finite steps skipped so far "
                                   f"(train.max_skipped={self.max_skipped})")
            self.reported_skips = skipped


class BadImageWatch:
    """Under ``data.on_bad_image=skip``: the training images skipped so far, counted by the
    data iterator of each process as it hands out batches and kept in its checkpointed
    state. ``check`` (before the actions, when any is due) puts the count of all processes
    in ``run.skipped_images`` (one all-gather on several processes; none on one), says when
    it grew, and raises a one-line :class:`DataError` once it is more than
    ``max_fraction`` of the examples drawn, counted over at least one epoch (so a bad image
    early in a run is not a large fraction of a few batches)."""

    def __init__(self, data_it: Any, max_fraction: float):
        self.data_it, self.max_fraction = data_it, max_fraction
        self.reported = data_it.skipped_images  # restored with the data state: said before

    def count(self, run: Run) -> int:
        local = int((run.data_state or {}).get("skipped_images", 0))
        if jax.process_count() == 1:
            return local
        from jax.experimental import multihost_utils

        return int(np.sum(multihost_utils.process_allgather(np.array([local], np.int32))))

    def check(self, run: Run) -> None:
        skipped = run.skipped_images = self.count(run)
        n, drawn = self.data_it.num_examples, run.step * self.data_it.global_batch_size
        latest = f"; the latest: {self.data_it.last_bad_image}" if self.data_it.last_bad_image else ""
        if skipped > self.max_fraction * max(drawn, n):
            of = f"the {drawn:,} examples drawn" if drawn >= n else f"one epoch ({n:,} examples)"
            raise DataError(f"{skipped:,} bad image{'s' * (skipped != 1)} skipped by step {run.step}, more than "
                            f"data.max_bad_fraction={self.max_fraction:g} of {of}{latest}; "
                            "`vistas data verify PATH` lists every bad image")
        if skipped > self.reported:
            run.progress.print(f"step {run.step}: {skipped:,} bad image{'s' * (skipped != 1)} skipped so far "
                               f"(data.on_bad_image=skip){latest}")
        self.reported = skipped


__all__ = ["Action", "BadImageWatch", "Checkpoint", "Evaluate", "Evaluator", "LogMetrics", "NonfiniteWatch", "Run",
           "TrainingDiverged", "evaluations"]
