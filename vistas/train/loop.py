"""The training loop: config -> data -> step -> state -> checkpoint/metrics -> evaluators.

``train(cfg, workdir)`` is the whole run, whatever its task. It resumes from the latest
checkpoint in ``workdir`` when the config there is the same run, writes ``config.json``,
``metrics.jsonl``, TensorBoard events (and the trackers of ``train.loggers``), checkpoints
and ``curves.png``, saves a checkpoint and exits cleanly on SIGTERM/SIGINT, and stops with a
clear message on a non-finite loss without touching the last good checkpoint.

The loop knows no task, evaluator or periodic action by name: the task
(``vistas.train.task``) says what to train on and how, the actions
(``vistas.train.actions``) what to do between steps, each on its own cadence.
"""

from __future__ import annotations

import json
import logging
import pathlib
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp

from vistas import checkpoint as ckpt_lib
from vistas import config as config_lib
from vistas import experiment, runs
from vistas.config import Config
from vistas.data import pipeline
from vistas.errors import VistasError
from vistas.evaluate import evaluators as evaluators_lib
from vistas.evaluate.classification import evaluate, evaluate_state, evaluate_workdir
from vistas.experiment import Experiment, build, build_model, build_sources, init_model
from vistas.files import advice, atomic_write, check_writable
from vistas.models import registry, vit
from vistas.optim import builder
from vistas.runs import final_params, load_config
from vistas.systems import mesh as mesh_lib
from vistas.systems import mfu, sharding, xla_cpu
from vistas.train import actions, initial, trackers
from vistas.train import step as step_lib
from vistas.train import task as task_lib
from vistas.train.actions import TrainingDiverged
from vistas.train.metrics import MetricsWriter, plot_curves
from vistas.train.progress import Progress, StopSignal
from vistas.train.supervised import batch_mixing


def train(cfg: Config, workdir: str | pathlib.Path, *, stop_after: int | None = None,
          quiet: bool = False) -> dict[str, Any]:
    """Trains (or resumes) the run described by ``cfg`` in ``workdir``; returns a summary.

    ``stop_after`` ends the session after that many steps in total (as if preempted), which
    tests use to split a run in two. The run holds ``workdir`` while it trains: a second run
    on it is refused (``runs.exclusive``).
    """
    config_lib.validate(cfg)
    if jax.process_index() == 0:  # only process 0 logs: a missing tracker package stops it here
        trackers.require(cfg.train.loggers)
    mesh = sharding.mesh_from_config(cfg.mesh)
    mesh_lib.check_batch_size(cfg.data.batch_size, mesh)
    mesh_lib.check_batch_size(cfg.data.eval_batch_size, mesh, "data.eval_batch_size")  # not after training
    with runs.exclusive(workdir):
        return _session(cfg, pathlib.Path(workdir), mesh, stop_after, quiet)


def _session(cfg: Config, workdir: pathlib.Path, mesh: Any, stop_after: int | None,
             quiet: bool) -> dict[str, Any]:
    """One session of the run: build, resume, step and act, summarise."""
    t = cfg.train
    exp = experiment.build(cfg, mesh=mesh)
    check_writable(workdir / "checkpoints")  # not a failed (and hung) checkpoint write later
    checkpointer = ckpt_lib.Checkpointer(workdir / "checkpoints", keep=t.keep, keep_every=t.keep_every)
    latest = _open_workdir(workdir, cfg, checkpointer, exp)
    say = (lambda s: None) if quiet else print
    task = task_lib.from_config(cfg, exp, workdir, mesh, resuming=latest is not None, say=say)
    data_it = _data_iterator(cfg, task)
    state, placement = _initial_state(cfg, exp, mesh, fresh=latest is None)
    if latest is not None:
        state, data_state = checkpointer.restore(latest, state)
        data_it.set_state(data_state)
    step_fn = _jit_step(cfg, exp, task, mesh, placement)
    start = int(state["step"])
    writer = MetricsWriter(workdir, enabled=jax.process_index() == 0, loggers=t.loggers, config=cfg.to_dict())
    writer.truncate_after(start)
    run = actions.Run(exp, workdir, mesh, writer, Progress(exp.total_steps, start, t.progress, quiet),
                      checkpointer, state, step=start, last_saved=latest)
    evaluators = evaluators_lib.from_config(exp, mesh) + task.evaluators(
        exp.every(t.eval_every, "train.eval_every"))
    every = [actions.LogMetrics(exp.every(t.log_every, "train.log_every"), cfg.data.batch_size),
             *actions.evaluations(evaluators),
             actions.Checkpoint(exp.every(t.ckpt_every, "train.ckpt_every"), t.keep_every)]
    _announce(cfg, exp, start, say)
    images = (actions.BadImageWatch(data_it, cfg.data.max_bad_fraction)
              if cfg.data.on_bad_image == "skip" else None)
    try:
        _steps(run, step_fn, data_it, task.frozen, every, actions.NonfiniteWatch(t.nonfinite, t.max_skipped),
               stop_after, images)
        if not run.results and run.last:  # a finished run, asked again
            for ev in evaluators:
                run.results.update(ev.fn(run.state)[0] if ev.summary else {})
    finally:
        _close(run.progress, data_it, checkpointer, writer)
    return _summary(run, workdir)


