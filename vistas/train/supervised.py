"""The supervised task: labels (or multi-hot labels), optionally mixed by mixup / CutMix."""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Callable
from typing import Any

import jax

from vistas import config as config_lib
from vistas import experiment
from vistas.config import Config
from vistas.data import mixing
from vistas.train import losses

MIX_STREAM = 0x6D6978  # the batch-mixing random stream (mixup / CutMix), apart from the model's


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


@dataclasses.dataclass
class Supervised:
    """Trains ``loss_fn(logits, target)`` where the target is the label, or the mixed
    targets when ``mix`` is set (keyed by the step, so a resumed run mixes as the
    uninterrupted one); top-1 is measured against the original labels."""

    source: Any
    transform: Callable
    loss_fn: Callable
    mix: Callable | None = None
    extra_keys: tuple[str, ...] = ()
    frozen: Any = ()

    def data(self) -> tuple[Any, Callable]:
        return self.source, self.transform

    def prepare(self, frozen: Any, batch: dict, key: jax.Array) -> dict:
        batch = {**batch, "target": batch["label"]}
        if self.mix is not None:
            batch["image"], batch["target"] = self.mix(
                jax.random.fold_in(key, MIX_STREAM), batch["image"], batch["label"])
        return batch

    def loss(self, logits: jax.Array, batch: dict) -> jax.Array:
        return self.loss_fn(logits, batch["target"])

    def metrics(self, logits: jax.Array, batch: dict) -> dict:
        return {}

    def evaluators(self, every: int) -> list:
        return []


def from_loss(loss_fn: Callable, mix: Callable | None = None) -> Supervised:
    """The device-side part of a supervised task (no data): for programs that only compile
    or count a step (FLOPs, the shapefinder)."""
    return Supervised(source=None, transform=None, loss_fn=loss_fn, mix=mix)


def setup(cfg: Config, exp: experiment.Experiment, workdir: pathlib.Path, mesh: Any, *,
          resuming: bool, say: Callable[[str], None] = print) -> Supervised:
    t = cfg.train
    return Supervised(source=exp.train_source, transform=experiment.train_transform(cfg),
                      loss_fn=losses.get(t.loss, t.label_smoothing),
                      mix=batch_mixing(cfg, exp.num_classes))


__all__ = ["MIX_STREAM", "Supervised", "batch_mixing", "from_loss", "setup"]
