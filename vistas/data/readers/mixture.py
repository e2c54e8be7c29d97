"""Weighted mixtures of sources (`MixtureSource`), as big_vision's training mixtures, and
`load_mixture`, which loads each part with `load_source` from a dataset spec."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from vistas.data.readers.factory import load_source
from vistas.data.splits import parse_dataset_spec
from vistas.errors import DataError


class MixtureSource:
    """A weighted mixture of sources, as big_vision's training mixtures: example i comes from
    source j with probability ``weights[j] / sum(weights)`` (drawn once from ``seed``), and
    each source's examples are taken in a seeded random order, cycling when a source is used
    more than its size. All sources must share one label space (same ``num_classes``)."""

    def __init__(self, parts: Sequence, weights: Sequence[float], *, seed: int = 0,
                 length: int | None = None, names: Sequence[str] | None = None):
        names = list(names or [f"source {j}" for j in range(len(parts))])
        w = np.asarray(weights, np.float64)
        if not parts or len(w) != len(parts) or (w < 0).any() or w.sum() <= 0:
            raise DataError(f"a mixture needs one non-negative weight per source and a positive "
                            f"total, got weights {list(weights)} for {len(parts)} sources")
        classes = {int(p.num_classes) for p in parts}
        if len(classes) != 1:
            raise DataError("mixed sources must share one label space; they have "
                            + ", ".join(f"{n}: {p.num_classes} classes" for n, p in zip(names, parts, strict=True)))
        if any(getattr(p, "multi_label", False) for p in parts):
            raise DataError("mixtures of multi-label sources are not supported")
        n = int(length or sum(len(p) for p in parts))
        rng = np.random.default_rng([int(seed), 0x6D6978])
        self.which = rng.choice(len(parts), size=n, p=w / w.sum()).astype(np.int32)
        self.index = np.zeros(n, np.int64)
        for j, part in enumerate(parts):
            sel = np.flatnonzero(self.which == j)
            order = rng.permutation(len(part))
            self.index[sel] = order[np.arange(len(sel)) % len(part)]
        self.parts = list(parts)
        self.names = names
        self.num_classes = classes.pop()
        shapes = {p.image_shape for p in parts}
        self.image_shape = shapes.pop() if len(shapes) == 1 else None
        self.class_names = getattr(parts[0], "class_names", None)
        self.multi_label = False

    @property
    def labels(self) -> np.ndarray:
        out = np.empty(len(self.which), np.int32)
        for j, part in enumerate(self.parts):
            sel = self.which == j
            out[sel] = np.asarray(part.labels)[self.index[sel]]
        return out

    def __len__(self) -> int:
        return len(self.which)

    def __getitem__(self, i: int) -> dict:
        return self.parts[self.which[i]][int(self.index[i])]


def load_mixture(entries: Sequence[tuple[str, str, float]], *, seed: int, data_dir=None,
                 channels: int | None = None, decode_size: int | None = None) -> MixtureSource:
    """``[(dataset, split, weight), ...]`` with datasets written as in ``parse_dataset_spec``."""
    parts = []
    for spec, split, _ in entries:
        name, path = parse_dataset_spec(spec)
        parts.append(load_source(name, split, data_dir=data_dir, path=path, channels=channels,
                                 decode_size=decode_size))
    return MixtureSource(parts, [w for _, _, w in entries], seed=seed,
                         names=[f"{s}:{sp}" for s, sp, _ in entries])


__all__ = ["MixtureSource", "load_mixture"]
