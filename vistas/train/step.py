"""The jitted train and eval steps.

The train state is a plain dict pytree ``{"params", "opt_state", "step", "rng"}`` so that
optax, orbax and sharding see ordinary arrays. The model is rebuilt from its graph
definition inside the step (``nnx.merge``), which costs nothing after tracing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from vistas.evaluate import calibration
from vistas.optim import sam

State = dict[str, Any]
MIX_STREAM = 0x6D6978  # the batch-mixing random stream (mixup / CutMix), apart from the model's
TASK_STREAM = 0x7461736B  # the task's random stream (mixing weights), apart from the model's


def init_state(params: Any, tx: optax.GradientTransformation, seed: int, *,
               ema: bool = False) -> State:
    """The initial state; ``ema``: also ``"ema_params"``, the running average of the
    parameters (``ema_update``), starting at the initial parameters."""
    state = {
        "params": params,
        "opt_state": tx.init(params),
        "step": jnp.zeros((), jnp.int32),
        "rng": jax.random.PRNGKey(seed),
    }
    if ema:
        state["ema_params"] = jax.tree.map(jnp.copy, params)
    return state


def ema_update(ema: Any, params: Any, decay: float) -> Any:
    """Polyak averaging, decay·ema + (1-decay)·params leaf by leaf, in ema's dtypes."""
    return jax.tree.map(
        lambda e, p: (decay * e.astype(jnp.float32) + (1.0 - decay) * p.astype(jnp.float32)).astype(e.dtype),
        ema, params)


def _micro_batches(batch: dict, k: int) -> dict:
    """[B, ...] leaves -> [k, B/k, ...]; micro-batch i takes rows i, i+k, i+2k... so that each
    stays spread evenly over devices that hold contiguous slices of the batch."""
    return jax.tree.map(lambda x: jnp.swapaxes(x.reshape(x.shape[0] // k, k, *x.shape[1:]), 0, 1), batch)


def _micro(batch: dict, k: int, i: int) -> dict:
    return jax.tree.map(lambda x: x[i::k], batch)


def make_train_step(graphdef: nnx.GraphDef, rest: Any, tx: optax.GradientTransformation,
                    loss_fn: Callable, lr_fn: Callable, *, use_rng: bool, sam_rho: float = 0.0,
                    mix: Callable | None = None, accum_steps: int = 1,
                    ema_decay: float = 0.0,
                    trainable: Any = None, nonfinite: str = "stop", task: Any = None) -> Callable:
    """``step(state, batch) -> (state, metrics)``; metrics are scalars.

    ``task`` (e.g. ``vistas.train.distill.Task``) replaces the supervised objective: the step
    becomes ``step(state, batch, frozen)``; ``task.prepare(frozen, batch, key)`` turns the
    batch into the student's (``frozen``: parameters that are not trained, such as
    teachers'; ``key`` drawn from the state's RNG and step), ``task.loss(logits, batch)`` is
    the per-example loss and ``task.metrics(logits, batch)`` adds metrics.

    ``train/finite`` is 1 when the loss, the gradients and the updated parameters are all
    finite. ``nonfinite="skip"``: a step where they are not keeps the previous parameters and
    optimizer state (the step counter and data still advance) and adds one to
    ``state["skipped"]``, logged as ``train/skipped``; with ``"stop"`` the loop stops.

    ``sam_rho > 0``: the optimizer gets the SAM gradient (``vistas.optim.sam``), taken at the
    parameters perturbed by ρ·g/‖g‖ (``trainable``, a pytree of bools like the parameters,
    leaves frozen ones unperturbed); the logged loss and top-1 are those at the parameters.

    ``mix(key, images, labels) -> (images, targets)`` (``vistas.train.loop.batch_mixing``):
    mixup / CutMix of the images and of the labels made [B, K] targets, keyed by the state's
    RNG and step (so a resumed run mixes as the uninterrupted one); the loss takes the mixed
    targets, top-1 the original labels. ``accum_steps = k``: the gradient is the mean of
    those of k micro-batches of B/k examples, computed one after the other (``lax.scan``):
    the update of the whole batch with the activation memory of a micro-batch (SAM then
    perturbs each micro-batch by its own gradient). ``ema_decay > 0``:
    ``state["ema_params"]`` follows the parameters (``ema_update``) after each update.
    """

    def objective(params, batch, rng):
        logits, _ = nnx.merge(graphdef, params, rest)(batch["image"], rng=rng)
        if task is not None:
            return task.loss(logits, batch).mean(), logits
        return loss_fn(logits, batch["target"]).mean(), logits

    def loss_metrics_grads(params, batch, rng):
        """(loss, metrics, gradients) of one (micro-)batch."""
        def fn(p):
            return objective(p, batch, rng)

        if sam_rho:
            grad_fn = sam.value_and_sam_grad(fn, sam_rho, trainable)
        else:
            grad_fn = jax.value_and_grad(fn, has_aux=True)
        (loss, logits), grads = grad_fn(params)
        metrics = {("train/prec@1" if batch["label"].ndim == 2 else "train/top1"):
                   jnp.mean(correct_at_1(logits, batch["label"]))}
        if task is not None:
            metrics.update(task.metrics(logits, batch))
        return loss, metrics, grads

    def step(state: State, batch: dict, frozen: Any = None) -> tuple[State, dict]:
        step_rng = jax.random.fold_in(state["rng"], state["step"])
        rng = step_rng if use_rng else None
        if task is not None:
            batch = task.prepare(frozen, batch, jax.random.fold_in(step_rng, TASK_STREAM))
        batch = {**batch, "target": batch["label"]}
        if mix is not None:
            batch["image"], batch["target"] = mix(
                jax.random.fold_in(step_rng, MIX_STREAM), batch["image"], batch["label"])
        if accum_steps == 1:
            loss, batch_metrics, grads = loss_metrics_grads(state["params"], batch, rng)
        else:
            def micro_step(sums, xs):
                i, micro = xs
                out = loss_metrics_grads(state["params"], micro, None if rng is None else jax.random.fold_in(rng, i))
                return jax.tree.map(jnp.add, sums, out), None

            zeros = jax.tree.map(jnp.zeros_like, jax.eval_shape(loss_metrics_grads, state["params"],
                                                                  _micro(batch, accum_steps, 0), rng))
            sums, _ = jax.lax.scan(micro_step, zeros, (jnp.arange(accum_steps), _micro_batches(batch, accum_steps)))
            loss, batch_metrics, grads = jax.tree.map(lambda x: x / accum_steps, sums)
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        finite = all_finite((loss, grads, params))
        new_state = {**state, "step": state["step"] + 1}
        if nonfinite == "skip":
            params, opt_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old),
                                             (params, opt_state), (state["params"], state["opt_state"]))
            new_state["skipped"] = state["skipped"] + (~finite).astype(jnp.int32)
        metrics = {
            "train/loss": loss,
            **batch_metrics,
            "train/grad_norm": optax.tree.norm(grads),
            "train/lr": lr_fn(state["step"]),
            "train/finite": finite.astype(jnp.float32),
        }
        if "skipped" in new_state:
            metrics["train/skipped"] = new_state["skipped"]
        new_state.update(params=params, opt_state=opt_state)
        if ema_decay:
            new_state["ema_params"] = ema_update(state["ema_params"], params, ema_decay)
        return new_state, metrics

    return step


def all_finite(tree: Any) -> jax.Array:
    """A scalar bool: every floating-point leaf of ``tree`` is free of NaN and infinity."""
    leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(jnp.result_type(x), jnp.inexact)]
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves])) if leaves else jnp.array(True)


