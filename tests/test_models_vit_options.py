"""Tests for the ViT options: sizes Ti..e and 22B, the ViT-22B block (parallel, fused,
QK-norm, bias-free), drop-path, dtypes, remat, scan, non-square grids and resolution changes.

Shapes are checked on abstract models (nothing compiled); values on a 2-block, width-32
model, each configuration compiled once.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import requires_fashion_mnist
from flax import nnx

from vistas import config as config_lib
from vistas import presets
from vistas.errors import ConfigError
from vistas.models import adapt, interop, registry, vit
from vistas.train import loop

# Parameters at 224 px, patch 14, GAP, without head ("Scaling Vision Transformers", Table 2;
# the paper gives whole millions from g on); MAP head counts for B and G.
PAPER_M = {"Ti": 5.5, "S": 21.6, "M": 38.3, "B": 85.7, "L": 303.2, "H": 630.8,
           "g": 1011, "G": 1843, "e": 3805}
PAPER_MAP_M = {"B": 92.8, "G": 1881}
VIT22B_BLOCK_MATMULS = 21_743_271_936
TOL = dict(rtol=1e-5, atol=1e-5)


def _options(options):
    return {"depth": 2, "head_zeroinit": False, "channels": 1, "image_size": 16, **options}


@functools.cache
def _abstract(items):
    return registry.abstract("vit-mu/4", num_classes=10, **_options(dict(items)))


def abstract(**options):
    """A 2-block, width-32 ViT on 16x16 gray images (4x4 patches), shapes only."""
    return nnx.clone(_abstract(tuple(sorted(options.items()))))


def tiny(seed=1, **options):
    """That model with random values everywhere (LayerNorm scales and biases too); no
    initialisation is run, so nothing but the forward passes gets compiled."""
    model = abstract(**options)
    rng = np.random.default_rng(seed)
    new = {}
    for k, v in adapt.flatten(params_of(model)).items():
        noise = (rng.normal(size=v.shape) * 0.2).astype(v.dtype)
        new[k] = (1.0 + noise).astype(v.dtype) if k.endswith("scale") else noise
    return interop.assign(model, adapt.unflatten(new, params_of(model)))


@nnx.jit
def _forward(model, x, rng):
    return model(x, rng=rng)


def run(model, x, rng=None):
    """The forward pass, compiled."""
    return _forward(model, x, rng)


def loss_and_grads(model, x, rng=None):
    """sum(logits**2) and its gradients (a flat dict in the unscanned layout), one compile."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    @jax.jit
    def f(params):
        return jax.value_and_grad(lambda p: jnp.sum(nnx.merge(graphdef, p, rest)(x, rng=rng)[0] ** 2))(params)

    loss, g = f(params)
    return loss, adapt.flatten(vit.unstack_blocks(nnx.to_pure_dict(g)))


def images(n=2, seed=0, hw=(16, 16)):
    return jax.random.normal(jax.random.PRNGKey(seed), (n, *hw, 1))


def params_of(model):
    return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def checkpoint_of(model):
    return interop.Checkpoint(jax.tree.map(np.asarray, params_of(model)), model.cfg, "vistas", "memory")


def copy_into(src, **options):
    """A model of ``options`` with ``src``'s weights, rearranged into its layout."""
    dst = abstract(**options)
    return interop.assign(dst, interop.load_params(checkpoint_of(src), dst))


def count_kernels(tree, under):
    return sum(int(np.prod(v.shape)) for k, v in adapt.flatten(tree).items()
               if k.startswith(under) and k.endswith("kernel"))


# ---------------------------------------------------------------------------- sizes


@pytest.mark.parametrize("size", list(PAPER_M))
def test_param_counts_match_the_paper(size):
    n = registry._count_by_depth(f"vit-{size}/14", num_classes=1, image_size=224, exclude_head=True)
    digits = 1 if PAPER_M[size] < 1000 else 0
    assert round(n / 1e6, digits) == PAPER_M[size]


@pytest.mark.parametrize("size", list(PAPER_MAP_M))
def test_map_head_param_counts_match_the_paper(size):
    n = registry._count_by_depth(f"vit-{size}/14", num_classes=1, image_size=224, exclude_head=True,
                                 pool="map")
    digits = 1 if PAPER_MAP_M[size] < 1000 else 0
    assert round(n / 1e6, digits) == PAPER_MAP_M[size]


