"""Model registry: ``create("vit-B/16", num_classes=10, **options)``.

Names are ``FAMILY-VARIANT``; a family registers a function that turns a variant and
options into a model. Parameter counts are computed abstractly (``nnx.eval_shape``), so
even the largest variants are counted without allocating their weights.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from flax import nnx

from vistas.errors import ConfigError
from vistas.models import bit, nfnet, vit

# Variants listed by ``vistas models`` (any ``vit-NAME/PATCH`` is accepted by ``create``).
LISTED = {
    "vit": [
        "mu/16", "Ti/16", "S/16", "S/32", "M/16", "B/16", "B/32", "L/16",
        "H/14", "g/14", "G/14", "e/14", "22B/14",
    ],
    "nfnet": nfnet.VARIANTS,  # F0..F7, F0+..F7+
    "bit": bit.VARIANTS,  # R50x1..R152x4
}


FAMILIES: dict[str, Callable[..., nnx.Module]] = {
    "vit": vit.build, "nfnet": nfnet.build, "bit": bit.build,
}
# Families built of stages whose blocks after the first are identical, and whose parameter
# shapes follow from the options and the variant's stage depths and widths: variant -> those.
STAGED: dict[str, Callable[[str], tuple[tuple[int, ...], tuple[int, ...]]]] = {
    "nfnet": nfnet.variant_stages, "bit": bit.variant_stages,
}


def _split_name(name: str) -> tuple[str, str]:
    family, sep, variant = name.partition("-")
    if not sep or family.lower() not in FAMILIES:
        known = names()
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.5)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(
            f"unknown model {name!r}{hint}; use FAMILY-VARIANT with FAMILY in "
            f"{', '.join(FAMILIES)}, e.g. 'vit-B/16' (see `vistas models`)"
        )
    return family.lower(), variant


def names() -> list[str]:
    return [f"{fam}-{v}" for fam, variants in LISTED.items() for v in variants]


def create(name: str, *, num_classes: int, seed: int = 0, **options: Any) -> nnx.Module:
    """Builds a model with freshly initialised parameters."""
    family, variant = _split_name(name)
    try:
        return FAMILIES[family](variant, num_classes=num_classes, rngs=nnx.Rngs(seed), **options)
    except ConfigError as e:
        if "unknown ViT variant" in str(e):
            same_case = [n for n in names() if n.lower() == name.lower()]
            close = same_case or difflib.get_close_matches(name, names(), n=1, cutoff=0.5)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"unknown model {name!r}{hint}; see `vistas models` for the list") from None
        raise


def abstract(name: str, *, num_classes: int, **options: Any) -> nnx.Module:
    """The model with ShapeDtypeStruct leaves instead of arrays: nothing is allocated."""
    return nnx.eval_shape(lambda: create(name, num_classes=num_classes, **options))


def count_params(model_or_name: nnx.Module | str, *, num_classes: int = 1000, exclude_head: bool = False,
                 **options: Any) -> int:
    model = (
        abstract(model_or_name, num_classes=num_classes, **options)
        if isinstance(model_or_name, str)
        else model_or_name
    )
    params = nnx.state(model, nnx.Param)
    total = 0
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        if exclude_head and any(getattr(k, "key", None) == "head" for k in path[:1]):
            continue
        total += int(np.prod(leaf.shape))
    return total


def catalog(*, num_classes: int = 1000, image_size: int = 224) -> list[dict]:
    """Every listed variant with its parameter count (abstract), for ``vistas models``."""
    rows = []
    for name in names():
        rows.append(
            {
                "name": name,
                "params": _count_by_depth(name, num_classes=num_classes, image_size=image_size),
                "num_classes": num_classes,
                "image_size": image_size,
            }
        )
    return rows


def _count_by_depth(name: str, **options: Any) -> int:
    """Exact count of a deep ViT from abstract models of depth 1 and 2 (blocks are identical).

    Tracing every block of a 48-block model takes seconds; two shallow traces give the
    same number in milliseconds.
    """
    family, variant = _split_name(name)
    if family in STAGED:
        return _count_by_stages(name, **options)
    if family != "vit":
        return count_params(name, **options)
    depth = vit.SIZES[vit.parse_variant(variant)[0]][1]
    one = count_params(name, depth=1, **options)
    two = count_params(name, depth=2, **options)
    return one + (depth - 1) * (two - one)


_STAGE_COUNTS: dict[tuple, tuple[int, list[int]]] = {}


def _count_by_stages(name: str, *, exclude_head: bool = False, **options: Any) -> int:
    """Exact count of a ConvNet from one abstract model with two blocks per stage.

    Blocks after the first of a stage are identical, so the count of any depths follows
    from the count of ``stage{s}/block01`` in the two-block model. That model depends only
    on the stage widths and the options, so variants differing only in depth share it.
    """
    family, variant = _split_name(name)
    depths, widths = STAGED[family](variant)
    depths = tuple(options.pop("depths", None) or depths)
    widths = tuple(options.pop("widths", None) or widths)
    key = (family, widths, len(depths), exclude_head, repr(sorted(options.items())))
    if key not in _STAGE_COUNTS:
        model = abstract(name, depths=[2] * len(depths), widths=list(widths), **options)
        params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
        blocks = [sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params[f"stage{s}"]["block01"]))
                  for s in range(len(depths))]
        _STAGE_COUNTS[key] = (count_params(model, exclude_head=exclude_head), blocks)
    total, blocks = _STAGE_COUNTS[key]
    return total + sum((d - 2) * b for d, b in zip(depths, blocks, strict=True))


def needs_rng(model: nnx.Module) -> bool:
    """Whether the model draws random numbers in training (dropout, stochastic depth)."""
    cfg = getattr(model, "cfg", None)
    return any((getattr(cfg, key, None) or 0) > 0 for key in ("dropout", "drop_path"))
