"""Device meshes and batch shardings.

``data_mesh()``: one axis, ``data``, over every device of every process (evaluation and
the data-parallel default). Training meshes with ``data``, ``fsdp`` and ``model`` axes and
the placement of parameters come from ``vistas.systems.sharding``. Batches are split along
their first dimension over the ``data`` and ``fsdp`` axes (replicated over ``model``); each
process feeds its own slice of the global batch (``jax.make_array_from_process_local_data``).
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def data_mesh(devices: list | None = None) -> Mesh:
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


BATCH_AXES = (DATA_AXIS, "fsdp")


def batch_shards(mesh: Mesh) -> int:
    """Into how many parts a batch is split (the sizes of the mesh's batch axes)."""
    return int(np.prod([mesh.shape[a] for a in BATCH_AXES if a in mesh.axis_names]))


def batch_sharded(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec(tuple(a for a in BATCH_AXES if a in mesh.axis_names)))


def check_batch_size(global_batch: int, mesh: Mesh, what: str = "data.batch_size") -> None:
    from vistas.errors import ConfigError

    n = batch_shards(mesh)
    if global_batch % n:
        raise ConfigError(
            f"{what}={global_batch} is not divisible by the {n} devices that split the batch; "
            f"use a multiple of {n}"
        )


def put_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """This process's part of a global batch -> globally sharded arrays."""
    sharding = batch_sharded(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}


def put_replicated(tree: Any, mesh: Mesh) -> Any:
    return jax.device_put(tree, replicated(mesh))
