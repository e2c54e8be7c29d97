"""Multi-host start-up on JAX's own distributed runtime (``jax.distributed``).

``initialize()`` is called by the ``vistas`` command before anything touches a device:

- ``VISTAS_COORDINATOR=host:port`` with ``VISTAS_NUM_PROCESSES`` and ``VISTAS_PROCESS_ID``
  (and optionally ``VISTAS_LOCAL_DEVICE_IDS=0,1,...``): an explicit cluster, e.g. processes
  started by hand or by any launcher;
- otherwise, inside a SLURM job step with more than one task (``SLURM_NTASKS`` > 1), JAX's
  SLURM detection (coordinator = first node of the step, process id = ``SLURM_PROCID``);
- on a Cloud TPU pod slice, ``VISTAS_DISTRIBUTED=1`` lets JAX detect the slice;
- otherwise nothing: one process.

Every process then sees all devices of the job (``jax.devices()``) and its own
(``jax.local_devices()``); the input pipeline reads the process's share of each global
batch, the train state is laid out over the global mesh, and checkpoints are written and
restored collectively by orbax (each process its shards, into the same directory, which
must therefore be on a file system all hosts share). On CPU, processes exchange data
through gloo collectives.
"""

from __future__ import annotations

import os

from vistas.errors import ConfigError


def _int(name: str) -> int:
    value = os.environ.get(name)
    try:
        return int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ConfigError(f"{name}={value!r} must be an integer when VISTAS_COORDINATOR is set") from None


def requested() -> bool:
    """Whether the environment asks for a multi-process run (checked without importing JAX)."""
    if os.environ.get("VISTAS_COORDINATOR") or os.environ.get("VISTAS_DISTRIBUTED") == "1":
        return True
    try:
        return "SLURM_JOB_ID" in os.environ and int(os.environ.get("SLURM_NTASKS", "1")) > 1
    except ValueError:
        return False


def initialize() -> bool:
    """Starts ``jax.distributed`` when the environment asks for it; True if it did."""
    if not requested():
        return False
    import jax

    coordinator = os.environ.get("VISTAS_COORDINATOR")
    kwargs: dict = {}
    if coordinator:
        num, pid = _int("VISTAS_NUM_PROCESSES"), _int("VISTAS_PROCESS_ID")
        if num < 1 or not 0 <= pid < num:
            raise ConfigError(f"VISTAS_PROCESS_ID={pid} must be in [0, VISTAS_NUM_PROCESSES={num})")
        kwargs = dict(coordinator_address=coordinator, num_processes=num, process_id=pid)
        local = os.environ.get("VISTAS_LOCAL_DEVICE_IDS")
        if local:
            kwargs["local_device_ids"] = [int(i) for i in local.split(",")]
    platforms = os.environ.get("JAX_PLATFORMS", "")
    if platforms == "cpu" or (coordinator and not platforms and _cpu_only()):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**kwargs)
    return True


def _cpu_only() -> bool:
    """True when no accelerator plugin is installed (so the job will run on CPUs)."""
    import importlib.util

    return not any(importlib.util.find_spec(m) for m in ("jax_cuda12_plugin", "jax_cuda13_plugin", "libtpu"))


__all__ = ["initialize", "requested"]