@pytest.mark.parametrize("fused", [False, True])
def test_22b_blocks_hold_the_papers_matmul_weights(fused):
    # Scanned: the 48 blocks are one stacked block, traced once, nothing allocated.
    model = registry.abstract("vit-22B/14", num_classes=1000, scan=True, fused=fused)
    cfg = model.cfg
    assert (cfg.width, cfg.depth, cfg.mlp_dim, cfg.num_heads, cfg.patch) == (6144, 48, 24576, 48, 14)
    assert cfg.parallel and cfg.qk_norm and not cfg.qkv_bias and not cfg.norm_bias
    flat = adapt.flatten(params_of(model))
    assert count_kernels(flat, "encoder/blocks/") == VIT22B_BLOCK_MATMULS
    assert not any("norm/bias" in k for k in flat)  # scale-only LayerNorms
    if not fused:
        assert "encoder/blocks/attn/query/bias" not in flat
        assert flat["encoder/blocks/mlp/fc1/bias"].shape == (48, 24576)  # MLP biases kept
        assert flat["encoder/blocks/attn/query_norm/scale"].shape == (48, 128)


def test_22b_is_listed_with_its_abstract_total():
    assert "vit-22B/14" in registry.names()
    listed = registry._count_by_depth("vit-22B/14", num_classes=1000, image_size=224)  # `vistas models`
    assert listed == registry.count_params("vit-22B/14", num_classes=1000, scan=True)
    assert VIT22B_BLOCK_MATMULS < listed < VIT22B_BLOCK_MATMULS * 1.01


@pytest.mark.parametrize("options", [
    dict(scan=True), dict(parallel=True, fused=True, scan=True),
    dict(qk_norm=True, qkv_bias=False, norm_bias=False, pool="map"),
])
def test_depth_extrapolation_holds_for_every_layout(options):
    kw = dict(num_classes=10, image_size=32, **options)
    assert registry._count_by_depth("vit-Ti/16", **kw) == registry.count_params("vit-Ti/16", **kw)


# ---------------------------------------------------------------------------- block options


BLOCK_CASES = {
    "parallel": (dict(parallel=True), {"encoder/block00/norm/scale": (32,)},
                 ["encoder/block00/norm1/scale", "encoder/block00/norm2/scale"]),
    "qk_norm": (dict(qk_norm=True), {"encoder/block00/attn/query_norm/scale": (16,),
                                     "encoder/block00/attn/key_norm/bias": (16,)}, []),
    "bias_free_map": (dict(qkv_bias=False, norm_bias=False, pool="map"),
                      {"encoder/block00/mlp/fc1/bias": (128,), "encoder/block00/attn/out/bias": (32,)},
                      ["encoder/block00/attn/query/bias", "map_head/attn/key/bias", "encoder/norm/bias",
                       "encoder/block00/norm1/bias", "map_head/norm/bias"]),
    "fused": (dict(parallel=True, fused=True, qkv_bias=False),
              {"encoder/block00/in_proj/kernel": (32, 3 * 32 + 128),
               "encoder/block00/in_proj/bias": (128,),  # the MLP part only
               "encoder/block00/out_proj/kernel": (32 + 128, 32)}, ["encoder/block00/attn/out/kernel"]),
    "scan": (dict(scan=True), {"encoder/blocks/mlp/fc1/kernel": (2, 32, 128)}, ["encoder/block00/norm1/scale"]),
    "pre_logits_tok": (dict(representation_size=24, pool="tok"),
                       {"pre_logits/kernel": (32, 24), "head/kernel": (24, 10), "cls": (1, 1, 32)}, []),
    "bfloat16_params": (dict(param_dtype="bfloat16"), {"encoder/block00/mlp/fc1/kernel": (32, 128)}, []),
}


