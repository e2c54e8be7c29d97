"""Model and data sharding: a device mesh with named axes and per-parameter sharding rules.

The mesh has three axes, ``data``, ``fsdp`` and ``model`` (``mesh.data`` x ``mesh.fsdp`` x
``mesh.model`` devices). Batches are split over ``data`` and ``fsdp`` together; parameters
are placed by rules ``(regex on the "/"-joined parameter path, placement)``, first full
match wins, as every other per-parameter choice (``vistas.optim.rules``). A placement is

- ``"replicate"``: every device holds the whole array;
- ``"fsdp"``: the largest dimension divisible by the ``fsdp`` axis is split over it
  (ZeRO-3 / fully sharded data parallel: gathered for the matmul, reduce-scattered after);
- a tuple of axis names (or None) for the array's TRAILING dimensions, e.g.
  ``("fsdp", "model", None)`` for an attention kernel ``[D, H, Dh]``: heads over ``model``
  (tensor parallelism as in the ViT-22B paper), the input dimension over ``fsdp``. Leading
  dimensions not named (the layer axis of a scanned encoder) are not split. A dimension that
  an axis does not divide is left whole.

An axis of size 1 splits nothing, so the same rules serve pure data parallelism
(``model=1, fsdp=1``), FSDP, tensor parallelism and their mixes. Optimizer state follows
its parameter: a state leaf whose path ends with a parameter's path and has its shape
gets that parameter's placement (Adam's moments, the EMA); any other leaf (factored
second moments, Shampoo statistics) is placed by ``"fsdp"`` on its own shape.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from vistas.errors import ConfigError
from vistas.optim import rules as rules_lib

AXES = ("data", "fsdp", "model")
PLACEMENTS = ("replicate", "fsdp")

# Tensor-parallel layouts of the ViT (heads and MLP hidden units over `model`, the other
# big dimension over `fsdp`), then FSDP for everything else.
DEFAULT_RULES: list[tuple[str, Any]] = [
    (r".*attn/(query|key|value)/kernel", ("fsdp", "model", None)),  # [D, H, Dh]
    (r".*attn/(query|key|value)/bias", ("model", None)),  # [H, Dh]
    (r".*attn/out/kernel", ("model", None, "fsdp")),  # [H, Dh, D]
    (r".*mlp/fc1/kernel", ("fsdp", "model")),  # [D, M]
    (r".*mlp/fc1/bias", ("model",)),
    (r".*mlp/fc2/kernel", ("model", "fsdp")),  # [M, D]
    (r".*in_proj/kernel", ("fsdp", "model")),  # fused parallel block [D, 3HDh + M]
    (r".*in_proj/bias", ("model",)),
    (r".*out_proj/kernel", ("model", "fsdp")),  # [HDh + M, D]
    (r".*", "fsdp"),
]


BATCH = ("data", "fsdp")  # activations' batch dimension is split over these


def constrain(x: jax.Array, *spec: Any) -> jax.Array:
    """``x`` constrained to ``spec`` (one entry per dimension: an axis name, a tuple of axis
    names, or None) on the mesh set by ``jax.set_mesh``; a no-op without one. Axes the mesh
    lacks, of size 1, or that do not divide their dimension are dropped, so models call it
    unconditionally (activation layouts for FSDP and tensor parallelism)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return x
    entries = []
    for size, entry in zip(x.shape, spec, strict=True):
        names = tuple(a for a in ((entry,) if isinstance(entry, str) else entry or ())
                      if a in mesh.axis_names and mesh.shape[a] > 1)
        if names and size % math.prod(mesh.shape[a] for a in names):
            names = ()
        entries.append(names if len(names) > 1 else (names[0] if names else None))
    if not any(entries):
        return x
    return jax.lax.with_sharding_constraint(x, PartitionSpec(*entries))


