"""Tests for the ConvNets: NFNet and BiT ResNet-v2 (parameter counts, weight standardisation,
signal propagation, stochastic depth, API, errors), and 8 simulated devices against 1."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import requires_fashion_mnist
from flax import nnx

from vistas import config as config_lib
from vistas import presets
from vistas.errors import ConfigError
from vistas.models import bit, conv_layers, nfnet, registry

# Brock et al. 2021, Table 2 (1000 classes), in millions.
NFNET_PARAMS_M = {"F0": 71.5, "F1": 132.6, "F2": 193.8, "F3": 254.9, "F4": 316.1, "F5": 377.2,
                  "F6": 438.4}
TINY_NFNET = dict(widths=[16, 32, 64, 64], group_width=8, stem_widths=[4, 8, 8])
TINY_BIT = dict(widths=[8, 16, 16, 32])


def tiny_nfnet(**options):
    options = {**TINY_NFNET, "depths": [1, 2, 1, 1], "channels": 1, "image_size": 28,
               "head_zeroinit": False, **options}
    return registry.create("nfnet-F0", num_classes=10, **options)


def tiny_bit(**options):
    options = {**TINY_BIT, "depths": [1, 2, 1, 1], "channels": 1, "image_size": 28,
               "head_zeroinit": False, **options}
    return registry.create("bit-R50x1", num_classes=10, **options)


def images(n=4, size=28, channels=1, seed=0):
    return np.random.default_rng(seed).standard_normal((n, size, size, channels), np.float32)


_FORWARDS = {}


def forward(model, x, rng=None):
    """``model(x, rng=rng)`` compiled once per model structure (eager convolutions are slow)."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    key = (graphdef, rng is None)
    if key not in _FORWARDS:
        _FORWARDS[key] = jax.jit(lambda p, r, x, rng: nnx.merge(graphdef, p, r)(x, rng=rng))
    return _FORWARDS[key](params, rest, x, rng)


def set_skip_gains(model, value):
    """NFNet blocks start as identities (skip gain 0); give their residual branches weight."""
    state = nnx.state(model, nnx.Param)
    flat = nnx.to_pure_dict(state)

    def walk(d):
        for k, v in d.items():
            if isinstance(v, dict):
                walk(v)
            elif k == "skip_gain":
                d[k] = jnp.full((), value)

    walk(flat)
    nnx.replace_by_pure_dict(state, flat)
    nnx.update(model, state)
    return model


# --- parameter counts -----------------------------------------------------------------------


@pytest.mark.parametrize("variant", sorted(NFNET_PARAMS_M))
def test_nfnet_param_counts_match_the_paper(variant):
    n = registry._count_by_depth(f"nfnet-{variant}", num_classes=1000, image_size=224)
    assert abs(n / 1e6 - NFNET_PARAMS_M[variant]) <= 0.2


def test_nfnet_f0_full_count_equals_the_stagewise_count():
    assert registry.count_params("nfnet-F0", num_classes=1000) == 71_489_284
    assert registry._count_by_depth("nfnet-F0", num_classes=1000, image_size=224) == 71_489_284


def test_bit_param_counts():
    r50 = registry._count_by_depth("bit-R50x1", num_classes=1000, image_size=224)
    r152 = registry._count_by_depth("bit-R152x2", num_classes=1000, image_size=224)
    assert abs(r50 / 1e6 - 25.5) <= 0.1
    assert abs(r152 / 1e6 - 236.0) <= 0.5
    assert r50 == registry.count_params("bit-R50x1", num_classes=1000)


@pytest.mark.parametrize("name, options", [
    ("nfnet-F1+", dict(TINY_NFNET, depths=[1, 3, 2, 4], channels=1, num_classes=10)),
    ("bit-R101x2", dict(TINY_BIT, depths=[3, 1, 2, 5], num_classes=10, exclude_head=True)),
])
def test_stagewise_count_equals_full_count(name, options):
    assert registry._count_by_depth(name, **options) == registry.count_params(name, **options)


def test_catalog_lists_every_convnet_variant():
    names = registry.names()
    for v in [*(f"F{i}" for i in range(8)), *(f"F{i}+" for i in range(8))]:
        assert f"nfnet-{v}" in names
    for d in (50, 101, 152):
        for k in (1, 2, 3, 4):
            assert f"bit-R{d}x{k}" in names
    count = lambda n: registry._count_by_depth(n, num_classes=1000, image_size=224)  # noqa: E731
    plain = [count(f"nfnet-F{i}") for i in range(8)]
    plus = [count(f"nfnet-F{i}+") for i in range(8)]
    assert plain == sorted(plain) and plus == sorted(plus)
    assert all(p > q for p, q in zip(plus, plain, strict=True))


