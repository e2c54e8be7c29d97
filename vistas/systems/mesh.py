"""Device mesh and shardings for data-parallel training.

One mesh axis, ``data``, over every device of every process. Parameters and optimizer
state are replicated; batches are split along their first dimension. Each process feeds
its own slice of the global batch (``jax.make_array_from_process_local_data``).
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


def batch_sharded(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def check_batch_size(global_batch: int, mesh: Mesh, what: str = "data.batch_size") -> None:
    from vistas.errors import ConfigError

    n = mesh.devices.size
    if global_batch % n:
        raise ConfigError(
            f"{what}={global_batch} is not divisible by the {n} devices of the mesh; "
            f"use a multiple of {n}"
        )


def put_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """This process's part of a global batch -> globally sharded arrays."""
    sharding = batch_sharded(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}


def put_replicated(tree: Any, mesh: Mesh) -> Any:
    return jax.device_put(tree, replicated(mesh))
