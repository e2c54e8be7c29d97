"""Fine-tuning transfer: start a run from an upstream run's parameters.

A fine-tuning run is an ordinary run (``loop.train``) whose config names the upstream run in
``train.init_from``: where its first parameters come from (``vistas.train.initial``). When
it starts (not when it resumes) the upstream parameters are loaded and adapted to the new
model (``vistas.models.adapt``): the head is replaced by the new model's freshly initialised
(zero) head for the target's classes, and a learned position embedding is resampled when the
resolution changes (``resample``: ``train.init_resample``). ``transfer_config``
writes the transfer recipe: SGD with momentum, short warmup, cosine (or linear) decay, no
weight decay, gradient clipping at norm 1, optional SAM (``optim.sam_rho``).
"""

from __future__ import annotations

import copy
import pathlib
from typing import Any

from vistas import config as config_lib
from vistas import runs
from vistas.config import Config
from vistas.data import catalog
from vistas.errors import ConfigError
from vistas.runs import restore_params
from vistas.train import loop
from vistas.train.initial import HEAD, from_upstream

init_params = from_upstream  # the name this module gave it first
DECAYS = ("cosine", "linear")


def transfer_config(upstream: Config, *, dataset: str, resolution: int | None = None,
                    duration: int | str = 500, lr: float = 0.01, batch_size: int = 128,
                    warmup: int | str = "5%", decay: str = "cosine", sam_rho: float = 0.0,
                    init_from: str | pathlib.Path, seed: int = 0, resample: str | None = None,
                    overrides: list[str] | None = None) -> Config:
    """The fine-tuning config of ``upstream``'s model on ``dataset`` (the transfer recipe)."""
    info = catalog.get_info(dataset)
    if decay not in DECAYS:
        raise ConfigError(f"decay={decay!r} is not a transfer schedule; use one of {', '.join(DECAYS)}")
    if resolution is not None and resolution <= 0:
        raise ConfigError(f"resolution={resolution} must be a positive number of pixels")
    cfg = Config()
    cfg.model = copy.deepcopy(upstream.model)
    cfg.model.head_zeroinit = True
    d = cfg.data
    d.dataset, d.train_split, d.eval_splits = dataset, "train", ["test"]
    d.image_size = resolution or upstream.data.image_size
    d.channels, d.value_range = upstream.data.channels, upstream.data.value_range
    d.batch_size, d.eval_batch_size = batch_size, upstream.data.eval_batch_size
    d.crop, d.flip = "none", False
    o = cfg.optim
    o.name, o.momentum, o.lr, o.wd, o.grad_clip_norm = "sgd", 0.9, lr, 0.0, 1.0
    if sam_rho:
        if not hasattr(o, "sam_rho"):
            raise ConfigError("this version of vistas has no SAM optimizer option (optim.sam_rho)")
        o.sam_rho = sam_rho
    s = cfg.schedule
    s.warmup, s.decay, s.cooldown = warmup, decay, 0
    t = cfg.train
    t.duration, t.seed = duration, seed
    t.loss = "sigmoid_xent" if info.multi_label else "softmax_xent"
    t.eval_every, t.log_every, t.ckpt_every = "10%", "5%", "25%"
    t.init_from = str(pathlib.Path(init_from).absolute())
    if resample is not None:
        t.init_resample = resample
    config_lib.apply_overrides(cfg, list(overrides or []))
    return cfg


def finetune(upstream_dir: str | pathlib.Path, workdir: str | pathlib.Path, *, quiet: bool = False,
             **options: Any) -> dict[str, Any]:
    """Fine-tunes the upstream run's model (``transfer_config`` options) in ``workdir``."""
    upstream = runs.load_config(pathlib.Path(upstream_dir))
    cfg = transfer_config(upstream, init_from=upstream_dir, **options)
    return loop.train(cfg, workdir, quiet=quiet)


__all__ = ["HEAD", "finetune", "init_params", "restore_params", "transfer_config"]
