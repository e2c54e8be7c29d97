"""Shampoo (Gupta et al. 2018; Anil et al. 2020) with block-diagonal preconditioners: `shampoo`.

Every parameter with at least two dims is seen as a matrix `[m, n]` (its dims split into
leading and trailing groups, the split closest to square: `[D, H, Dh]` -> `[D, H·Dh]`),
cut into blocks of at most `block_size x block_size` (zero-padded at the edges). Per block:

    L ← β2 L + (1 - β2) G Gᵀ,   R ← β2 R + (1 - β2) Gᵀ G            every step
    L⁻¹ᐟᵖ, R⁻¹ᐟᵖ  by eigendecomposition, eigenvalues damped as
        λ ← max(λ, 0) + eps · λ_max                                  every `every` steps
    P = L⁻¹ᐟᵖ G R⁻¹ᐟᵖ                                                  the Shampoo direction
    u = P · ‖graft‖ / ‖P‖                                             grafting, per block

The graft is the direction of a simpler optimizer, computed alongside: `"adam"` (RMSprop
with bias correction: g / (√v̂ + eps_adam), v with β2) or `"sgd"` (the gradient itself).
Grafting takes Shampoo's DIRECTION and the graft's MAGNITUDE per block, so learning rates
tuned for Adam carry over. Parameters with fewer than two dims (biases, norms) use the
graft. Then a momentum is applied to the grafted update: m ← b1 m + (1 - b1) u, u = m̂
(bias-corrected; stored in `mu_dtype`).

Robustness: before step `start` (and until a block's first root succeeds) the graft is
used. Statistics that would overflow are not updated; a root whose result is not finite (or
whose statistics are still zero) is discarded and the block keeps its previous root, or the
graft if it never had one; a non-finite preconditioned block also falls back to the graft.
So Shampoo never produces a NaN or an infinity that the graft would not have produced.

Everything is jittable: shapes are static, the roots are recomputed under `lax.cond`.
State per parameter: the statistics and their roots, 2·(b_m² + b_n²) floats per
`b_m x b_n` block (4 floats per parameter for full 128 x 128 blocks), plus the graft's
second moment and the momentum.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

GRAFTS = ("adam", "sgd")
_HIGHEST = jax.lax.Precision.HIGHEST


class Preconditioner(NamedTuple):
    """Per-block statistics and inverse roots of one parameter (all `()` when graft only)."""

    left: Any  # [k, bm, bm]
    right: Any  # [k, bn, bn]
    left_root: Any  # [k, bm, bm]
    right_root: Any  # [k, bn, bn]
    valid: Any  # [k] bool: the block holds a successfully computed root


class ShampooState(NamedTuple):
    count: jax.Array  # int32 step
    mu: Any  # momentum like the parameters (mu_dtype), or () when b1 == 0
    nu: Any  # graft second moment like the parameters (float32), or () for the sgd graft
    preconditioners: Any  # a Preconditioner per parameter


class _Layout(NamedTuple):
    """How a parameter is seen as a matrix and cut into blocks."""

    m: int
    n: int
    bm: int
    bn: int
    rows: int  # number of row blocks
    cols: int  # number of column blocks

    @property
    def blocks(self) -> int:
        return self.rows * self.cols


def matrix_shape(shape: tuple[int, ...]) -> tuple[int, int] | None:
    """`(m, n)` for a parameter of `shape` (split of its dims closest to square), or None."""
    dims = [d for d in shape]
    if len(dims) < 2 or min(dims) < 1:
        return None
    best = None
    for k in range(1, len(dims)):
        m, n = math.prod(dims[:k]), math.prod(dims[k:])
        score = abs(math.log(m) - math.log(n))
        if best is None or score <= best[0]:  # ties: the later split (kernels [in, out])
            best = (score, m, n)
    _, m, n = best
    if m == 1 or n == 1:
        return None  # a vector in disguise, e.g. [1, 1, D]
    return m, n


def layout(shape: tuple[int, ...], block_size: int) -> _Layout | None:
    mn = matrix_shape(shape)
    if mn is None:
        return None
    m, n = mn
    bm, bn = min(block_size, m), min(block_size, n)
    return _Layout(m, n, bm, bn, -(-m // bm), -(-n // bn))


def to_blocks(x: jax.Array, lay: _Layout) -> jax.Array:
    """A parameter-shaped array -> `[k, bm, bn]` blocks (zero-padded)."""
    x = x.reshape(lay.m, lay.n)
    x = jnp.pad(x, ((0, lay.rows * lay.bm - lay.m), (0, lay.cols * lay.bn - lay.n)))
    x = x.reshape(lay.rows, lay.bm, lay.cols, lay.bn).transpose(0, 2, 1, 3)
    return x.reshape(lay.blocks, lay.bm, lay.bn)


def from_blocks(blocks: jax.Array, lay: _Layout, shape: tuple[int, ...]) -> jax.Array:
    x = blocks.reshape(lay.rows, lay.cols, lay.bm, lay.bn).transpose(0, 2, 1, 3)
    x = x.reshape(lay.rows * lay.bm, lay.cols * lay.bn)[: lay.m, : lay.n]
    return x.reshape(shape)


def inverse_root(mats: jax.Array, p: float, eps: float) -> tuple[jax.Array, jax.Array]:
    """`(roots, ok)`: `mats^(-1/p)` of a batch `[k, b, b]` of PSD matrices, by eigh.

    Eigenvalues are clipped at 0 and damped by `eps · λ_max`. `ok[k]` is False when the input
    or the result is not finite, or the matrix is zero (nothing to precondition with yet).
    """
    finite_in = jnp.all(jnp.isfinite(mats), axis=(-2, -1))
    safe = jnp.where(finite_in[:, None, None], mats, 0.0)
    w, q = jnp.linalg.eigh(safe)
    w_max = jnp.max(w, axis=-1, keepdims=True)
    damped = jnp.maximum(w, 0.0) + eps * jnp.maximum(w_max, 0.0)
    scale = jnp.where(damped > 0, damped, 1.0) ** (-1.0 / p)
    roots = jnp.einsum("kij,kj,klj->kil", q, scale, q, precision=_HIGHEST)
    ok = finite_in & (w_max[:, 0] > 0) & jnp.all(jnp.isfinite(roots), axis=(-2, -1))
    return roots, ok


def scale_by_shampoo(
    *,
    block_size: int = 128,
    every: int = 10,
    start: int = 10,
    root: float = 4,
    eps: float = 1e-6,
    graft: str = "adam",
    b1: float = 0.9,
    b2: float = 0.999,
    graft_eps: float = 1e-8,
    mu_dtype: Any = None,
) -> optax.GradientTransformation:
    """The Shampoo direction (module docstring). Arguments are validated by the builder."""
    if graft not in GRAFTS:
        raise ValueError(f"graft={graft!r}; use one of {GRAFTS}")
    mu_dtype = None if mu_dtype is None else jnp.dtype(mu_dtype)

    def init_precond(p):
        lay = layout(p.shape, block_size)
        if lay is None:
            return Preconditioner((), (), (), (), ())
        k = lay.blocks

        def zeros(b):
            return jnp.zeros((k, b, b), jnp.float32)

        def eyes(b):
            return jnp.broadcast_to(jnp.eye(b, dtype=jnp.float32), (k, b, b))

        return Preconditioner(zeros(lay.bm), zeros(lay.bn), eyes(lay.bm), eyes(lay.bn),
                              jnp.zeros((k,), bool))

    def init_fn(params):
        mu = jax.tree.map(lambda p: jnp.zeros(p.shape, mu_dtype or p.dtype), params) if b1 else ()
        nu = (jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
              if graft == "adam" else ())
        pre = jax.tree.map(init_precond, params)
        return ShampooState(jnp.zeros((), jnp.int32), mu, nu, pre)

    def precondition(g, graft_dir, pre, count):
        lay = layout(g.shape, block_size)
        if lay is None:
            return graft_dir, pre
        gb = to_blocks(g, lay)
        left = b2 * pre.left + (1 - b2) * jnp.einsum("kij,klj->kil", gb, gb, precision=_HIGHEST)
        right = b2 * pre.right + (1 - b2) * jnp.einsum("kji,kjl->kil", gb, gb, precision=_HIGHEST)
        finite = (jnp.all(jnp.isfinite(left), axis=(-2, -1))
                  & jnp.all(jnp.isfinite(right), axis=(-2, -1)))[:, None, None]
        left = jnp.where(finite, left, pre.left)  # an overflowing block keeps its statistics
        right = jnp.where(finite, right, pre.right)

        def recompute(_):
            lr_, lok = inverse_root(left, root, eps)
            rr_, rok = inverse_root(right, root, eps)
            ok = lok & rok
            keep = ok[:, None, None]
            return (jnp.where(keep, lr_, pre.left_root), jnp.where(keep, rr_, pre.right_root),
                    ok | pre.valid)

        due = (count >= start) & ((count - start) % every == 0)
        left_root, right_root, valid = jax.lax.cond(
            due, recompute, lambda _: (pre.left_root, pre.right_root, pre.valid), None)

        direction = jnp.einsum("kij,kjl,klm->kim", left_root, gb, right_root, precision=_HIGHEST)
        grafted = to_blocks(graft_dir, lay)
        p_norm = jnp.sqrt(jnp.sum(direction * direction, axis=(-2, -1), keepdims=True))
        g_norm = jnp.sqrt(jnp.sum(grafted * grafted, axis=(-2, -1), keepdims=True))
        scaled = direction * (g_norm / jnp.where(p_norm > 0, p_norm, 1.0))
        use = valid & (count >= start) & jnp.all(jnp.isfinite(scaled), axis=(-2, -1))
        blocks = jnp.where(use[:, None, None], scaled, grafted)
        new_pre = Preconditioner(left, right, left_root, right_root, valid)
        return from_blocks(blocks, lay, g.shape), new_pre

    def update_fn(updates, state, params=None):
        del params
        count = state.count
        t = count.astype(jnp.float32) + 1.0
        flat, treedef = jax.tree.flatten(updates)
        grads = [g.astype(jnp.float32) for g in flat]
        if graft == "adam":
            nus = [b2 * v + (1 - b2) * g * g
                   for v, g in zip(treedef.flatten_up_to(state.nu), grads, strict=True)]
            correction = 1.0 - b2 ** t
            grafts = [g / (jnp.sqrt(v / correction) + graft_eps)
                      for g, v in zip(grads, nus, strict=True)]
            nu = treedef.unflatten(nus)
        else:
            grafts, nu = grads, ()
        pres = treedef.flatten_up_to(state.preconditioners)
        pairs = [precondition(g, d, p, count) for g, d, p in zip(grads, grafts, pres, strict=True)]
        directions = [d for d, _ in pairs]
        preconditioners = treedef.unflatten([p for _, p in pairs])
        if b1:
            mus = [b1 * m.astype(jnp.float32) + (1 - b1) * d
                   for m, d in zip(treedef.flatten_up_to(state.mu), directions, strict=True)]
            out = [m / (1.0 - b1 ** t) for m in mus]
            mu = treedef.unflatten([m.astype(mu_dtype or g.dtype)
                                    for m, g in zip(mus, flat, strict=True)])
        else:
            out, mu = directions, ()
        out = treedef.unflatten([o.astype(g.dtype) for o, g in zip(out, flat, strict=True)])
        new_state = ShampooState(optax.safe_int32_increment(count), mu, nu, preconditioners)
        return out, new_state

    return optax.GradientTransformation(init_fn, update_fn)


__all__ = ["GRAFTS", "Preconditioner", "ShampooState", "inverse_root", "layout", "matrix_shape",
           "scale_by_shampoo"]