def _close(*parts: Any) -> None:
    """Closes every part. While an error is on its way out, a part that fails to close (a
    TensorBoard flush on the same full disk) is logged, never put in its place; otherwise
    the first failure is raised, an OS error as one line."""
    unwinding = sys.exc_info()[1] is not None
    first: BaseException | None = None
    for part in parts:
        try:
            part.close()
        except Exception as e:  # noqa: BLE001  (every part is closed whatever the others do)
            if unwinding:
                logging.getLogger("vistas").warning("while stopping, %s failed to close: %r", type(part).__name__, e)
            elif first is None:
                first = e
    if isinstance(first, OSError):
        raise VistasError(f"could not finish writing the run's files: {first.strerror or first}; "
                          f"{advice(first)}") from first
    if first is not None:
        raise first


def _steps(run: actions.Run, step_fn: Any, data_it: Any, frozen: Any, every: list,
           watch: actions.NonfiniteWatch, stop_after: int | None,
           images: actions.BadImageWatch | None = None) -> None:
    """Steps until the end of training or a stop; after each, the actions that are due."""
    exp, mesh = run.exp, run.mesh
    jitted, step_fn = step_fn, sharding.in_mesh(step_fn, mesh)  # the models' activation layouts
    with StopSignal() as stop:
        since = time.perf_counter()
        # each batch is put on the devices as soon as it is read, so its transfer runs while
        # the step before it computes (the step is dispatched asynchronously)
        batch = mesh_lib.put_batch(next(data_it), mesh) if run.step < exp.total_steps else None
        if batch is not None:  # FLOPs per step, for MFU
            run.compute = mfu.StepCompute.measure(jitted, mesh, run.state, batch, frozen,
                                                  dtype=vit.resolve_dtype(exp.cfg.model.dtype))
        xla_cpu.release_free_memory()  # what the compiler freed, before the step's buffers
        run.exclude(since)  # compilation is not training throughput
        while run.step < exp.total_steps:
            run.state, run.metrics = step_fn(run.state, batch, frozen)
            run.data_state = data_it.get_state()
            run.step += 1
            batch = mesh_lib.put_batch(next(data_it), mesh) if run.step < exp.total_steps else None
            watch.observe(run.metrics, run.step)  # on the device: no wait
            run.stopping = stop.agreed() or (stop_after is not None and run.step >= stop_after)
            due = [action for action in every if action.due(run)]
            if due:
                watch.check(run)  # a non-finite step ends the run before anything is written
                if images is not None:  # and so do too many bad images (data.on_bad_image=skip)
                    images.check(run)
            for action in due:
                action(run)
            if due and not run.stopping and stop.agreed():  # a signal during the actions
                run.stopping = True
                for action in every:
                    if action not in due and action.due(run):
                        action(run)
            run.progress.update(run.step)
            if run.stopping:
                if stop.received is not None:
                    run.progress.print(f"received signal {stop.received}: saved step {run.step}; "
                                       "run the same command to resume")
                return