@pytest.mark.parametrize("case", list(BLOCK_CASES))
def test_each_option_shapes_parameters_and_outputs(case):
    options, present, absent = BLOCK_CASES[case]
    model = abstract(**options)
    flat = adapt.flatten(params_of(model))
    for key, shape in present.items():
        assert flat[key].shape == shape, key
    for key in absent:
        assert key not in flat
    dtype = jnp.bfloat16 if options.get("param_dtype") == "bfloat16" else jnp.float32
    assert all(v.dtype == dtype for v in flat.values())
    graphdef, state = nnx.split(model)
    logits, out = jax.eval_shape(lambda s, x: nnx.merge(graphdef, s)(x), state, images(3))
    assert logits.shape == (3, 10) and logits.dtype == jnp.float32
    assert out["encoder/block01"].shape == (3, 16 + (options.get("pool") == "tok"), 32)
    assert out["pre_logits"].shape == (3, options.get("representation_size", 32))


def test_parallel_block_qk_norm_and_exact_gelu_are_the_published_formulas():
    from scipy.special import erf

    model = tiny(parallel=True, qk_norm=True, gelu="exact")
    block = model.encoder.block00
    x = jax.random.normal(jax.random.PRNGKey(2), (2, 16, 32))

    @nnx.jit
    def parts(block, x):
        y = block.norm(x)
        a = block.attn
        q, k, v = a.query(y), a.key(y), a.value(y)  # [B, N, H, Dh]
        return block(x), y, q, k, v, a(y, y), block.mlp(y)

    out, y, q, k, v, attn, mlp = map(np.asarray, parts(block, x))
    np.testing.assert_allclose(out, np.asarray(x) + attn + mlp, **TOL)  # x + Attn(LN(x)) + MLP(LN(x))
    p = params_of(block)

    def ln(t, w):
        t = (t - t.mean(-1, keepdims=True)) / np.sqrt(t.var(-1, keepdims=True) + 1e-6)
        return t * w["scale"] + w["bias"]

    q, k = ln(q, p["attn"]["query_norm"]), ln(k, p["attn"]["key_norm"])  # per head, over Dh
    w = np.exp(np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(16))
    w /= w.sum(-1, keepdims=True)
    o = p["attn"]["out"]
    expect = np.einsum("bhqk,bkhd->bqhd", w, v)
    np.testing.assert_allclose(attn, np.einsum("bqhd,hdo->bqo", expect, o["kernel"]) + o["bias"], **TOL)
    f1, f2 = p["mlp"]["fc1"], p["mlp"]["fc2"]
    h = y @ f1["kernel"] + f1["bias"]
    np.testing.assert_allclose(mlp, 0.5 * h * (1 + erf(h / np.sqrt(2))) @ f2["kernel"] + f2["bias"], **TOL)
    tanh = 0.5 * h * (1 + np.tanh(np.sqrt(2 / np.pi) * (h + 0.044715 * h**3))) @ f2["kernel"] + f2["bias"]
    assert not np.allclose(mlp, tanh, rtol=0, atol=1e-6)  # the default tanh form differs


def test_fused_parallel_block_equals_unfused():
    kw = dict(parallel=True, qk_norm=True, qkv_bias=False, drop_path=0.2)
    unfused = tiny(**kw)
    fused = copy_into(unfused, fused=True, **kw)
    x, r = images(4), jax.random.PRNGKey(7)  # same keys: same drop-path masks
    expect = run(unfused, x, r)[0]
    np.testing.assert_allclose(run(fused, x, r)[0], expect, **TOL)
    back = copy_into(fused, **kw)  # and back: the fused output bias is split again
    np.testing.assert_allclose(run(back, x, r)[0], expect, **TOL)


def test_fuse_and_unfuse_parameters_with_qkv_biases():
    block = jax.tree.map(np.asarray, params_of(tiny(parallel=True))["encoder"]["block00"])
    fused = vit.fuse_block(block)
    assert fused["in_proj"]["bias"].shape == (3 * 32 + 128,)
    np.testing.assert_array_equal(fused["in_proj"]["bias"][:16], block["attn"]["query"]["bias"][0])
    np.testing.assert_allclose(fused["out_proj"]["bias"],
                               block["attn"]["out"]["bias"] + block["mlp"]["fc2"]["bias"])
    back = adapt.flatten(vit.unfuse_block(fused, num_heads=2, mlp_dim=128))
    for key, value in adapt.flatten(block).items():
        if key == "attn/out/bias":
            np.testing.assert_array_equal(back[key], 0.0)
        elif key == "mlp/fc2/bias":
            np.testing.assert_allclose(back[key], fused["out_proj"]["bias"])
        else:
            np.testing.assert_array_equal(back[key], value, err_msg=key)


