"""Tests for vistas.optim.adafactor: the paper's Adafactor against a plain NumPy version."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import requires_fashion_mnist, smoke

from vistas.errors import ConfigError
from vistas.optim import adafactor
from vistas.optim.builder import build_optimizer

SHAPES = {
    "dense": (48, 40),  # factored over both dims
    "narrow": (40, 16),  # 16 < 32: full second moment
    "bias": (7,),  # vector: full second moment
    "qkv": (64, 4, 40),  # [D, H, Dh]: factored over D (largest) and Dh
    "out": (4, 40, 36),  # [H, Dh, D]: factored over Dh and D
}


def _tree(seed, scale=1.0):
    rng = np.random.default_rng(seed)
    return {k: jnp.asarray(scale * rng.normal(size=s), jnp.float32) for k, s in SHAPES.items()}


class NumpyAdafactorBV:
    """The modified Adafactor written out in NumPy (float64) for one array."""

    def __init__(self, shape, b1=0.9, decay=0.8, cap=0.999, eps=1e-30, min_dim=32):
        self.b1, self.decay, self.cap, self.eps = b1, decay, cap, eps
        self.t = 0
        dims = sorted(range(len(shape)), key=lambda i: shape[i])
        self.factored = len(shape) >= 2 and shape[dims[-2]] >= min_dim
        if self.factored:
            self.d0, self.d1 = dims[-2], dims[-1]  # second largest, largest
            self.row = np.zeros([s for i, s in enumerate(shape) if i != self.d1])
            self.col = np.zeros([s for i, s in enumerate(shape) if i != self.d0])
        else:
            self.v = np.zeros(shape)
        self.m = np.zeros(shape)

    def step(self, g):
        g = np.asarray(g, np.float64)
        beta2 = min(self.cap, 1.0 - (self.t + 1.0) ** (-self.decay))
        g2 = g**2 + self.eps
        if self.factored:
            self.row = beta2 * self.row + (1 - beta2) * g2.mean(axis=self.d1)
            self.col = beta2 * self.col + (1 - beta2) * g2.mean(axis=self.d0)
            # v̂[..., i, ..., j, ...] = row[i] * col[j] / mean_i(row)
            d0_in_row = self.d0 if self.d0 < self.d1 else self.d0 - 1
            row_mean = self.row.mean(axis=d0_in_row, keepdims=True)
            v_hat = (np.expand_dims(self.row / row_mean, self.d1)
                     * np.expand_dims(self.col, self.d0))
        else:
            self.v = beta2 * self.v + (1 - beta2) * g2
            v_hat = self.v
        normalised = g / np.sqrt(v_hat)
        self.m = self.b1 * self.m + (1 - self.b1) * normalised
        self.t += 1
        return self.m


def _run(tx, steps, params=None):
    params = _tree(0) if params is None else params
    state = tx.init(params)
    update = jax.jit(tx.update)
    outs = []
    for t in range(steps):
        u, state = update(_tree(t + 1), state, params)
        outs.append(u)
    return outs, state


def test_matches_numpy_with_float32_momentum():
    outs, _ = _run(adafactor.scale_by_adafactor_bv(mu_dtype=jnp.float32), 6)
    for name, shape in SHAPES.items():
        ref = NumpyAdafactorBV(shape)
        for t, u in enumerate(outs):
            want = ref.step(_tree(t + 1)[name])
            np.testing.assert_allclose(u[name], want, rtol=2e-5, atol=1e-7,
                                       err_msg=f"{name} step {t}")


def test_matches_numpy_with_bfloat16_momentum():
    """bf16 momentum: each step follows the recurrence from the stored (rounded) momentum."""
    tx = adafactor.scale_by_adafactor_bv()  # bf16 is the default
    params = _tree(0)
    state = tx.init(params)
    assert all(m.dtype == jnp.bfloat16 for m in jax.tree.leaves(state.mu))
    refs = {k: NumpyAdafactorBV(s) for k, s in SHAPES.items()}
    update = jax.jit(tx.update)
    for t in range(6):
        grads = _tree(t + 1)
        for k, ref in refs.items():
            ref.m = np.asarray(state.mu[k], np.float64)  # the momentum as stored, in bf16
        u, state = update(grads, state, params)
        for k, ref in refs.items():
            want = ref.step(grads[k])
            assert u[k].dtype == jnp.float32 and state.mu[k].dtype == jnp.bfloat16
            np.testing.assert_allclose(u[k], want, rtol=2e-5, atol=1e-7, err_msg=f"{k} {t}")
            np.testing.assert_array_equal(state.mu[k], np.asarray(u[k]).astype(jnp.bfloat16))


def test_state_is_factored_where_expected():
    state = adafactor.scale_by_adafactor_bv().init(_tree(0))
    nu = state.nu
    assert nu["dense"].v_row.shape == (40,) and nu["dense"].v_col.shape == (48,)
    assert nu["dense"].v == ()
    assert nu["narrow"].v.shape == (40, 16) and nu["bias"].v.shape == (7,)
    assert nu["qkv"].v_row.shape == (4, 40) and nu["qkv"].v_col.shape == (64, 4)
    assert nu["out"].v_row.shape == (4, 36) and nu["out"].v_col.shape == (4, 40)
    assert adafactor.factored_dims((64, 4, 40), 32) == (2, 0)
    assert adafactor.factored_dims((31, 500), 32) is None


def test_beta2_schedule_starts_at_zero_and_is_capped():
    b = [float(adafactor.beta2_at(t, 0.8, 0.999)) for t in (0, 1, 9, 10**6)]
    assert b[0] == 0.0
    assert b[1] == pytest.approx(1 - 2**-0.8)
    assert b[2] == pytest.approx(1 - 10**-0.8)
    assert b[3] == pytest.approx(0.999)


def test_no_parameter_scale_step():
    """The original Adafactor scales steps by RMS(θ); this one does not look at θ at all."""
    tx = adafactor.scale_by_adafactor_bv()
    small, _ = _run(tx, 3, params=_tree(0, scale=1e-3))
    large, _ = _run(tx, 3, params=_tree(0, scale=1e3))
    for a, b in zip(small, large, strict=True):
        jax.tree.map(np.testing.assert_array_equal, a, b)


def test_update_clipping_option():
    huge = {"w": jnp.full((8, 8), 1e3)}
    for clip in (None, 0.5):
        tx = adafactor.scale_by_adafactor_bv(b1=0.0, clip=clip)
        u, _ = tx.update(huge, tx.init(huge))
        rms = float(jnp.sqrt(jnp.mean(u["w"] ** 2)))
        # the first step's normalised gradient has RMS 1 (v = g²); clipping brings it to 0.5
        assert rms == pytest.approx(1.0 if clip is None else 0.5, rel=1e-5)


def test_builder_applies_lr_and_schedule():
    params = _tree(0)
    tx = build_optimizer(params, name="adafactor_bv", lr=0.01, schedule=lambda s: 0.5,
                         wd=0.0, grad_clip_norm=None, mu_dtype="float32")
    updates, state = jax.jit(tx.update)(_tree(1), tx.init(params), params)
    direction = state.inner_states["train"].inner_state["direction"]
    assert isinstance(direction, adafactor.AdafactorBVState)
    ref = NumpyAdafactorBV(SHAPES["dense"])
    np.testing.assert_allclose(updates["dense"], -0.005 * ref.step(_tree(1)["dense"]), rtol=2e-5)


@pytest.mark.parametrize("option, value", [("adafactor_beta2_cap", 1.0),
                                           ("adafactor_min_dim", 0), ("adafactor_clip", -1.0)])
def test_bad_options(option, value):
    with pytest.raises(ConfigError, match=f"{option}={value}"):
        build_optimizer(_tree(0), name="adafactor_bv", lr=0.1, schedule=lambda s: 1.0,
                        **{option: value})


@requires_fashion_mnist
@pytest.mark.slow
def test_trains_a_vit(tmp_path):
    from vistas.train import loop
    from vistas.train.metrics import read_metrics

    cfg = smoke("optim.name=adafactor_bv", "train.duration=16", "train.log_every=4", "model.depth=1")
    summary = loop.train(cfg, tmp_path / "r", quiet=True)
    losses = [r["train/loss"] for r in read_metrics(tmp_path / "r" / "metrics.jsonl")
              if "train/loss" in r]
    assert summary["finished"] and len(losses) == 4 and np.all(np.isfinite(losses))
    assert losses[-1] < losses[0] and summary["eval/test[:1000]/top1"] > 0.2