def _open_workdir(workdir: pathlib.Path, cfg: Config, checkpointer: ckpt_lib.Checkpointer,
                  exp: Experiment) -> int | None:
    """The step to resume from (None: a new run); refuses a different run's workdir, then
    records the config and the dataset's class names."""
    latest = checkpointer.latest_step()
    runs.check_same_run(workdir, cfg)  # a run that saved no checkpoint yet is the same run too
    if jax.process_index() == 0:
        runs.write_config(workdir, cfg)
        runs.write_classes(workdir, exp.class_names)
    return latest


def _data_iterator(cfg: Config, task: task_lib.Task) -> Any:
    d = cfg.data
    source, transform = task.data()
    return pipeline.train_iterator(
        source, global_batch_size=d.batch_size, seed=cfg.train.seed, transform=transform,
        process_index=jax.process_index(), process_count=jax.process_count(), extra_keys=task.extra_keys,
        workers=d.workers, prefetch=d.prefetch, on_bad_image=d.on_bad_image)


def _initial_state(cfg: Config, exp: Experiment, mesh: Any, *, fresh: bool) -> tuple[dict, Any]:
    """The state a run starts from (its parameters from ``vistas.train.initial`` when the
    run is new), placed on the mesh, and its placement."""
    t = cfg.train
    params = initial.initial_params(cfg, exp.params) if fresh else exp.params
    state = step_lib.init_state(params, exp.tx, t.seed, ema=t.ema_decay > 0)
    if t.nonfinite == "skip":
        state["skipped"] = jnp.zeros((), jnp.int32)
    placement = sharding.state_shardings(state, state["params"], mesh, cfg.mesh.rules)
    return jax.device_put(state, placement), placement


def _jit_step(cfg: Config, exp: Experiment, task: task_lib.Task, mesh: Any, placement: Any) -> Any:
    t = cfg.train
    step = step_lib.make_train_step(
        exp.graphdef, exp.rest, exp.tx, task, exp.lr_at, use_rng=registry.needs_rng(exp.model),
        sam_rho=cfg.optim.sam_rho, nonfinite=t.nonfinite, accum_steps=t.grad_accum_steps,
        ema_decay=t.ema_decay,
        trainable=jax.tree.map(lambda label: label == builder.TRAIN,
                               builder.frozen_labels(exp.params, cfg.optim.frozen)))
    # the state is updated in place (on CPU too: an array an asynchronous checkpoint write
    # still reads is kept by JAX, not donated)
    return jax.jit(step, out_shardings=(placement, None), donate_argnums=(0,))


def _announce(cfg: Config, exp: Experiment, start: int, say: Any) -> None:
    d = cfg.data
    say(f"vistas: {cfg.model.name} ({registry.count_params(exp.model):,} params) on "
        f"{d.dataset}:{d.train_split} ({len(exp.train_source):,} examples), "
        f"{exp.total_steps} steps of batch {d.batch_size}, {len(jax.devices())} device(s); "
        + (f"resuming at step {start}" if start else "starting"))
    if jax.default_backend() == "cpu" and not xla_cpu.huge_pages_status()[0]:
        say("vistas: XLA's CPU buffers use 4 KiB pages here (the `vistas` command restarts with "
            "GLIBC_TUNABLES=glibc.malloc.hugetlb=1 where it helps; docs/performance.md)")


def _summary(run: actions.Run, workdir: pathlib.Path) -> dict[str, Any]:
    is_main = jax.process_index() == 0
    curves = plot_curves(workdir / "metrics.jsonl", workdir / "curves.png") if is_main else None
    summary = {
        "step": run.step, "total_steps": run.exp.total_steps, "finished": run.last,
        "interrupted": run.stopping, "workdir": str(workdir),
        "checkpoints": str(workdir / "checkpoints"), "curves": str(curves) if curves else None,
        **run.results,
    }
    if is_main:
        atomic_write(workdir / "summary.json", json.dumps(summary, indent=2))
    return summary


__all__ = ["Experiment", "TrainingDiverged", "batch_mixing", "build", "build_model", "build_sources",
           "evaluate", "evaluate_state", "evaluate_workdir", "final_params", "init_model", "load_config",
           "train"]