# ---------------------------------------------------------------------------- training options


def test_drop_path_rates_grow_linearly_and_evaluation_is_deterministic():
    cfg = dataclasses.replace(tiny().cfg, depth=3, drop_path=0.3)
    np.testing.assert_allclose(cfg.drop_path_rates(), [0.0, 0.15, 0.3])
    model = tiny(drop_path=0.3)
    plain = copy_into(model)
    x = images(8)
    np.testing.assert_array_equal(run(model, x)[0], run(plain, x)[0])  # no rng: drop-path is off
    a, b = run(model, x, jax.random.PRNGKey(0))[0], run(model, x, jax.random.PRNGKey(1))[0]
    assert not np.allclose(a, run(plain, x)[0]) and not np.allclose(a, b)
    np.testing.assert_array_equal(a, run(model, x, jax.random.PRNGKey(0))[0])
    assert model.uses_rng and registry.needs_rng(model) and not registry.needs_rng(plain)


def test_scan_equals_the_loop_with_drop_path():
    kw = dict(drop_path=0.3, pool="tok")
    loop_model = tiny(**kw)
    scan_model = copy_into(loop_model, scan=True, **kw)
    assert "blocks" in params_of(scan_model)["encoder"]
    x, r = images(4), jax.random.PRNGKey(3)  # each block gets the same keys either way
    a, out_a = run(loop_model, x, r)
    b, out_b = run(scan_model, x, r)
    np.testing.assert_allclose(b, a, **TOL)
    np.testing.assert_allclose(out_b["encoder/block01"], out_a["encoder/block01"], **TOL)


def test_scan_and_remat_keep_the_gradients():
    loop_model = tiny()
    scan_model = copy_into(loop_model, scan=True, remat="dots")
    x = images(4)
    (la, ga), (lb, gb) = loss_and_grads(loop_model, x), loss_and_grads(scan_model, x)
    np.testing.assert_allclose(lb, la, rtol=1e-5)
    assert set(ga) == set(gb)
    for k in ga:
        np.testing.assert_allclose(gb[k], ga[k], rtol=1e-4, atol=1e-5, err_msg=k)


def test_stack_and_unstack_round_trip_exactly():
    p = jax.tree.map(np.asarray, params_of(tiny()))
    stacked = vit.stack_blocks(p)
    assert set(stacked["encoder"]) == {"blocks", "norm"}
    assert stacked["encoder"]["blocks"]["norm1"]["scale"].shape == (2, 32)
    back = adapt.flatten(vit.unstack_blocks(stacked))
    for k, v in adapt.flatten(p).items():
        np.testing.assert_array_equal(back[k], v)


@pytest.mark.parametrize("policy", list(vit.REMAT_POLICIES))
def test_remat_wraps_each_block(policy):
    graphdef, state = nnx.split(abstract(remat=policy))
    jaxpr = jax.make_jaxpr(lambda s, x: nnx.merge(graphdef, s)(x)[0])(state, images())
    n = sum("remat" in e.primitive.name or "checkpoint" in e.primitive.name for e in jaxpr.jaxpr.eqns)
    assert n == (0 if policy == "none" else 2)  # one per block


def test_compute_dtype_is_separate_from_parameter_dtype():
    ref = tiny()
    half = copy_into(ref, dtype="bfloat16")
    assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(params_of(half)))
    x = images(4)
    logits, out = run(half, x)
    assert out["encoder/block00"].dtype == jnp.bfloat16 and out["encoded"].dtype == jnp.bfloat16
    assert logits.dtype == jnp.float32
    expect = run(ref, x)[0]
    np.testing.assert_allclose(logits, expect, atol=0.1 * float(jnp.abs(expect).max()))


def test_auto_dtype_is_float32_on_cpu_and_bfloat16_on_accelerators():
    assert vit.resolve_dtype("auto", "cpu") == "float32"
    assert vit.resolve_dtype("auto", "gpu") == vit.resolve_dtype("auto", "tpu") == "bfloat16"
    assert vit.resolve_dtype("float16", "gpu") == "float16"
    assert config_lib.Config().model.dtype == "auto"
    assert jax.default_backend() == "cpu" and tiny().encoder.norm.dtype == jnp.float32


