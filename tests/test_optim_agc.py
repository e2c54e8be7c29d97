"""Tests for vistas.optim.agc (adaptive gradient clipping) and its place in the optimizer:
against a direct NumPy computation, the head exclusion rule, config keys, SGD + Nesterov."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vistas import config as config_lib
from vistas.errors import ConfigError
from vistas.optim import agc
from vistas.optim.builder import build_optimizer, from_config


def _constant(_):
    return jnp.float32(1.0)


def _tree(seed, scale=1.0):
    rng = np.random.default_rng(seed)
    shapes = {
        "stem": {"conv0": {"kernel": (3, 3, 2, 5), "gain": (5,), "bias": (5,)}},
        "block": {"fc": {"kernel": (6, 4), "bias": (4,)}, "mha": {"kernel": (4, 2, 3)},
                  "skip_gain": (), "column": (1, 7)},
        "head": {"kernel": (5, 3), "bias": (3,)},
    }
    return jax.tree.map(lambda s: jnp.asarray(scale * rng.standard_normal(s), jnp.float32),
                        shapes, is_leaf=lambda x: isinstance(x, tuple))


def numpy_unit_norm(x):
    """‖x_i‖ of each unit, written out per case."""
    x = np.asarray(x, np.float64)
    if np.squeeze(x).ndim <= 1:
        return np.sqrt((x**2).sum())
    if x.ndim == 4:  # HWIO: one unit per output channel
        return np.sqrt(np.array([(x[..., o] ** 2).sum() for o in range(x.shape[-1])]))
    # linear [in, out] and multi-head [in, h, d]: one unit per entry of the non-input axes
    return np.sqrt((x**2).sum(axis=0))


def numpy_agc(g, w, clipping, eps):
    g = np.asarray(g, np.float64)
    w_norm = np.maximum(numpy_unit_norm(w), eps)
    g_norm = numpy_unit_norm(g)
    limit = clipping * w_norm
    factor = np.where(g_norm > limit, limit / np.maximum(g_norm, 1e-6), 1.0)
    if np.squeeze(g).ndim <= 1:
        return g * factor
    if g.ndim == 4:
        return g * factor[None, None, None, :]
    return g * factor[None]


def test_unitwise_norm_matches_numpy():
    for leaf in jax.tree.leaves(_tree(0)):
        got = np.asarray(agc.unitwise_norm(leaf))
        want = numpy_unit_norm(leaf)
        np.testing.assert_allclose(np.squeeze(got), np.squeeze(want), rtol=1e-5)
        assert got.ndim in (0, leaf.ndim)  # broadcastable against the parameter


@pytest.mark.parametrize("clipping, eps", [(0.01, 1e-3), (0.5, 1e-3), (0.1, 10.0)])
def test_agc_matches_a_direct_numpy_computation(clipping, eps):
    params, grads = _tree(0), _tree(1, scale=0.3)
    tx = agc.adaptive_grad_clip(clipping, eps)
    clipped, _ = tx.update(grads, tx.init(params), params)
    flat_c = dict(jax.tree_util.tree_leaves_with_path(clipped))
    flat_g = dict(jax.tree_util.tree_leaves_with_path(grads))
    flat_w = dict(jax.tree_util.tree_leaves_with_path(params))
    n_clipped = 0
    for path, c in flat_c.items():
        name = jax.tree_util.keystr(path)
        if "head" in name:  # excluded by the default rule, whatever the ratio
            np.testing.assert_array_equal(c, flat_g[path], err_msg=name)
            continue
        want = numpy_agc(flat_g[path], flat_w[path], clipping, eps)
        np.testing.assert_allclose(c, want, rtol=1e-5, atol=1e-7, err_msg=name)
        n_clipped += int(not np.allclose(c, flat_g[path]))
    if clipping == 0.01:
        assert n_clipped == len(flat_c) - 2  # every unit is far above 1%: all clipped
    if clipping == 0.5:
        assert 0 < n_clipped < len(flat_c) - 2  # some clipped, some not


def test_clipped_units_have_exactly_the_allowed_ratio():
    w = jnp.ones((3, 3, 4, 2))  # unit norms 6
    g = jnp.concatenate([jnp.full((3, 3, 4, 1), 10.0), jnp.full((3, 3, 4, 1), 1e-3)], axis=-1)
    tx = agc.adaptive_grad_clip(0.01, 1e-3)
    out, _ = tx.update({"k": g}, tx.init({"k": w}), {"k": w})
    norms = np.asarray(agc.unitwise_norm(out["k"])).ravel()
    np.testing.assert_allclose(norms[0], 0.01 * 6.0, rtol=1e-5)  # clipped to λ·‖W_i‖
    np.testing.assert_allclose(out["k"][..., 1], g[..., 1])  # small gradient untouched


def test_zero_parameters_use_eps():
    w = {"skip_gain": jnp.zeros(()), "kernel": jnp.zeros((4, 3))}
    g = {"skip_gain": jnp.asarray(5.0), "kernel": jnp.ones((4, 3))}
    tx = agc.adaptive_grad_clip(0.01, 1e-3)
    out, _ = tx.update(g, tx.init(w), w)
    assert float(out["skip_gain"]) == pytest.approx(0.01 * 1e-3, rel=1e-5)
    np.testing.assert_allclose(agc.unitwise_norm(out["kernel"]), 1e-5, rtol=1e-5)


def test_exclusion_rules_are_configurable():
    params, grads = _tree(0), _tree(1)
    tx = agc.adaptive_grad_clip(0.01, exclude=["stem/.*", ".*bias"])
    out, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_array_equal(out["stem"]["conv0"]["kernel"], grads["stem"]["conv0"]["kernel"])
    np.testing.assert_array_equal(out["block"]["fc"]["bias"], grads["block"]["fc"]["bias"])
    assert not np.allclose(out["head"]["kernel"], grads["head"]["kernel"])  # no longer excluded
    assert not np.allclose(out["block"]["fc"]["kernel"], grads["block"]["fc"]["kernel"])
    with pytest.raises(ConfigError, match=r"optim.agc_exclude regex '\(' is invalid"):
        agc.adaptive_grad_clip(0.01, exclude=["("])
    with pytest.raises(ValueError, match="needs the parameters"):
        tx.update(grads, tx.init(params))


def test_builder_applies_agc_before_the_direction():
    params, grads = _tree(0), _tree(1)
    lr = 0.5
    tx = build_optimizer(params, name="sgd", momentum=0.0, lr=lr, schedule=_constant, wd=0.0,
                         grad_clip_norm=None, agc_clip=0.02)
    state = tx.init(params)
    assert "agc" in state.inner_states["train"].inner_state
    updates, _ = tx.update(grads, state, params)
    clip = agc.adaptive_grad_clip(0.02)
    want, _ = clip.update(grads, clip.init(params), params)
    for u, w in zip(jax.tree.leaves(updates), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(u, -lr * w, rtol=1e-6)
    # adam sees the clipped gradient: its first update is -lr·sign(clipped g) either way, so
    # compare the second moment instead
    adam = build_optimizer(params, name="adam", lr=lr, schedule=_constant, wd=0.0,
                           grad_clip_norm=None, agc_clip=0.02)
    _, s = adam.update(grads, adam.init(params), params)
    nu = s.inner_states["train"].inner_state["direction"].nu
    want_nu = jax.tree.map(lambda w: 0.001 * w**2, want)
    for a, b in zip(jax.tree.leaves(nu), jax.tree.leaves(want_nu), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5)


def test_agc_off_is_an_identity_and_state_keeps_its_names():
    params, grads = _tree(0), _tree(1)
    on = build_optimizer(params, name="sgd", lr=1.0, schedule=_constant, wd=0.0,
                         grad_clip_norm=None, agc_clip=0.01)
    off = build_optimizer(params, name="sgd", lr=1.0, schedule=_constant, wd=0.0,
                          grad_clip_norm=None)
    s_on, s_off = on.init(params), off.init(params)
    assert jax.tree.structure(s_on) == jax.tree.structure(s_off)  # turning AGC on moves nothing
    u_off, _ = off.update(grads, s_off, params)
    for u, g in zip(jax.tree.leaves(u_off), jax.tree.leaves(grads), strict=True):
        np.testing.assert_allclose(u, -g, rtol=1e-6)


def test_frozen_parameters_are_skipped():
    params, grads = _tree(0), _tree(1)
    tx = build_optimizer(params, name="sgd", momentum=0.0, lr=1.0, schedule=_constant, wd=0.0,
                         grad_clip_norm=None, agc_clip=0.01, frozen=["stem/.*"])
    updates, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_array_equal(updates["stem"]["conv0"]["kernel"], 0.0)
    assert np.all(np.isfinite(np.concatenate([np.ravel(u) for u in jax.tree.leaves(updates)])))


def test_sgd_nesterov_matches_optax():
    params = _tree(0)
    ours = build_optimizer(params, name="sgd", momentum=0.9, sgd_nesterov=True, lr=0.1,
                           schedule=_constant, wd=0.0, grad_clip_norm=None)
    ref = optax.sgd(0.1, momentum=0.9, nesterov=True)
    s, r = ours.init(params), ref.init(params)
    heavy = build_optimizer(params, name="sgd", momentum=0.9, lr=0.1, schedule=_constant, wd=0.0,
                            grad_clip_norm=None)
    h = heavy.init(params)
    for step in range(3):
        g = _tree(10 + step)
        u, s = ours.update(g, s, params)
        v, r = ref.update(g, r, params)
        w, h = heavy.update(g, h, params)
        for a, b in zip(jax.tree.leaves(u), jax.tree.leaves(v), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    assert not all(np.allclose(a, b) for a, b in zip(jax.tree.leaves(u), jax.tree.leaves(w),
                                                      strict=True))


def test_config_keys_reach_the_optimizer():
    cfg = config_lib.apply_overrides(config_lib.Config(), [
        "optim.name=sgd", "optim.sgd_nesterov=True", "optim.agc_clip=0.05", "optim.agc_eps=0.01",
        "optim.wd=0.0",
        "optim.agc_exclude=['head/.*', '.*bias']", "optim.grad_clip_norm=None"])
    params, grads = _tree(0), _tree(1)
    tx = from_config(params, cfg.optim, _constant)
    updates, _ = tx.update(grads, tx.init(params), params)
    clip = agc.adaptive_grad_clip(0.05, 0.01, ["head/.*", ".*bias"])
    want, _ = clip.update(grads, clip.init(params), params)
    # first SGD step: the Nesterov update is (1 + momentum)·g
    np.testing.assert_allclose(updates["block"]["fc"]["kernel"],
                               -cfg.optim.lr * 1.9 * want["block"]["fc"]["kernel"], rtol=1e-5)
    assert config_lib.OptimConfig().agc_clip is None  # off unless asked for


@pytest.mark.parametrize("override, match", [
    ("optim.agc_clip=-0.1", "agc_clip=-0.1"),
    ("optim.agc_clip=0", "agc_clip=0"),
    ("optim.agc_eps=-1.0", "agc_eps=-1.0"),
    ("optim.agc_exclude=['[']", "optim.agc_exclude regex"),
    ("optim.sgd_nesterov=1", "optim.sgd_nesterov=1 has the wrong type"),
])
def test_bad_agc_settings_are_one_line_errors(override, match):
    cfg = config_lib.Config()
    with pytest.raises(ConfigError, match=match) as e:
        cfg = config_lib.apply_overrides(cfg, ["optim.name=sgd", override])
        from_config(_tree(0), cfg.optim, _constant)
    assert "\n" not in str(e.value)
