"""The experiment builder: everything a config describes, built before any training step.

``build(cfg)`` resolves the data sources, the model (created in place on a mesh when the
parameters are split), the learning-rate schedule and the optimizer. Durations and
schedules are resolved here and only here (``schedule_of``), for the training loop,
cooldown branches, FLOP counts and the shapefinder alike.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import optax
from flax import nnx

from vistas import config as config_lib
from vistas.config import Config
from vistas.data import randaugment, sources, transforms
from vistas.errors import ConfigError
from vistas.models import registry
from vistas.optim import builder, schedules
from vistas.systems import sharding

MAX_STEPS = 2**31  # the step counter is an int32 on the device


@dataclasses.dataclass(frozen=True)
class Schedule:
    """A config's learning-rate schedule with its durations resolved to steps."""

    fn: Callable
    total_steps: int
    warmup: int
    timescale: int
    cooldown: int


def schedule_of(cfg: Config, steps_per_epoch: float) -> Schedule:
    """The schedule of ``cfg`` given the number of steps per epoch of its training data."""
    d, s = cfg.data, cfg.schedule
    total = schedules.parse_duration(cfg.train.duration, name="train.duration",
                                     steps_per_epoch=steps_per_epoch, batch_size=d.batch_size)
    if total <= 0:
        raise ConfigError(f"train.duration={cfg.train.duration!r} gives {total} steps; need at least 1")
    if total >= MAX_STEPS:
        raise ConfigError(f"train.duration={cfg.train.duration!r} gives {total:,} steps, more than "
                          f"the {MAX_STEPS - 1:,} a run counts; give a shorter duration")

    def dur(value: Any, name: str) -> int:
        return schedules.parse_duration(value, name=name, steps_per_epoch=steps_per_epoch,
                                        batch_size=d.batch_size, total_steps=total)

    warmup, cooldown = dur(s.warmup, "schedule.warmup"), dur(s.cooldown, "schedule.cooldown")
    timescale = max(1, dur(s.timescale, "schedule.timescale"))
    fn = schedules.make_schedule(total_steps=total, warmup_steps=warmup, decay=s.decay,
                                 timescale=timescale, cooldown_steps=cooldown, min_value=s.min_value)
    return Schedule(fn, total, warmup, timescale, cooldown)


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
        """A duration of this run (steps, epochs, examples, percent) in steps."""
        return schedules.parse_duration(
            value, name=name, steps_per_epoch=self.steps_per_epoch,
            batch_size=self.cfg.data.batch_size, total_steps=self.total_steps,
        )

    def every(self, value: Any, name: str) -> int:
        """A cadence of this run in steps (at least 1)."""
        return max(1, self.duration(value, name))

    def lr_at(self, step: Any) -> jax.Array:
        return builder.current_lr(self.schedule, self.cfg.optim.lr, step)

    @property
    def class_names(self) -> tuple[str, ...] | None:
        """The dataset's class names (the same list for every split), when it has them."""
        source = self.train_source if self.train_source is not None else next(iter(self.eval_sources.values()))
        names = getattr(source, "class_names", None)
        return tuple(str(n) for n in names) if names is not None else None


def _load(cfg: Config, split: str) -> Any:
    d = cfg.data
    return sources.load_source(d.dataset, split, data_dir=d.data_dir, path=d.path, channels=d.channels,
                               decode_size=d.decode_size)


def build_sources(cfg: Config, *, with_train: bool = True) -> tuple[Any, dict[str, Any], int]:
    """``(train_source or None, {eval split: source}, num_classes)``."""
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


def num_classes_of(cfg: Config) -> int:
    """The number of classes of ``cfg``'s dataset (read from its evaluation splits)."""
    return build_sources(cfg, with_train=False)[2]


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
        resolved = schedule_of(cfg, steps_per_epoch)
        total, schedule = resolved.total_steps, resolved.fn
    tx = builder.from_config(params, cfg.optim, schedule)
    return Experiment(cfg, train_source, eval_sources, num_classes, model, graphdef, rest, params,
                      tx, schedule, total, steps_per_epoch)


def train_transform(cfg: Config, image_size: int | None = None) -> Callable:
    """The host-side training augmentation of ``cfg.data`` (crop, flip, RandAugment or
    AutoAugment) producing ``image_size`` pixels (default ``data.image_size``); every task
    trains on it (batch mixing is device-side, the task's own)."""
    d = cfg.data
    aug = config_lib.augmentation(d)
    return transforms.make_train_transform(
        image_size=image_size or d.image_size, crop=d.crop, inception_area=d.inception_area,
        pad=d.pad, flip=d.flip, value_range=d.value_range,
        augment=randaugment.make(randaug_ops=aug["randaug_ops"], randaug_magnitude=aug["randaug_magnitude"],
                                 autoaugment=aug["autoaugment"]))


def eval_transform(cfg: Config, image_size: int | None = None) -> Callable:
    """The evaluation transform of ``cfg.data`` (central crop, resize)."""
    d = cfg.data
    return transforms.make_eval_transform(image_size=image_size or d.image_size,
                                          crop_fraction=d.eval_crop_fraction, value_range=d.value_range)


__all__ = ["Experiment", "Schedule", "build", "build_model", "build_sources", "eval_transform",
           "init_model", "num_classes_of", "schedule_of", "train_transform"]
