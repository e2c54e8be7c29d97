"""Classification evaluation of a run: top-1 (precision@1 for multi-label data), loss and
calibration error on every ``data.eval_splits`` split, each example counted exactly once."""

from __future__ import annotations

import json
import pathlib
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vistas import experiment, runs
from vistas.data import pipeline
from vistas.evaluate import calibration
from vistas.files import atomic_write
from vistas.systems import mesh as mesh_lib
from vistas.train import losses


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


def evaluate(exp: experiment.Experiment, params: Any, mesh: Any,
             eval_step: Callable | None = None) -> dict[str, float]:
    """Top-1 (precision@1 for multi-label data), loss and calibration error (ECE, and after
    temperature scaling fitted on ``data.calibration_split`` when set) on every
    ``data.eval_splits`` split; each example counted exactly once."""
    d = exp.cfg.data
    mesh_lib.check_batch_size(d.eval_batch_size, mesh, "data.eval_batch_size")
    if eval_step is None:
        eval_step = jax.jit(make_eval_step(exp.graphdef, exp.rest, losses.get(exp.cfg.train.loss)))
    transform = experiment.eval_transform(exp.cfg)
    results: dict[str, float] = {}
    temperature = calibration.temperature_for(exp, params, mesh, transform, results)
    for split, source in exp.eval_sources.items():
        totals: dict[str, Any] = {}
        for batch in pipeline.eval_batches(
            source, global_batch_size=d.eval_batch_size, transform=transform,
            process_index=jax.process_index(), process_count=jax.process_count(),
        ):
            sums = eval_step(params, mesh_lib.put_batch(batch, mesh), temperature or 1.0)
            for k, v in sums.items():
                totals[k] = totals.get(k, 0.0) + np.asarray(v, np.float64)
        count = float(totals["count"])
        if int(count) != len(source):
            raise RuntimeError(f"evaluated {count} examples of {split}, expected {len(source)}")
        top1 = "prec@1" if getattr(source, "multi_label", False) else "top1"
        results[f"eval/{split}/{top1}"] = float(totals["correct"]) / count
        results[f"eval/{split}/loss"] = float(totals["loss"]) / count
        results.update(calibration.split_results(totals, f"eval/{split}", scaled=temperature is not None))
    return results


def evaluate_state(exp: experiment.Experiment, state: dict, mesh: Any,
                   eval_step: Callable | None = None) -> dict[str, float]:
    """``evaluate`` of the state's parameters and, when it keeps an EMA (``train.ema_decay``),
    of the averaged parameters too, their metrics prefixed ``ema/`` (``ema/eval/test/top1``)."""
    results = evaluate(exp, state["params"], mesh, eval_step)
    if "ema_params" in state:
        ema = evaluate(exp, state["ema_params"], mesh, eval_step)
        results.update({f"ema/{k}": v for k, v in ema.items()})
    return results


def evaluate_workdir(workdir: str | pathlib.Path, *, splits: list[str] | None = None,
                     step: int | None = None) -> dict[str, Any]:
    """Evaluates a checkpoint of ``workdir`` (the latest by default) and writes ``eval_<step>.json``."""
    workdir = pathlib.Path(workdir)
    cfg = runs.load_config(workdir)
    if splits:
        cfg.data.eval_splits = list(splits)
    exp, params, found = runs.final_params(workdir, cfg, step)
    results = {"step": found, **evaluate(exp, params, mesh_lib.data_mesh())}
    if cfg.train.ema_decay:  # the averaged parameters too
        exp, ema, _ = runs.final_params(workdir, cfg, found, key="ema_params")
        results.update({f"ema/{k}": v for k, v in evaluate(exp, ema, mesh_lib.data_mesh()).items()})
    if jax.process_index() == 0:
        atomic_write(workdir / f"eval_{found}.json", json.dumps(results, indent=2))
    return results


__all__ = ["correct_at_1", "evaluate", "evaluate_state", "evaluate_workdir", "make_eval_step"]
