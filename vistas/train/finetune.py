"""Fine-tuning transfer: start a run from an upstream run's parameters.

A fine-tuning run is an ordinary run (``loop.train``) whose config names the upstream run in
``train.init_from``. When it starts (not when it resumes), ``init_params`` loads the
upstream parameters and adapts them to the new model (``vistas.models.adapt``): the head is
replaced by the new model's freshly initialised (zero) head for the target's classes, and a
learned position embedding is resampled when the resolution changes. ``transfer_config``
writes the transfer recipe: SGD with momentum, short warmup, cosine (or linear) decay, no
weight decay, gradient clipping at norm 1, optional SAM (``optim.sam_rho``).
"""

from __future__ import annotations

import copy
import pathlib
from typing import Any

import jax

from vistas import config as config_lib
from vistas.config import Config
from vistas.data import catalog
from vistas.errors import ConfigError
from vistas.models import adapt

HEAD = "head"
DECAYS = ("cosine", "linear")


def restore_params(workdir: str | pathlib.Path, step: int | None = None
                   ) -> tuple[Config, Any, Any, Any, int]:
    """``(config, graphdef, rest, params, step)`` of a run's checkpoint (the latest by default).

    Only the parameters are read, so a checkpoint stays usable when the optimizer changes,
    and only the run's evaluation split is opened (for its number of classes).
    """
    from vistas.train import loop

    exp, params, found = loop.final_params(workdir, step=step)
    return exp.cfg, exp.graphdef, exp.rest, params, found


def init_params(cfg: Config, target_params: Any) -> Any:
    """The parameters of run ``cfg.train.init_from`` adapted to ``target_params``' structure,
    with the target's own (fresh) head."""
    upstream = cfg.train.init_from
    _, _, _, params, _ = restore_params(upstream)
    body = {k: v for k, v in jax.device_get(params).items() if k != HEAD}
    try:
        return adapt.adapt_params(body, target_params, reset_head=True, head_prefix=f"{HEAD}/")
    except ConfigError as e:
        raise ConfigError(f"train.init_from={upstream!r}: {e}") from None


def transfer_config(upstream: Config, *, dataset: str, resolution: int | None = None,
                    duration: int | str = 500, lr: float = 0.01, batch_size: int = 128,
                    warmup: int | str = "5%", decay: str = "cosine", sam_rho: float = 0.0,
                    init_from: str | pathlib.Path, seed: int = 0,
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
    config_lib.apply_overrides(cfg, list(overrides or []))
    return cfg


def finetune(upstream_dir: str | pathlib.Path, workdir: str | pathlib.Path, *, quiet: bool = False,
             **options: Any) -> dict[str, Any]:
    """Fine-tunes the upstream run's model (``transfer_config`` options) in ``workdir``."""
    from vistas.train import loop

    upstream = loop.load_config(pathlib.Path(upstream_dir))
    cfg = transfer_config(upstream, init_from=upstream_dir, **options)
    return loop.train(cfg, workdir, quiet=quiet)
