"""The CPU-friendly layers equal the flax.nnx layers they replace: outputs and gradients."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vistas.models import fast_layers
from vistas.systems import xla_cpu


def _grads(layer, x):
    graphdef, params, rest = nnx.split(layer, nnx.Param, ...)

    def loss(params, x):
        y = nnx.merge(graphdef, params, rest)(x)
        return jnp.sum(jnp.sin(y.astype(jnp.float32)))  # a non-trivial cotangent

    value, (gp, gx) = jax.value_and_grad(loss, argnums=(0, 1))(params, x)
    return value, nnx.to_pure_dict(gp), gx


def _pair(fast_cls, ref_cls, *args, **kw):
    return fast_cls(*args, rngs=nnx.Rngs(0), **kw), ref_cls(*args, rngs=nnx.Rngs(0), **kw)


def _randomise(layer, seed):
    """Non-trivial values for every parameter (LayerNorm starts at scale 1, bias 0)."""
    rng = np.random.default_rng(seed)
    for _, p in nnx.iter_graph(layer):
        if isinstance(p, nnx.Param):
            p[...] = jnp.asarray(rng.normal(size=p[...].shape), p[...].dtype)


CASES = [
    ("linear", fast_layers.Linear, nnx.Linear, (24, 40), {}, (3, 7, 24)),
    ("linear_no_bias", fast_layers.Linear, nnx.Linear, (24, 40), {"use_bias": False}, (5, 24)),
    ("qkv", fast_layers.LinearGeneral, nnx.LinearGeneral, (24, (4, 6)), {}, (2, 9, 24)),
    ("out", fast_layers.LinearGeneral, nnx.LinearGeneral, ((4, 6), 24), {"axis": (-2, -1)}, (2, 9, 4, 6)),
    ("layernorm", fast_layers.LayerNorm, nnx.LayerNorm, (24,), {"epsilon": 1e-6}, (2, 9, 24)),
    ("layernorm_no_bias", fast_layers.LayerNorm, nnx.LayerNorm, (24,), {"use_bias": False}, (4, 24)),
]


@pytest.mark.parametrize("name,fast_cls,ref_cls,args,kw,shape", CASES, ids=[c[0] for c in CASES])
def test_matches_nnx_layer(name, fast_cls, ref_cls, args, kw, shape):
    fast, ref = _pair(fast_cls, ref_cls, *args, **kw)
    _randomise(fast, 1)
    _randomise(ref, 1)
    x = jnp.asarray(np.random.default_rng(2).normal(size=shape) * 3 + 1, jnp.float32)
    np.testing.assert_allclose(fast(x), ref(x), rtol=1e-5, atol=1e-5)
    vf, gpf, gxf = _grads(fast, x)
    vr, gpr, gxr = _grads(ref, x)
    np.testing.assert_allclose(vf, vr, rtol=1e-5)
    np.testing.assert_allclose(gxf, gxr, rtol=1e-4, atol=1e-4)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4), gpf, gpr)


def test_bfloat16_compute_keeps_dtypes():
    fast, ref = _pair(fast_layers.LayerNorm, nnx.LayerNorm, 16, dtype=jnp.bfloat16)
    _randomise(fast, 3)
    _randomise(ref, 3)
    x = jnp.asarray(np.random.default_rng(4).normal(size=(6, 16)), jnp.bfloat16)
    assert fast(x).dtype == ref(x).dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(fast(x), np.float32), np.asarray(ref(x), np.float32), atol=0.05)
    _, gp, gx = _grads(fast, x)
    assert gx.dtype == jnp.bfloat16 and gp["scale"].dtype == jnp.float32


def test_other_forms_fall_back_to_nnx():
    """Contractions the fast path does not handle (not the trailing axes) are nnx's own."""
    fast, ref = _pair(fast_layers.LinearGeneral, nnx.LinearGeneral, 5, 7, axis=1)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(3, 5, 2)), jnp.float32)
    np.testing.assert_allclose(fast(x), ref(x), rtol=1e-6)


def test_xla_defaults_respect_the_users_flags():
    assert xla_cpu.flags_with_defaults("") == "--xla_cpu_experimental_ynn_fusion_type="
    assert xla_cpu.flags_with_defaults("--foo=1") == "--foo=1 --xla_cpu_experimental_ynn_fusion_type="
    own = "--xla_cpu_experimental_ynn_fusion_type=dot"
    assert xla_cpu.flags_with_defaults(own) == own


