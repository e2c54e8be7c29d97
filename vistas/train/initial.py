"""Where a run's first parameters come from: the model's own initialisation, or, for a
transfer run (``train.init_from``), an upstream run's parameters adapted to the new model
(``vistas.models.adapt``): its head replaced by the new model's freshly initialised head
for the target's classes, a learned position embedding resampled when the resolution
changes (as ``train.init_resample`` says: vistas' bilinear by default, or big_vision's or
timm's convention). Only a run that starts takes them; a resumed run restores its checkpoint."""

from __future__ import annotations

from typing import Any

import jax

from vistas import runs
from vistas.config import Config
from vistas.errors import ConfigError
from vistas.models import adapt

HEAD = "head"


def from_upstream(cfg: Config, target_params: Any) -> Any:
    """The parameters of run ``cfg.train.init_from`` adapted to ``target_params``' structure,
    with the target's own (fresh) head."""
    upstream = cfg.train.init_from
    _, _, _, params, _ = runs.restore_params(upstream)
    body = {k: v for k, v in jax.device_get(params).items() if k != HEAD}
    try:
        return adapt.adapt_params(body, target_params, reset_head=True, head_prefix=f"{HEAD}/",
                                  resample=cfg.train.init_resample)
    except ConfigError as e:
        raise ConfigError(f"train.init_from={upstream!r}: {e}") from None


def initial_params(cfg: Config, fresh: Any) -> Any:
    """The parameters a new run of ``cfg`` starts from; ``fresh``: the model's own."""
    return from_upstream(cfg, fresh) if cfg.train.init_from else fresh


__all__ = ["HEAD", "from_upstream", "initial_params"]
