"""Bytes of optimizer state per parameter, measured on the real state pytree, abstractly.

`state_bytes(tx, params)` runs `jax.eval_shape(tx.init, params)`: the state of the actual
optimizer (the same `build_optimizer` chain as training, with its named stages and masks)
is traced into shapes and dtypes, nothing is allocated, so ViT-e is measured on a laptop.

`optimizer_memory("vit-B/16", "adam", overrides=["mu_dtype=bfloat16"])` measures one model
and optimizer from an `OptimConfig`; deep ViTs are traced at depth 1 and 2 and extrapolated
(blocks are identical, so every count is linear in depth) unless `exact=True`.
`vistas optim-memory` prints the table.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vistas import config as config_lib
from vistas.errors import ConfigError
from vistas.optim import builder

# The rows of the documented table: `NAME[,option=value...]` optimizer specs.
STANDARD = ("adam", "adam,mu_dtype=bfloat16", "adafactor_bv", "shampoo", "sgd")


def tree_bytes(tree: Any) -> int:
    """Total bytes of the array (or ShapeDtypeStruct) leaves of `tree`."""
    return sum(int(np.prod(x.shape)) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def tree_size(tree: Any) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def state_bytes(tx: Any, params: Any) -> int:
    """Bytes of `tx.init(params)`, traced abstractly (`params` may be ShapeDtypeStructs)."""
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
    return tree_bytes(jax.eval_shape(tx.init, abstract))


def parse_optimizer(spec: str) -> tuple[str, list[str]]:
    """`"adam,mu_dtype=bfloat16"` -> `("adam", ["optim.mu_dtype=bfloat16"])`."""
    name, *options = [part.strip() for part in spec.split(",")]
    overrides = []
    for option in options:
        if "=" not in option:
            raise ConfigError(
                f"optimizer {spec!r}: {option!r} is not key=value; "
                "write e.g. 'adam,mu_dtype=bfloat16'"
            )
        overrides.append(option if option.startswith("optim.") else f"optim.{option}")
    return name, overrides


def _abstract_params(model: str, num_classes: int, image_size: int, **options: Any) -> Any:
    from vistas.models import registry

    module = registry.abstract(model, num_classes=num_classes, image_size=image_size, **options)
    return nnx.to_pure_dict(nnx.state(module, nnx.Param))


def _measure(model: str, optim: config_lib.OptimConfig, **options: Any) -> tuple[int, int]:
    params = _abstract_params(model, **options)
    tx = builder.from_config(params, optim, lambda step: jnp.float32(1.0))
    return tree_size(params), state_bytes(tx, params)


def optimizer_memory(
    model: str,
    optimizer: str = "adam",
    *,
    overrides: Sequence[str] = (),
    num_classes: int = 1000,
    image_size: int = 224,
    exact: bool = False,
    base: config_lib.Config | None = None,
    model_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Parameters and optimizer-state bytes of `model` under `optimizer` (a spec such as
    `"adam,mu_dtype=bfloat16"`) with `optim.*` `overrides`; nothing is allocated.

    `base`: a config whose `optim` section is the starting point (e.g. a preset's);
    `model_options`: model options such as width or depth (`preset_memory` fills both in).
    """
    from vistas.models import vit

    name, spec_overrides = parse_optimizer(optimizer)
    cfg = config_lib.Config.from_dict(base.to_dict()) if base is not None else config_lib.Config()
    cfg.optim.name = name
    config_lib.apply_overrides(cfg, [*spec_overrides, *(
        o if o.startswith("optim.") else f"optim.{o}" for o in overrides)])
    optim = cfg.optim
    if name.lower() not in builder.OPTIMIZERS:
        builder.build_optimizer({}, name=name, lr=1.0, schedule=lambda s: 1.0)  # the error
    kw = {"num_classes": num_classes, "image_size": image_size, **(model_options or {})}
    family, _, variant = model.partition("-")
    if exact or family.lower() != "vit":
        params, nbytes = _measure(model, optim, **kw)
    else:
        depth = kw.pop("depth", None)
        p1, b1 = _measure(model, optim, depth=1, **kw)  # validates the model name first
        p2, b2 = _measure(model, optim, depth=2, **kw)
        depth = depth or vit.SIZES[vit.parse_variant(variant)[0]][1]
        params, nbytes = p1 + (depth - 1) * (p2 - p1), b1 + (depth - 1) * (b2 - b1)
    return {
        "model": model,
        "optimizer": optimizer,
        "options": {f.name: getattr(optim, f.name) for f in dataclasses.fields(optim)
                    if f.name in ("mu_dtype",) or f.name.startswith(name.lower() + "_")},
        "params": params,
        "state_bytes": nbytes,
        "bytes_per_param": nbytes / params,
    }


def preset_memory(cfg: config_lib.Config, optimizer: str | None = None,
                  overrides: Sequence[str] = (), exact: bool = False) -> dict[str, Any]:
    """`optimizer_memory` of the model and optimizer of a run config (e.g. a preset).

    The number of classes is read from the config's dataset (its eval split is loaded).
    """
    from vistas import experiment

    num_classes = experiment.num_classes_of(cfg)
    options = config_lib.model_options(cfg.model)
    options["channels"] = cfg.data.channels
    spec = optimizer if optimizer is not None else cfg.optim.name
    return optimizer_memory(cfg.model.name, spec, overrides=overrides, num_classes=num_classes,
                            image_size=cfg.data.image_size, exact=exact, base=cfg,
                            model_options=options)


def table(models: Sequence[str], optimizers: Sequence[str] | None = None,
          **kwargs: Any) -> list[dict[str, Any]]:
    """`optimizer_memory` for every model x optimizer (default: the `STANDARD` rows)."""
    optimizers = list(STANDARD) if not optimizers else list(optimizers)
    return [optimizer_memory(m, o, **kwargs) for m in models for o in optimizers]


__all__ = ["STANDARD", "optimizer_memory", "parse_optimizer", "preset_memory", "state_bytes",
           "table", "tree_bytes"]
