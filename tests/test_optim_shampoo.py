"""Tests for vistas.optim.shampoo: blocks, inverse roots, one step by hand, convergence, NaNs."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import requires_fashion_mnist, smoke

from vistas.errors import ConfigError
from vistas.optim import shampoo
from vistas.optim.builder import build_optimizer


def _normal(shape, seed, scale=1.0):
    return jnp.asarray(scale * np.random.default_rng(seed).normal(size=shape), jnp.float32)


def _spd(k, cond, rng):
    q, _ = np.linalg.qr(rng.normal(size=(k, k)))
    return (q * np.logspace(0, np.log10(cond), k)) @ q.T


def test_matrix_view_and_blocks_round_trip():
    assert shampoo.matrix_shape((768, 12, 64)) == (768, 768)  # [D, H, Dh] -> [D, H·Dh]
    assert shampoo.matrix_shape((7, 7, 1, 128)) == (49, 128)
    assert shampoo.matrix_shape((128, 10)) == (128, 10)
    assert shampoo.matrix_shape((5,)) is None and shampoo.matrix_shape((1, 1, 64)) is None
    lay = shampoo.layout((300, 70), 128)
    assert (lay.bm, lay.bn, lay.rows, lay.cols) == (128, 70, 3, 1)
    x = _normal((300, 70), 0)
    blocks = shampoo.to_blocks(x, lay)
    assert blocks.shape == (3, 128, 70)
    assert not np.any(blocks[2, 300 - 256:])  # zero padding
    np.testing.assert_array_equal(shampoo.from_blocks(blocks, lay, (300, 70)), x)


def test_inverse_root_against_numpy():
    rng = np.random.default_rng(0)
    mats = np.stack([_spd(6, 1e3, rng), np.diag([4.0, 1.0, 0.0, 0.0, 0.0, 0.0]),
                     np.zeros((6, 6)), np.full((6, 6), np.inf)]).astype(np.float32)
    roots, ok = shampoo.inverse_root(jnp.asarray(mats), 4, 1e-6)
    assert ok.tolist() == [True, True, False, False]
    w, q = np.linalg.eigh(mats[0].astype(np.float64))
    want = (q * (w + 1e-6 * w.max()) ** -0.25) @ q.T
    np.testing.assert_allclose(roots[0], want, rtol=2e-3, atol=1e-5)
    # rank-deficient: damped zero eigenvalues, finite
    np.testing.assert_allclose(np.diag(roots[1])[:2], [4.0**-0.25, 1.0], rtol=1e-4)
    np.testing.assert_allclose(np.diag(roots[1])[2:], (4e-6) ** -0.25, rtol=1e-3)
    assert np.all(np.isfinite(roots))


def test_one_step_by_hand():
    """b1 = 0, SGD graft, roots at step 0: u = L^-1/4 G R^-1/4 rescaled to ‖G‖."""
    g = _normal((12, 5), 1)
    tx = shampoo.scale_by_shampoo(block_size=128, every=1, start=0, b1=0.0, b2=0.9,
                                  graft="sgd", eps=1e-6)
    u, state = tx.update({"w": g}, tx.init({"w": g}))
    gn = np.asarray(g, np.float64)

    def root(m):
        w, q = np.linalg.eigh(m)
        return (q * (np.maximum(w, 0) + 1e-6 * w.max()) ** -0.25) @ q.T

    left, right = 0.1 * gn @ gn.T, 0.1 * gn.T @ gn
    p = root(left) @ gn @ root(right)
    want = p * np.linalg.norm(gn) / np.linalg.norm(p)
    np.testing.assert_allclose(u["w"], want, rtol=2e-3, atol=1e-5)
    np.testing.assert_allclose(state.preconditioners["w"].left[0], left, rtol=1e-5, atol=1e-6)
    assert bool(state.preconditioners["w"].valid[0])


def test_blocks_are_preconditioned_independently():
    g = _normal((64, 48), 2)
    kw = {"every": 1, "start": 0, "b1": 0.0, "graft": "sgd"}
    whole = shampoo.scale_by_shampoo(block_size=32, **kw)
    u, state = jax.jit(whole.update)({"w": g}, whole.init({"w": g}))
    assert state.preconditioners["w"].left.shape == (4, 32, 32)  # 2 x 2 blocks
    single = shampoo.scale_by_shampoo(block_size=128, **kw)
    for rows in (slice(0, 32), slice(32, 64)):
        for cols in (slice(0, 32), slice(32, 48)):  # the last column block is zero-padded
            part = {"w": g[rows, cols]}
            want, _ = jax.jit(single.update)(part, single.init(part))
            np.testing.assert_allclose(u["w"][rows, cols], want["w"], rtol=1e-3, atol=1e-5)


def test_roots_every_k_steps_and_graft_before_start():
    params = {"w": _normal((16, 8), 0), "b": _normal((8,), 0)}
    tx = shampoo.scale_by_shampoo(every=3, start=2, b1=0.0)
    adam = optax.scale_by_adam(b1=0.0, b2=0.999, eps=1e-8)
    state, adam_state = tx.init(params), adam.init(params)
    update = jax.jit(tx.update)
    roots = []
    for t in range(8):
        grads = jax.tree.map(lambda p, t=t: _normal(p.shape, 10 + t), params)
        u, state = update(grads, state)
        ua, adam_state = adam.update(grads, adam_state)
        roots.append(np.asarray(state.preconditioners["w"].left_root[0]))
        np.testing.assert_allclose(u["b"], ua["b"], rtol=1e-5)  # vectors: the Adam graft
        if t < 2:
            np.testing.assert_allclose(u["w"], ua["w"], rtol=1e-5)  # before start: the graft
        else:  # grafted: Shampoo's direction with Adam's norm
            assert float(jnp.linalg.norm(u["w"])) == pytest.approx(
                float(jnp.linalg.norm(ua["w"])), rel=1e-4)
            assert not np.allclose(u["w"], ua["w"], rtol=1e-2)
    changed = [t for t in range(1, 8) if not np.array_equal(roots[t], roots[t - 1])]
    assert changed == [2, 5]
    np.testing.assert_array_equal(roots[0], np.eye(16))


def test_beats_adam_on_an_ill_conditioned_quadratic():
    rng = np.random.default_rng(0)
    a = jnp.asarray(_spd(24, 1e3, rng), jnp.float32)
    b = jnp.asarray(_spd(16, 1e2, rng), jnp.float32)
    w0 = jnp.asarray(rng.normal(size=(24, 16)), jnp.float32)

    def loss(p):
        return 0.5 * jnp.sum(p["w"] * (a @ p["w"] @ b))

    def final_loss(name, lr, steps=100, **kw):
        params = {"w": w0}
        tx = build_optimizer(params, name=name, lr=lr, schedule=lambda s: 1.0, wd=0.0,
                             grad_clip_norm=None, **kw)

        def body(carry, _):
            p, s = carry
            u, s = tx.update(jax.grad(loss)(p), s, p)
            return (optax.apply_updates(p, u), s), None

        (p, _), _ = jax.lax.scan(body, (params, tx.init(params)), None, steps)
        return float(loss(p))

    adam_best = min(final_loss("adam", lr) for lr in (0.03, 0.1, 0.3, 1.0))
    shampoo_loss = final_loss("shampoo", 0.1, shampoo_every=5, shampoo_start=5)
    assert np.isfinite(shampoo_loss)
    assert shampoo_loss < 0.5 * adam_best, (shampoo_loss, adam_best)


def test_no_nans_on_overflowing_statistics_and_zero_gradients():
    """Statistics that overflow float32 and blocks without gradient fall back to the graft."""
    params = {"w": jnp.zeros((256, 8)), "z": jnp.zeros((16, 16))}
    tx = shampoo.scale_by_shampoo(block_size=128, every=1, start=0, b1=0.0)
    adam = optax.scale_by_adam(b1=0.0, b2=0.999, eps=1e-8)
    state, adam_state = tx.init(params), adam.init(params)
    huge = jnp.concatenate([jnp.full((128, 8), 1e19), _normal((128, 8), 3)])  # G Gᵀ overflows
    for t in range(3):
        grads = {"w": huge * (1 + 0.1 * t), "z": jnp.zeros((16, 16))}
        u, state = jax.jit(tx.update)(grads, state)
        ua, adam_state = adam.update(grads, adam_state)
        assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves((u, state)))
        np.testing.assert_allclose(u["w"][:128], ua["w"][:128], rtol=1e-5)  # graft
        assert not np.any(u["z"])
    valid = state.preconditioners["w"].valid
    assert valid.tolist() == [False, True]  # the overflowing block never got a root


@pytest.mark.parametrize("option, value", [("shampoo_block_size", 0), ("shampoo_every", 0),
                                           ("shampoo_graft", "adagrad"), ("shampoo_eps", 0.0)])
def test_bad_options(option, value):
    with pytest.raises(ConfigError, match=f"{option}={value!r}"):
        build_optimizer({"w": jnp.zeros((4, 4))}, name="shampoo", lr=0.1,
                        schedule=lambda s: 1.0, **{option: value})


@requires_fashion_mnist
@pytest.mark.slow
def test_trains_a_vit(tmp_path):
    from vistas.train import loop
    from vistas.train.metrics import read_metrics

    cfg = smoke("optim.name=shampoo", "train.duration=16", "train.log_every=4",
                "optim.shampoo_block_size=64", "model.depth=1")
    summary = loop.train(cfg, tmp_path / "r", quiet=True)
    losses = [r["train/loss"] for r in read_metrics(tmp_path / "r" / "metrics.jsonl")
              if "train/loss" in r]
    assert summary["finished"] and len(losses) == 4 and np.all(np.isfinite(losses))
    assert losses[-1] < losses[0] and summary["eval/test[:1000]/top1"] > 0.2
