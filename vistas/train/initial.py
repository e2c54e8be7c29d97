"""Where a run's first parameters come from: the model's own initialisation, or, for a
transfer run (``train.init_from``), an upstream run's parameters (or a ViT weights file's:
big_vision ``.npz``, timm ``.safetensors``, ``.vistas.npz``, or a Hugging Face Hub id
``hf-hub:ORG/NAME``, read by :mod:`vistas.models.interop`) adapted to the new model
(``vistas.models.adapt``): its head replaced by the new model's freshly initialised head
for the target's classes, a learned position embedding resampled when the resolution
changes (as ``train.init_resample`` says: vistas' bilinear by default, or big_vision's or
timm's convention). Only a run that starts takes them; a resumed run restores its checkpoint."""

from __future__ import annotations

import pathlib
from typing import Any

import jax

from vistas import runs
from vistas.config import Config
from vistas.errors import ConfigError
from vistas.models import adapt

HEAD = "head"


def is_run(source: str) -> bool:
    """Whether ``train.init_from`` names a run directory (else a weights file or a Hugging
    Face Hub id, read by :mod:`vistas.models.interop`)."""
    from vistas.models.interop import hub

    return not hub.is_hub_id(source) and pathlib.Path(source).is_dir()


def _checkpoint_params(cfg: Config, target_params: Any) -> dict:
    """The parameters of the weights file or Hub id ``cfg.train.init_from`` in the layout of
    ``target_params`` (scanned or not, fused or not), read with the pooling of the run's
    model (a timm file's weights may fit two)."""
    from vistas.models import vit
    from vistas.models.interop import core, timm

    pool = {v: k for k, v in timm.POOLS.items()}.get(cfg.model.pool)
    ckpt = core.read(cfg.train.init_from, image_size=cfg.data.image_size, global_pool=pool)
    return vit.convert_layout(ckpt.params, core._concrete(target_params))


def from_upstream(cfg: Config, target_params: Any) -> Any:
    """The parameters of ``cfg.train.init_from`` (a run, a weights file or a Hub id) adapted
    to ``target_params``' structure, with the target's own (fresh) head."""
    upstream = cfg.train.init_from
    if is_run(upstream):
        _, _, _, params, _ = runs.restore_params(upstream)
    else:
        params = _checkpoint_params(cfg, target_params)
    body = {k: v for k, v in jax.device_get(params).items() if k != HEAD}
    try:
        return adapt.adapt_params(body, target_params, reset_head=True, head_prefix=f"{HEAD}/",
                                  resample=cfg.train.init_resample)
    except ConfigError as e:
        raise ConfigError(f"train.init_from={upstream!r}: {e}") from None


def initial_params(cfg: Config, fresh: Any) -> Any:
    """The parameters a new run of ``cfg`` starts from; ``fresh``: the model's own."""
    return from_upstream(cfg, fresh) if cfg.train.init_from else fresh


__all__ = ["HEAD", "from_upstream", "initial_params", "is_run"]
