"""timm's ViT options in vistas (LayerScale, register tokens, fc_norm, the GELU) and the
three conventions of resampling a position embedding (vistas, big_vision, timm).

Neither PyTorch nor timm is installed where these tests run, so each test writes a state
dict in timm's exact layout (random weights, NumPy, ``.safetensors``) and checks vistas'
logits against an independent NumPy forward pass of timm's ``VisionTransformer`` written
below from timm's own definition (its constructor arguments decide the architecture);
the resampling conventions are checked against ``scipy.ndimage.zoom`` (big_vision),
a NumPy transcription of PyTorch's antialiased bicubic (timm) and PIL's bicubic resize
(which PyTorch's antialiased kernels reproduce).
"""

import dataclasses
import json

import jax
import numpy as np
import pytest
from flax import nnx
from safetensors import safe_open
from safetensors.numpy import load_file, save_file
from scipy import ndimage
from scipy.special import erf

from vistas import cli
from vistas import config as config_lib
from vistas.errors import ConfigError
from vistas.models import adapt, create, interop, vit
from vistas.models.interop import timm as timm_interop
from vistas.systems import flops

D, H, M, DEPTH, P, C, K = 32, 4, 64, 2, 4, 3, 5  # width, heads, MLP, blocks, patch, channels, classes
TOL = dict(rtol=1e-4, atol=1e-4)


@pytest.fixture(autouse=True)
def test_size(monkeypatch):
    """A named size with this file's dimensions, for what timm weights do not show (heads)."""
    monkeypatch.setitem(vit.SIZES, "test", (D, DEPTH, M, H))


def images(n=2, hw=(16, 16), seed=0):
    return np.random.default_rng(seed).normal(size=(n, *hw, C)).astype(np.float32)


# ------------------------------------------------------------------ timm, in NumPy

TIMM_DEFAULTS = dict(img_size=16, patch_size=P, in_chans=C, num_classes=K, embed_dim=D, depth=DEPTH,
                     num_heads=H, mlp_ratio=M / D, qkv_bias=True, global_pool="token", class_token=True,
                     reg_tokens=0, no_embed_class=False, fc_norm=None, init_values=None, act_layer=None)


def timm_args(**changes):
    return {**TIMM_DEFAULTS, **changes}


def uses_fc_norm(args):
    """timm: ``fc_norm=None`` means a LayerNorm after pooling exactly for averaging pools."""
    return args["global_pool"] in ("avg", "avgmax", "max") if args["fc_norm"] is None else args["fc_norm"]


