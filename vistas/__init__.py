"""vistas: pre-train, transfer, distill and study the scaling of vision models in JAX."""

__version__ = "0.1.0"
