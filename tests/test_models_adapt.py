import numpy as np
import pytest
from flax import nnx

from vistas.errors import ConfigError
from vistas.models import adapt, registry


def params_of(**options):
    model = registry.create("vit-mu/4", num_classes=options.pop("num_classes", 10), **options)
    return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def test_resample_identity_and_linear_ramp():
    pe = np.random.default_rng(0).normal(size=(1, 16, 8)).astype(np.float32)
    assert adapt.resample_posemb(pe, (4, 4)) is pe
    # A bilinear resize reproduces a function that is linear in the pixel-centre coordinates.
    gh, gw, nh, nw = 4, 6, 7, 3
    ys = (np.arange(gh) + 0.5) / gh
    xs = (np.arange(gw) + 0.5) / gw
    ramp = (2 * ys[:, None] + 3 * xs[None, :])[..., None] * np.ones(5)
    out = adapt.resample_posemb(ramp.reshape(1, gh * gw, 5), (nh, nw), (gh, gw)).reshape(nh, nw, 5)
    ny, nx = (np.arange(nh) + 0.5) / nh, (np.arange(nw) + 0.5) / nw
    expect = 2 * np.clip(ny, 0.5 / gh, 1 - 0.5 / gh)[:, None] + 3 * np.clip(nx, 0.5 / gw, 1 - 0.5 / gw)[None]
    np.testing.assert_allclose(out[..., 0], expect, atol=1e-5)


def test_resample_keeps_prefix_tokens():
    pe = np.random.default_rng(1).normal(size=(1, 1 + 9, 4)).astype(np.float32)
    out = adapt.resample_posemb(pe, (5, 5), num_prefix=1)
    assert out.shape == (1, 26, 4)
    np.testing.assert_array_equal(out[:, 0], pe[:, 0])


def test_adapt_new_resolution_and_head():
    src = params_of(image_size=28, num_classes=10)
    tgt = params_of(image_size=32, num_classes=3)
    out = adapt.adapt_params(src, tgt)
    assert out["pos_embedding"].shape == tgt["pos_embedding"].shape == (1, 64, src["pos_embedding"].shape[2])
    np.testing.assert_array_equal(out["head"]["kernel"], tgt["head"]["kernel"])
    flat_src, flat_out = adapt.flatten(src), adapt.flatten(out)
    for key, value in flat_out.items():
        if not key.startswith(("head/", "pos_embedding")):
            np.testing.assert_array_equal(value, flat_src[key])


def test_adapt_errors_name_the_parameter():
    src = params_of(image_size=28)
    with pytest.raises(ConfigError, match=r"'head/(bias|kernel)' has shape \[(.*, )?10\] but the model needs \[(.*, )?3\]"):
        adapt.adapt_params(src, params_of(image_size=28, num_classes=3), reset_head=False)
    with pytest.raises(ConfigError, match="has shape"):
        adapt.adapt_params(src, params_of(image_size=28, mlp_dim=48))
    with pytest.raises(ConfigError, match="has no place in the model"):
        adapt.adapt_params(src, params_of(image_size=28, depth=src_depth(src) - 1))


def src_depth(params):
    return sum(1 for k in params["encoder"] if k.startswith("block"))