def timm_state_dict(args, seed=1):
    """The state dict of ``timm.models.vision_transformer.VisionTransformer(**args)``."""
    rng = np.random.default_rng(seed)

    def r(*shape, scale=0.3):
        return (rng.normal(size=shape) * scale).astype(np.float32)

    d, n_grid = args["embed_dim"], (args["img_size"] // args["patch_size"]) ** 2
    sd = {"patch_embed.proj.weight": r(d, args["in_chans"], args["patch_size"], args["patch_size"]),
          "patch_embed.proj.bias": r(d)}
    prefix = int(args["class_token"]) + args["reg_tokens"]
    if args["class_token"]:
        sd["cls_token"] = r(1, 1, d)
    if args["reg_tokens"]:
        sd["reg_token"] = r(1, args["reg_tokens"], d)
    sd["pos_embed"] = r(1, n_grid + (0 if args["no_embed_class"] else prefix), d)
    m = int(d * args["mlp_ratio"])

    def linear(name, n_out, n_in, bias=True):
        sd[f"{name}.weight"] = r(n_out, n_in)
        if bias:
            sd[f"{name}.bias"] = r(n_out)

    def norm(name):
        sd[f"{name}.weight"] = 1 + r(d, scale=0.1)
        sd[f"{name}.bias"] = r(d, scale=0.1)

    for i in range(args["depth"]):
        b = f"blocks.{i}"
        norm(f"{b}.norm1")
        linear(f"{b}.attn.qkv", 3 * d, d, bias=args["qkv_bias"])
        linear(f"{b}.attn.proj", d, d)
        norm(f"{b}.norm2")
        linear(f"{b}.mlp.fc1", m, d)
        linear(f"{b}.mlp.fc2", d, m)
        if args["init_values"]:  # learned, so anything but the initial value
            sd[f"{b}.ls1.gamma"] = args["init_values"] + r(d, scale=0.5)
            sd[f"{b}.ls2.gamma"] = args["init_values"] + r(d, scale=0.5)
    norm("fc_norm" if uses_fc_norm(args) else "norm")
    if args["global_pool"] == "map":
        sd["attn_pool.latent"] = r(1, 1, d)
        linear("attn_pool.q", d, d)
        linear("attn_pool.kv", 2 * d, d)
        linear("attn_pool.proj", d, d)
        norm("attn_pool.norm")
        linear("attn_pool.mlp.fc1", m, d)
        linear("attn_pool.mlp.fc2", d, m)
    linear("head", args["num_classes"], d)
    return sd


def timm_forward(sd, args, x):
    """``VisionTransformer(**args).forward`` in NumPy (float64): patch_embed, _pos_embed,
    blocks (with LayerScale), norm, pool (prefix tokens excluded), fc_norm, head."""
    heads = args["num_heads"]

    def lin(t, name):
        y = t @ sd[f"{name}.weight"].astype(np.float64).T
        return y + sd[f"{name}.bias"] if f"{name}.bias" in sd else y

    def ln(t, name, eps=1e-6):  # timm's LayerNorm: eps 1e-6
        mu = t.mean(-1, keepdims=True)
        var = ((t - mu) ** 2).mean(-1, keepdims=True)
        return (t - mu) / np.sqrt(var + eps) * sd[f"{name}.weight"] + sd[f"{name}.bias"]

    def act(t):
        if args["act_layer"] == "gelu_tanh":
            return 0.5 * t * (1 + np.tanh(np.sqrt(2 / np.pi) * (t + 0.044715 * t**3)))
        return 0.5 * t * (1 + erf(t / np.sqrt(2)))

    def attention(q, k, v):  # [B, N, D] each; heads split here
        b, nq, d = q.shape
        q, k, v = (t.reshape(b, -1, heads, d // heads).transpose(0, 2, 1, 3) for t in (q, k, v))
        logits = q @ k.transpose(0, 1, 3, 2) * (d // heads) ** -0.5
        a = np.exp(logits - logits.max(-1, keepdims=True))
        a = a / a.sum(-1, keepdims=True)
        return (a @ v).transpose(0, 2, 1, 3).reshape(b, nq, d)

    def mlp(t, name):
        return lin(act(lin(t, f"{name}.fc1")), f"{name}.fc2")

    def scale(t, name):  # LayerScale, or nn.Identity
        return t * sd[f"{name}.gamma"] if f"{name}.gamma" in sd else t

    w = sd["patch_embed.proj.weight"].astype(np.float64)  # [D, C, p, p], a stride-p conv
    p = w.shape[-1]
    b, hh, ww, c = x.shape
    patches = x.reshape(b, hh // p, p, ww // p, p, c)  # NHWC -> the conv's receptive fields
    t = np.einsum("byuxvc,dcuv->byxd", patches, w) + sd["patch_embed.proj.bias"]
    t = t.reshape(b, -1, t.shape[-1])
    d = t.shape[-1]
    to_cat = []
    if args["class_token"]:
        to_cat.append(np.broadcast_to(sd["cls_token"], (b, 1, d)))
    if args["reg_tokens"]:
        to_cat.append(np.broadcast_to(sd["reg_token"], (b, args["reg_tokens"], d)))
    if args["no_embed_class"]:
        t = np.concatenate(to_cat + [t + sd["pos_embed"]], axis=1)
    else:
        t = np.concatenate(to_cat + [t], axis=1) + sd["pos_embed"]
    for i in range(args["depth"]):
        blk = f"blocks.{i}"
        q, k, v = np.split(lin(ln(t, f"{blk}.norm1"), f"{blk}.attn.qkv"), 3, axis=-1)
        t = t + scale(lin(attention(q, k, v), f"{blk}.attn.proj"), f"{blk}.ls1")
        t = t + scale(mlp(ln(t, f"{blk}.norm2"), f"{blk}.mlp"), f"{blk}.ls2")
    if not uses_fc_norm(args):
        t = ln(t, "norm")
    prefix = int(args["class_token"]) + args["reg_tokens"]
    if args["global_pool"] == "token":
        t = t[:, 0]
    elif args["global_pool"] == "avg":
        t = t[:, prefix:].mean(1)
    else:  # AttentionPoolLatent over the patch tokens
        t = t[:, prefix:]
        q = lin(np.broadcast_to(sd["attn_pool.latent"], (b, 1, d)), "attn_pool.q")
        k, v = np.split(lin(t, "attn_pool.kv"), 2, axis=-1)
        y = lin(attention(q, k, v), "attn_pool.proj")
        t = (y + mlp(ln(y, "attn_pool.norm"), "attn_pool.mlp"))[:, 0]
    if uses_fc_norm(args):
        t = ln(t, "fc_norm")
    return lin(t, "head")


def write_timm(tmp_path, sd, args, source, name="model.safetensors"):
    """``sd`` as timm's weights; its arguments in the file's metadata (``metadata``), in the
    ``config.json`` of timm's Hugging Face Hub files (``hub``), or nowhere (``none``)."""
    path = tmp_path / name
    meta = {"format": "pt"}
    if source == "metadata":
        meta["timm_model_args"] = json.dumps(args)
    save_file(sd, str(path), metadata=meta)
    if source == "hub":  # as timm's push_to_hf_hub writes it: the pooling at the root
        hub = {"architecture": "vit_test_patch4_16", "num_classes": args["num_classes"], "num_features": D,
               "global_pool": args["global_pool"],
               "pretrained_cfg": {"input_size": [C, args["img_size"], args["img_size"]]}}
        (tmp_path / "config.json").write_text(json.dumps(hub))
    return path


@nnx.jit
def _logits(model, x):
    return model(x)[0]


def logits_of(model, x):
    return np.asarray(_logits(model, jax.numpy.asarray(x)))


def exported_args(path):
    with safe_open(str(path), "np") as f:
        return {**TIMM_DEFAULTS, **json.loads(f.metadata()["timm_model_args"])}


# ------------------------------------------------------------------ LayerScale, registers, fc_norm

CASES = {  # name: (timm's constructor arguments, where they are written)
    # DeiT III: LayerScale, no position embedding for the class token
    "deit3_token_layerscale": (timm_args(no_embed_class=True, init_values=1e-6), "none"),
    # DINOv2 with registers: class token + 4 registers, LayerScale
    "dinov2_token_registers": (timm_args(reg_tokens=4, no_embed_class=True, init_values=1e-5), "none"),
    # vit_*_reg4_gap: no class token, registers, LayerScale, average pooling with fc_norm
    "reg4_gap_fc_norm": (timm_args(class_token=False, reg_tokens=4, no_embed_class=True, init_values=1e-5,
                                   global_pool="avg"), "none"),
    # averaging pool with a class token and fc_norm: the class token is not pooled
    "avg_class_token_fc_norm": (timm_args(global_pool="avg"), "none"),
    # the case weights alone cannot show: averaging, a class token, no fc_norm
    "avg_class_token_no_fc_norm_hub": (timm_args(global_pool="avg", fc_norm=False), "hub"),
    "avg_class_token_no_fc_norm_metadata": (timm_args(global_pool="avg", fc_norm=False, reg_tokens=2),
                                            "metadata"),
    # attention pooling with a class token and registers (timm pools the patch tokens only),
    # position embeddings for all three prefix tokens
    "map_class_token_registers": (timm_args(global_pool="map", reg_tokens=2), "metadata"),
    "token_fc_norm_layerscale": (timm_args(fc_norm=True, init_values=0.1), "metadata"),
    # SigLIP-style: tanh GELU, average pooling without fc_norm, no class token
    "gap_tanh_gelu": (timm_args(class_token=False, global_pool="avg", fc_norm=False, act_layer="gelu_tanh"),
                      "metadata"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_timm_options_match_timms_forward_before_and_after_a_round_trip(case, tmp_path):
    args, source = CASES[case]
    sd = timm_state_dict(args)
    path = write_timm(tmp_path, sd, args, source)
    x = images()
    expect = timm_forward(sd, args, x)
    # a bare file whose weights fit two poolings needs to be told which (see below)
    told = args["global_pool"] if source == "none" and timm_interop.pooling_is_ambiguous(sd) else None
    model = interop.load_model(path, model="vit-test/4", global_pool=told)
    cfg = model.cfg
    unpooled_cls = args["class_token"] and args["global_pool"] != "token"
    assert cfg.reg_tokens == args["reg_tokens"] + unpooled_cls  # a class token not pooled: a register
    assert cfg.fc_norm == uses_fc_norm(args)
    assert (cfg.init_values is not None) == bool(args["init_values"])
    assert cfg.pool == {"token": "tok", "avg": "gap", "map": "map"}[args["global_pool"]]
    assert cfg.gelu == ("tanh" if args["act_layer"] == "gelu_tanh" else "exact")
    np.testing.assert_allclose(logits_of(model, x), expect, **TOL)

    # back to timm: the arguments written build a timm model of the same function
    out = tmp_path / "out" / "back.safetensors"
    interop.export(model, out)
    out_sd, out_args = load_file(str(out)), exported_args(out)
    np.testing.assert_allclose(timm_forward(out_sd, out_args, x), expect, **TOL)
    if not unpooled_cls:  # the same keys as timm's file
        assert set(out_sd) == set(sd)
    np.testing.assert_allclose(logits_of(interop.load_model(out), x), expect, **TOL)
    # and through vistas' own format, scanned
    interop.export(model, tmp_path / "m.vistas.npz")
    scanned = interop.load_model(tmp_path / "m.vistas.npz", scan=True)
    assert "blocks" in interop.model_params(scanned)["encoder"]
    np.testing.assert_allclose(logits_of(scanned, x), expect, **TOL)


def test_averaging_with_a_class_token_is_read_from_timms_config_json(tmp_path):
    """The weights of a class-token model and of an averaging one that keeps its class
    token (and has no fc_norm) are the same arrays: only timm's arguments tell them apart.
    Without them reading the file is a one-line error asking which (never a guess); told
    (``global_pool``), or with the config.json of timm's Hub files, or vistas' metadata, it
    computes what timm does."""
    args = timm_args(global_pool="avg", fc_norm=False)
    sd = timm_state_dict(args)
    x = images()
    averaged, pooled = timm_forward(sd, args, x), timm_forward(sd, timm_args(), x)
    assert np.abs(averaged - pooled).max() > 0.1  # the two readings really differ
    (tmp_path / "bare").mkdir()
    bare = write_timm(tmp_path / "bare", sd, args, "none")
    with pytest.raises(ConfigError, match=r"fit both class-token pooling and averaging .* give "
                       r"global_pool='token' or 'avg'") as e:
        interop.load_model(bare, model="vit-test/4")
    assert str(e.value).startswith(str(bare)) and "\n" not in str(e.value)
    assert cli.main(["convert", str(bare), str(tmp_path / "o.npz"), "--model", "vit-test/4"]) == 2
    model = interop.load_model(bare, model="vit-test/4", global_pool="token")
    assert model.cfg.pool == "tok"
    np.testing.assert_allclose(logits_of(model, x), pooled, **TOL)
    model = interop.load_model(bare, model="vit-test/4", global_pool="avg")
    assert model.cfg.pool == "gap" and model.cfg.reg_tokens == 1
    np.testing.assert_allclose(logits_of(model, x), averaged, **TOL)
    assert cli.main(["convert", str(bare), str(tmp_path / "o.vistas.npz"), "--model", "vit-test/4",
                     "--global-pool", "avg"]) == 0
    np.testing.assert_allclose(logits_of(interop.load_model(tmp_path / "o.vistas.npz"), x), averaged, **TOL)
    with pytest.raises(ConfigError, match=r"global_pool='avg'"):  # told otherwise than the file says
        interop.load_model(write_timm(tmp_path, sd, args, "metadata"), global_pool="token")
    (tmp_path / "hub").mkdir()
    hub = write_timm(tmp_path / "hub", sd, args, "hub")
    model = interop.load_model(hub, model="vit-test/4")
    assert model.cfg.pool == "gap" and model.cfg.reg_tokens == 1
    np.testing.assert_allclose(logits_of(model, x), averaged, **TOL)


REFUSED = {  # name: (timm's arguments as the file records them, the weights' own if others, message)
    "max": (timm_args(global_pool="max"), None, r"global_pool='max'; vistas' ViT pools by"),
    "avgmax": (timm_args(global_pool="avgmax"), None, r"global_pool='avgmax'"),
    "no_pooling": (timm_args(global_pool=""), None, r"global_pool=''"),
    "map_pools_the_class_token": (timm_args(global_pool="map", pool_include_prefix=True), None,
                                  r"'map' pooling takes in its class and register tokens \(pool_include_prefix=True\)"),
    "avg_pools_the_registers": (timm_args(global_pool="avg", class_token=False, reg_tokens=1,
                                          pool_include_prefix=True), None, r"pool_include_prefix"),
    "quick_gelu": (timm_args(act_layer="quick_gelu"), None, r"act_layer='quick_gelu' is not one vistas' ViT has"),
    "map_without_attn_pool": (timm_args(global_pool="map"), timm_args(),
                              r"global_pool='map'\) but holds no 'attn_pool.latent'"),
    "token_without_class_token": (timm_args(class_token=False), timm_args(class_token=False, global_pool="avg"),
                                  r"pools its class token .* no 'cls_token'"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_what_vistas_cannot_compute_exactly_is_one_line_naming_the_file(case, tmp_path):
    args, weights_args, message = REFUSED[case]
    sd = timm_state_dict(weights_args or args)
    path = write_timm(tmp_path, sd, args, "metadata")
    with pytest.raises(ConfigError, match=message) as e:
        interop.load_model(path)
    assert str(e.value).startswith(str(path)) and "\n" not in str(e.value)
    assert cli.main(["convert", str(path), str(tmp_path / "o.npz")]) == 2


@pytest.mark.parametrize("change, message", [
    ("norm_pre", r"timm key 'norm_pre.weight' \(a LayerNorm before the blocks\)"),
    ("one_layerscale", r"lacks the parameter 'blocks.1.ls1.gamma'"),
])
def test_keys_without_a_place_are_named(change, message, tmp_path):
    args = timm_args(init_values=1e-5)
    sd = timm_state_dict(args)
    if change == "norm_pre":
        sd["norm_pre.weight"] = np.ones(D, np.float32)
    else:
        del sd["blocks.1.ls1.gamma"]
    path = write_timm(tmp_path, sd, args, "metadata")
    with pytest.raises(ConfigError, match=message) as e:
        interop.load_model(path)
    assert str(e.value).startswith(str(path)) and "\n" not in str(e.value)
    assert cli.main(["convert", str(path), str(tmp_path / "o.npz")]) == 2


def test_formats_without_the_options_refuse_them(tmp_path):
    for options, what in [(dict(init_values=0.1), "LayerScale"), (dict(reg_tokens=2), "register tokens"),
                          (dict(fc_norm=True), "LayerNorm after pooling")]:
        model = create("vit-mu/4", num_classes=K, image_size=16, channels=C, head_zeroinit=False, **options)
        with pytest.raises(ConfigError, match=f"big_vision's ViT has no {what}; .* --to vistas"):
            interop.export(model, tmp_path / "x.npz")
        interop.export(model, tmp_path / "x.safetensors")  # timm has each of them
        x = images()
        np.testing.assert_allclose(logits_of(interop.load_model(tmp_path / "x.safetensors"), x),
                                   logits_of(model, x), **TOL)


# ------------------------------------------------------------------ the options in vistas' ViT


def test_options_off_leave_the_parameters_as_they_were():
    names = set(adapt.flatten(interop.model_params(create("vit-mu/4", num_classes=K, image_size=16))))
    block = [f"encoder/block00/{m}/{leaf}" for m, leaves in [
        ("norm1", ("scale", "bias")), ("norm2", ("scale", "bias")), ("attn/query", ("kernel", "bias")),
        ("attn/key", ("kernel", "bias")), ("attn/value", ("kernel", "bias")), ("attn/out", ("kernel", "bias")),
        ("mlp/fc1", ("kernel", "bias")), ("mlp/fc2", ("kernel", "bias"))] for leaf in leaves]
    assert names == {"embedding/kernel", "embedding/bias", "pos_embedding", "encoder/norm/scale",
                     "encoder/norm/bias", "head/kernel", "head/bias", *block}
    on = create("vit-mu/4", num_classes=K, image_size=16, fc_norm=True, init_values=0.1, reg_tokens=3,
                pool="tok")
    flat = adapt.flatten(interop.model_params(on))
    added = set(flat) - names
    assert added == {"cls", "registers", "fc_norm/scale", "fc_norm/bias", "encoder/block00/ls1/scale",
                     "encoder/block00/ls2/scale"}
    assert "encoder/norm/scale" not in flat  # fc_norm moves the final LayerNorm after pooling
    assert flat["registers"].shape == (1, 3, 32)
    np.testing.assert_array_equal(flat["encoder/block00/ls1/scale"], np.full(32, 0.1, np.float32))
    logits, out = on(images(hw=(16, 16)))
    assert logits.shape == (2, K) and out["encoded"].shape == (2, 1 + 3 + 16, 32)


def test_options_reach_the_model_from_the_config_and_are_checked():
    m = config_lib.ModelConfig(name="vit-mu/4", fc_norm=True, init_values=1e-5, reg_tokens=4)
    assert config_lib.model_options(m) == {"fc_norm": True, "init_values": 1e-5, "reg_tokens": 4}
    assert config_lib.model_options(config_lib.ModelConfig()) == {}
    model = create("vit-mu/4", num_classes=K, image_size=16, **config_lib.model_options(m))
    assert (model.cfg.fc_norm, model.cfg.init_values, model.cfg.reg_tokens) == (True, 1e-5, 4)
    for options, message in [(dict(reg_tokens=-1), "reg_tokens=-1 must be"),
                             (dict(init_values=0.0), "init_values=0.0 must be a positive"),
                             (dict(init_values=1e-5, parallel=True), "LayerScale.*sequential block")]:
        with pytest.raises(ConfigError, match=message):
            vit.ViTConfig(num_classes=K, patch=4, width=32, depth=1, mlp_dim=64, num_heads=2,
                          image_size=16, **options)
    base = vit.ViTConfig(num_classes=K, patch=4, width=32, depth=2, mlp_dim=64, num_heads=2, image_size=16)
    with_regs = dataclasses.replace(base, reg_tokens=4)
    assert flops.vit_flops(with_regs) > flops.vit_flops(base)  # registers are tokens to compute


# ------------------------------------------------------------------ resampling conventions


def pytorch_bicubic_aa(grid, out_h, out_w):
    """``F.interpolate(NCHW, size=(out_h, out_w), mode="bicubic", antialias=True,
    align_corners=False)`` of a [h, w, D] grid, transcribed from PyTorch's CPU kernel
    (``_compute_indices_min_size_weights_aa`` with ``HelperInterpCubic::aa_filter``):
    separable, width first; a = -0.5; support 2, times the scale when downsampling."""

    def filt(t, a=-0.5):
        t = abs(t)
        if t < 1:
            return (a + 2) * t**3 - (a + 3) * t**2 + 1
        if t < 2:
            return a * t**3 - 5 * a * t**2 + 8 * a * t - 4 * a
        return 0.0

    def resize_axis(arr, out_size, axis):
        arr = np.moveaxis(arr, axis, 0)
        in_size = arr.shape[0]
        scale = in_size / out_size
        support = 2 * scale if scale >= 1 else 2.0
        invscale = 1 / scale if scale >= 1 else 1.0
        res = np.zeros((out_size, *arr.shape[1:]))
        for i in range(out_size):
            center = scale * (i + 0.5)
            xmin = max(int(center - support + 0.5), 0)
            xsize = min(int(center + support + 0.5), in_size) - xmin
            ws = [filt((j + xmin - center + 0.5) * invscale) for j in range(xsize)]
            total = sum(ws)
            for j, wj in enumerate(ws):
                res[i] += wj / total * arr[xmin + j]
        return np.moveaxis(res, 0, axis)

    return resize_axis(resize_axis(grid.astype(np.float64), out_w, 1), out_h, 0)


GRIDS = [((4, 4), (6, 5)), ((6, 5), (3, 4)), ((4, 4), (8, 8)), ((8, 8), (3, 3)), ((5, 7), (5, 3)),
         ((3, 3), (1, 2))]


@pytest.mark.parametrize("old, new", GRIDS)
def test_each_resampling_convention_against_its_reference(old, new):
    rng = np.random.default_rng(0)
    pe = rng.normal(size=(1, 2 + old[0] * old[1], 6)).astype(np.float32)  # 2 prefix tokens kept
    grid = pe[0, 2:].reshape(*old, 6)

    def ours(method):
        out = adapt.resample_posemb(pe, new, old, num_prefix=2, method=method)
        np.testing.assert_array_equal(out[:, :2], pe[:, :2])
        return out[0, 2:].reshape(*new, 6)

    # big_vision: scipy.ndimage.zoom(order=1), as big_vision's resample_posemb
    zoomed = ndimage.zoom(grid, (new[0] / old[0], new[1] / old[1], 1), order=1)
    np.testing.assert_allclose(ours("big_vision"), zoomed, rtol=1e-5, atol=1e-6)
    # timm: PyTorch's antialiased bicubic, up and down
    np.testing.assert_allclose(ours("timm"), pytorch_bicubic_aa(grid, *new), rtol=1e-5, atol=1e-6)
    # vistas: bilinear at pixel centres (jax.image.resize)
    vistas = np.asarray(jax.image.resize(grid, (*new, 6), method="bilinear", antialias=False))
    np.testing.assert_allclose(ours("vistas"), vistas, rtol=1e-6, atol=1e-6)
    if new[0] * new[1] > 4:  # the three conventions really differ
        assert np.abs(ours("timm") - ours("big_vision")).max() > 1e-3
        assert np.abs(ours("vistas") - ours("big_vision")).max() > 1e-3


@pytest.mark.parametrize("old, new", GRIDS[:4])
def test_timm_resampling_is_pils_bicubic(old, new):
    """PyTorch took its antialiased kernels from PIL: PIL's float bicubic resize is the
    same function, computed by independent code."""
    image = pytest.importorskip("PIL.Image")
    grid = np.random.default_rng(1).normal(size=(*old, 3)).astype(np.float32)
    out = adapt.resample_posemb(grid.reshape(1, -1, 3), new, old, method="timm")[0].reshape(*new, 3)
    for ch in range(3):
        pil = image.fromarray(np.ascontiguousarray(grid[..., ch])).resize((new[1], new[0]), image.BICUBIC)
        np.testing.assert_allclose(out[..., ch], np.asarray(pil), rtol=1e-5, atol=1e-5)


def test_unknown_resampling_is_a_one_line_error():
    with pytest.raises(ConfigError, match="unknown position-embedding resampling 'cubic'; use one of "
                                          "vistas, big_vision, timm"):
        adapt.resample_posemb(np.zeros((1, 4, 2)), (3, 3), method="cubic")


def timm_resampled(sd, args, new_grid):
    """timm's state dict for another grid, as timm's checkpoint_filter_fn makes it:
    resample_abs_pos_embed(bicubic, antialias) of the grid, prefix slots kept."""
    prefix = 0 if args["no_embed_class"] else int(args["class_token"]) + args["reg_tokens"]
    pe = sd["pos_embed"]
    old = int(round(np.sqrt(pe.shape[1] - prefix)))
    grid = pytorch_bicubic_aa(pe[0, prefix:].reshape(old, old, -1), *new_grid)
    out = dict(sd)
    out["pos_embed"] = np.concatenate([pe[:, :prefix], grid.reshape(1, -1, pe.shape[-1])], axis=1)
    return out


@pytest.mark.parametrize("hw", [(24, 20), (12, 8)])
def test_timm_files_change_resolution_as_timm_does(hw, tmp_path):
    args = timm_args(reg_tokens=1, init_values=0.1)  # class token + register, both embedded
    sd = timm_state_dict(args)
    path = write_timm(tmp_path, sd, args, "metadata")
    x = images(hw=hw)
    grid = (hw[0] // P, hw[1] // P)
    expect = timm_forward(timm_resampled(sd, args, grid), {**args, "img_size": hw}, x)
    model = interop.load_model(path, image_size=hw)  # timm's convention by default
    np.testing.assert_allclose(logits_of(model, x), expect, **TOL)
    other = interop.load_model(path, image_size=hw, resample="vistas")
    assert np.abs(logits_of(other, x) - expect).max() > 1e-3


def test_convert_resamples_as_the_source_framework_unless_told(tmp_path, capsys):
    args = timm_args()
    sd = timm_state_dict(args)
    src = write_timm(tmp_path, sd, args, "metadata")
    grid = sd["pos_embed"][0, 1:].reshape(4, 4, D)
    outs = {}
    for resample in (None, "big_vision", "vistas"):
        dst = tmp_path / f"{resample}.npz"
        extra = ["--resample", resample] if resample else []
        assert cli.main(["convert", str(src), str(dst), "--image-size", "24", *extra]) == 0
        line = capsys.readouterr().out.strip().splitlines()[-1]
        assert f"resampled as {resample or 'timm'} does" in line
        with np.load(dst) as z:
            outs[resample] = z["params/pos_embedding"][0].reshape(6, 6, D)
    np.testing.assert_allclose(outs[None], pytorch_bicubic_aa(grid, 6, 6), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(outs["big_vision"], ndimage.zoom(grid, (1.5, 1.5, 1), order=1),
                               rtol=1e-5, atol=1e-6)
    vistas = np.asarray(jax.image.resize(grid, (6, 6, D), method="bilinear", antialias=False))
    np.testing.assert_allclose(outs["vistas"], vistas, rtol=1e-5, atol=1e-6)
    with pytest.raises(SystemExit, match="2"):  # argparse's choices
        cli.main(["convert", str(src), str(tmp_path / "x.npz"), "--image-size", "24", "--resample", "area"])
    with pytest.raises(ConfigError, match="unknown position-embedding resampling 'area'"):
        interop.convert(src, tmp_path / "x.npz", image_size=24, resample="area")


def test_gelu_on_convert(tmp_path, capsys):
    """A timm file that does not say its model uses tanh GELU (SigLIP): --gelu tanh."""
    args = timm_args(class_token=False, global_pool="avg", fc_norm=False, act_layer="gelu_tanh")
    sd = timm_state_dict(args)
    src = write_timm(tmp_path, sd, args, "none")
    x = images()
    assert cli.main(["convert", str(src), str(tmp_path / "exact.vistas.npz"), "--model", "vit-test/4"]) == 0
    assert cli.main(["convert", str(src), str(tmp_path / "tanh.vistas.npz"), "--model", "vit-test/4",
                     "--gelu", "tanh"]) == 0
    assert "tanh GELU" in capsys.readouterr().out
    exact, tanh = (interop.load_model(tmp_path / f"{g}.vistas.npz") for g in ("exact", "tanh"))
    assert (exact.cfg.gelu, tanh.cfg.gelu) == ("exact", "tanh")
    np.testing.assert_allclose(logits_of(tanh, x), timm_forward(sd, args, x), **TOL)
    assert np.abs(logits_of(exact, x) - timm_forward(sd, args, x)).max() > 1e-4
    interop.convert(tmp_path / "tanh.vistas.npz", tmp_path / "t.safetensors")
    assert exported_args(tmp_path / "t.safetensors")["act_layer"] == "gelu_tanh"


def test_finetune_takes_the_resampling_convention(tmp_path, monkeypatch):
    from vistas.train import finetune, initial

    # an upstream run (a directory; its parameters come from the patched restore_params below)
    cfg = finetune.transfer_config(config_lib.Config(), dataset="lfw_faces", init_from=tmp_path, resample="timm")
    assert cfg.train.init_resample == "timm"
    assert finetune.transfer_config(config_lib.Config(), dataset="lfw_faces", init_from="x"
                                    ).train.init_resample == "vistas"
    bad = config_lib.Config()
    bad.train.init_resample = "area"
    with pytest.raises(ConfigError, match="train.init_resample='area' is not known"):
        config_lib.validate(bad)
    pe = np.random.default_rng(0).normal(size=(1, 16, 8)).astype(np.float32)
    upstream = {"pos_embedding": pe, "head": {"kernel": np.zeros((8, 2), np.float32)}}
    monkeypatch.setattr(initial.runs, "restore_params", lambda _: (None, None, None, upstream, None))
    target = {"pos_embedding": np.zeros((1, 36, 8), np.float32), "head": {"kernel": np.zeros((8, 3), np.float32)}}
    for method in adapt.RESAMPLES:
        cfg.train.init_resample = method
        got = initial.from_upstream(cfg, target)["pos_embedding"]
        np.testing.assert_array_equal(got, adapt.resample_posemb(pe, (6, 6), method=method))
    parser_args = ["finetune", "--from", str(tmp_path), "--dataset", "lfw_faces", "--resample", "big_vision"]
    seen = {}
    summary = {"finished": True, "step": 1, "total_steps": 1, "workdir": str(tmp_path / "ft")}
    monkeypatch.setattr(finetune, "finetune", lambda *a, **k: seen.update(k) or summary)
    assert cli.main(parser_args) == 0
    assert seen["resample"] == "big_vision"
