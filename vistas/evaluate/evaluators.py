"""Periodic evaluators of a run, built from its config.

An :class:`Evaluator` is a name, a cadence and ``fn(state) -> (metrics, text)``: the
metrics to record and, optionally, a text to show instead of ``name=value`` pairs.
Evaluators that share a ``row`` are written as one metrics row. ``from_config`` gives the
evaluations every run has: classification on ``data.eval_splits`` (every
``train.eval_every``) and few-shot transfer (every ``fewshot.every``) when
``fewshot.datasets`` is set; a task adds its own (``Task.evaluators``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax

from vistas.evaluate import classification, fewshot
from vistas.train import losses

Results = tuple[dict[str, float], "str | None"]


@dataclasses.dataclass
class Evaluator:
    """``fn(state) -> (metrics, text or None)`` every ``every`` steps and at the end.
    ``summary``: its metrics go into the run's summary. ``row``: evaluators with the same
    row are written together."""

    name: str
    every: int
    fn: Callable[[dict], Results]
    summary: bool = True
    row: str = "eval"


def classification_evaluator(exp: Any, mesh: Any, every: int) -> Evaluator:
    """Top-1, loss and calibration on every evaluation split (and of the EMA parameters)."""
    eval_step = jax.jit(classification.make_eval_step(exp.graphdef, exp.rest, losses.get(exp.cfg.train.loss)))
    return Evaluator("classification", every,
                     lambda state: (classification.evaluate_state(exp, state, mesh, eval_step), None))


def fewshot_evaluator(exp: Any, mesh: Any, every: int) -> Evaluator:
    """Few-shot linear transfer of the frozen features to ``fewshot.datasets``."""
    evaluate = fewshot.from_config(exp.cfg, exp.graphdef, exp.rest, mesh)

    def fn(state: dict) -> Results:
        report = evaluate(state["params"])
        return fewshot.flat_metrics(report), fewshot.format_table(report)

    return Evaluator("few-shot", every, fn, summary=False, row="fewshot")


def from_config(exp: Any, mesh: Any) -> list[Evaluator]:
    cfg = exp.cfg
    out = [classification_evaluator(exp, mesh, exp.every(cfg.train.eval_every, "train.eval_every"))]
    if cfg.fewshot.datasets:
        out.append(fewshot_evaluator(exp, mesh, exp.every(cfg.fewshot.every, "fewshot.every")))
    return out


__all__ = ["Evaluator", "classification_evaluator", "fewshot_evaluator", "from_config"]
