"""Model families and the registry (``create``, ``count_params``)."""

from vistas.models.registry import abstract, count_params, create, names

__all__ = ["abstract", "count_params", "create", "names"]
