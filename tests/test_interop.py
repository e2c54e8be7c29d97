"""Tests for vistas.models.interop and ``vistas convert``: big_vision ``.npz`` and timm
``.safetensors`` ViT checkpoints.

No published weights can be downloaded here, so each test writes a checkpoint in exactly
the layout of that codebase (random weights) and checks vistas' logits against an
independent NumPy forward pass written below in that codebase's own terms, before and
after a round trip through vistas.
"""

import json

import jax
import numpy as np
import pytest
from conftest import requires_fashion_mnist, smoke
from flax import nnx
from safetensors.numpy import load_file, save_file
from scipy.special import erf

from vistas import cli
from vistas.errors import ConfigError
from vistas.models import adapt, interop, vit
from vistas.train import loop

D, H, M, DEPTH, P, C, K = 32, 4, 64, 2, 4, 3, 5  # width, heads, MLP, blocks, patch, channels, classes
TOL = dict(rtol=1e-5, atol=1e-5)


def rand(rng, *shape, scale=0.3):
    return (rng.normal(size=shape) * scale).astype(np.float32)


def images(n=2, hw=(16, 16), seed=0, channels=C):
    return np.random.default_rng(seed).normal(size=(n, *hw, channels)).astype(np.float32)


@pytest.fixture(autouse=True)
def test_size(monkeypatch):
    """A named size with this file's dimensions, for what timm weights do not show (heads)."""
    monkeypatch.setitem(vit.SIZES, "test", (D, DEPTH, M, H))


# ------------------------------------------------------------------ NumPy reference parts


def layer_norm(x, scale, bias):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + 1e-6) * scale + bias


def gelu(x, approximate):
    if approximate:
        return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))
    return 0.5 * x * (1 + erf(x / np.sqrt(2)))


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def patches(x, p):
    """[B, H, W, C] -> [B, gh, gw, p(row), p(col), C]."""
    b, h, w, c = x.shape
    return x.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)


def bilinear(grid, nh, nw):
    """Half-pixel-centre bilinear resize of [gh, gw, D] (no antialiasing), edges clamped."""
    gh, gw, _ = grid.shape

    def coords(n, g):
        pos = np.clip((np.arange(n) + 0.5) * g / n - 0.5, 0, g - 1)
        lo = np.floor(pos).astype(int)
        hi = np.minimum(lo + 1, g - 1)
        return lo, hi, pos - lo

    y0, y1, fy = coords(nh, gh)
    x0, x1, fx = coords(nw, gw)
    top = grid[y0][:, x0] * (1 - fx)[None, :, None] + grid[y0][:, x1] * fx[None, :, None]
    bottom = grid[y1][:, x0] * (1 - fx)[None, :, None] + grid[y1][:, x1] * fx[None, :, None]
    return top * (1 - fy)[:, None, None] + bottom * fy[:, None, None]


# ------------------------------------------------------------------ big_vision


