"""Fine-tuning transfer: start a run from an upstream run's parameters, or from a ViT
weights file or Hugging Face Hub id (``hf-hub:timm/vit_base_patch16_224.augreg2_in21k_ft_in1k``):
:func:`checkpoint_config` reads the model's config from it.

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
import dataclasses
import pathlib
from typing import Any

from vistas import config as config_lib
from vistas import runs
from vistas.config import Config
from vistas.data import catalog
from vistas.errors import ConfigError
from vistas.models.interop import hub
from vistas.runs import restore_params
from vistas.train import loop
from vistas.train.initial import HEAD, from_upstream

init_params = from_upstream  # the name this module gave it first
DECAYS = ("cosine", "linear")
FILE_FORMATS = ("folder", "npz", "array_record", "parquet")  # datasets read from data.path


def transfer_config(upstream: Config, *, dataset: str, resolution: int | None = None,
                    duration: int | str = 500, lr: float = 0.01, batch_size: int = 128,
                    warmup: int | str = "5%", decay: str = "cosine", sam_rho: float = 0.0,
                    init_from: str | pathlib.Path, seed: int = 0, resample: str | None = None,
                    overrides: list[str] | None = None, data_path: str | pathlib.Path | None = None) -> Config:
    """The fine-tuning config of ``upstream``'s model on ``dataset`` (the transfer recipe): a
    catalog name, or one of the formats read from ``data_path`` (``folder``, ``npz``,
    ``array_record``, ``parquet``)."""
    if dataset in FILE_FORMATS:
        if data_path is None:
            raise ConfigError(f"dataset {dataset!r} is read from a path; give it (--data-path PATH)")
        multi_label = False
    else:
        multi_label = catalog.get_info(dataset).multi_label
    if decay not in DECAYS:
        raise ConfigError(f"decay={decay!r} is not a transfer schedule; use one of {', '.join(DECAYS)}")
    if resolution is not None and resolution <= 0:
        raise ConfigError(f"resolution={resolution} must be a positive number of pixels")
    cfg = Config()
    cfg.model = copy.deepcopy(upstream.model)
    cfg.model.head_zeroinit = True
    d = cfg.data
    d.dataset, d.train_split, d.eval_splits = dataset, "train", ["test"]
    if data_path is not None:
        d.path = str(pathlib.Path(data_path).absolute())
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
    t.loss = "sigmoid_xent" if multi_label else "softmax_xent"
    t.eval_every, t.log_every, t.ckpt_every = "10%", "5%", "25%"
    t.init_from = init_from if hub.is_hub_id(init_from) else str(pathlib.Path(init_from).absolute())
    if resample is not None:
        t.init_resample = resample
    config_lib.apply_overrides(cfg, list(overrides or []))
    return cfg


# ModelConfig fields that a checkpoint's ViTConfig gives (the sizes are set apart)
_VIT_FIELDS = ("pool", "posemb", "representation_size", "fc_norm", "init_values", "reg_tokens", "parallel",
               "fused", "qk_norm", "qkv_bias", "norm_bias", "gelu")


def checkpoint_config(source: str | pathlib.Path, *, global_pool: str | None = None) -> Config:
    """The config of the model in a ViT weights file or Hugging Face Hub id ``source`` (read
    by :mod:`vistas.models.interop`; ``global_pool``: see ``interop.read``), as an upstream
    for :func:`transfer_config`: its sizes and block options, its image size and channels,
    inputs scaled to [-1, 1] (timm's and big_vision's ViTs mostly take mean 0.5 and std 0.5;
    models normalised otherwise adapt while they are fine-tuned)."""
    from vistas.models.interop import base, core

    ckpt = core.read(source, global_pool=global_pool)
    vc = ckpt.cfg
    if not isinstance(vc.image_size, int) and vc.image_size[0] == vc.image_size[1]:
        vc = dataclasses.replace(vc, image_size=vc.image_size[0])
    if not isinstance(vc.image_size, int):
        raise ConfigError(f"{source}: its model takes {vc.image_size[0]}x{vc.image_size[1]} images; "
                          "fine-tuning starts from square ones (convert it with --image-size N first)")
    cfg = Config()
    m = cfg.model
    name = base.describe(vc)
    if "x" in name.split("/")[0]:  # no named variant has these sizes: give them one by one
        name = f"vit-B/{vc.patch}"
        m.width, m.depth, m.mlp_dim, m.num_heads = vc.width, vc.depth, vc.mlp_dim, vc.num_heads
    m.name = name
    for field in _VIT_FIELDS:
        setattr(m, field, getattr(vc, field))
    cfg.data.image_size, cfg.data.channels, cfg.data.value_range = vc.image_size, vc.channels, (-1.0, 1.0)
    cfg.train.init_resample = core.default_resample(ckpt.format)
    return cfg


def finetune(upstream: str | pathlib.Path, workdir: str | pathlib.Path, *, quiet: bool = False,
             global_pool: str | None = None, **options: Any) -> dict[str, Any]:
    """Fine-tunes the upstream's model (``transfer_config`` options) in ``workdir``: a run
    directory, a ViT weights file or a Hugging Face Hub id (``hf-hub:ORG/NAME``; see
    :func:`checkpoint_config`, whose ``global_pool`` this passes on)."""
    from vistas.train.initial import is_run

    if is_run(str(upstream)):
        upstream_cfg = runs.load_config(pathlib.Path(upstream))
    else:
        upstream_cfg = checkpoint_config(upstream, global_pool=global_pool)
        if options.get("resample") is None:  # as the checkpoint's own framework resamples
            options["resample"] = upstream_cfg.train.init_resample
    cfg = transfer_config(upstream_cfg, init_from=upstream, **options)
    return loop.train(cfg, workdir, quiet=quiet)


__all__ = ["HEAD", "checkpoint_config", "finetune", "init_params", "restore_params", "transfer_config"]
