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

State = dict[str, Any]


def init_state(params: Any, tx: optax.GradientTransformation, seed: int) -> State:
    return {
        "params": params,
        "opt_state": tx.init(params),
        "step": jnp.zeros((), jnp.int32),
        "rng": jax.random.PRNGKey(seed),
    }


def make_train_step(graphdef: nnx.GraphDef, rest: Any, tx: optax.GradientTransformation,
                    loss_fn: Callable, lr_fn: Callable, *, use_rng: bool) -> Callable:
    """``step(state, batch) -> (state, metrics)``; metrics are scalars."""

    def step(state: State, batch: dict) -> tuple[State, dict]:
        rng = jax.random.fold_in(state["rng"], state["step"]) if use_rng else None

        def objective(params):
            logits, _ = nnx.merge(graphdef, params, rest)(batch["image"], rng=rng)
            return loss_fn(logits, batch["label"]).mean(), logits

        (loss, logits), grads = jax.value_and_grad(objective, has_aux=True)(state["params"])
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        metrics = {
            "train/loss": loss,
            "train/top1": jnp.mean(jnp.argmax(logits, -1) == batch["label"]),
            "train/grad_norm": optax.tree.norm(grads),
            "train/lr": lr_fn(state["step"]),
        }
        new_state = {**state, "params": params, "opt_state": opt_state, "step": state["step"] + 1}
        return new_state, metrics

    return step


def make_eval_step(graphdef: nnx.GraphDef, rest: Any, loss_fn: Callable) -> Callable:
    """``eval_step(params, batch) -> sums`` of correct predictions, loss and examples (masked)."""

    def eval_step(params: Any, batch: dict) -> dict:
        logits, _ = nnx.merge(graphdef, params, rest)(batch["image"])
        mask = batch["mask"].astype(jnp.float32)
        correct = (jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32)
        return {
            "correct": jnp.sum(correct * mask),
            "loss": jnp.sum(loss_fn(logits, batch["label"]) * mask),
            "count": jnp.sum(mask),
        }

    return eval_step