@pytest.mark.parametrize("implementation", ["xla", "recompute"])
def test_attention_paths_give_the_same_function_and_gradients(implementation):
    ref = tiny()  # "auto": on CPU the recomputing attention
    other = copy_into(ref, attention=implementation)
    x = images(4)
    np.testing.assert_allclose(run(other, x)[0], run(ref, x)[0], **TOL)
    (la, ga), (lb, gb) = loss_and_grads(ref, x), loss_and_grads(other, x)
    np.testing.assert_allclose(lb, la, rtol=1e-5)
    for k in ga:
        np.testing.assert_allclose(gb[k], ga[k], rtol=1e-4, atol=1e-5, err_msg=k)


def test_attention_functions_agree_in_bfloat16_and_with_a_map_head():
    rng = np.random.default_rng(0)
    q, k, v = (jnp.asarray(rng.normal(size=(2, n, 4, 16)), jnp.bfloat16) for n in (1, 9, 9))
    a = vit.attend(q, k, v, "recompute").astype(jnp.float32)
    b = vit.attend(q, k, v, "xla").astype(jnp.float32)
    np.testing.assert_allclose(a, b, atol=2e-2)
    assert vit.attend(q, k, v).dtype == jnp.bfloat16  # "auto", queries of a MAP head


def test_cudnn_attention_off_a_gpu_is_a_one_line_error():
    with pytest.raises(ConfigError, match="model.attention='cudnn' needs a CUDA GPU, not the cpu") as e:
        run(copy_into(tiny(), attention="cudnn"), images(2))
    assert "\n" not in str(e.value)


# ---------------------------------------------------------------------------- resolution


def test_non_square_images_and_sincos_recomputed_for_any_grid():
    model = abstract(image_size=(16, 24))
    assert model.cfg.grid == (4, 6)
    assert params_of(model)["pos_embedding"].shape == (1, 24, 32)
    src = tiny(posemb="sincos2d")  # trained at 16x16, loaded at 16x24
    dst = copy_into(src, posemb="sincos2d", image_size=(16, 24))
    logits, out = run(dst, images(2, hw=(16, 24)))
    assert logits.shape == (2, 10) and out["stem"].shape == (2, 4, 6, 32)
    np.testing.assert_allclose(out["with_posemb"] - out["stem"].reshape(2, 24, 32),
                               jnp.broadcast_to(vit.posemb_sincos_2d((4, 6), 32), (2, 24, 32)), **TOL)


def test_loading_at_another_resolution_resamples_the_position_embedding():
    src = tiny()  # 16x16 px: a 4x4 grid
    dst = tiny(image_size=(16, 28), scan=True)  # a 4x7 grid, and another layout
    params = interop.load_params(checkpoint_of(src), dst)
    expect = adapt.resample_posemb(params_of(src)["pos_embedding"], (4, 7), (4, 4))
    np.testing.assert_allclose(params["pos_embedding"], expect, rtol=1e-6)
    flat_src = adapt.flatten(params_of(src))
    flat = adapt.flatten(vit.unstack_blocks(params))
    for k, v in flat_src.items():
        if k != "pos_embedding":
            np.testing.assert_array_equal(flat[k], v, err_msg=k)
    # and back from the non-square grid to a square one
    ckpt = interop.Checkpoint(params, dst.cfg, "vistas", "memory")
    back = interop.load_params(ckpt, tiny(image_size=20))
    assert back["pos_embedding"].shape == (1, 25, 32)
    np.testing.assert_allclose(back["pos_embedding"], adapt.resample_posemb(params["pos_embedding"], (5, 5), (4, 7)),
                               rtol=1e-6)


def test_mismatched_parameters_name_the_key_and_shapes():
    src = checkpoint_of(tiny())
    with pytest.raises(ConfigError, match=r"'encoder/block00/mlp/fc1/(bias|kernel)' has shape "
                                          r"\[(32, )?128\] but the model needs \[(32, )?64\]"):
        interop.load_params(src, tiny(mlp_dim=64))
    with pytest.raises(ConfigError, match=r"checkpoint has no parameter 'encoder/block00/norm/\w+'"):
        interop.load_params(src, tiny(parallel=True))
    deeper = tiny(depth=3)
    with pytest.raises(ConfigError, match="'encoder/block02/.*' has no place in the model"):
        interop.load_params(checkpoint_of(deeper), tiny())


