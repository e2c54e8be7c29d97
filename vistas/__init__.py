"""vistas: pre-train, transfer, distill and study the scaling of vision models in JAX."""

from vistas.systems import xla_cpu as _xla_cpu

_xla_cpu.configure()

__version__ = "0.1.0"
