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

from vistas.evaluate.classification import correct_at_1, make_eval_step
from vistas.optim import sam
from vistas.train import supervised

State = dict[str, Any]


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
                    task: Any, lr_fn: Callable, *, use_rng: bool, sam_rho: float = 0.0,
                    accum_steps: int = 1, ema_decay: float = 0.0,
                    trainable: Any = None, nonfinite: str = "stop") -> Callable:
    """``step(state, batch, frozen=()) -> (state, metrics)``; metrics are scalars.

    ``task`` (``vistas.train.task.Task``: supervised, distillation...) supplies the
    objective: ``task.prepare(frozen, batch, key)`` turns the pipeline's batch into the
    model's (mixup / CutMix; views and teacher probabilities; ``frozen``: inputs that are not
    trained, such as teachers' parameters; ``key``: the step's key, from the state's RNG and
    step, so a resumed run draws as the uninterrupted one), ``task.loss(logits, batch)`` is
    the per-example loss and ``task.metrics(logits, batch)`` adds metrics; top-1 is measured
    against the prepared batch's ``label``. A plain loss function ``loss(logits, labels)``
    stands for the supervised task without mixing.

    ``train/finite`` is 1 when the loss, the gradients and the updated parameters are all
    finite. ``nonfinite="skip"``: a step where they are not keeps the previous parameters and
    optimizer state (the step counter and data still advance) and adds one to
    ``state["skipped"]``, logged as ``train/skipped``; with ``"stop"`` the loop stops.

    ``sam_rho > 0``: the optimizer gets the SAM gradient (``vistas.optim.sam``), taken at the
    parameters perturbed by ρ·g/‖g‖ (``trainable``, a pytree of bools like the parameters,
    leaves frozen ones unperturbed); the logged loss and top-1 are those at the parameters.

    ``accum_steps = k``: the gradient is the mean of those of k micro-batches of B/k
    examples, computed one after the other (``lax.scan``): the update of the whole batch with
    the activation memory of a micro-batch (SAM then perturbs each micro-batch by its own
    gradient). ``ema_decay > 0``: ``state["ema_params"]`` follows the parameters
    (``ema_update``) after each update.
    """
    if not hasattr(task, "prepare"):
        task = supervised.from_loss(task)

    def objective(params, batch, rng):
        logits, _ = nnx.merge(graphdef, params, rest)(batch["image"], rng=rng)
        return task.loss(logits, batch).mean(), logits

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
        metrics.update(task.metrics(logits, batch))
        return loss, metrics, grads

    def step(state: State, batch: dict, frozen: Any = ()) -> tuple[State, dict]:
        step_rng = jax.random.fold_in(state["rng"], state["step"])
        rng = step_rng if use_rng else None
        batch = task.prepare(frozen, batch, step_rng)
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


__all__ = ["State", "all_finite", "correct_at_1", "ema_update", "init_state", "make_eval_step",
           "make_train_step"]
