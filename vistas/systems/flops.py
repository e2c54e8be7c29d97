"""FLOPs of a training step: from XLA's cost analysis of the compiled step, or counted.

Two independent counts of the same thing, one floating-point multiply or add each (a
multiply-accumulate is 2 FLOPs):

- ``compiled_step_flops(cfg, num_classes)``: the train step of ``vistas.train.step`` for
  the run's model, optimizer and batch size, lowered and compiled without running (the
  model is abstract, so nothing is allocated) and read from
  ``compiled.cost_analysis()["flops"]``. It counts what XLA will execute: matmuls,
  elementwise work, softmax, LayerNorm, the optimizer update.
- ``vit_flops(vit_cfg)``: the analytic count of a ViT's matmuls per example (forward);
  training costs ``3 x`` the forward pass (the backward pass computes two matmuls per
  forward one), the convention of Kaplan et al. (2020) and "Scaling Vision Transformers".

``step_flops(cfg, num_classes)`` is what compute accounting uses: the cost-analysis
figure when the backend provides one, else the analytic count, with ``source`` saying
which. A later MFU measure divides it by the step time and the device's peak.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from vistas.config import Config

TRAIN_MULTIPLIER = 3  # forward + backward (2x forward) per example


def vit_flops(vc: Any) -> int:
    """Forward-pass FLOPs per example of the matmuls of ViT ``vc`` (a ``vit.ViTConfig``).

    Counted: patch embedding, Q/K/V/output projections, attention scores and the weighted
    sum of values, the MLP, the MAP head's attention and MLP, pre-logits and the
    classifier. Not counted (small next to the matmuls of any but the tiniest model):
    LayerNorm, softmax, GELU, residual adds, position embedding, pooling.
    """
    gh, gw = vc.grid
    n = gh * gw + vc.num_prefix  # tokens: the patches, a class token, registers
    d, m = vc.width, vc.mlp_dim
    macs = gh * gw * vc.patch * vc.patch * vc.channels * d  # patch embedding
    block = 4 * n * d * d + 2 * n * n * d + 2 * n * d * m  # qkv+out, scores+values, MLP
    macs += vc.depth * block
    if vc.pool == "map":  # one probe query attending to the patch tokens, then an MLP
        n = gh * gw
        macs += d * d + 2 * n * d * d + 2 * n * d + d * d + 2 * d * m
    features = vc.width
    if vc.representation_size:
        macs += d * vc.representation_size
        features = vc.representation_size
    macs += features * vc.num_classes
    return 2 * macs


def analytic_step_flops(cfg: Config, num_classes: int) -> int:
    """Training FLOPs of one step of ``cfg`` (ViT models): 3 x forward x batch size."""
    vc = _vit_config(cfg, num_classes)
    if vc is None:
        raise ValueError(f"no analytic FLOP count for model {cfg.model.name!r} (ViTs only)")
    return TRAIN_MULTIPLIER * vit_flops(vc) * cfg.data.batch_size


def _vit_config(cfg: Config, num_classes: int) -> Any:
    """The ``ViTConfig`` of ``cfg``'s model, or None for other families."""
    from vistas import config as config_lib
    from vistas.models import vit

    if not cfg.model.name.lower().startswith("vit-"):
        return None
    options = config_lib.model_options(cfg.model)
    options.update(image_size=cfg.data.image_size, channels=cfg.data.channels)
    return vit.variant_config(cfg.model.name.split("-", 1)[1], num_classes=num_classes, **options)


def abstract_step(cfg: Config, num_classes: int, global_batch: int) -> tuple[Any, Any, Any]:
    """``(train_step, state, batch)`` of ``cfg``: the step function of ``vistas.train.step``
    with an abstract (ShapeDtypeStruct) train state and batch; nothing is allocated."""
    from vistas import experiment
    from vistas.models import registry
    from vistas.optim import builder
    from vistas.train import losses
    from vistas.train import step as step_lib

    model = nnx.eval_shape(lambda: experiment.build_model(cfg, num_classes))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    params = nnx.to_pure_dict(params)
    schedule = optax.constant_schedule(1.0)
    tx = builder.from_config(params, cfg.optim, schedule)
    trainable = jax.tree.map(lambda label: label == builder.TRAIN,
                             builder.frozen_labels(params, cfg.optim.frozen))
    train_step = step_lib.make_train_step(
        graphdef, rest, tx, losses.get(cfg.train.loss),
        lambda s: builder.current_lr(schedule, cfg.optim.lr, s),
        use_rng=registry.needs_rng(model), sam_rho=cfg.optim.sam_rho, trainable=trainable)
    state = jax.eval_shape(lambda p: step_lib.init_state(p, tx, cfg.train.seed), params)
    d, b = cfg.data, global_batch
    label = (jax.ShapeDtypeStruct((b, num_classes), jnp.float32) if cfg.train.loss == "sigmoid_xent"
             else jax.ShapeDtypeStruct((b,), jnp.int32))
    batch = {"image": jax.ShapeDtypeStruct((b, d.image_size, d.image_size, d.channels), jnp.float32),
             "label": label}
    return train_step, state, batch


def compiled_step_flops(cfg: Config, num_classes: int) -> float | None:
    """FLOPs of one compiled train step of ``cfg`` (batch ``data.batch_size``) from XLA's
    cost analysis; None when the backend reports none."""
    train_step, state, batch = abstract_step(cfg, num_classes, cfg.data.batch_size)
    from vistas.systems import mfu

    return mfu.cost_flops(jax.jit(train_step).lower(state, batch).compile())


@dataclasses.dataclass(frozen=True)
class StepFlops:
    """FLOPs of one training step and where the figure comes from."""

    flops: float
    source: str  # "cost_analysis" or "analytic"
    analytic: float | None  # the analytic count too, when the model has one


def step_flops(cfg: Config, num_classes: int) -> StepFlops:
    """Cost analysis of the compiled step when available, else the analytic ViT count."""
    analytic = float(analytic_step_flops(cfg, num_classes)) if _vit_config(cfg, num_classes) else None
    compiled = compiled_step_flops(cfg, num_classes)
    if compiled is not None:
        return StepFlops(compiled, "cost_analysis", analytic)
    if analytic is None:
        raise ValueError(f"the backend gives no cost analysis and model {cfg.model.name!r} "
                         "has no analytic FLOP count")
    return StepFlops(analytic, "analytic", analytic)


__all__ = ["StepFlops", "abstract_step", "analytic_step_flops", "compiled_step_flops", "step_flops", "vit_flops"]
