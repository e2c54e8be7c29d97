"""What a run trains on and for: the ``Task`` protocol and the tasks a config can name.

The training loop knows no task by name. It asks the task for its training data, hands it
to the jitted step, and adds the task's evaluators to its periodic actions. A task is any
object with these members (a ``typing.Protocol``: no base class to inherit):

- ``data() -> (source, transform)``: the training source and its host-side transform;
- ``extra_keys``: per-example fields the pipeline carries besides ``image`` and ``label``;
- ``frozen``: a pytree of inputs the step takes but does not train (teachers' parameters),
  ``()`` when there are none;
- ``prepare(frozen, batch, key) -> batch``: inside the jitted step, before the model: what
  the task does on the device per batch (mixup/CutMix; views and teacher probabilities).
  ``key`` is the step's key; a task folds in its own stream constant. The returned batch
  holds the model's ``image`` and the ``label`` that top-1 is measured against;
- ``loss(logits, batch) -> [B]`` and ``metrics(logits, batch) -> {name: scalar}``;
- ``evaluators(every) -> [Evaluator]``: the task's own periodic evaluations.

``from_config`` builds the task a config describes through the ``TASKS`` table; a new task
is a class with these members and one entry there (docs/design.md has a worked example).
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable
from typing import Any, Protocol

import jax

from vistas.config import Config
from vistas.train import distill, supervised


class Task(Protocol):
    extra_keys: tuple[str, ...]
    frozen: Any

    def data(self) -> tuple[Any, Callable]: ...

    def prepare(self, frozen: Any, batch: dict, key: jax.Array) -> dict: ...

    def loss(self, logits: jax.Array, batch: dict) -> jax.Array: ...

    def metrics(self, logits: jax.Array, batch: dict) -> dict: ...

    def evaluators(self, every: int) -> list: ...


# name -> (does the config ask for it?, builder(cfg, exp, workdir, mesh, resuming, say) -> Task)
TASKS: dict[str, tuple[Callable[[Config], bool], Callable[..., Task]]] = {
    "distillation": (distill.active, distill.setup),
    "supervised": (lambda cfg: True, supervised.setup),
}


def name_of(cfg: Config) -> str:
    """The name of the task ``cfg`` describes (the first entry of ``TASKS`` it asks for)."""
    return next(name for name, (wanted, _) in TASKS.items() if wanted(cfg))


def from_config(cfg: Config, exp: Any, workdir: pathlib.Path, mesh: Any, *, resuming: bool,
                say: Callable[[str], None] = print) -> Task:
    """The task of ``cfg`` for experiment ``exp`` (see ``TASKS``)."""
    _, build = TASKS[name_of(cfg)]
    return build(cfg, exp, workdir, mesh, resuming=resuming, say=say)


__all__ = ["TASKS", "Task", "from_config", "name_of"]
