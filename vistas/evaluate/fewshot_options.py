"""The options of few-shot evaluation, checked in one place: by the evaluator, and by
``config.validate`` for a run's ``fewshot`` section."""

from __future__ import annotations

from collections.abc import Sequence

from vistas.data import catalog
from vistas.errors import ConfigError


def check_options(*, datasets: Sequence[str] | None, shots: Sequence[int], seeds: int, l2: float,
                  l2_grid: Sequence[float], max_test_examples: int | None,
                  prefix: str = "few-shot ") -> None:
    """One-line ConfigErrors for bad few-shot settings, each naming ``prefix + option``
    (``config.validate`` checks a run's ``fewshot`` section with ``prefix="fewshot."`` and
    ``datasets=None``: no datasets there turns periodic few-shot evaluation off)."""
    if datasets is not None:
        _check_datasets(datasets)
    if not shots or any(not isinstance(s, int) or isinstance(s, bool) or s < 1 for s in shots):
        raise ConfigError(f"{prefix}shots={list(shots)!r} must be positive integers, e.g. [1, 5, 10, 25]")
    if not isinstance(seeds, int) or seeds < 1:
        raise ConfigError(f"{prefix}seeds={seeds!r} must be a positive integer")
    if not l2 > 0 or any(not v > 0 for v in l2_grid):
        raise ConfigError(f"{prefix}l2={l2} and {prefix}l2_grid={list(l2_grid)} must be positive")
    if max_test_examples is not None and max_test_examples < 1:
        raise ConfigError(f"{prefix}max_test_examples={max_test_examples} must be positive")


def _check_datasets(datasets: Sequence[str]) -> None:
    for name in datasets:
        info = catalog.get_info(name)
        if info.multi_label:
            raise ConfigError(f"few-shot dataset {name!r} is multi-label; use one of "
                              f"{', '.join(catalog.TRANSFER_TARGETS)}")
    if not datasets:
        raise ConfigError("few-shot needs at least one dataset; known targets: "
                          f"{', '.join(catalog.TRANSFER_TARGETS)}")


__all__ = ["check_options"]