def in_mesh(fn: Callable, mesh: Mesh) -> Callable:
    """``fn`` (a jitted step) called with ``mesh`` set (``jax.set_mesh``), so that the
    activation constraints of the models (``constrain``) apply when it is traced."""

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        with jax.set_mesh(mesh):
            return fn(*args, **kwargs)

    return call


def mesh_shape(data: int = -1, fsdp: int = 1, model: int = 1, *, num_devices: int | None = None
               ) -> dict[str, int]:
    """``{"data": d, "fsdp": f, "model": m}`` with ``d·f·m`` = the number of devices; one
    size may be -1 (the devices left over)."""
    n = jax.device_count() if num_devices is None else num_devices
    sizes = {"data": data, "fsdp": fsdp, "model": model}
    for name, size in sizes.items():
        if not isinstance(size, int) or isinstance(size, bool) or (size < 1 and size != -1):
            raise ConfigError(f"mesh.{name}={size!r} is invalid; use a positive device count or -1 "
                              f"(the devices left over)")
    free = [name for name, size in sizes.items() if size == -1]
    if len(free) > 1:
        raise ConfigError(f"mesh sizes {sizes} leave {len(free)} axes at -1; at most one may be -1")
    fixed = math.prod(size for size in sizes.values() if size != -1)
    if free:
        if n % fixed:
            raise ConfigError(f"mesh sizes {sizes}: {n} devices are not divisible by {fixed}; "
                              f"choose sizes whose product divides {n}")
        sizes[free[0]] = n // fixed
    elif fixed != n:
        raise ConfigError(f"mesh sizes {sizes} use {fixed} devices but there are {n}; "
                          f"make data x fsdp x model = {n} (or set one to -1)")
    return sizes


def make_mesh(data: int = -1, fsdp: int = 1, model: int = 1, *,
              devices: Sequence[Any] | None = None) -> Mesh:
    """A mesh over ``devices`` (all of every process by default) with axes ``AXES``."""
    devices = list(jax.devices() if devices is None else devices)
    shape = mesh_shape(data, fsdp, model, num_devices=len(devices))
    grid = np.asarray(devices, dtype=object).reshape([shape[a] for a in AXES])
    return Mesh(grid, AXES)


def mesh_from_config(mc: Any) -> Mesh:
    """The mesh of a ``MeshConfig`` (``mesh.data``, ``mesh.fsdp``, ``mesh.model``)."""
    return make_mesh(mc.data, mc.fsdp, mc.model)


def _fsdp_spec(shape: Sequence[int], mesh: Mesh) -> PartitionSpec:
    n = mesh.shape.get("fsdp", 1)
    if n > 1:
        for dim in sorted(range(len(shape)), key=lambda i: (-shape[i], i)):
            if shape[dim] % n == 0:
                return PartitionSpec(*[("fsdp" if i == dim else None) for i in range(len(shape))])
    return PartitionSpec()


def _check_placement(value: Any, what: str) -> None:
    if isinstance(value, str):
        if value not in PLACEMENTS:
            raise ConfigError(f"{what}: placement {value!r} is unknown; use 'replicate', 'fsdp' or a "
                              f"tuple of axis names {AXES} / None for the trailing dimensions")
        return
    if not isinstance(value, (tuple, list)) or not all(v is None or v in AXES for v in value):
        raise ConfigError(f"{what}: placement {value!r} is invalid; use 'replicate', 'fsdp' or a "
                          f"tuple of axis names {AXES} / None, e.g. ('fsdp', 'model')")
    named = [v for v in value if v is not None]
    if len(named) != len(set(named)):
        raise ConfigError(f"{what}: placement {value!r} uses a mesh axis twice")


