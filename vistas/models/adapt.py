"""Loading parameters into a model of another shape: resolution changes and new heads.

``adapt_params(source, target)`` returns ``target``'s structure filled with ``source``'s
values. Where shapes differ it knows two legitimate reasons:

- a learned position embedding for another patch grid (new image size or patch count):
  resampled (``resample_posemb``), non-square grids included, in one of three conventions
  (``RESAMPLES``): vistas' own (bilinear at pixel centres), big_vision's (linear with the
  corner cells aligned, ``scipy.ndimage.zoom(order=1)``) or timm's (bicubic with
  antialiasing, ``torch.nn.functional.interpolate(mode="bicubic", antialias=True)``);
- a classifier for another number of classes: the target's freshly initialised head is
  kept (``reset_head=True``), as in transfer.

Any other difference is a one-line :class:`ConfigError` naming the parameter and both shapes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vistas.errors import ConfigError

Grid = tuple[int, int]

# How a position embedding is resampled to another grid: as vistas, big_vision or timm do it.
RESAMPLES = ("vistas", "big_vision", "timm")


def flatten(tree: Mapping) -> dict[str, Any]:
    """Nested dict -> ``{"a/b/c": leaf}``."""
    flat: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, Mapping):
            for k, v in node.items():
                walk(v, f"{prefix}/{k}" if prefix else str(k))
        else:
            flat[prefix] = node

    walk(tree, "")
    return flat


def unflatten(flat: Mapping[str, Any], like: Mapping) -> dict:
    """``{"a/b/c": leaf}`` -> nested dict with the keys (and key types) of ``like``."""

    def build(node: Any, prefix: str) -> Any:
        if isinstance(node, Mapping):
            return {k: build(v, f"{prefix}/{k}" if prefix else str(k)) for k, v in node.items()}
        return flat[prefix]

    return build(like, "")


def square_grid(num_tokens: int, what: str = "position embedding") -> Grid:
    side = int(round(np.sqrt(num_tokens)))
    if side * side != num_tokens:
        raise ConfigError(
            f"{what} has {num_tokens} tokens, not a square grid; give its grid explicitly"
        )
    return side, side


def check_resample(method: str) -> str:
    if method not in RESAMPLES:
        raise ConfigError(f"unknown position-embedding resampling {method!r}; use one of "
                          f"{', '.join(RESAMPLES)}")
    return method


def resample_posemb(posemb: Any, new_grid: Grid, old_grid: Grid | None = None,
                    num_prefix: int = 0, method: str = "vistas") -> np.ndarray:
    """[1, prefix + gh*gw, D] -> [1, prefix + nh*nw, D], each channel resampled as ``method``
    (``RESAMPLES``) does it:

    - ``vistas``: bilinear at pixel centres (half-pixel offsets), no antialiasing, like
      ``torch.nn.functional.interpolate(mode="bilinear", align_corners=False)``;
    - ``big_vision``: linear with the centres of the corner cells aligned, as big_vision's
      ``resample_posemb`` does with ``scipy.ndimage.zoom(order=1)``;
    - ``timm``: bicubic with antialiasing, as timm's ``resample_abs_pos_embed`` does with
      ``F.interpolate(mode="bicubic", antialias=True, align_corners=False)``: PyTorch's
      (and PIL's) separable cubic filter with a=-0.5, widened by the scale factor when
      downsampling, its weights cut at the borders and normalised.

    ``num_prefix`` leading tokens (e.g. a class token's embedding, as in timm) are kept.
    ``old_grid`` defaults to the square grid of the token count.
    """
    check_resample(method)
    posemb = np.asarray(posemb)
    if posemb.ndim != 3 or posemb.shape[0] != 1:
        raise ConfigError(f"position embedding must have shape [1, N, D], got {list(posemb.shape)}")
    prefix, grid_tokens = posemb[:, :num_prefix], posemb[:, num_prefix:]
    n, d = grid_tokens.shape[1], grid_tokens.shape[2]
    gh, gw = old_grid if old_grid is not None else square_grid(n)
    if gh * gw != n:
        raise ConfigError(f"position embedding has {n} grid tokens, not {gh}x{gw}")
    nh, nw = new_grid
    if (gh, gw) == (nh, nw):
        return posemb
    grid = grid_tokens.reshape(gh, gw, d).astype(np.float32)
    if method == "vistas":
        resized = jax.image.resize(jnp.asarray(grid), (nh, nw, d), method="bilinear", antialias=False)
    else:
        weights = _zoom_weights if method == "big_vision" else _bicubic_aa_weights
        resized = np.einsum("ah,bw,hwd->abd", weights(gh, nh), weights(gw, nw), grid.astype(np.float64))
    resized = np.asarray(resized, dtype=posemb.dtype).reshape(1, nh * nw, d)
    return np.concatenate([prefix, resized], axis=1)


def _zoom_weights(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in] linear interpolation with the first and last cells' centres aligned:
    output ``o`` reads input position ``o * (n_in - 1) / (n_out - 1)`` (0 for one output)."""
    pos = np.arange(n_out) * ((n_in - 1) / (n_out - 1) if n_out > 1 else 0.0)
    lo = np.clip(np.floor(pos).astype(int), 0, n_in - 1)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = pos - lo
    w = np.zeros((n_out, n_in))
    np.add.at(w, (np.arange(n_out), lo), 1 - frac)
    np.add.at(w, (np.arange(n_out), hi), frac)
    return w


def _cubic(x: np.ndarray, a: float = -0.5) -> np.ndarray:
    """Keys' cubic convolution kernel (a=-0.5: PIL's, and PyTorch's with antialiasing)."""
    x = np.abs(x)
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return np.where(x < 1, near, np.where(x < 2, far, 0.0))


def _bicubic_aa_weights(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in] weights of PyTorch's antialiased bicubic resize (align_corners=False):
    output ``i`` is centred at input position ``scale * (i + 0.5)`` (``scale = n_in / n_out``),
    the kernel stretched by ``scale`` when downsampling, cut at the borders, normalised."""
    scale = n_in / n_out
    support = 2.0 * scale if scale >= 1.0 else 2.0
    invscale = 1.0 / scale if scale >= 1.0 else 1.0
    w = np.zeros((n_out, n_in))
    for i in range(n_out):
        center = scale * (i + 0.5)
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), n_in)
        taps = _cubic((np.arange(lo, hi) - center + 0.5) * invscale)
        total = taps.sum()
        w[i, lo:hi] = taps / total if total != 0 else taps
    return w


def adapt_params(source: Mapping, target: Mapping, *, reset_head: bool = True,
                 target_grid: Grid | None = None, source_grid: Grid | None = None,
                 head_prefix: str = "head/", posemb_suffix: str = "pos_embedding",
                 num_prefix: int = 0, resample: str = "vistas") -> dict:
    """``target``'s structure with ``source``'s values (see the module docstring).

    ``target_grid``/``source_grid`` default to square grids inferred from token counts;
    ``resample`` is how a position embedding changes grid (``RESAMPLES``). Values take the
    target's dtype. Extra source parameters are an error, except a head that
    ``reset_head`` replaces.
    """
    check_resample(resample)
    src, tgt = flatten(source), flatten(target)
    out: dict[str, Any] = {}
    for key, t in tgt.items():
        t_shape = tuple(np.shape(t))
        is_head = key.startswith(head_prefix)
        if key not in src:
            if is_head and reset_head:
                out[key] = t
                continue
            raise ConfigError(f"checkpoint has no parameter {key!r} (shape {list(t_shape)}) that the model needs")
        s = src[key]
        s_shape = tuple(np.shape(s))
        if s_shape == t_shape:
            out[key] = np.asarray(s).astype(t.dtype)
        elif key.endswith(posemb_suffix) and len(s_shape) == 3 and s_shape[2] == t_shape[2]:
            grid = target_grid or square_grid(t_shape[1] - num_prefix, f"model's {key}")
            out[key] = resample_posemb(s, grid, source_grid, num_prefix, resample).astype(t.dtype)
        elif is_head and reset_head:
            out[key] = t
        else:
            raise ConfigError(
                f"checkpoint parameter {key!r} has shape {list(s_shape)} but the model needs "
                f"{list(t_shape)}"
            )
    extra = sorted(k for k in src if k not in tgt and not (reset_head and k.startswith(head_prefix)))
    if extra:
        raise ConfigError(
            f"checkpoint parameter {extra[0]!r} has no place in the model"
            + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else "")
        )
    return unflatten(out, target)
