"""Named model outputs (``logits``, ``pre_logits``...) over a whole data source.

``outputs(graphdef, rest, params, source, ...)`` runs the model over every example once
(padding masked out, each example counted once across processes) and returns the chosen
output with the labels, as NumPy arrays gathered on every process. The jitted function is
shared by every call with the same model structure, so periodic evaluations compile once.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vistas.data import pipeline
from vistas.systems import mesh as mesh_lib


@functools.partial(jax.jit, static_argnames=("graphdef", "key", "sharding"))
def _predict(params: Any, rest: Any, batch: dict, *, graphdef: Any, key: str, sharding: Any):
    logits, out = nnx.merge(graphdef, params, rest)(batch["image"])
    value = logits if key == "logits" else out[key]
    result = (value.astype(jnp.float32), batch["label"], batch["mask"])
    return jax.lax.with_sharding_constraint(result, sharding)


def outputs(graphdef: Any, rest: Any, params: Any, source: Any, *, key: str, transform: Callable,
            batch_size: int, mesh: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """``out[key]`` [N, ...] float32 and labels [N] (or [N, K]) for every example of ``source``."""
    mesh = mesh if mesh is not None else mesh_lib.data_mesh()
    sharding = mesh_lib.replicated(mesh)
    values, labels = [], []
    for batch in pipeline.eval_batches(
        source, global_batch_size=batch_size, transform=transform,
        process_index=jax.process_index(), process_count=jax.process_count(),
    ):
        v, y, m = _predict(params, rest, mesh_lib.put_batch(batch, mesh), graphdef=graphdef,
                           key=key, sharding=sharding)
        m = np.asarray(m)
        values.append(np.asarray(v)[m])
        labels.append(np.asarray(y)[m])
    return np.concatenate(values), np.concatenate(labels)