def correct_at_1(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """[B] 1.0 where the top-scoring class is right: the label, or for multi-hot labels
    [B, K] any of the labels (so its mean is precision@1)."""
    pred = jnp.argmax(logits, -1)
    if labels.ndim == 2:
        return jnp.take_along_axis(labels, pred[:, None], axis=-1)[:, 0].astype(jnp.float32)
    return (pred == labels).astype(jnp.float32)


def make_eval_step(graphdef: nnx.GraphDef, rest: Any, loss_fn: Callable) -> Callable:
    """``eval_step(params, batch, temperature=1.0) -> sums`` over unmasked examples: correct
    predictions (precision@1 for multi-hot labels), loss, examples; with integer labels also
    the calibration bin sums at temperature 1 (``ece/*``) and at ``temperature`` (``ece_ts/*``).
    """

    def eval_step(params: Any, batch: dict, temperature: Any = 1.0) -> dict:
        logits, _ = nnx.merge(graphdef, params, rest)(batch["image"])
        mask = batch["mask"].astype(jnp.float32)
        labels = batch["label"]
        sums = {
            "correct": jnp.sum(correct_at_1(logits, labels) * mask),
            "loss": jnp.sum(loss_fn(logits, labels) * mask),
            "count": jnp.sum(mask),
        }
        if labels.ndim == 1:
            for prefix, t in (("ece", 1.0), ("ece_ts", temperature)):
                for k, v in calibration.bin_sums(logits, labels, mask, t).items():
                    sums[f"{prefix}/{k}"] = v
        return sums

    return eval_step
