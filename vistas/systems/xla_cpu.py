"""Defaults for XLA's CPU compiler, set in ``XLA_FLAGS`` when vistas is imported.

XLA reads ``XLA_FLAGS`` once, when JAX creates its first backend, so ``import vistas`` adds
the flags below unless the variable already names them (a user's own setting always wins)
or ``VISTAS_XLA_DEFAULTS=0``. They only change how XLA:CPU compiles; GPU and TPU backends
ignore them.

- ``--xla_cpu_experimental_ynn_fusion_type=`` (empty: no YNNPACK fusions). With the jaxlib
  pinned here XLA:CPU hands matmuls, fused with their neighbours, to YNNPACK by default;
  on the x86 CPUs measured, Eigen's matmuls plus XLA's own fusions are faster for every
  model family: ViT-Ti/16 inference 1.7x, ViT-S/16 1.6x, training 1.1-1.2x, BiT-R50x1
  training 1.3x (``benchmarks/peer_throughput.py``; figures in docs/performance.md).
"""

from __future__ import annotations

import os
import sys
import warnings

DEFAULTS = {"xla_cpu_experimental_ynn_fusion_type": ""}


def flags_with_defaults(current: str) -> str:
    """``current`` XLA_FLAGS plus each default flag it does not name."""
    named = {token.lstrip("-").split("=", 1)[0] for token in current.split()}
    extra = [f"--{name}={value}" for name, value in DEFAULTS.items() if name not in named]
    return " ".join([current.strip(), *extra]).strip()


def _backends_started() -> bool:
    bridge = sys.modules.get("jax._src.xla_bridge")
    return bool(getattr(bridge, "_backends", None))


def configure() -> None:
    """Add the defaults to ``XLA_FLAGS`` (before JAX starts a backend; see the module doc)."""
    if os.environ.get("VISTAS_XLA_DEFAULTS", "1") == "0":
        return
    current = os.environ.get("XLA_FLAGS", "")
    wanted = flags_with_defaults(current)
    if wanted == current.strip():
        return
    if _backends_started():
        warnings.warn("JAX started its backends before vistas was imported, so vistas' XLA:CPU "
                      f"defaults ({wanted[len(current.strip()):].strip()}) are not in effect; import "
                      "vistas first or add them to XLA_FLAGS (docs/performance.md)", stacklevel=3)
        return
    os.environ["XLA_FLAGS"] = wanted
