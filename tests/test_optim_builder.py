"""Tests for vistas.optim.builder: the decoupled-wd update rule, freezing, names in the state."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vistas.errors import ConfigError
from vistas.optim.builder import OPTIMIZERS, build_optimizer, current_lr
from vistas.optim.rules import path_str
from vistas.optim.schedules import make_schedule


def _params():
    rng = np.random.default_rng(0)
    return {
        "body": {
            "kernel": jnp.asarray(rng.normal(size=(3, 4)), jnp.float32),
            "bias": jnp.asarray(rng.normal(size=(4,)), jnp.float32),
        },
        "head": {
            "kernel": jnp.asarray(rng.normal(size=(4, 2)), jnp.float32),
            "bias": jnp.asarray(rng.normal(size=(2,)), jnp.float32),
        },
    }


def _grads(seed):
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), _params())


def _state_paths(state):
    leaves, _ = jax.tree_util.tree_flatten_with_path(state)
    return [(jax.tree_util.keystr(path), leaf) for path, leaf in leaves]


def _constant(_):
    return jnp.float32(1.0)


def test_adam_with_decoupled_wd_matches_hand_computation():
    lr, wd, b1, b2, eps = 0.01, 0.1, 0.9, 0.999, 1e-8
    wd_rules = [(".*head/kernel", 10.0), (".*/kernel", 1.0)]
    wd_mult = {"body": {"kernel": 1.0, "bias": 0.0}, "head": {"kernel": 10.0, "bias": 0.0}}
    lr_mult = {"body": {"kernel": 1.0, "bias": 1.0}, "head": {"kernel": 2.0, "bias": 2.0}}
    sched = make_schedule(total_steps=10, warmup_steps=4, decay="constant")  # 0.25, 0.5, ...
    tx = build_optimizer(
        _params(),
        name="adam",
        lr=lr,
        schedule=sched,
        b1=b1,
        b2=b2,
        eps=eps,
        wd=wd,
        wd_mults=wd_rules,
        lr_mults=[("head/.*", 2.0)],
        grad_clip_norm=None,
    )
    params, state = _params(), tx.init(_params())
    expected = jax.tree.map(np.asarray, _params())
    m = jax.tree.map(np.zeros_like, expected)
    v = jax.tree.map(np.zeros_like, expected)
    update = jax.jit(tx.update)
    for t in range(3):
        grads = _grads(t + 1)
        updates, state = update(grads, state, params)
        params = optax.apply_updates(params, updates)
        s = (t + 1) / 4
        for group in ("body", "head"):
            for name in ("kernel", "bias"):
                g = np.asarray(grads[group][name], np.float64)
                m[group][name] = b1 * m[group][name] + (1 - b1) * g
                v[group][name] = b2 * v[group][name] + (1 - b2) * g**2
                direction = (m[group][name] / (1 - b1 ** (t + 1))) / (
                    np.sqrt(v[group][name] / (1 - b2 ** (t + 1))) + eps
                )
                theta = expected[group][name]
                delta = -s * (
                    lr * lr_mult[group][name] * direction + wd * wd_mult[group][name] * theta
                )
                np.testing.assert_allclose(updates[group][name], delta, rtol=2e-5, atol=1e-7)
                expected[group][name] = theta + delta
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), params, expected
    )


def test_decay_is_not_multiplied_by_lr_and_equals_adamw_with_wd_over_lr():
    lr, lam = 1e-3, 0.1
    kernels = {"body": {"kernel": True, "bias": False}, "head": {"kernel": True, "bias": False}}
    ours = build_optimizer(_params(), lr=lr, schedule=_constant, wd=lr * lam, grad_clip_norm=None)
    adamw = optax.adamw(lr, weight_decay=lam, mask=kernels)
    s1, s2 = ours.init(_params()), adamw.init(_params())
    for t in range(3):
        u1, s1 = ours.update(_grads(t), s1, _params())
        u2, s2 = adamw.update(_grads(t), s2, _params())
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-9), u1, u2)


def test_sgd_momentum_direction():
    tx = build_optimizer(
        _params(), name="sgd", lr=0.1, schedule=_constant, momentum=0.5, grad_clip_norm=None
    )
    state = tx.init(_params())
    g1, g2 = _grads(1), _grads(2)
    _, state = tx.update(g1, state, _params())
    u, state = tx.update(g2, state, _params())
    want = jax.tree.map(lambda a, b: -0.1 * (0.5 * a + b), g1, g2)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), u, want)


def test_frozen_params_unchanged_and_without_state():
    tx = build_optimizer(_params(), lr=0.1, schedule=_constant, wd=0.1, frozen=["body/.*"])
    params, state = _params(), tx.init(_params())
    for t in range(2):
        updates, state = jax.jit(tx.update)(_grads(t), state, params)
        params = optax.apply_updates(params, updates)
        assert not np.any(np.asarray(updates["body"]["kernel"]))
    np.testing.assert_array_equal(params["body"]["kernel"], _params()["body"]["kernel"])
    np.testing.assert_array_equal(params["body"]["bias"], _params()["body"]["bias"])
    assert not np.allclose(params["head"]["kernel"], _params()["head"]["kernel"])
    paths = [p for p, _ in _state_paths(state)]
    assert not any("body" in p for p in paths), paths
    assert any("head" in p and "mu" in p for p in paths)


def test_bfloat16_first_moment():
    tx = build_optimizer(_params(), lr=0.1, schedule=_constant, mu_dtype="bfloat16")
    state = tx.init(_params())
    mus = [leaf for path, leaf in _state_paths(state) if ".mu" in path]
    nus = [leaf for path, leaf in _state_paths(state) if ".nu" in path]
    assert len(mus) == 4 and all(m.dtype == jnp.bfloat16 for m in mus)
    assert all(n.dtype == jnp.float32 for n in nus)
    updates, _ = tx.update(_grads(0), state, _params())
    assert all(u.dtype == jnp.float32 for u in jax.tree.leaves(updates))


def test_global_norm_clipping_ignores_frozen_grads():
    tx = build_optimizer(
        _params(),
        name="sgd",
        lr=1.0,
        schedule=_constant,
        momentum=0.0,
        grad_clip_norm=1.0,
        frozen=["body/bias"],
    )
    grads = jax.tree.map(lambda g: 100.0 * g, _grads(3))
    grads["body"]["bias"] = grads["body"]["bias"] * 1e6  # huge, but frozen
    updates, _ = tx.update(grads, tx.init(_params()), _params())
    trainable = [updates["body"]["kernel"], updates["head"]["kernel"], updates["head"]["bias"]]
    assert float(optax.tree.norm(trainable)) == pytest.approx(1.0, rel=1e-5)
    norm = float(
        optax.tree.norm([grads["body"]["kernel"], grads["head"]["kernel"], grads["head"]["bias"]])
    )
    np.testing.assert_allclose(
        updates["head"]["kernel"], -grads["head"]["kernel"] / norm, rtol=1e-5
    )
    small = jax.tree.map(lambda g: 1e-3 * g, _grads(3))
    unclipped, _ = tx.update(small, tx.init(_params()), _params())
    np.testing.assert_allclose(unclipped["head"]["kernel"], -small["head"]["kernel"], rtol=1e-6)


def test_state_is_addressed_by_names_and_counts_steps():
    tx = build_optimizer(_params(), lr=0.1, schedule=_constant)
    state = tx.init(_params())
    paths = " ".join(p for p, _ in _state_paths(state))
    for name in ("'train'", "'direction'", "'schedule'"):
        assert name in paths
    for _ in range(3):
        _, state = tx.update(_grads(0), state, _params())
    counts = [leaf for p, leaf in _state_paths(state) if "'schedule'" in p and "count" in p]
    assert [int(c) for c in counts] == [3]
    # The same named stages whether or not clipping / freezing are on.
    other = build_optimizer(
        _params(), lr=0.1, schedule=_constant, grad_clip_norm=None, frozen=["head/.*"]
    )
    stages = list(state.inner_states["train"].inner_state)
    assert stages == ["clip", "agc", "direction", "lr", "weight_decay", "schedule"]
    assert list(other.init(_params()).inner_states["train"].inner_state) == stages
    assert set(state.inner_states) == {"train", "frozen"}


def test_unknown_optimizer_suggests_closest():
    with pytest.raises(ConfigError, match="'adamw' is unknown; did you mean 'adam'") as info:
        build_optimizer(_params(), name="adamw", lr=0.1, schedule=_constant)
    assert "sgd" in str(info.value) and "\n" not in str(info.value)
    assert set(OPTIMIZERS) >= {"adam", "sgd"}


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"mu_dtype": "float16"}, "mu_dtype='float16'"),
        ({"lr": -1.0}, "lr=-1.0"),
        ({"wd": "big"}, "wd='big'"),
        ({"b2": 1.0}, "b2=1.0"),
        ({"grad_clip_norm": 0.0}, "grad_clip_norm=0.0"),
        ({"wd_mults": [("(bad", 1.0)]}, r"\(bad"),
        ({"lr_mults": [(".*", "x")]}, "'x'"),
        ({"frozen": ["[bad"]}, r"\[bad"),
    ],
)
def test_bad_options_are_config_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        build_optimizer(_params(), **{"lr": 0.1, "schedule": _constant, **kwargs})


def test_current_lr():
    sched = make_schedule(total_steps=100, warmup_steps=10, decay="constant")
    assert float(current_lr(sched, 0.5, 4)) == pytest.approx(0.25)
    assert float(jax.jit(lambda s: current_lr(sched, 0.5, s))(50)) == pytest.approx(0.5)


def test_paths_are_slash_joined_in_the_builder():
    leaves, _ = jax.tree_util.tree_flatten_with_path(_params())
    assert [path_str(p) for p, _ in leaves] == [
        "body/bias",
        "body/kernel",
        "head/bias",
        "head/kernel",
    ]
