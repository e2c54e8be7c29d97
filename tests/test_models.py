"""Tests for vistas.models: ViT parameter counts, forward pass, API and registry errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vistas.errors import ConfigError
from vistas.models import registry, vit

# "Scaling Vision Transformers", Table 2: parameters at 224 px, patch 14, GAP, without head.
PAPER_PARAMS_M = {"Ti": 5.5, "S": 21.6, "B": 85.7, "L": 303.2, "G": 1843.0}


def tiny(**options):
    """A 2-block, width-32 ViT on 16x16 gray images (4x4 patches); shared shapes keep tests fast."""
    options = {"depth": 2, "head_zeroinit": False, "channels": 1, **options}
    return registry.create("vit-mu/4", num_classes=10, image_size=16, **options)


def images(n=2, seed=0):
    return jax.random.normal(jax.random.PRNGKey(seed), (n, 16, 16, 1))


@pytest.mark.parametrize("size", ["Ti", "S", "B", "L"])
def test_param_counts_match_the_paper(size):
    n = registry.count_params(f"vit-{size}/14", num_classes=1, image_size=224, exclude_head=True)
    assert abs(n / 1e6 - PAPER_PARAMS_M[size]) <= 0.1


def test_param_count_of_g14_by_depth_extrapolation():
    n = registry._count_by_depth("vit-G/14", num_classes=1, image_size=224, exclude_head=True)
    assert round(n / 1e6) == PAPER_PARAMS_M["G"]  # the paper gives whole millions for G
    assert n == 1_842_772_352  # 48 blocks of 38,361,728 + stem 980,096 + posemb 425,984 + LN


@pytest.mark.parametrize("name, options", [
    ("vit-S/16", dict(num_classes=1000, image_size=224)),
    ("vit-Ti/16", dict(num_classes=10, image_size=32, pool="map", exclude_head=True)),
    ("vit-mu/7", dict(num_classes=10, image_size=28, channels=1, pool="tok")),
])
def test_depth_extrapolation_equals_full_count(name, options):
    assert registry._count_by_depth(name, **options) == registry.count_params(name, **options)


def test_catalog_lists_vit_b16_with_its_known_size():
    rows = {r["name"]: r for r in registry.catalog()}
    assert set(rows) == set(registry.names())
    # ViT-B/16 with a 1000-class head at 224 px (the well-known 86.6M).
    assert rows["vit-B/16"]["params"] == 86_566_120
    assert rows["vit-B/16"]["num_classes"] == 1000 and rows["vit-B/16"]["image_size"] == 224
    assert rows["vit-Ti/16"]["params"] < rows["vit-S/16"]["params"] < rows["vit-B/16"]["params"]


def test_count_params_excludes_only_the_head():
    with_head = registry.count_params("vit-mu/4", num_classes=10, image_size=16, channels=1)
    without = registry.count_params("vit-mu/4", num_classes=10, image_size=16, channels=1,
                                    exclude_head=True)
    assert with_head - without == 32 * 10 + 10  # width 32 -> 10 classes, plus bias
    assert registry.count_params(registry.abstract("vit-mu/4", num_classes=10, image_size=16,
                                                   channels=1)) == with_head


def test_abstract_model_allocates_nothing():
    model = registry.abstract("vit-B/16", num_classes=1000)
    leaves = jax.tree.leaves(nnx.state(model, nnx.Param))
    assert leaves and all(isinstance(x, jax.ShapeDtypeStruct) for x in leaves)


@pytest.mark.parametrize("pool", ["gap", "map", "tok"])
@pytest.mark.parametrize("posemb", ["learn", "sincos2d"])
def test_forward_shapes_and_named_outputs(pool, posemb):
    model = tiny(pool=pool, posemb=posemb)
    logits, out = model(images(3))
    assert logits.shape == (3, 10)
    assert out["logits"] is logits
    assert out["pre_logits"].shape == (3, 32)
    n_tokens = 16 + (pool == "tok")
    assert out["encoder/block00"].shape == (3, n_tokens, 32)
    assert out["encoder/block01"].shape == (3, n_tokens, 32)
    assert "encoder/block02" not in out
    assert out["stem"].shape == (3, 4, 4, 32)
    assert bool(jnp.all(jnp.isfinite(logits)))
    np.testing.assert_allclose(model.forward_head(out["pre_logits"]), logits, rtol=1e-5, atol=1e-6)
    features, _ = model.forward_features(images(3))
    np.testing.assert_allclose(features, out["pre_logits"], rtol=1e-6)
    if pool == "gap":
        np.testing.assert_allclose(out["pre_logits"], out["encoded"].mean(1), rtol=1e-5, atol=1e-6)
    has_posemb_param = "pos_embedding" in nnx.to_pure_dict(nnx.state(model, nnx.Param))
    assert has_posemb_param == (posemb == "learn")


def test_head_is_zero_initialised_by_default_and_bias_init_applies():
    logits, _ = tiny(head_zeroinit=True)(images())
    np.testing.assert_array_equal(logits, 0.0)
    logits, _ = tiny(head_zeroinit=True, head_bias_init=-2.0)(images())
    np.testing.assert_allclose(logits, -2.0)


def test_patch_embedding_matmul_equals_conv():
    model = tiny()
    x = images(4)
    np.testing.assert_allclose(model._patchify(x), model.embedding(x), rtol=1e-5, atol=1e-5)
    model = tiny(channels=3)  # the order of (row, column, channel) inside a patch matters
    x = jax.random.uniform(jax.random.PRNGKey(1), (2, 16, 16, 3))
    np.testing.assert_allclose(model._patchify(x), model.embedding(x), rtol=1e-5, atol=1e-5)


def test_sincos_posemb_is_fixed_and_distinct():
    pe = np.asarray(vit.posemb_sincos_2d(4, 32))
    assert pe.shape == (1, 16, 32)
    assert len({row.tobytes() for row in pe[0]}) == 16  # every position differs


@pytest.mark.parametrize("name, hint", [
    ("vit-X/16", "did you mean"),
    ("vit-B16", "did you mean 'vit-B/16'"),
    ("resnet-50", "vit-B/16"),
    ("vitB", "vit-B/16"),
])
def test_unknown_model_is_one_line_with_a_suggestion(name, hint):
    with pytest.raises(ConfigError) as e:
        registry.create(name, num_classes=10)
    msg = str(e.value)
    assert "\n" not in msg and repr(name) in msg and hint in msg


def test_bad_options_are_config_errors():
    with pytest.raises(ConfigError, match="model.foo is not an option of ViT models; their options: .*pool"):
        tiny(foo=1)
    with pytest.raises(ConfigError, match="model.pool='avg'.*gap, map, tok"):
        tiny(pool="avg")
    with pytest.raises(ConfigError, match="model.posemb"):
        tiny(posemb="rope")
    with pytest.raises(ConfigError, match="not a multiple of the patch size 4"):
        registry.create("vit-mu/4", num_classes=10, image_size=18)
    with pytest.raises(ConfigError, match="not divisible by num_heads"):
        tiny(num_heads=3)


def test_reset_head_changes_num_classes():
    model = tiny()
    model.reset_head(5, rngs=nnx.Rngs(1))
    logits, out = model(images())
    assert logits.shape == (2, 5)
    assert model.cfg.num_classes == 5
    assert model.head.kernel[...].shape == (32, 5)
    assert out["pre_logits"].shape == (2, 32)


def test_dropout_needs_an_rng():
    model = tiny(dropout=0.5)
    x = images()
    a, _ = model(x)
    b, _ = model(x)
    np.testing.assert_array_equal(a, b)  # no rng: deterministic (eval)
    c, _ = model(x, rng=jax.random.PRNGKey(0))
    d, _ = model(x, rng=jax.random.PRNGKey(1))
    e, _ = model(x, rng=jax.random.PRNGKey(0))
    assert not np.allclose(c, a)
    assert not np.allclose(c, d)
    np.testing.assert_array_equal(c, e)  # same rng, same mask
    f, _ = tiny(dropout=0.0)(x, rng=jax.random.PRNGKey(0))
    np.testing.assert_array_equal(f, a)  # rate 0: the rng changes nothing


def test_same_seed_same_weights():
    a = nnx.state(tiny(seed=3), nnx.Param)
    b = nnx.state(tiny(seed=3), nnx.Param)
    c = nnx.state(tiny(seed=4), nnx.Param)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)
    assert any(not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(c),
                                                       strict=True))
