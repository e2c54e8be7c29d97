"""The supervised training loop: config -> data -> step -> state -> checkpoint/metrics -> eval.

``train(cfg, workdir)`` is the whole run. It resumes from the latest checkpoint in
``workdir`` when the config there is the same run, writes ``config.json``,
``metrics.jsonl``, TensorBoard events, checkpoints and ``curves.png``, saves a checkpoint
and exits cleanly on SIGTERM/SIGINT, and stops with a clear message on a non-finite loss
without touching the last good checkpoint.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import pathlib
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from vistas import checkpoint as ckpt_lib
from vistas import config as config_lib
from vistas.config import Config
from vistas.data import mixing, pipeline, randaugment, sources, transforms
from vistas.errors import ConfigError, VistasError
from vistas.evaluate import calibration
from vistas.models import registry
from vistas.optim import builder, schedules
from vistas.systems import mesh as mesh_lib
from vistas.systems import mfu, sharding, xla_cpu
from vistas.train import distill, losses
from vistas.train import step as step_lib
from vistas.train.metrics import MetricsWriter, plot_curves, write_file


class TrainingDiverged(VistasError):
    """The loss became NaN or infinite."""


def _diverged(what: str, last_saved: int | None, ckpt_dir: pathlib.Path) -> str:
    kept = (f"the last good checkpoint (step {last_saved}) is kept in {ckpt_dir}"
            if last_saved is not None else "no checkpoint had been saved")
    return f"{what}; stopped without saving; {kept}; lower optim.lr or check the data"


_all_finite_jit = jax.jit(step_lib.all_finite)


def _all_finite(tree: Any) -> bool:
    """Whether every floating-point leaf of ``tree`` is finite (checked before each save)."""
    return bool(_all_finite_jit(tree))


def _nonfinite_step(t: Any, metrics: dict, step: int, last_saved: int | None,
                    ckpt_dir: pathlib.Path, progress: Any, quiet: bool) -> None:
    """A step whose loss, gradients or updated parameters were NaN or infinite: stop
    (``train.nonfinite=stop``), or, when it was skipped, report it and stop once more than
    ``train.max_skipped`` steps have been skipped."""
    loss = float(metrics["train/loss"])
    what = (f"loss is {loss}" if not math.isfinite(loss)
            else f"gradients or updated parameters are non-finite (loss {loss:.4g})")
    if t.nonfinite == "stop":
        raise TrainingDiverged(_diverged(f"{what} at step {step}", last_saved, ckpt_dir))
    skipped = int(metrics["train/skipped"])
    if skipped > t.max_skipped:
        raise TrainingDiverged(_diverged(
            f"{skipped} non-finite steps skipped, more than train.max_skipped={t.max_skipped} "
            f"({what} at step {step})", last_saved, ckpt_dir))
    if not quiet:
        progress.print(f"step {step}: {what}; step skipped ({skipped} so far, "
                       f"train.max_skipped={t.max_skipped})")


@dataclasses.dataclass
class Experiment:
    """Everything built from a config, before any training step."""

    cfg: Config
    train_source: Any
    eval_sources: dict[str, Any]
    num_classes: int
    model: nnx.Module
    graphdef: Any
    rest: Any
    params: Any
    tx: Any
    schedule: Callable
    total_steps: int
    steps_per_epoch: float

    def duration(self, value: Any, name: str) -> int:
        return schedules.parse_duration(
            value, name=name, steps_per_epoch=self.steps_per_epoch,
            batch_size=self.cfg.data.batch_size, total_steps=self.total_steps,
        )

    def lr_at(self, step: Any) -> jax.Array:
        return builder.current_lr(self.schedule, self.cfg.optim.lr, step)


def _load(cfg: Config, split: str) -> Any:
    d = cfg.data
    return sources.load_source(d.dataset, split, data_dir=d.data_dir, path=d.path, channels=d.channels,
                               decode_size=d.decode_size)


def build_sources(cfg: Config, *, with_train: bool = True) -> tuple[Any, dict[str, Any], int]:
    train = _load(cfg, cfg.data.train_split) if with_train and not cfg.data.mixture else None
    if with_train and cfg.data.mixture:  # weighted mixture of several datasets
        d = cfg.data
        train = sources.load_mixture(d.mixture, seed=cfg.train.seed, data_dir=d.data_dir,
                                     channels=d.channels, decode_size=d.decode_size)
    evals = {split: _load(cfg, split) for split in cfg.data.eval_splits}
    any_source = train if train is not None else next(iter(evals.values()), None)
    if any_source is None:
        raise ConfigError("data.eval_splits is empty and no train split was loaded")
    num_classes = int(any_source.num_classes)
    n = cfg.data.num_train_examples
    if train is not None and n is not None:
        if n > len(train):
            raise ConfigError(
                f"data.num_train_examples={n} exceeds the {len(train)} examples of "
                f"{cfg.data.dataset}:{cfg.data.train_split}"
            )
        rng = np.random.default_rng(cfg.train.seed)
        train = sources.Subset(train, np.sort(rng.choice(len(train), n, replace=False)))
    return train, evals, num_classes


def build_model(cfg: Config, num_classes: int) -> nnx.Module:
    """The configured model; see ``config.model_options`` for which options reach it."""
    options = config_lib.model_options(cfg.model)
    options.update(image_size=cfg.data.image_size, channels=cfg.data.channels)
    return registry.create(cfg.model.name, num_classes=num_classes, seed=cfg.train.seed, **options)


def init_model(cfg: Config, num_classes: int, mesh: Any = None) -> tuple[nnx.Module, Any, Any, Any]:
    """``(model, graphdef, params, rest)``. With a mesh that splits parameters (``fsdp`` or
    ``model`` > 1) the parameters are created already in place: initialisation is one jitted
    program whose outputs are laid out by ``mesh.rules``, so each device computes only its
    shards and a model too large for one device never exists whole (``model`` is then
    abstract)."""
    if mesh is None or all(mesh.shape.get(axis, 1) == 1 for axis in ("fsdp", "model")):
        model = build_model(cfg, num_classes)
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        return model, graphdef, nnx.to_pure_dict(params), rest
    model = nnx.eval_shape(lambda: build_model(cfg, num_classes))
    graphdef, abstract, _ = nnx.split(model, nnx.Param, ...)
    specs = sharding.param_specs(nnx.to_pure_dict(abstract), mesh, cfg.mesh.rules)

    def init() -> tuple[Any, Any]:
        _, params, rest = nnx.split(build_model(cfg, num_classes), nnx.Param, ...)
        return nnx.to_pure_dict(params), rest

    params, rest = jax.jit(init, out_shardings=(sharding.to_shardings(specs, mesh), None))()
    return model, graphdef, params, rest


def build(cfg: Config, *, with_train: bool = True, mesh: Any = None) -> Experiment:
    """The run's data sources, model, optimizer and schedule (``mesh``: create the
    parameters in their training layout, see ``init_model``)."""
    train_source, eval_sources, num_classes = build_sources(cfg, with_train=with_train)
    model, graphdef, params, rest = init_model(cfg, num_classes, mesh)
    if train_source is None:
        # evaluation only: an epoch count cannot be turned into steps without the training
        # split, and the schedule is never used, so a constant one stands in
        total, steps_per_epoch = 1, float("nan")
        schedule = optax.constant_schedule(0.0)
    else:
        steps_per_epoch = len(train_source) / cfg.data.batch_size
        total = schedules.parse_duration(
            cfg.train.duration, name="train.duration", steps_per_epoch=steps_per_epoch,
            batch_size=cfg.data.batch_size,
        )
        if total <= 0:
            raise ConfigError(f"train.duration={cfg.train.duration!r} gives {total} steps; need at least 1")

        def dur(value: Any, name: str) -> int:
            return schedules.parse_duration(value, name=name, steps_per_epoch=steps_per_epoch,
                                            batch_size=cfg.data.batch_size, total_steps=total)

        s = cfg.schedule
        schedule = schedules.make_schedule(
            total_steps=total, warmup_steps=dur(s.warmup, "schedule.warmup"), decay=s.decay,
            timescale=max(1, dur(s.timescale, "schedule.timescale")),
            cooldown_steps=dur(s.cooldown, "schedule.cooldown"), min_value=s.min_value,
        )
    tx = builder.from_config(params, cfg.optim, schedule)
    return Experiment(cfg, train_source, eval_sources, num_classes, model, graphdef, rest, params,
                      tx, schedule, total, steps_per_epoch)


def evaluate(exp: Experiment, params: Any, mesh: Any, eval_step: Callable | None = None) -> dict[str, float]:
    """Top-1 (precision@1 for multi-label data), loss and calibration error (ECE, and after
    temperature scaling fitted on ``data.calibration_split`` when set) on every
    ``data.eval_splits`` split; each example counted exactly once."""
    d = exp.cfg.data
    mesh_lib.check_batch_size(d.eval_batch_size, mesh, "data.eval_batch_size")
    if eval_step is None:
        eval_step = jax.jit(step_lib.make_eval_step(exp.graphdef, exp.rest, losses.get(exp.cfg.train.loss)))
    transform = transforms.make_eval_transform(
        image_size=d.image_size, crop_fraction=d.eval_crop_fraction, value_range=d.value_range)
    results: dict[str, float] = {}
    temperature = calibration.temperature_for(exp, params, mesh, transform, results)
    for split, source in exp.eval_sources.items():
        totals: dict[str, Any] = {}
        for batch in pipeline.eval_batches(
            source, global_batch_size=d.eval_batch_size, transform=transform,
            process_index=jax.process_index(), process_count=jax.process_count(),
        ):
            sums = eval_step(params, mesh_lib.put_batch(batch, mesh), temperature or 1.0)
            for k, v in sums.items():
                totals[k] = totals.get(k, 0.0) + np.asarray(v, np.float64)
        count = float(totals["count"])
        if int(count) != len(source):
            raise RuntimeError(f"evaluated {count} examples of {split}, expected {len(source)}")
        top1 = "prec@1" if getattr(source, "multi_label", False) else "top1"
        results[f"eval/{split}/{top1}"] = float(totals["correct"]) / count
        results[f"eval/{split}/loss"] = float(totals["loss"]) / count
        results.update(calibration.split_results(totals, f"eval/{split}", scaled=temperature is not None))
    return results


def evaluate_state(exp: Experiment, state: dict, mesh: Any, eval_step: Callable | None = None) -> dict[str, float]:
    """``evaluate`` of the state's parameters and, when it keeps an EMA (``train.ema_decay``),
    of the averaged parameters too, their metrics prefixed ``ema/`` (``ema/eval/test/top1``)."""
    results = evaluate(exp, state["params"], mesh, eval_step)
    if "ema_params" in state:
        ema = evaluate(exp, state["ema_params"], mesh, eval_step)
        results.update({f"ema/{k}": v for k, v in ema.items()})
    return results


def batch_mixing(cfg: Config, num_classes: int) -> Callable | None:
    """The device-side batch mixing the config asks for (mixup / CutMix), or None:
    ``mix(key, images, labels) -> (images, targets)``. Targets are probability rows for the
    softmax loss and multi-hot rows (not normalised) for the sigmoid loss."""
    aug = config_lib.augmentation(cfg.data)
    if not (aug["mixup_alpha"] or aug["cutmix_alpha"]):
        return None
    normalise = cfg.train.loss == "softmax_xent"

    def mix(key, images, labels):
        targets = mixing.one_hot_targets(labels, num_classes, normalise=normalise)
        return mixing.mix_batch(key, images, targets, mixup_alpha=aug["mixup_alpha"],
                                cutmix_alpha=aug["cutmix_alpha"])

    return mix


def _check_same_run(workdir: pathlib.Path, cfg: Config) -> None:
    saved_path = workdir / "config.json"
    if not saved_path.exists():
        return
    saved = json.loads(saved_path.read_text())
    now = cfg.to_dict()
    defaults = Config().to_dict()  # a key the saved config lacks was added since, at its default
    diffs = []
    for section, values in now.items():
        for key, value in values.items():
            full = f"{section}.{key}"
            old = saved.get(section, {}).get(key, defaults[section][key])
            if full not in config_lib.NON_IDENTITY_KEYS and old != value:
                diffs.append(f"{full}: {old!r} -> {value!r}")
    if diffs:
        raise ConfigError(
            f"{workdir} holds a checkpoint of a different run ({'; '.join(diffs[:3])}); "
            "use a new --workdir, or the same settings to resume"
        )


class _StopSignal:
    """Turns SIGTERM/SIGINT into a flag checked between steps."""

    def __init__(self):
        self.received: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not in the main thread
                pass
        return self

    def _handle(self, signum, frame):
        self.received = signum

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


class _Progress:
    """A rich progress bar on a terminal; plain log lines otherwise."""

    def __init__(self, total: int, start: int, enabled: bool):
        self.total = total
        self.bar = None
        if enabled and sys.stderr.isatty():
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
            )

            self.bar = Progress(
                TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"), TimeRemainingColumn(), transient=False,
            )
            self.bar.start()
            self.task = self.bar.add_task("train", total=total, completed=start, info="")

    def update(self, step: int, info: str, *, log_line: bool) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=step, info=info)
        elif log_line:
            print(f"step {step}/{self.total}  {info}", flush=True)

    def print(self, text: str) -> None:
        if self.bar is not None:
            self.bar.console.print(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def train(cfg: Config, workdir: str | pathlib.Path, *, stop_after: int | None = None,
          quiet: bool = False) -> dict[str, Any]:
    """Trains (or resumes) the run described by ``cfg`` in ``workdir``; returns a summary.

    ``stop_after`` ends the session after that many steps in total (as if preempted), which
    tests use to split a run in two.
    """
    config_lib.validate(cfg)
    workdir = pathlib.Path(workdir)
    is_main = jax.process_index() == 0
    ckpt_dir = workdir / "checkpoints"
    mesh = sharding.mesh_from_config(cfg.mesh)
    mesh_lib.check_batch_size(cfg.data.batch_size, mesh)
    mesh_lib.check_batch_size(cfg.data.eval_batch_size, mesh, "data.eval_batch_size")  # not after training

    exp = build(cfg, mesh=mesh)
    t = cfg.train
    log_every = max(1, exp.duration(t.log_every, "train.log_every"))
    eval_every = max(1, exp.duration(t.eval_every, "train.eval_every"))
    ckpt_every = max(1, exp.duration(t.ckpt_every, "train.ckpt_every"))

    checkpointer = ckpt_lib.Checkpointer(ckpt_dir, keep=t.keep, keep_every=t.keep_every)
    latest = checkpointer.latest_step()
    if latest is not None:
        _check_same_run(workdir, cfg)
    if is_main:
        workdir.mkdir(parents=True, exist_ok=True)
        write_file(workdir / "config.json", cfg.to_json())

    d = cfg.data
    train_source, extra_keys, distilling = exp.train_source, (), None
    aug = config_lib.augmentation(d)
    train_transform = transforms.make_train_transform(
        image_size=d.image_size, crop=d.crop, inception_area=d.inception_area, pad=d.pad,
        flip=d.flip, value_range=d.value_range,
        augment=randaugment.make(randaug_ops=aug["randaug_ops"], randaug_magnitude=aug["randaug_magnitude"],
                                 autoaugment=aug["autoaugment"]))
    if distill.active(cfg):  # the distillation task: teachers, shared views, its evaluation
        distilling = distill.setup(cfg, exp, workdir, mesh, resuming=latest is not None,
                                   say=(lambda s: None) if quiet else print)
        train_source, train_transform = distilling.train_source, distilling.train_transform
        extra_keys = distilling.extra_keys
    data_it = pipeline.train_iterator(
        train_source, global_batch_size=d.batch_size, seed=t.seed, transform=train_transform,
        process_index=jax.process_index(), process_count=jax.process_count(), extra_keys=extra_keys,
        workers=d.workers, prefetch=d.prefetch)

    params = exp.params
    if latest is None and t.init_from:  # transfer: start from an upstream run's parameters
        from vistas.train import finetune

        params = finetune.init_params(cfg, exp.params)
    state = step_lib.init_state(params, exp.tx, t.seed, ema=t.ema_decay > 0)
    if t.nonfinite == "skip":
        state["skipped"] = jnp.zeros((), jnp.int32)
    placement = sharding.state_shardings(state, state["params"], mesh, cfg.mesh.rules)
    state = jax.device_put(state, placement)
    if latest is not None:
        state, data_state = checkpointer.restore(latest, state)
        data_it.set_state(data_state)
    start = int(state["step"])

    loss_fn = losses.get(t.loss)  # evaluation: the plain loss
    jitted_step = jax.jit(
        step_lib.make_train_step(
            exp.graphdef, exp.rest, exp.tx, losses.get(t.loss, t.label_smoothing), exp.lr_at,
            use_rng=registry.needs_rng(exp.model), sam_rho=cfg.optim.sam_rho, nonfinite=t.nonfinite,
            mix=None if distilling else batch_mixing(cfg, exp.num_classes),
            accum_steps=t.grad_accum_steps, ema_decay=t.ema_decay,
            trainable=jax.tree.map(lambda label: label == builder.TRAIN,
                                   builder.frozen_labels(exp.params, cfg.optim.frozen)),
            task=distilling.task if distilling else None),
        out_shardings=(placement, None),
        # the state is updated in place (on CPU too: an array an asynchronous checkpoint
        # write still reads is kept by JAX, not donated)
        donate_argnums=(0,),
    )
    frozen = (distilling.task.frozen,) if distilling else ()
    train_step = sharding.in_mesh(jitted_step, mesh)  # the models' activation layouts
    eval_step = jax.jit(step_lib.make_eval_step(exp.graphdef, exp.rest, loss_fn))
    fewshot_eval, fewshot_every = None, 0
    if cfg.fewshot.datasets:  # periodic few-shot evaluation of the frozen features
        from vistas.evaluate import fewshot

        fewshot_eval = fewshot.from_config(cfg, exp.graphdef, exp.rest, mesh)
        fewshot_every = max(1, exp.duration(cfg.fewshot.every, "fewshot.every"))

    writer = MetricsWriter(workdir, enabled=is_main)
    writer.truncate_after(start)
    say = (lambda s: None) if quiet else print
    say(f"vistas: {cfg.model.name} ({registry.count_params(exp.model):,} params) on "
        f"{d.dataset}:{d.train_split} ({len(exp.train_source):,} examples), "
        f"{exp.total_steps} steps of batch {d.batch_size}, {len(jax.devices())} device(s); "
        + (f"resuming at step {start}" if start else "starting"))
    if jax.default_backend() == "cpu" and not xla_cpu.huge_pages_status()[0]:
        say("vistas: XLA's CPU buffers use 4 KiB pages here (the `vistas` command restarts with "
            "GLIBC_TUNABLES=glibc.malloc.hugetlb=1 where it helps; docs/performance.md)")

    progress = _Progress(exp.total_steps, start, enabled=t.progress and not quiet)
    step = start
    last_saved = latest
    eval_results: dict[str, float] = {}
    interrupted = False
    tick, tick_step = time.perf_counter(), step
    try:
        with _StopSignal() as stop:
            batch = next(data_it) if step < exp.total_steps else None
            compute = None if batch is None else mfu.StepCompute.measure(  # FLOPs per step, for MFU
                jitted_step, mesh, state, mesh_lib.put_batch(batch, mesh), *frozen, dtype=cfg.model.dtype)
            xla_cpu.release_free_memory()  # what the compiler freed, before the step's buffers
            while step < exp.total_steps:
                state, metrics = train_step(state, mesh_lib.put_batch(batch, mesh), *frozen)
                data_state = data_it.get_state()
                batch = next(data_it) if step + 1 < exp.total_steps else None
                loss = float(metrics["train/loss"])
                if not float(metrics["train/finite"]):
                    _nonfinite_step(t, metrics, step + 1, last_saved, ckpt_dir, progress, quiet)
                step += 1
                if step % log_every == 0 or step == exp.total_steps:
                    now = time.perf_counter()
                    row = {k: float(v) for k, v in metrics.items()}
                    row["train/examples_per_sec"] = (step - tick_step) * d.batch_size / max(now - tick, 1e-9)
                    if compute is not None:
                        row.update(compute.metrics((step - tick_step) / max(now - tick, 1e-9)))
                    row["train/epoch"] = step / exp.steps_per_epoch
                    tick, tick_step = now, step
                    writer.write(step, row)
                    eta = (exp.total_steps - step) * d.batch_size / max(row["train/examples_per_sec"], 1e-9)
                    progress.update(step, f"loss {loss:.4f}  {row['train/examples_per_sec']:.0f} img/s  "
                                          f"eta {eta / 60:.1f} min", log_line=not quiet)
                else:
                    progress.update(step, f"loss {loss:.4f}", log_line=False)
                if step % eval_every == 0 or step == exp.total_steps:
                    eval_results = evaluate_state(exp, state, mesh, eval_step)
                    if distilling and distilling.evaluate is not None:
                        eval_results.update(distilling.evaluate(state["params"]))
                    writer.write(step, eval_results)
                    if not quiet:
                        progress.print(f"step {step}: " + "  ".join(
                            f"{k}={v:.4f}" for k, v in eval_results.items()))
                    tick = time.perf_counter()
                if fewshot_eval is not None and (step % fewshot_every == 0 or step == exp.total_steps):
                    report = fewshot_eval(state["params"])
                    writer.write(step, fewshot.flat_metrics(report))
                    if not quiet:
                        progress.print(f"step {step}: few-shot\n" + fewshot.format_table(report))
                    tick = time.perf_counter()
                stopping = stop.received is not None or (stop_after is not None and step >= stop_after)
                kept = t.keep_every is not None and step % t.keep_every == 0  # branch points
                if step % ckpt_every == 0 or kept or step == exp.total_steps or stopping:
                    if not _all_finite(state):  # a finite loss can come with non-finite updates
                        raise TrainingDiverged(_diverged(
                            f"parameters or optimizer state are non-finite at step {step}", last_saved, ckpt_dir))
                    checkpointer.save(step, state, data_state)
                    last_saved = step
                if stopping:
                    interrupted = True
                    if stop.received is not None and not quiet:
                        progress.print(f"received signal {stop.received}: saved step {step}; "
                                       "run the same command to resume")
                    break
        if not eval_results and step >= exp.total_steps:  # a finished run, asked again
            eval_results = evaluate_state(exp, state, mesh, eval_step)
    finally:
        progress.close()
        data_it.close()
        checkpointer.close()
        writer.close()

    curves = plot_curves(workdir / "metrics.jsonl", workdir / "curves.png") if is_main else None
    summary = {
        "step": step, "total_steps": exp.total_steps, "finished": step >= exp.total_steps,
        "interrupted": interrupted, "workdir": str(workdir), "checkpoints": str(ckpt_dir),
        "curves": str(curves) if curves else None, **eval_results,
    }
    if is_main:
        write_file(workdir / "summary.json", json.dumps(summary, indent=2))
    return summary


def load_config(workdir: pathlib.Path) -> Config:
    """The resolved config a run wrote into ``workdir``."""
    path = workdir / "config.json"
    if not path.exists():
        raise VistasError(f"{workdir} holds no run (no config.json); train one with `vistas train`")
    return Config.from_dict(json.loads(path.read_text()))


def final_params(workdir: str | pathlib.Path, cfg: Config | None = None, step: int | None = None,
                 key: str = "params") -> tuple[Experiment, Any, int]:
    """Rebuilds the experiment of ``workdir`` (without its training split) and restores the
    parameters of a checkpoint. Only the parameters are read, so a checkpoint stays usable
    when the optimizer, and so the shape of its state, has changed since it was written."""
    workdir = pathlib.Path(workdir)
    cfg = load_config(workdir) if cfg is None else cfg
    exp = build(cfg, with_train=False)
    checkpointer = ckpt_lib.Checkpointer(workdir / "checkpoints", read_only=True)
    with contextlib.closing(checkpointer):
        found = checkpointer.latest_step() if step is None else step
        if found is None:
            raise VistasError(f"{workdir / 'checkpoints'} holds no checkpoint to evaluate")
        if found not in checkpointer.all_steps():
            raise VistasError(f"{workdir / 'checkpoints'} has no checkpoint {found}; "
                              f"steps: {checkpointer.all_steps()}")
        params = jax.device_put(exp.params, mesh_lib.replicated(mesh_lib.data_mesh()))
        params = checkpointer.restore_params(found, params, key)  # "ema_params": the EMA
    return exp, params, found


def evaluate_workdir(workdir: str | pathlib.Path, *, splits: list[str] | None = None,
                     step: int | None = None) -> dict[str, Any]:
    """Evaluates a checkpoint of ``workdir`` (the latest by default) and writes ``eval_<step>.json``."""
    workdir = pathlib.Path(workdir)
    cfg = load_config(workdir)
    if splits:
        cfg.data.eval_splits = list(splits)
    exp, params, found = final_params(workdir, cfg, step)
    results = {"step": found, **evaluate(exp, params, mesh_lib.data_mesh())}
    if cfg.train.ema_decay:  # the averaged parameters too
        exp, ema, _ = final_params(workdir, cfg, found, key="ema_params")
        results.update({f"ema/{k}": v for k, v in evaluate(exp, ema, mesh_lib.data_mesh()).items()})
    if jax.process_index() == 0:
        (workdir / f"eval_{found}.json").write_text(json.dumps(results, indent=2))
    return results


__all__ = ["Experiment", "TrainingDiverged", "build", "evaluate", "evaluate_workdir", "final_params", "train"]