# --- layers -----------------------------------------------------------------------------------


@jax.jit
def _standardize_both(w):
    return (conv_layers.standardize(w, scaled=True, eps=1e-4),
            conv_layers.standardize(w, scaled=False, eps=1e-8))


@pytest.mark.parametrize("shape", [(3, 3, 16, 8), (1, 1, 64, 32), (3, 3, 1, 4)])
def test_scaled_weight_standardisation_gives_zero_mean_and_unit_fan_in_variance(shape):
    w = 3.0 + 2.0 * np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    fan_in = int(np.prod(shape[:-1]))
    scaled, unscaled = (np.asarray(a).reshape(fan_in, -1) for a in _standardize_both(w))
    np.testing.assert_allclose(scaled.mean(0), 0.0, atol=1e-6)
    np.testing.assert_allclose(fan_in * scaled.var(0), 1.0, rtol=1e-4)
    np.testing.assert_allclose(unscaled.mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(unscaled.var(0), 1.0, rtol=1e-4)


def test_ws_conv_uses_the_standardised_kernel_times_its_gain():
    conv = conv_layers.WSConv(16, 16, 3, rngs=nnx.Rngs(0))
    gain = np.linspace(0.5, 2.0, 16, dtype=np.float32)
    conv.gain[...] = jnp.asarray(gain)
    conv.bias[...] = jnp.full((16,), 0.5)
    x = images(4, 16, 16)
    w = np.asarray(_standardize_both(conv.kernel[...])[0]) * gain
    ref = jax.lax.conv_general_dilated(x, jnp.asarray(w), (1, 1), "SAME",
                                       dimension_numbers=("NHWC", "HWIO", "NHWC")) + 0.5
    graphdef, params, rest = nnx.split(conv, nnx.Param, ...)
    y = jax.jit(lambda p, x: nnx.merge(graphdef, p, rest)(x))(params, x)
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4)
    # variance preserving: unit-Gaussian inputs keep unit variance (away from the zero padding)
    inner = (np.asarray(y)[:, 1:-1, 1:-1] - 0.5) / gain
    assert 0.8 < float(np.var(inner)) < 1.2


def test_grouped_conv_equals_xla_grouped_convolution():
    x = images(2, 9, 12)
    w = np.random.default_rng(1).standard_normal((3, 3, 4, 6)).astype(np.float32)
    for stride, padding in [(1, "SAME"), (2, "SAME"), (2, ((1, 1), (1, 1)))]:
        ours = conv_layers.grouped_conv(x, w, stride, padding, 3)  # on CPU: one conv per group
        ref = jax.lax.conv_general_dilated(x, w, (stride, stride), padding,
                                           dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                           feature_group_count=3)
        np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)


def test_activation_gammas_make_unit_variance():
    x = jax.random.normal(jax.random.PRNGKey(0), (1_000_000,))
    for name in ("gelu", "relu", "silu", "tanh"):
        y = conv_layers.scaled_activation(name)(x)
        assert float(jnp.var(y)) == pytest.approx(1.0, rel=0.01), name
    with pytest.raises(ConfigError, match="model.activation='swish' is not known"):
        conv_layers.scaled_activation("swish")


def test_avg_pool_counts_only_valid_pixels():
    x = jnp.ones((1, 7, 7, 2))
    y = conv_layers.avg_pool_2x2(x)
    assert y.shape == (1, 4, 4, 2)
    np.testing.assert_allclose(y, 1.0)


# --- NFNet -------------------------------------------------------------------------------------