@pytest.mark.parametrize("approximate", [True, False])
@pytest.mark.parametrize("dtype,tol", [(jnp.float32, 1e-5), (jnp.bfloat16, 1e-2)])
def test_gelu_matches_jax_in_value_and_gradient(approximate, dtype, tol):
    """Values are jax's own; gradients agree with jax's float32 autodiff to float rounding
    (bfloat16: to bfloat16 rounding; the hand-written gradient is computed in float32)."""
    x = jnp.asarray(np.random.default_rng(0).normal(scale=3.0, size=(4, 7, 33)), dtype)
    g = jnp.asarray(np.random.default_rng(1).normal(size=x.shape), dtype)
    ours, ours_vjp = jax.vjp(lambda v: fast_layers.gelu(v, approximate), x)
    ref = jax.nn.gelu(x, approximate=approximate)
    assert ours.dtype == ref.dtype == dtype
    np.testing.assert_array_equal(np.asarray(ours, np.float32), np.asarray(ref, np.float32))
    _, ref_vjp = jax.vjp(lambda v: jax.nn.gelu(v, approximate=approximate), x.astype(jnp.float32))
    (gx,), (gr,) = ours_vjp(g), ref_vjp(g.astype(jnp.float32))
    assert gx.dtype == dtype
    np.testing.assert_allclose(np.asarray(gx, np.float32), np.asarray(gr), rtol=tol, atol=tol)


@pytest.mark.parametrize("axis", [-1, 1])
def test_softmax_matches_jax_in_value_and_gradient(axis):
    x = jnp.asarray(np.random.default_rng(0).normal(scale=4.0, size=(3, 5, 9)), jnp.float32)
    g = jnp.asarray(np.random.default_rng(1).normal(size=x.shape), jnp.float32)
    ours, ours_vjp = jax.vjp(lambda v: fast_layers.softmax(v, axis), x)
    ref, ref_vjp = jax.vjp(lambda v: jax.nn.softmax(v, axis=axis), x)
    np.testing.assert_array_equal(ours, ref)
    np.testing.assert_allclose(ours_vjp(g)[0], ref_vjp(g)[0], rtol=1e-5, atol=1e-6)


def test_gelu_and_softmax_keep_one_array_for_the_backward_pass():
    from jax._src.ad_checkpoint import saved_residuals

    x = jnp.ones((8, 16), jnp.float32)
    for fn in (lambda v: fast_layers.gelu(v, True), lambda v: fast_layers.softmax(v, -1)):
        saved = [aval for aval, _ in saved_residuals(lambda v, f=fn: f(v).sum(), x) if aval.shape == x.shape]
        assert len(saved) == 1
    auto = [aval for aval, _ in saved_residuals(lambda v: jax.nn.gelu(v, approximate=True).sum(), x)
            if aval.shape == x.shape]
    assert len(auto) > 1  # what the hand-written gradient saves


