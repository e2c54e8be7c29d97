"""Helpers shared by the reliability tests: a tiny run, and ways to inject faults."""

from __future__ import annotations

import contextlib
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
from conftest import smoke

from vistas import checkpoint as ckpt_lib
from vistas.data import pipeline
from vistas.train import loop, losses

# A depth-1, width-32 ViT on Fashion-MNIST: a run of a few dozen steps takes seconds.
TINY = ["model.depth=1", "model.width=32", "model.mlp_dim=64", "model.num_heads=2",
        "data.num_train_examples=512", "data.batch_size=32", "schedule.warmup=2",
        "data.eval_splits=['test[:200]']", "data.eval_batch_size=200", "train.progress=False"]


def tiny(*overrides: str):
    return smoke(*TINY, *overrides)


def leaves(tree) -> list[tuple[str, np.ndarray]]:
    return [(jax.tree_util.keystr(p), np.asarray(x)) for p, x in jax.tree_util.tree_leaves_with_path(tree)]


def assert_same_tree(a, b) -> None:
    a, b = leaves(a), leaves(b)
    assert [n for n, _ in a] == [n for n, _ in b] and len(a) > 3
    for (name, x), (_, y) in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y, err_msg=name)


def checkpointed_params(cfg, workdir, steps) -> dict:
    """{step: parameters} of the checkpoints ``steps`` of the run ``cfg`` in ``workdir``."""
    exp = loop.build(cfg, with_train=False)
    c = ckpt_lib.Checkpointer(pathlib.Path(workdir) / "checkpoints", read_only=True)
    with contextlib.closing(c):
        return {s: c.restore_params(s, exp.params) for s in steps}


class _Poisoned:
    """Wraps a training iterator; the ``nth`` batch it hands out (1-based) is altered."""

    def __init__(self, inner, nth: set[int], how: str):
        self.inner, self.nth, self.how, self.count = inner, nth, how, 0

    def __iter__(self):
        return self

    def __next__(self):
        batch = next(self.inner)
        self.count += 1
        if self.count in self.nth:
            batch = dict(batch)
            if self.how == "loss":  # NaN pixels: NaN logits, loss and gradients
                batch["image"] = np.full_like(batch["image"], np.nan)
            else:  # every label the same: the marker of _nan_grad_loss, whose loss stays finite
                batch["label"] = np.zeros_like(batch["label"])
        return batch

    def __getattr__(self, name):  # get_state, set_state, close
        return getattr(self.inner, name)


@jax.custom_vjp
def _nan_grad_if(logits, flag):
    return logits


def _fwd(logits, flag):
    return logits, flag


def _bwd(flag, g):
    return jnp.where(flag, jnp.nan, 1.0) * g, None


_nan_grad_if.defvjp(_fwd, _bwd)


def inject_nonfinite(monkeypatch, steps: set[int], how: str) -> None:
    """Makes the training batches of ``steps`` (counted from the start of each session) give a
    NaN loss (``how="loss"``) or a finite loss with NaN gradients (``how="grad"``)."""
    real_iterator, real_get = pipeline.train_iterator, losses.get

    def train_iterator(*args, **kwargs):
        return _Poisoned(real_iterator(*args, **kwargs), steps, how)

    def get(name, *args, **kwargs):
        base = real_get(name, *args, **kwargs)

        def loss(logits, labels):
            flag = jnp.all(labels == labels[0]) if how == "grad" else jnp.array(False)
            return base(_nan_grad_if(logits, flag), labels)

        return loss

    monkeypatch.setattr(pipeline, "train_iterator", train_iterator)
    monkeypatch.setattr(losses, "get", get)