def test_nfnet_signal_propagation_keeps_variance_of_order_one():
    """Without any normalisation, the residual stream's variance stays O(1) through depth.

    A 12-block stage is fed unit-Gaussian activations, with its residual branches switched
    on (skip gains 1; at init they are 0 and every block is an identity). Each block adds
    alpha² to the variance: beta = 1/sqrt(expected variance) gives each branch a
    unit-variance input, and the scaled weight standardisation and the activation's gamma
    keep it at unit variance. Growth is linear in depth, not the exponential growth of an
    unnormalised ResNet. The stem, fed random images, keeps the variance of order one too.
    """
    model = tiny_nfnet(depths=[12], widths=[16])
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    # the stage's input; large enough maps that zero padding at borders hardly matters
    h = jax.random.normal(jax.random.PRNGKey(0), (4, 32, 32, 8))
    images = jax.random.normal(jax.random.PRNGKey(1), (8, 28, 28, 1))

    @jax.jit
    def variances(params):
        model = nnx.merge(graphdef, params, rest)
        out = {}
        model.stage0(h, out, "stage0", None)
        stream = [jnp.mean(jnp.var(out[f"stage0/block{k:02d}"], axis=(0, 1, 2))) for k in range(12)]
        return jnp.stack(stream), jnp.var(model.stem(images))

    at_init, stem = variances(params)
    assert 0.3 < float(stem) < 3.0
    np.testing.assert_allclose(at_init, at_init[0], rtol=1e-5)  # identities at init
    flat = nnx.to_pure_dict(params)
    for k in range(12):
        flat["stage0"][f"block{k:02d}"]["skip_gain"] = jnp.ones(())
    grown, _ = variances(flat)
    grown = np.asarray(grown)
    alpha2 = 0.2**2
    expected = 1 + (np.arange(12) + 1) * alpha2  # after block k, from a unit-variance input
    np.testing.assert_allclose(grown, expected, rtol=0.1)
    assert np.all(np.diff(grown) > 0) and grown[-1] < 2.0


def test_nfnet_betas_and_stochastic_depth_rates_follow_the_reference():
    model = registry.abstract("nfnet-F0", num_classes=10, **TINY_NFNET)
    blocks = [getattr(getattr(model, f"stage{s}"), f"block{i:02d}")
              for s, d in enumerate((1, 2, 6, 3)) for i in range(d)]
    betas = [b.beta for b in blocks]
    # after a transition block the expected variance is 1 + alpha², then grows by alpha²
    # beta = 1/sqrt(expected variance): 1 + alpha² after a transition block, then + alpha²
    # per block (F0: stages of 1, 2, 6, 3 blocks)
    expected_var = [1.0, 1.04, 1.04, 1.08, 1.04, 1.08, 1.12, 1.16, 1.20, 1.24, 1.04, 1.08]
    np.testing.assert_allclose(betas, 1 / np.sqrt(expected_var))
    np.testing.assert_allclose([b.drop_path for b in blocks], [0.1 * i / 12 for i in range(12)])
    assert model.cfg.dropout == 0.2 and model.cfg.drop_path == 0.1  # F0 as published


def test_nfnet_forward_shapes_outputs_and_head():
    model = tiny_nfnet()
    x = images(8)
    logits, out = forward(model, x)
    assert logits.shape == (8, 10)
    np.testing.assert_array_equal(out["logits"], logits)
    assert out["stem"].shape == (8, 7, 7, 8)
    assert out["stage0/block00"].shape == (8, 7, 7, 16)
    assert out["stage1/block01"].shape == (8, 4, 4, 32)
    assert out["stage3/block00"].shape == (8, 1, 1, 64)
    assert out["pre_logits"].shape == (8, 128)  # final conv: 2x the last width
    np.testing.assert_allclose(out["pre_logits"], out["final_conv"].mean((1, 2)), rtol=1e-5)
    np.testing.assert_allclose(model.forward_head(out["pre_logits"]), logits, rtol=1e-5, atol=1e-6)
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    conv = params["stage1"]["block00"]["conv1"]
    assert conv["kernel"].shape == (3, 3, 8, 16)  # grouped: 2 groups of 8 channels
    assert set(conv) == {"kernel", "gain", "bias"}
    assert params["head"]["kernel"].shape == (128, 10)
    model.reset_head(4, rngs=nnx.Rngs(1))
    assert model.head(out["pre_logits"]).shape == (8, 4) and model.cfg.num_classes == 4
    assert float(np.std(params["head"]["kernel"])) == pytest.approx(0.01, rel=0.1)  # N(0, 0.01)
    head = registry.create("nfnet-F0", num_classes=10, head_bias_init=-1.0, depths=[1, 1, 1, 1],
                           **TINY_NFNET).head
    np.testing.assert_array_equal(head.kernel[...], 0.0)  # zero-initialised by default
    np.testing.assert_array_equal(head.bias[...], -1.0)