@pytest.mark.parametrize("approximate", [True, False])
def test_fused_mlp_equals_the_layers_it_replaces(approximate):
    """``mlp`` = Linear -> GELU -> Linear in value and in every gradient, keeping less."""
    rng = np.random.default_rng(0)
    x, w1, b1, w2, b2 = (jnp.asarray(rng.normal(size=s), jnp.float32)
                         for s in ((2, 9, 12), (12, 20), (20,), (20, 12), (12,)))

    def unfused(x, w1, b1, w2, b2):
        return jax.nn.gelu(x @ w1 + b1, approximate=approximate) @ w2 + b2

    def loss(fn):
        return lambda *a: jnp.sum(jnp.sin(fn(*a)))

    fused = functools.partial(fast_layers.mlp, approximate=approximate)
    np.testing.assert_allclose(fused(x, w1, b1, w2, b2), unfused(x, w1, b1, w2, b2), rtol=1e-6, atol=1e-6)
    ours = jax.grad(loss(fused), argnums=(0, 1, 2, 3, 4))(x, w1, b1, w2, b2)
    ref = jax.grad(loss(unfused), argnums=(0, 1, 2, 3, 4))(x, w1, b1, w2, b2)
    for a, b in zip(ours, ref, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    from jax._src.ad_checkpoint import saved_residuals

    def hidden_size(fn):
        return sum(1 for aval, _ in saved_residuals(loss(fn), x, w1, b1, w2, b2)
                   if aval.shape == (2, 9, 20))

    assert hidden_size(fused) == 1 < hidden_size(unfused)


def _reference_attention(q, k, v):
    logits = jnp.einsum("bqhd,bkhd->bhqk", q / jnp.sqrt(q.shape[-1]).astype(q.dtype), k)
    weights = jax.nn.softmax(logits.astype(jnp.float32), -1).astype(v.dtype)
    return jnp.einsum("bhqk,bkhd->bqhd", weights, v)


@pytest.mark.parametrize("dtype,tol", [(jnp.float32, 2e-5), (jnp.bfloat16, 5e-2)])
def test_attention_matches_plain_softmax_attention(dtype, tol):
    """Same output and gradients as the autodiffed formula, for queries and keys of
    different lengths (cross-attention, the MAP head)."""
    rng = np.random.default_rng(0)
    q = jnp.asarray(rng.normal(scale=2.0, size=(2, 5, 3, 8)), dtype)
    k, v = (jnp.asarray(rng.normal(scale=2.0, size=(2, 7, 3, 8)), dtype) for _ in range(2))

    def loss(fn):
        return lambda *a: jnp.sum(jnp.sin(fn(*a).astype(jnp.float32)))

    out, ref = fast_layers.attention(q, k, v), _reference_attention(q, k, v)
    assert out.dtype == dtype and out.shape == (2, 5, 3, 8)
    np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(ref, np.float32), rtol=tol, atol=tol)
    ours = jax.grad(loss(fast_layers.attention), argnums=(0, 1, 2))(q, k, v)
    theirs = jax.grad(loss(_reference_attention), argnums=(0, 1, 2))(q, k, v)
    for a, b in zip(ours, theirs, strict=True):
        assert a.dtype == dtype
        np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), rtol=tol, atol=tol)


def test_attention_keeps_no_attention_weights_for_the_backward_pass():
    from jax._src.ad_checkpoint import saved_residuals

    q = k = v = jnp.ones((2, 6, 3, 4), jnp.float32)

    def weights_kept(fn):
        return sum(1 for aval, _ in saved_residuals(lambda *a: fn(*a).sum(), q, k, v)
                   if aval.shape == (2, 3, 6, 6))

    assert weights_kept(fast_layers.attention) == 0 < weights_kept(_reference_attention)


def _step_temp_bytes(fn, *args) -> int:
    """XLA's temporaries for the gradient of ``fn`` (what the compiled program allocates)."""
    grad = jax.jit(jax.grad(lambda *a: jnp.sum(jnp.sin(fn(*a))), argnums=tuple(range(len(args)))))
    return grad.lower(*args).compile().memory_analysis().temp_size_in_bytes


def test_recomputed_values_are_not_kept_by_xla(monkeypatch):
    """What the backward passes recompute must not come back as kept arrays in XLA's program:
    XLA merges a recomputation with the identical forward one, or hoists it into the
    forward pass, unless it depends on the cotangent (``fast_layers._after``). Without
    that, a stack of MLPs / attentions needs about one hidden layer / one attention-weights
    array more temporaries per block."""
    depth, rows, width, hidden = 6, 256, 32, 512
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(rows, width)), jnp.float32)
    ws = [jnp.asarray(rng.normal(size=s) * 0.1, jnp.float32)
          for _ in range(depth) for s in ((width, hidden), (hidden,), (hidden, width), (width,))]
    q = jnp.asarray(rng.normal(size=(4, 128, 2, 16)), jnp.float32)

    def mlps(x, *ws):
        for i in range(depth):
            x = x + fast_layers.mlp(x, *ws[4 * i:4 * i + 4])
        return x

    def attentions(q):
        for _ in range(depth):
            q = q + fast_layers.attention(q, q, q)
        return q

    wide = jnp.asarray(rng.normal(size=(rows, 256)), jnp.float32)  # LayerNorm output 256 KiB
    vs = [jnp.asarray(rng.normal(size=s) * 0.1, jnp.float32)
          for _ in range(depth) for s in ((256, 16), (16,), (16, 256), (256,))]

    def norm_denses(x, *ws):  # LayerNorm -> a narrow projection, back to width
        for i in range(depth):
            (h,) = fast_layers.norm_dense(x, ws[4 * i + 3] + 1.0, ws[4 * i + 3], 1e-6,
                                          (ws[4 * i],), (ws[4 * i + 1],))
            x = x + jnp.tanh(h) @ ws[4 * i + 2]
        return x

    ours = [_step_temp_bytes(mlps, x, *ws), _step_temp_bytes(attentions, q),
            _step_temp_bytes(norm_denses, wide, *vs)]
    monkeypatch.setattr(fast_layers, "_after", lambda x, g: x)
    merged = [_step_temp_bytes(mlps, x, *ws), _step_temp_bytes(attentions, q),
              _step_temp_bytes(norm_denses, wide, *vs)]
    assert merged[0] - ours[0] > 0.5 * depth * rows * hidden * 4, (ours, merged)
    assert merged[1] - ours[1] > 0.5 * depth * 4 * 2 * 128 * 128 * 4, (ours, merged)
    assert merged[2] - ours[2] > 0.5 * depth * rows * 256 * 4, (ours, merged)


