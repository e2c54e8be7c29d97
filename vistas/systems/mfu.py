"""Model FLOPs utilisation: FLOPs per train step from the compiled program, against the peak.

``StepCompute.measure`` reads XLA's cost analysis of the compiled train step (per device:
the partitioned program each device runs) before the first step runs; the compilation is
the one the step then uses (same function, same arguments: JAX's cache). During training
the loop logs

- ``train/flops_per_step``: FLOPs of one step over all devices (per-device figure x devices);
- ``train/flops_per_sec``: achieved FLOP/s over all devices;
- ``train/mfu``: achieved / peak, the peak being the devices' dense matmul peak for the
  compute dtype (``PEAKS``) or, on CPU, a matmul peak measured in this process;
- ``train/devices``.

Cost analysis counts what the program executes: with rematerialisation the recomputed
forward pass is included (hardware FLOPs rather than model FLOPs); ``vistas.systems.flops``
gives the analytic model count of a ViT for comparison.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

# Dense (no sparsity) peak FLOP/s per chip, from the vendors' data sheets: bf16 and fp32
# (fp32 on the vector units for GPUs; TPUs run f32 matmuls on the bf16 MXU by default, so
# their bf16 peak is used for both). Matched against ``device.device_kind`` in order.
PEAKS: list[tuple[str, dict[str, float]]] = [
    ("h200", {"bfloat16": 989e12, "float32": 67e12}),
    ("h100", {"bfloat16": 989e12, "float32": 67e12}),
    ("a100", {"bfloat16": 312e12, "float32": 19.5e12}),
    ("v5p", {"bfloat16": 459e12, "float32": 459e12}),
    ("v5 lite", {"bfloat16": 197e12, "float32": 197e12}),
    ("v5e", {"bfloat16": 197e12, "float32": 197e12}),
    ("v4", {"bfloat16": 275e12, "float32": 275e12}),
]


@functools.cache
def cpu_matmul_peak(n: int = 1024, repeats: int = 5) -> float:
    """FLOP/s of a float32 ``n x n`` matmul on this host's CPU backend (best of ``repeats``):
    the ceiling a CPU run's MFU is measured against, shared by every simulated CPU device."""
    cpu = jax.devices("cpu")[0]
    a = jax.device_put(jnp.ones((n, n), jnp.float32), cpu)
    matmul = jax.jit(lambda x: x @ x)
    matmul(a).block_until_ready()
    best = np.inf
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(a).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2.0 * n**3 / best


def device_peak(device: Any, dtype: str = "float32") -> float | None:
    """Peak FLOP/s of one ``device`` for ``dtype`` matmuls (None when unknown)."""
    if device.platform == "cpu":
        return cpu_matmul_peak() / max(1, len(jax.devices("cpu")))
    kind = str(device.device_kind).lower()
    for pattern, peaks in PEAKS:
        if pattern in kind:
            return peaks.get(dtype, peaks["float32"])
    return None


def cost_flops(compiled: Any) -> float | None:
    """FLOPs of a compiled program from XLA's cost analysis (None when not reported)."""
    analysis = compiled.cost_analysis()
    if isinstance(analysis, (list, tuple)):  # older jax: one dict per computation
        analysis = analysis[0] if analysis else None
    flops = (analysis or {}).get("flops")
    return float(flops) if flops is not None and flops > 0 else None


@dataclasses.dataclass(frozen=True)
class StepCompute:
    """FLOPs of one train step and the peak of the devices it runs on."""

    flops_per_device: float | None
    devices: int
    peak_per_device: float | None

    @classmethod
    def measure(cls, jitted: Any, mesh: Any, *args: Any, dtype: str | None = None) -> StepCompute:
        """Compiles ``jitted`` for ``args`` under ``mesh`` (the compilation the first call
        then reuses) and reads its FLOPs."""
        with jax.set_mesh(mesh):
            compiled = jitted.lower(*args).compile()
        devices = list(mesh.devices.flat)
        return cls(cost_flops(compiled), len(devices), device_peak(devices[0], dtype or "float32"))

    def metrics(self, steps_per_sec: float) -> dict[str, float]:
        if self.flops_per_device is None:
            return {"train/devices": float(self.devices)}
        flops = self.flops_per_device * self.devices
        row = {"train/flops_per_step": flops, "train/flops_per_sec": flops * steps_per_sec,
               "train/devices": float(self.devices)}
        if self.peak_per_device:
            row["train/mfu"] = self.flops_per_device * steps_per_sec / self.peak_per_device
        return row


__all__ = ["PEAKS", "StepCompute", "cost_flops", "cpu_matmul_peak", "device_peak"]