@pytest.mark.parametrize("make", [tiny_nfnet, tiny_bit])
def test_stochastic_depth_and_dropout_are_off_at_eval(make):
    one_stage = dict(depths=[2], widths=[16])  # stochastic depth on the second block; compiles fast
    base = make(**one_stage)  # NFNet: the published F0 rates (0.1, 0.2); BiT: none
    noisy = make(drop_path=0.5, dropout=0.5, **one_stage)
    for model in (base, noisy):
        if isinstance(model, nfnet.NFNet):
            set_skip_gains(model, 1.0)
    x = images(8)
    a, _ = forward(base, x)
    b, _ = forward(noisy, x)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)  # same weights, no rng: identical
    c, out_c = forward(noisy, x, jax.random.PRNGKey(0))
    d, _ = forward(noisy, x, jax.random.PRNGKey(0))
    e, _ = forward(noisy, x, jax.random.PRNGKey(1))
    np.testing.assert_array_equal(c, d)
    assert not np.allclose(c, a) and not np.allclose(c, e)
    assert registry.needs_rng(noisy) and registry.needs_rng(base) == (make is tiny_nfnet)


def test_nfnet_activation_option():
    model = registry.abstract("nfnet-F0", num_classes=10, activation="relu", **TINY_NFNET)
    h = jnp.linspace(-2.0, 2.0, 9)
    assert model.stage1.block00.activation == "relu"
    np.testing.assert_allclose(conv_layers.activate("relu", h), 1.7139588594436646 * jax.nn.relu(h))


# --- BiT ---------------------------------------------------------------------------------------


def test_bit_forward_shapes_outputs_and_zero_head():
    model = tiny_bit()
    logits, out = forward(model, images(8))
    assert logits.shape == (8, 10)
    assert out["stem"].shape == (8, 7, 7, 8)  # 7x7/2 conv then 3x3/2 max pool
    assert out["stage0/block00"].shape == (8, 7, 7, 32)  # bottleneck 8 -> 4x8 out
    assert out["stage1/block01"].shape == (8, 4, 4, 64)
    assert out["stage3/block00"].shape == (8, 1, 1, 128)
    assert out["pre_logits"].shape == (8, 128)
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    unit = params["stage1"]["block00"]
    assert set(unit) == {"gn1", "gn2", "gn3", "conv_proj", "conv1", "conv2", "conv3"}
    assert set(unit["conv2"]) == {"kernel"}  # no bias, no gain
    assert "conv_proj" not in params["stage1"]["block01"]
    assert model.stage0.block00.gn1.num_groups == 8  # gcd(32, 8 channels)
    full = registry.abstract("bit-R50x1", num_classes=1000)
    assert full.stage0.block00.gn2.num_groups == 32
    np.testing.assert_allclose(model.forward_head(out["pre_logits"]), logits, rtol=1e-5, atol=1e-6)
    head = registry.create("bit-R50x1", num_classes=10, depths=[1, 1, 1, 1], **TINY_BIT).head
    np.testing.assert_array_equal(head.kernel[...], 0.0)  # zero-initialised, as in BiT