class _NormThen(nnx.Module):
    """A LayerNorm feeding q/k/v-like projections and an MLP, fused or layer by layer."""

    def __init__(self, fused: bool, dtype=None, use_bias: bool = True, part: str = "dense"):
        from vistas.models import vit

        cfg = vit.ViTConfig(num_classes=10, width=24, depth=1, num_heads=4, mlp_dim=40, dtype=dtype or "float32")
        rngs = nnx.Rngs(0)
        self.norm = fast_layers.LayerNorm(24, epsilon=1e-6, dtype=cfg.compute_dtype, use_bias=use_bias,
                                          rngs=rngs)
        self.qkv = nnx.List([fast_layers.LinearGeneral(24, (4, 6), dtype=cfg.compute_dtype, rngs=rngs,
                                                       use_bias=use_bias) for _ in range(3)])
        self.mlp = vit.MLP(cfg, rngs=rngs)
        self.fused, self.part = fused, part

    def __call__(self, x):
        if self.part == "mlp":
            return (self.mlp(x, norm=self.norm),) if self.fused else (self.mlp(self.norm(x)),)
        if self.fused:
            outs = self.norm.dense(x, tuple(self.qkv))
            assert outs is not None  # the fused path was taken
            return outs
        y = self.norm(x)
        return tuple(layer(y) for layer in self.qkv)


@pytest.mark.parametrize("dtype,tol", [(None, 2e-5), ("bfloat16", 6e-2)])
@pytest.mark.parametrize("use_bias", [True, False])
@pytest.mark.parametrize("part", ["dense", "mlp"])
def test_layer_norm_fused_into_the_next_layers_changes_nothing(dtype, tol, use_bias, part):
    """LayerNorm -> projections / MLP as ``norm_dense`` / ``norm_mlp``: the same outputs and
    gradients, and the LayerNorm's output is no longer kept for the backward pass."""
    from jax._src.ad_checkpoint import saved_residuals

    fused, plain = _NormThen(True, dtype, use_bias, part), _NormThen(False, dtype, use_bias, part)
    _randomise(fused, 3)
    _randomise(plain, 3)
    x = jnp.asarray(np.random.default_rng(4).normal(size=(2, 9, 24)) * 2 + 1, jnp.float32)

    def run(module):
        graphdef, params, rest = nnx.split(module, nnx.Param, ...)

        def loss(params, x):
            outs = nnx.merge(graphdef, params, rest)(x)
            return sum(jnp.sum(jnp.sin(o.astype(jnp.float32))) for o in outs)

        outs = nnx.merge(graphdef, params, rest)(x)
        grads = jax.grad(loss, argnums=(0, 1))(params, x)
        kept = sum(1 for aval, _ in saved_residuals(lambda p: loss(p, x), params) if aval.shape == x.shape)
        return outs, nnx.to_pure_dict(grads[0]), grads[1], kept

    outs_f, gp_f, gx_f, kept_f = run(fused)
    outs_p, gp_p, gx_p, kept_p = run(plain)
    for a, b in zip(outs_f, outs_p, strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), rtol=tol, atol=tol)
    np.testing.assert_allclose(gx_f, gx_p, rtol=tol, atol=tol)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32),
                                                         rtol=tol, atol=tol), gp_f, gp_p)
    assert kept_f < kept_p