def bv_checkpoint(pool="gap", scan=False, posemb="learn", rep_size=None, grid=4, seed=0):
    """Flat ``params/...`` keys of a big_vision ``vit.py`` model."""
    rng = np.random.default_rng(seed)
    w = {"embedding/kernel": rand(rng, P, P, C, D), "embedding/bias": rand(rng, D)}
    if posemb == "learn":
        w["pos_embedding"] = rand(rng, 1, grid * grid, D)
    if pool == "tok":
        w["cls"] = rand(rng, 1, 1, D)

    def mha(prefix):
        for n in ("query", "key", "value"):
            w[f"{prefix}/{n}/kernel"] = rand(rng, D, H, D // H)
            w[f"{prefix}/{n}/bias"] = rand(rng, H, D // H)
        w[f"{prefix}/out/kernel"] = rand(rng, H, D // H, D)
        w[f"{prefix}/out/bias"] = rand(rng, D)

    def ln(prefix):
        w[f"{prefix}/scale"] = 1 + rand(rng, D, scale=0.1)
        w[f"{prefix}/bias"] = rand(rng, D, scale=0.1)

    def mlp(prefix):
        w[f"{prefix}/Dense_0/kernel"], w[f"{prefix}/Dense_0/bias"] = rand(rng, D, M), rand(rng, M)
        w[f"{prefix}/Dense_1/kernel"], w[f"{prefix}/Dense_1/bias"] = rand(rng, M, D), rand(rng, D)

    for i in range(DEPTH):
        b = f"Transformer/encoderblock_{i}"
        ln(f"{b}/LayerNorm_0")
        mha(f"{b}/MultiHeadDotProductAttention_0")
        ln(f"{b}/LayerNorm_1")
        mlp(f"{b}/MlpBlock_0")
    ln("Transformer/encoder_norm")
    if pool == "map":
        w["MAPHead_0/probe"] = rand(rng, 1, 1, D)
        mha("MAPHead_0/MultiHeadDotProductAttention_0")
        ln("MAPHead_0/LayerNorm_0")
        mlp("MAPHead_0/MlpBlock_0")
    feat = D
    if rep_size:
        w["pre_logits/kernel"], w["pre_logits/bias"] = rand(rng, D, rep_size), rand(rng, rep_size)
        feat = rep_size
    w["head/kernel"], w["head/bias"] = rand(rng, feat, K), rand(rng, K)
    if scan:  # nn.scan's layout: one "encoderblock" whose leaves are stacked over depth
        blocks = [{k.split("/", 2)[2]: v for k, v in w.items() if k.startswith(f"Transformer/encoderblock_{i}/")}
                  for i in range(DEPTH)]
        w = {k: v for k, v in w.items() if not k.startswith("Transformer/encoderblock_")}
        for k in blocks[0]:
            w[f"Transformer/encoderblock/{k}"] = np.stack([b[k] for b in blocks])
    return {f"params/{k}": v for k, v in w.items()}


def bv_reference(flat, x, pool="gap"):
    """big_vision's ViT forward pass in NumPy (tanh GELU), from its own keys."""
    w = {k.removeprefix("params/"): v for k, v in flat.items()}
    if "Transformer/encoderblock/LayerNorm_0/scale" in w:
        depth = w["Transformer/encoderblock/LayerNorm_0/scale"].shape[0]
        for k in [k for k in w if k.startswith("Transformer/encoderblock/")]:
            for i in range(depth):
                w[k.replace("encoderblock/", f"encoderblock_{i}/")] = w[k][i]
    p = w["embedding/kernel"].shape[0]
    x = np.einsum("bijyxc,yxcd->bijd", patches(x, p), w["embedding/kernel"]) + w["embedding/bias"]
    b, gh, gw, d = x.shape
    x = x.reshape(b, gh * gw, d)
    if "pos_embedding" in w:
        x = x + w["pos_embedding"]
    else:
        x = x + np.asarray(vit.posemb_sincos_2d((gh, gw), d))
    if pool == "tok":
        x = np.concatenate([np.broadcast_to(w["cls"], (b, 1, d)), x], axis=1)

    def ln(t, prefix):
        return layer_norm(t, w[f"{prefix}/scale"], w[f"{prefix}/bias"])

    def mha(prefix, xq, xkv):
        q = np.einsum("bnd,dhk->bnhk", xq, w[f"{prefix}/query/kernel"]) + w[f"{prefix}/query/bias"]
        k = np.einsum("bnd,dhk->bnhk", xkv, w[f"{prefix}/key/kernel"]) + w[f"{prefix}/key/bias"]
        v = np.einsum("bnd,dhk->bnhk", xkv, w[f"{prefix}/value/kernel"]) + w[f"{prefix}/value/bias"]
        a = softmax(np.einsum("bqhk,bshk->bhqs", q, k) / np.sqrt(q.shape[-1]))
        y = np.einsum("bhqs,bshk->bqhk", a, v)
        return np.einsum("bqhk,hkd->bqd", y, w[f"{prefix}/out/kernel"]) + w[f"{prefix}/out/bias"]

    def mlp(prefix, t):
        t = gelu(t @ w[f"{prefix}/Dense_0/kernel"] + w[f"{prefix}/Dense_0/bias"], approximate=True)
        return t @ w[f"{prefix}/Dense_1/kernel"] + w[f"{prefix}/Dense_1/bias"]

    i = 0
    while f"Transformer/encoderblock_{i}/LayerNorm_0/scale" in w:
        blk = f"Transformer/encoderblock_{i}"
        y = ln(x, f"{blk}/LayerNorm_0")
        x = x + mha(f"{blk}/MultiHeadDotProductAttention_0", y, y)
        x = x + mlp(f"{blk}/MlpBlock_0", ln(x, f"{blk}/LayerNorm_1"))
        i += 1
    x = ln(x, "Transformer/encoder_norm")
    if pool == "gap":
        x = x.mean(1)
    elif pool == "tok":
        x = x[:, 0]
    else:
        probe = np.broadcast_to(w["MAPHead_0/probe"], (b, 1, d))
        y = mha("MAPHead_0/MultiHeadDotProductAttention_0", probe, x)
        x = (y + mlp("MAPHead_0/MlpBlock_0", ln(y, "MAPHead_0/LayerNorm_0")))[:, 0]
    if "pre_logits/kernel" in w:
        x = np.tanh(x @ w["pre_logits/kernel"] + w["pre_logits/bias"])
    return x @ w["head/kernel"] + w["head/bias"]


@nnx.jit
def _logits(model, x):
    return model(x)[0]


def abstract_vit(**options):
    """This file's ViT, shapes only (loading fills it; nothing is initialised)."""
    kw = {**dict(num_classes=K, patch=P, width=D, depth=DEPTH, mlp_dim=M, num_heads=H, image_size=16,
                 channels=C), **options}
    return nnx.eval_shape(lambda: vit.VisionTransformer(vit.ViTConfig(**kw), rngs=nnx.Rngs(0)))


def random_vit(seed=3, **options):
    model = abstract_vit(**options)
    rng = np.random.default_rng(seed)
    params = jax.tree.map(lambda s: rand(rng, *s.shape), interop.model_params(model))
    return interop.assign(model, params)


def logits_of(model, x):
    return np.asarray(_logits(model, jax.numpy.asarray(x)))


BV_CASES = {
    "gap": dict(pool="gap"),
    "tok_scanned": dict(pool="tok", scan=True),
    "map_pre_logits": dict(pool="map", rep_size=24),
    "sincos_scanned_map": dict(pool="map", posemb="sincos2d", scan=True),
}


@pytest.mark.parametrize("case", list(BV_CASES))
def test_big_vision_logits_match_the_reference_before_and_after_a_round_trip(case, tmp_path):
    opts = BV_CASES[case]
    flat = bv_checkpoint(**opts)
    np.savez(tmp_path / "bv.npz", **flat)
    x = images()
    expect = bv_reference(flat, x, opts["pool"])
    model = interop.load_model(tmp_path / "bv.npz")
    assert model.cfg.scan == opts.get("scan", False) and model.cfg.num_heads == H
    assert model.cfg.pool == opts["pool"] and model.cfg.gelu == "tanh"
    np.testing.assert_allclose(logits_of(model, x), expect, **TOL)
    interop.export(model, tmp_path / "out.npz")  # back to big_vision, same layout and keys
    with np.load(tmp_path / "out.npz") as z:
        out = dict(z)
    assert set(out) == set(flat)
    for k, v in flat.items():
        np.testing.assert_array_equal(out[k], v, err_msg=k)
    np.testing.assert_allclose(bv_reference(out, x, opts["pool"]), expect, **TOL)


def test_big_vision_scanned_and_unscanned_load_into_either_layout(tmp_path):
    flat = bv_checkpoint(pool="tok")
    np.savez(tmp_path / "bv.npz", **flat)
    x = images()
    expect = bv_reference(flat, x, "tok")
    scanned = interop.load_model(tmp_path / "bv.npz", scan=True)
    assert "blocks" in interop.model_params(scanned)["encoder"]
    np.testing.assert_allclose(logits_of(scanned, x), expect, **TOL)
    interop.export(scanned, tmp_path / "scanned.npz")
    with np.load(tmp_path / "scanned.npz") as z:
        assert z["params/Transformer/encoderblock/LayerNorm_0/scale"].shape == (DEPTH, D)
        np.testing.assert_allclose(bv_reference(dict(z), x, "tok"), expect, **TOL)


def test_big_vision_at_another_resolution_resamples_the_posemb(tmp_path):
    from scipy import ndimage

    flat = bv_checkpoint(pool="map")
    np.savez(tmp_path / "bv.npz", **flat)
    x = images(hw=(24, 20))
    pe = flat["params/pos_embedding"].reshape(4, 4, D)
    # vistas' convention on request: bilinear at pixel centres
    model = interop.load_model(tmp_path / "bv.npz", image_size=(24, 20), resample="vistas")  # 4x4 -> 6x5
    resampled = dict(flat)
    resampled["params/pos_embedding"] = bilinear(pe, 6, 5).reshape(1, 30, D)
    np.testing.assert_allclose(logits_of(model, x), bv_reference(resampled, x, "map"), **TOL)
    # by default big_vision's own: scipy.ndimage.zoom(order=1), corners aligned
    model = interop.load_model(tmp_path / "bv.npz", image_size=(24, 20))
    resampled["params/pos_embedding"] = ndimage.zoom(pe, (6 / 4, 5 / 4, 1), order=1).reshape(1, 30, D)
    np.testing.assert_allclose(logits_of(model, x), bv_reference(resampled, x, "map"), **TOL)


def test_old_big_vision_layouts(tmp_path):
    """Bare keys, the posemb under Transformer/posembed_input with the [cls] slot, and
    pre-linen module numbering: loaded as big_vision's own loader does."""
    new = {k.removeprefix("params/"): v for k, v in bv_checkpoint(pool="tok").items()}
    old = {}
    rename = {"MultiHeadDotProductAttention_0": "MultiHeadDotProductAttention_1",
              "LayerNorm_1": "LayerNorm_2", "MlpBlock_0": "MlpBlock_3"}
    for k, v in new.items():
        if k.startswith("Transformer/encoderblock_"):
            parts = k.split("/")
            parts[2] = rename.get(parts[2], parts[2])
            k = "/".join(parts)
        old[k] = v
    cls_pe = np.random.default_rng(5).normal(size=(1, 1, D)).astype(np.float32)
    old["Transformer/posembed_input/pos_embedding"] = np.concatenate([cls_pe, old.pop("pos_embedding")], 1)
    old["cls"] = new["cls"] - cls_pe
    np.savez(tmp_path / "old.npz", **old)
    x = images()
    np.testing.assert_allclose(logits_of(interop.load_model(tmp_path / "old.npz"), x),
                               bv_reference(new, x, "tok"), **TOL)


# ------------------------------------------------------------------ timm


def timm_checkpoint(pool="token", qkv_bias=True, qk_norm=False, grid=4, seed=1):
    """A timm ``VisionTransformer`` state dict (PyTorch [out, in] weights, NCHW conv)."""
    rng = np.random.default_rng(seed)
    sd = {"patch_embed.proj.weight": rand(rng, D, C, P, P), "patch_embed.proj.bias": rand(rng, D)}
    prefix = 0
    if pool == "token":
        sd["cls_token"] = rand(rng, 1, 1, D)
        prefix = 1
    sd["pos_embed"] = rand(rng, 1, prefix + grid * grid, D)

    def linear(name, n_out, n_in, bias=True):
        sd[f"{name}.weight"] = rand(rng, n_out, n_in)
        if bias:
            sd[f"{name}.bias"] = rand(rng, n_out)

    def norm(name, n=D):
        sd[f"{name}.weight"] = 1 + rand(rng, n, scale=0.1)
        sd[f"{name}.bias"] = rand(rng, n, scale=0.1)

    for i in range(DEPTH):
        b = f"blocks.{i}"
        norm(f"{b}.norm1")
        linear(f"{b}.attn.qkv", 3 * D, D, bias=qkv_bias)
        if qk_norm:
            norm(f"{b}.attn.q_norm", D // H)
            norm(f"{b}.attn.k_norm", D // H)
        linear(f"{b}.attn.proj", D, D)
        norm(f"{b}.norm2")
        linear(f"{b}.mlp.fc1", M, D)
        linear(f"{b}.mlp.fc2", D, M)
    norm("norm")
    if pool == "map":
        sd["attn_pool.latent"] = rand(rng, 1, 1, D)
        linear("attn_pool.q", D, D)
        linear("attn_pool.kv", 2 * D, D)
        linear("attn_pool.proj", D, D)
        norm("attn_pool.norm")
        linear("attn_pool.mlp.fc1", M, D)
        linear("attn_pool.mlp.fc2", D, M)
    linear("head", K, D)
    return sd


def timm_reference(sd, x, pool="token", approximate=False, num_heads=H):
    """timm's ``VisionTransformer.forward`` in NumPy (exact GELU unless ``gelu_tanh``)."""
    def lin(t, name):
        y = t @ sd[f"{name}.weight"].T
        return y + sd[f"{name}.bias"] if f"{name}.bias" in sd else y

    def ln(t, name):
        return layer_norm(t, sd[f"{name}.weight"], sd[f"{name}.bias"])

    def attention(q, k, v, name=None):  # [B, N, D] each, heads split here
        b, nq, d = q.shape
        q, k, v = (t.reshape(b, -1, num_heads, d // num_heads).transpose(0, 2, 1, 3) for t in (q, k, v))
        if name and f"{name}.q_norm.weight" in sd:
            q, k = ln(q, f"{name}.q_norm"), ln(k, f"{name}.k_norm")
        a = softmax(q * (d // num_heads) ** -0.5 @ k.transpose(0, 1, 3, 2))
        return (a @ v).transpose(0, 2, 1, 3).reshape(b, nq, d)

    def mlp(t, name):
        return lin(gelu(lin(t, f"{name}.fc1"), approximate), f"{name}.fc2")

    p = sd["patch_embed.proj.weight"].shape[-1]
    x = np.einsum("bijyxc,dcyx->bijd", patches(x, p), sd["patch_embed.proj.weight"]) + sd["patch_embed.proj.bias"]
    b, gh, gw, d = x.shape
    x = x.reshape(b, gh * gw, d)
    if "cls_token" in sd:
        x = np.concatenate([np.broadcast_to(sd["cls_token"], (b, 1, d)), x], axis=1)
    x = x + sd["pos_embed"]
    i = 0
    while f"blocks.{i}.norm1.weight" in sd:
        blk = f"blocks.{i}"
        y = ln(x, f"{blk}.norm1")
        q, k, v = np.split(lin(y, f"{blk}.attn.qkv"), 3, axis=-1)
        x = x + lin(attention(q, k, v, f"{blk}.attn"), f"{blk}.attn.proj")
        x = x + mlp(ln(x, f"{blk}.norm2"), f"{blk}.mlp")
        i += 1
    x = ln(x, "norm")
    if pool == "token":
        x = x[:, 0]
    elif pool == "avg":
        x = x.mean(1)
    else:
        q = lin(np.broadcast_to(sd["attn_pool.latent"], (b, 1, d)), "attn_pool.q")
        k, v = np.split(lin(x, "attn_pool.kv"), 2, axis=-1)
        y = lin(attention(q, k, v), "attn_pool.proj")
        x = (y + mlp(ln(y, "attn_pool.norm"), "attn_pool.mlp"))[:, 0]
    return lin(x, "head")


TIMM_CASES = {
    "token": dict(pool="token"),
    "avg_no_qkv_bias": dict(pool="avg", qkv_bias=False),
    "map": dict(pool="map"),
    "token_qk_norm": dict(pool="token", qk_norm=True),
}


@pytest.mark.parametrize("case", list(TIMM_CASES))
def test_timm_logits_match_the_reference_before_and_after_a_round_trip(case, tmp_path):
    opts = TIMM_CASES[case]
    sd = timm_checkpoint(**opts)
    save_file(sd, str(tmp_path / "timm.safetensors"))
    x = images()
    expect = timm_reference(sd, x, opts["pool"])
    # a bare class-token file could also be averaging (tests/test_interop_timm_options.py): say which
    told = opts["pool"] if "cls_token" in sd and opts["pool"] == "token" else None
    model = interop.load_model(tmp_path / "timm.safetensors", model="vit-test/4", global_pool=told)
    assert model.cfg.gelu == "exact" and model.cfg.num_heads == H
    assert model.cfg.pool == {"token": "tok", "avg": "gap", "map": "map"}[opts["pool"]]
    np.testing.assert_allclose(logits_of(model, x), expect, **TOL)
    interop.export(model, tmp_path / "out.safetensors")
    out = load_file(str(tmp_path / "out.safetensors"))
    assert set(out) == set(sd)
    np.testing.assert_allclose(timm_reference(out, x, opts["pool"]), expect, **TOL)
    if "cls_token" not in sd:
        for k, v in sd.items():
            np.testing.assert_allclose(out[k], v, rtol=1e-6, atol=1e-7, err_msg=k)


def test_timm_heads_come_from_the_variant_qk_norm_or_the_size_table(tmp_path, monkeypatch):
    sd = timm_checkpoint()
    path = tmp_path / "timm.safetensors"
    save_file(sd, str(path))
    tok = dict(global_pool="token")  # a bare class-token file: see tests/test_interop_timm_options.py
    assert interop.read(path, model="vit-test/4", **tok).cfg.num_heads == H
    # Without --model, the first named size of that width: "mu" (2 heads) for width 32.
    assert interop.read(path, **tok).cfg.num_heads == vit.SIZES["mu"][3] != H
    monkeypatch.setitem(vit.SIZES, "mu", (D, 1, 128, H))
    np.testing.assert_allclose(logits_of(interop.load_model(path, **tok), images()),
                               timm_reference(sd, images()), **TOL)
    save_file(timm_checkpoint(qk_norm=True), str(tmp_path / "qk.safetensors"))
    monkeypatch.delitem(vit.SIZES, "mu")
    monkeypatch.delitem(vit.SIZES, "test")
    assert interop.read(tmp_path / "qk.safetensors", **tok).cfg.num_heads == H  # the q_norm shape shows it
    with pytest.raises(ConfigError, match="cannot tell the number of heads .* give the variant"):
        interop.read(path, **tok)


@pytest.mark.parametrize("pool", ["gap", "tok"])
def test_big_vision_to_timm_and_back_from_the_command_line(pool, tmp_path, capsys):
    flat = bv_checkpoint(pool=pool)
    np.savez(tmp_path / "bv.npz", **flat)
    x = images()
    expect = bv_reference(flat, x, pool)
    assert cli.main(["convert", str(tmp_path / "bv.npz"), str(tmp_path / "t.safetensors")]) == 0
    assert "wrote" in capsys.readouterr().out
    sd = load_file(str(tmp_path / "t.safetensors"))
    from safetensors import safe_open

    with safe_open(str(tmp_path / "t.safetensors"), "np") as f:
        args = json.loads(f.metadata()["timm_model_args"])
    assert args["act_layer"] == "gelu_tanh" and args["num_heads"] == H  # big_vision's GELU
    timm_pool = args["global_pool"]
    assert timm_pool == {"gap": "avg", "tok": "token"}[pool] and not args["fc_norm"]
    np.testing.assert_allclose(timm_reference(sd, x, timm_pool, approximate=True), expect, **TOL)
    assert cli.main(["convert", str(tmp_path / "t.safetensors"), str(tmp_path / "back.npz"),
                     "--scan"]) == 0
    with np.load(tmp_path / "back.npz") as z:
        np.testing.assert_allclose(bv_reference(dict(z), x, pool), expect, **TOL)
    assert cli.main(["convert", str(tmp_path / "bv.npz"), str(tmp_path / "v.vistas.npz"),
                     "--image-size", "20x24"]) == 0
    ckpt = interop.read(tmp_path / "v.vistas.npz")
    assert ckpt.format == "vistas" and ckpt.cfg.image_size == (20, 24)
    assert ckpt.params["pos_embedding"].shape == (1, 30, D)


# ------------------------------------------------------------------ errors


def test_mismatched_checkpoints_name_the_key_and_shape(tmp_path):
    np.savez(tmp_path / "bv.npz", **bv_checkpoint())
    other = abstract_vit(mlp_dim=2 * M)
    with pytest.raises(ConfigError, match=r"'encoder/block00/mlp/fc1/(bias|kernel)' has shape \[(32, )?64\] "
                                          r"but the model needs \[(32, )?128\]"):
        interop.load_params(tmp_path / "bv.npz", other)
    three = abstract_vit(num_classes=3)
    with pytest.raises(ConfigError, match=r"'head/(bias|kernel)' has shape \[(32, )?5\] but the model needs \[(32, )?3\]"):
        interop.load_params(tmp_path / "bv.npz", three)
    new_head = interop.load_model(tmp_path / "bv.npz", num_classes=3, head_zeroinit=False)
    kernel = np.asarray(new_head.head.kernel[...])  # a new head, freshly initialised
    assert kernel.shape == (D, 3) and np.all(np.isfinite(kernel)) and np.any(kernel != 0)
    np.testing.assert_array_equal(new_head.embedding.kernel[...], bv_checkpoint()["params/embedding/kernel"])
    flat = bv_checkpoint()
    flat["params/Transformer/encoderblock_0/LayerScale_0/gamma"] = np.ones(D, np.float32)
    np.savez(tmp_path / "odd.npz", **flat)
    with pytest.raises(ConfigError, match="big_vision key 'Transformer/encoderblock_0/LayerScale_0/gamma'"):
        interop.read(tmp_path / "odd.npz")
    with pytest.raises(ConfigError, match=r"'embedding/(bias|kernel)' has shape \[(4, 4, 3, )?32\] but "
                                          r"the model needs \[(4, 4, 3, )?384\]"):
        interop.convert(tmp_path / "bv.npz", tmp_path / "x.npz", model="vit-S/4")


@pytest.mark.parametrize("key, what", [
    ("norm_pre.weight", "a LayerNorm before the blocks"), ("dist_token", "a distillation token"),
])
def test_timm_features_without_a_counterpart_are_named(key, what, tmp_path):
    """(LayerScale, register tokens and fc_norm are ViT options: tests/test_interop_timm_options.py.)"""
    sd = timm_checkpoint()
    sd[key] = np.ones((1, 1, D) if key == "dist_token" else (D,), np.float32)
    save_file(sd, str(tmp_path / "t.safetensors"))
    with pytest.raises(ConfigError, match=f"timm key '{key}' \\(.*{what}"):
        interop.read(tmp_path / "t.safetensors", model="vit-test/4", global_pool="token")
    with pytest.raises(ConfigError, match="width 32 is not divisible into 12 heads"):
        interop.read(tmp_path / "t.safetensors", model="vit-B/4", global_pool="token")


def test_blocks_that_a_format_lacks_are_refused(tmp_path):
    model = random_vit(parallel=True, qk_norm=True)
    for name in ("x.npz", "x.safetensors"):
        with pytest.raises(ConfigError, match="has no parallel block; .* --to vistas"):
            interop.export(model, tmp_path / name)
    interop.export(model, tmp_path / "x.vistas.npz")
    x = images()
    np.testing.assert_allclose(logits_of(interop.load_model(tmp_path / "x.vistas.npz"), x),
                               logits_of(model, x), **TOL)


def test_convert_errors_are_one_line(tmp_path, capsys):
    assert cli.main(["convert", str(tmp_path / "missing.npz"), str(tmp_path / "o.npz")]) == 2
    assert cli.main(["convert", str(tmp_path), str(tmp_path / "o.npz")]) == 2
    np.savez(tmp_path / "bv.npz", **bv_checkpoint())
    assert cli.main(["convert", str(tmp_path / "bv.npz"), str(tmp_path / "o.bin")]) == 2
    assert cli.main(["convert", str(tmp_path / "bv.npz"), str(tmp_path / "o.npz"), "--image-size", "2x"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 4 and all(line.startswith("vistas: error: ") for line in err)
    assert "does not exist" in err[0] and "without config.json" in err[1]
    assert "cannot tell the format to write" in err[2] and "N or HxW" in err[3]


# ------------------------------------------------------------------ a trained run


@pytest.mark.slow
@requires_fashion_mnist
def test_a_trained_run_exports_to_both_formats(tmp_path):
    cfg = smoke("train.duration=8", "train.eval_every=8", "train.ckpt_every=8", "schedule.warmup=2",
                "model.pool='tok'")
    loop.train(cfg, tmp_path / "run", quiet=True)
    exp, params, _ = loop.final_params(tmp_path / "run")
    model = interop.assign(nnx.clone(exp.model), jax.tree.map(np.asarray, params))
    x = images(hw=(28, 28), channels=1)
    expect = logits_of(model, x)
    assert cli.main(["convert", str(tmp_path / "run"), str(tmp_path / "run.npz")]) == 0
    with np.load(tmp_path / "run.npz") as z:
        flat = dict(z)
    heads = adapt.flatten(params)["encoder/block00/attn/query/kernel"].shape[1]
    assert heads == cfg.model.num_heads
    np.testing.assert_allclose(bv_reference(flat, x, "tok"), expect, **TOL)
    assert cli.main(["convert", str(tmp_path / "run"), str(tmp_path / "run.safetensors")]) == 0
    sd = load_file(str(tmp_path / "run.safetensors"))
    np.testing.assert_allclose(timm_reference(sd, x, "token", approximate=True, num_heads=heads),
                               expect, **TOL)