def test_bit_units_are_weight_standardised():
    model = tiny_bit()
    conv = model.stage1.block00.conv2
    w = np.asarray(conv.standardized_kernel()).reshape(-1, conv.kernel[...].shape[-1])
    np.testing.assert_allclose(w.mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(w.var(0), 1.0, rtol=1e-4)


# --- registry and config -----------------------------------------------------------------------


@pytest.mark.parametrize("name, hint", [
    ("nfnet-F9", "NFNet variants: F0"),
    ("nfnet-f8", "NFNet variants"),
    ("bit-R51x1", "did you mean 'bit-R50x1'"),
    ("bit-R50x5", "x1..x4"),
])
def test_unknown_convnet_variants_are_one_line_errors(name, hint):
    with pytest.raises(ConfigError) as e:
        registry.create(name, num_classes=10)
    assert "\n" not in str(e.value) and hint in str(e.value) and name in str(e.value)


def test_variant_names_are_case_insensitive():
    assert nfnet.parse_variant("f3+")[0] == "F3+"
    assert bit.parse_variant("r152X2")[0] == "R152x2"


def test_bad_convnet_options_are_config_errors():
    with pytest.raises(ConfigError, match="model.pool is not an option of NFNet models"):
        tiny_nfnet(pool="map")
    with pytest.raises(ConfigError, match="model.group_width is not an option of BiT models"):
        tiny_bit(group_width=8)
    with pytest.raises(ConfigError, match="model.group_width is not an option of ViT models"):
        registry.create("vit-mu/4", num_classes=10, image_size=16, group_width=8)
    with pytest.raises(ConfigError, match="model.group_width=32 is wider than the 8"):
        tiny_nfnet(group_width=32)
    with pytest.raises(ConfigError, match=r"model.depths=\[1, 2\] and model.widths"):
        tiny_nfnet(depths=[1, 2])
    with pytest.raises(ConfigError, match="model.widths=.*positive integers"):
        tiny_bit(widths=[8, 0, 16, 32])
    with pytest.raises(ConfigError, match=r"model.drop_path=1.5 must be a number in \[0, 1\)"):
        tiny_nfnet(drop_path=1.5)
    cfg = presets.get("fashion_mnist_nfnet")
    with pytest.raises(ConfigError, match="model.drop_path"):
        config_lib.apply_overrides(cfg, ["model.drop_path=1.0"])


@pytest.mark.parametrize("preset", ["fashion_mnist_nfnet", "fashion_mnist_bit"])
def test_presets_build_their_models_from_the_config(preset):
    cfg = presets.get(preset)
    options = config_lib.model_options(cfg.model)
    options.update(image_size=cfg.data.image_size, channels=cfg.data.channels)
    model = registry.abstract(cfg.model.name, num_classes=10, **options)
    assert registry.count_params(model) > 100_000
    assert registry.needs_rng(model) == (cfg.model.name.startswith("nfnet"))


# --- 8 simulated devices -----------------------------------------------------------------------

DEVICES_SNIPPET = r"""
import json, pathlib, sys
import jax
from vistas import config, presets
from vistas.train import loop

# One stage of two blocks (a transition block with its shortcut conv, then a plain one; a
# grouped 3x3 conv of 2 groups; stochastic depth on the second block): the preset's step
# (SGD + Nesterov + AGC) at a fraction of the four stages' compile time.
sets = ["train.duration=6", "schedule.warmup=2", "train.log_every=1", "train.eval_every=6",
        "data.num_train_examples=512", "data.batch_size=32", "data.eval_splits=['test[:256]']",
        "data.eval_batch_size=128", "model.widths=[16]", "model.group_width=4",
        "model.stem_widths=[4, 8, 8]", "model.depths=[2]", "model.drop_path=0.2"]
cfg = config.apply_overrides(presets.get("fashion_mnist_nfnet"), sets)
summary = loop.train(cfg, pathlib.Path(sys.argv[1]), quiet=True)
rows = [json.loads(line) for line in open(pathlib.Path(sys.argv[1]) / "metrics.jsonl")]
print(json.dumps({
    "devices": jax.device_count(),
    "losses": [r["train/loss"] for r in rows if "train/loss" in r],
    "grad_norms": [r["train/grad_norm"] for r in rows if "train/loss" in r],
    "top1": summary["eval/test[:256]/top1"],
}))
"""


@requires_fashion_mnist
@pytest.mark.slow
def test_nfnet_on_8_simulated_devices_matches_1(tmp_path):
    """A data-parallel NFNet step (SGD + Nesterov + AGC, stochastic depth) does not depend on
    the number of devices."""
    script = tmp_path / "devices.py"
    script.write_text(DEVICES_SNIPPET)
    base = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    procs = {}
    for n in (8, 1):
        env = {**base, "JAX_PLATFORMS": "cpu",
               "XLA_FLAGS": f"--xla_force_host_platform_device_count={n}"}
        procs[n] = subprocess.Popen([sys.executable, str(script), str(tmp_path / str(n))], env=env,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    results = {}
    for n, proc in procs.items():
        out, err = proc.communicate(timeout=550)
        assert proc.returncode == 0, err[-3000:]
        results[n] = json.loads(out.strip().splitlines()[-1])
    assert results[8]["devices"] == 8 and results[1]["devices"] == 1
    assert len(results[8]["losses"]) == 6
    np.testing.assert_allclose(results[8]["losses"], results[1]["losses"], rtol=1e-4)
    np.testing.assert_allclose(results[8]["grad_norms"], results[1]["grad_norms"], rtol=1e-3)
    assert results[8]["top1"] == pytest.approx(results[1]["top1"], abs=0.005)