# ---------------------------------------------------------------------------- config, errors


def test_options_reach_the_model_from_the_config():
    cfg = presets.get("fashion_mnist_vit")
    config_lib.apply_overrides(cfg, [
        "model.parallel=True", "model.fused=True", "model.qk_norm=True", "model.qkv_bias=False",
        "model.norm_bias=False", "model.drop_path=0.1", "model.dtype=bfloat16",
        "model.remat=dots", "model.scan=True", "model.gelu=exact", "model.representation_size=64",
    ])
    mcfg = nnx.eval_shape(lambda: loop.build_model(cfg, 10)).cfg
    assert (mcfg.parallel, mcfg.fused, mcfg.qk_norm, mcfg.qkv_bias, mcfg.norm_bias) == (True, True, True, False, False)
    assert (mcfg.drop_path, mcfg.dtype, mcfg.remat, mcfg.scan, mcfg.gelu) == (0.1, "bfloat16", "dots", True, "exact")
    assert mcfg.representation_size == 64
    # A variant's own switches can be turned off (the config default None means "the variant's").
    m = config_lib.ModelConfig(name="vit-22B/14", parallel=False, qkv_bias=True, scan=True)
    big = registry.abstract(m.name, num_classes=10, **config_lib.model_options(m)).cfg
    assert not big.parallel and big.qkv_bias and big.qk_norm and not big.norm_bias


@pytest.mark.parametrize("options, message", [
    (dict(fused=True), "model.fused=True needs model.parallel=True"),
    (dict(gelu="relu"), "model.gelu='relu' is not known; use one of tanh, exact"),
    (dict(dtype="float64"), "model.dtype='float64' is not known; use one of auto, float32"),
    (dict(attention="flash"), "model.attention='flash' is not known; use one of auto, recompute, xla, cudnn"),
    (dict(param_dtype="int8"), "model.param_dtype='int8' is not known"),
    (dict(remat="some"), "model.remat='some' is not known; use one of none, full, dots, dots_no_batch"),
    (dict(drop_path=1.0), r"model.drop_path=1.0 must be in \[0, 1\)"),
    (dict(representation_size=0), "model.representation_size=0 must be positive"),
    (dict(image_size=(16, 18)), "not a multiple of the patch size 4"),
])
def test_bad_options_are_one_line_errors(options, message):
    with pytest.raises(ConfigError, match=message) as e:
        abstract(**options)
    assert "\n" not in str(e.value)


def test_vit22b_preset_is_the_demo_with_the_22b_block():
    std, big = presets.get("fashion_mnist_vit"), presets.get("fashion_mnist_vit22b")
    assert (big.model.parallel, big.model.qk_norm, big.model.qkv_bias, big.model.norm_bias) == (
        True, True, False, False)
    for section in ("data", "optim", "schedule"):
        assert getattr(big, section) == getattr(std, section)
    assert dataclasses.replace(big.model, parallel=None, qk_norm=None, qkv_bias=None,
                               norm_bias=None) == std.model


@pytest.mark.slow
@requires_fashion_mnist
def test_vit22b_block_trains_on_fashion_mnist(tmp_path):
    cfg = presets.get("fashion_mnist_vit22b")
    # the preset's block (parallel, QK-norm, bias-free) at the smoke run's width, depth and
    # batch: what is checked is that the block trains, fused and scanned, not the demo's size
    config_lib.apply_overrides(cfg, [
        "model.width=64", "model.depth=2", "model.mlp_dim=128", "data.batch_size=64",
        "data.num_train_examples=2048", "data.eval_splits=['test[:1000]']", "train.duration=64",
        "train.eval_every=64", "train.ckpt_every=64", "model.drop_path=0.1", "model.scan=True",
        "model.fused=True",
    ])
    summary = loop.train(cfg, tmp_path / "run", quiet=True)
    assert summary["finished"] and summary["eval/test[:1000]/top1"] > 0.4  # chance: 0.1
    exp, params, _ = loop.final_params(tmp_path / "run")
    mcfg = exp.model.cfg
    assert mcfg.parallel and mcfg.qk_norm and not mcfg.qkv_bias and not mcfg.norm_bias
    assert mcfg.fused and "blocks" in params["encoder"]