def spec_for(shape: Sequence[int], placement: Any, mesh: Mesh, what: str = "mesh.rules") -> PartitionSpec:
    """The PartitionSpec of an array of ``shape`` under ``placement`` on ``mesh``."""
    _check_placement(placement, what)
    if placement == "replicate":
        return PartitionSpec()
    if placement == "fsdp":
        return _fsdp_spec(shape, mesh)
    placement = tuple(placement)
    if len(placement) > len(shape):
        raise ConfigError(f"{what}: placement {placement!r} names {len(placement)} dimensions but the "
                          f"array has shape {tuple(shape)}")
    lead = len(shape) - len(placement)
    spec = [None] * lead
    for size, axis in zip(shape[lead:], placement, strict=True):
        keep = axis is not None and axis in mesh.axis_names and size % mesh.shape[axis] == 0
        spec.append(axis if keep and mesh.shape[axis] > 1 else None)
    return PartitionSpec(*spec) if any(spec) else PartitionSpec()


def param_specs(params: Any, mesh: Mesh, rules: Any = None, *, name: str = "mesh.rules") -> Any:
    """A pytree like ``params`` of PartitionSpecs (``rules`` None: ``DEFAULT_RULES``)."""
    compiled = rules_lib.compile_rules(DEFAULT_RULES if rules is None else rules, name)
    for _, placement in compiled:
        _check_placement(placement, name)

    def one(path: Any, leaf: Any) -> PartitionSpec:
        p = rules_lib.path_str(path)
        placement = rules_lib.first_match(p, compiled, "replicate")
        return spec_for(np.shape(leaf), placement, mesh, f"{name} for {p}")

    return jax.tree_util.tree_map_with_path(one, params)


def _keys(path: Any) -> tuple[str, ...]:
    return tuple(rules_lib.path_str([k]) for k in path)


def state_specs(state: Any, params: Any, mesh: Mesh, rules: Any = None) -> Any:
    """PartitionSpecs of a whole train state: leaves that mirror a parameter (same path
    suffix, same shape) are placed like it, the others by ``"fsdp"`` on their own shape."""
    specs = param_specs(params, mesh, rules)
    by_path = {
        _keys(path): (np.shape(leaf), spec)
        for (path, leaf), spec in zip(jax.tree_util.tree_leaves_with_path(params),
                                      jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, PartitionSpec)),
                                      strict=True)
    }

    def one(path: Any, leaf: Any) -> PartitionSpec:
        keys, shape = _keys(path), np.shape(leaf)
        for i in range(len(keys)):
            found = by_path.get(keys[i:])
            if found is not None and found[0] == shape:
                return found[1]
        return _fsdp_spec(shape, mesh)

    return jax.tree_util.tree_map_with_path(one, state)


def to_shardings(specs: Any, mesh: Mesh) -> Any:
    return jax.tree.map(lambda s: NamedSharding(mesh, s), specs,
                        is_leaf=lambda x: isinstance(x, PartitionSpec))


def state_shardings(state: Any, params: Any, mesh: Mesh, rules: Any = None) -> Any:
    """NamedShardings for ``state`` (see ``state_specs``)."""
    return to_shardings(state_specs(state, params, mesh, rules), mesh)


def bytes_per_device(tree: Any, specs: Any, mesh: Mesh) -> int:
    """Bytes one device holds of ``tree`` (arrays or ShapeDtypeStructs) placed by ``specs``."""
    total = 0
    for leaf, spec in zip(jax.tree.leaves(tree),
                          jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, PartitionSpec)),
                          strict=True):
        shape = list(np.shape(leaf))
        for i, axis in enumerate(spec):
            for a in (axis if isinstance(axis, tuple) else (axis,)):
                if a is not None:
                    shape[i] //= mesh.shape[a]
        total += math.prod(shape) * np.dtype(leaf.dtype).itemsize
    return total


def describe(params: Any, mesh: Mesh, rules: Any = None) -> list[tuple[str, tuple[int, ...], str]]:
    """``[(path, shape, spec), ...]`` for every parameter: for logging who is split how."""
    specs = jax.tree.leaves(param_specs(params, mesh, rules),
                            is_leaf=lambda x: isinstance(x, PartitionSpec))
    return [(rules_lib.path_str(path), tuple(np.shape(leaf)), str(spec))
            for (path, leaf), spec in zip(jax.tree_util.tree_leaves_with_path(params), specs, strict=True)]
