"""Turns a full-scale recipe into its reduced variant on Fashion-MNIST (28x28 gray).

The reduced variant keeps what makes the recipe: optimizer, schedule shape (warmup as the
same fraction of training), loss, augmentation, EMA, label smoothing, weight-decay rules;
it replaces the data, the resolution, the model size, the batch and the length.
"""

from __future__ import annotations

import dataclasses

from vistas.config import Config, ModelConfig


def fashion_mnist(cfg: Config, *, model: dict, duration: str = "2ep", batch_size: int = 128,
                  warmup: str | None = None, **train: object) -> Config:
    d = cfg.data
    d.dataset, d.path, d.image_size, d.channels = "fashion_mnist", None, 28, 1
    d.train_split, d.eval_splits, d.num_train_examples = "train", ["test"], None
    d.batch_size, d.eval_batch_size = batch_size, 1000
    d.crop, d.eval_crop_fraction = "none", 1.0  # crops slow learning in a few epochs
    d.workers = 0  # in-memory arrays: the training process is fastest
    cfg.model = dataclasses.replace(ModelConfig(), **model)
    if warmup is not None:
        cfg.schedule.warmup = warmup
    t = cfg.train
    t.duration, t.log_every, t.eval_every, t.ckpt_every = duration, 50, "1ep", 500
    for key, value in train.items():
        setattr(t, key, value)
    return cfg
