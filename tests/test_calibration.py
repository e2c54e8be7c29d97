"""Tests for vistas.evaluate.calibration: ECE against a hand computation, the jitted bin sums,
temperature fitting, and calibration in the evaluation of a real (over-confident) model."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import requires_fashion_mnist

from vistas.evaluate import calibration
from vistas.systems import mesh as mesh_lib
from vistas.train import loop

# Softmax probabilities chosen so that each example's confidence is known exactly.
PROBS = np.array([
    [0.9, 0.05, 0.05],  # confidence 0.9, predicts 0, label 0: right
    [0.9, 0.05, 0.05],  # confidence 0.9, predicts 0, label 1: wrong
    [0.25, 0.55, 0.2],  # confidence 0.55, right
    [0.3, 0.3 - 1e-6, 0.4 + 1e-6],  # confidence ~0.4, predicts 2, label 0: wrong
])
LABELS = np.array([0, 1, 1, 0])


def test_ece_matches_a_hand_computation():
    # 15 bins of width 1/15: 0.9 -> bin 13, 0.55 -> bin 8, 0.4 -> bin 6 (each alone or paired)
    # bin 13: |1 correct - 1.8 confidence| = 0.8; bin 8: |1 - 0.55| = 0.45; bin 6: |0 - 0.4| = 0.4
    expected = (0.8 + 0.45 + 0.4) / 4
    logits = np.log(PROBS)
    assert calibration.ece(logits, LABELS) == pytest.approx(expected, abs=1e-5)
    sums = jax.jit(calibration.bin_sums)(jnp.asarray(logits, jnp.float32), jnp.asarray(LABELS))
    assert np.asarray(sums["count"]).tolist() == [0] * 6 + [1, 0, 1] + [0] * 4 + [2, 0]
    assert calibration.ece_from_sums(sums) == pytest.approx(expected, abs=1e-5)
    # masked examples do not count
    mask = jnp.array([True, True, True, False])
    masked = calibration.bin_sums(jnp.asarray(logits), jnp.asarray(LABELS), mask)
    assert calibration.ece_from_sums(masked) == pytest.approx((0.8 + 0.45) / 3, abs=1e-5)


def test_bins_are_right_closed_and_cover_zero():
    conf = np.array([0.0, 1 / 15, 1 / 15 + 1e-3, 2 / 15, 0.5, 1.0])
    assert calibration.bin_index(conf).tolist() == [0, 0, 1, 1, 7, 14]
    assert calibration.bin_index(jnp.asarray(conf, jnp.float32)).tolist() == [0, 0, 1, 1, 7, 14]


def test_temperature_recovers_the_scale_of_over_confident_logits():
    rng = np.random.default_rng(0)
    n, k = 4000, 5
    calibrated = rng.normal(size=(n, k)) * 1.5
    probs = np.exp(calibrated) / np.exp(calibrated).sum(1, keepdims=True)
    labels = np.array([rng.choice(k, p=p) for p in probs])  # labels drawn from the model itself
    over = calibrated * 4.0  # same predictions, four times too sharp
    held_out, test = slice(0, n // 2), slice(n // 2, n)
    t = calibration.fit_temperature(over[held_out], labels[held_out])
    assert t == pytest.approx(4.0, rel=0.1)
    before = calibration.ece(over[test], labels[test])
    after = calibration.ece(over[test], labels[test], temperature=t)
    assert before > 0.15 and after < 0.04
    assert calibration.nll(over[test], labels[test], t) < calibration.nll(over[test], labels[test])


@requires_fashion_mnist
@pytest.mark.slow
def test_evaluation_reports_ece_and_temperature_scaling_fixes_an_over_confident_model(
        transfer_upstream):
    summary = json.loads((transfer_upstream / "summary.json").read_text())
    assert 0.0 < summary["eval/test[:1000]/ece"] < 1.0  # reported by every evaluation
    cfg = loop.load_config(transfer_upstream)
    cfg.data.eval_splits, cfg.data.calibration_split = ["test[500:1000]"], "test[:500]"
    exp, params, _ = loop.final_params(transfer_upstream, cfg)
    mesh = mesh_lib.data_mesh()
    plain = loop.evaluate(exp, params, mesh)
    assert plain["eval/temperature"] > 0
    # the same model made over-confident: logits scaled by 6 (predictions unchanged)
    sharp = dict(params, head=jax.tree.map(lambda x: 6.0 * x, params["head"]))
    over = loop.evaluate(exp, sharp, mesh)
    key = "eval/test[500:1000]"
    assert over[f"{key}/top1"] == plain[f"{key}/top1"]
    assert over["eval/temperature"] == pytest.approx(6.0 * plain["eval/temperature"], rel=0.05)
    assert over[f"{key}/ece"] > plain[f"{key}/ece"]
    assert over[f"{key}/ece_ts"] < 0.5 * over[f"{key}/ece"]
    assert over[f"{key}/ece_ts"] == pytest.approx(plain[f"{key}/ece_ts"], abs=0.01)
