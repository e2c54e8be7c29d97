"""Tests for SAM (vistas.optim.sam and the train step): perturbation and update by hand."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import requires_fashion_mnist, smoke
from flax import nnx

from vistas.errors import ConfigError
from vistas.optim import sam
from vistas.optim.builder import build_optimizer
from vistas.train import losses
from vistas.train import step as step_lib


def test_perturbation_by_hand():
    grads = {"a": jnp.array([3.0, 0.0]), "b": jnp.array([4.0])}
    eps = sam.perturbation(grads, 0.5)
    np.testing.assert_allclose(eps["a"], [0.3, 0.0], rtol=1e-6)  # 0.5 · (3, 0) / 5
    np.testing.assert_allclose(eps["b"], [0.4], rtol=1e-6)
    eps = sam.perturbation(grads, 0.5, trainable={"a": True, "b": False})
    np.testing.assert_allclose(eps["a"], [0.5, 0.0], rtol=1e-6)  # norm over "a" only: 3
    np.testing.assert_array_equal(eps["b"], [0.0])
    zero = sam.perturbation({"a": jnp.zeros(2)}, 0.5)
    np.testing.assert_array_equal(zero["a"], [0.0, 0.0])  # no NaN at a zero gradient


def test_gradient_at_the_perturbed_point_by_hand():
    c = jnp.array([1.0, 4.0])

    def fn(p):  # L = ½ Σ c w²,  ∇L = c w
        return 0.5 * jnp.sum(c * p["w"] ** 2), p["w"].sum()

    w = jnp.array([2.0, 1.0])
    (loss, aux), g_sam = sam.value_and_sam_grad(fn, 0.1)({"w": w})
    assert float(loss) == pytest.approx(0.5 * (4 + 4)) and float(aux) == 3.0
    g = np.array([2.0, 4.0])
    eps = 0.1 * g / np.linalg.norm(g)
    np.testing.assert_allclose(g_sam["w"], np.array([1.0, 4.0]) * (np.array([2.0, 1.0]) + eps),
                               rtol=1e-6)


class TinyNet(nnx.Module):
    """A two-layer classifier with the model interface of the train step."""

    def __init__(self, *, rngs):
        self.body = nnx.Linear(196, 16, rngs=rngs)
        self.head = nnx.Linear(16, 3, rngs=rngs)

    def __call__(self, images, rng=None):
        x = jnp.tanh(self.body(images.reshape(images.shape[0], -1)))
        return self.head(x), {"pre_logits": x}


def _tiny_model():
    graphdef, params, rest = nnx.split(TinyNet(rngs=nnx.Rngs(0)), nnx.Param, ...)
    return graphdef, nnx.to_pure_dict(params), rest


def _batch(seed, n=8):
    rng = np.random.default_rng(seed)
    return {"image": jnp.asarray(rng.normal(size=(n, 14, 14, 1)), jnp.float32),
            "label": jnp.asarray(rng.integers(0, 3, n), jnp.int32)}


def test_train_step_update_by_hand():
    """SGD (no momentum) with SAM: θ' = θ - lr · ∇L(θ + ρ g/‖g‖), head frozen."""
    graphdef, params, rest = _tiny_model()
    frozen = ["head/.*"]
    lr, rho = 0.1, 0.05
    tx = build_optimizer(params, name="sgd", lr=lr, schedule=lambda s: 1.0, momentum=0.0,
                         wd=0.0, grad_clip_norm=None, frozen=frozen)
    trainable = {k: jax.tree.map(lambda _, k=k: k != "head", v) for k, v in params.items()}
    step = jax.jit(step_lib.make_train_step(graphdef, rest, tx, losses.softmax_xent,
                                            lambda s: lr, use_rng=False, sam_rho=rho,
                                            trainable=trainable))
    batch = _batch(0)
    state, metrics = step(step_lib.init_state(params, tx, 0), batch)

    def loss(p):
        logits, _ = nnx.merge(graphdef, p, rest)(batch["image"])
        return losses.softmax_xent(logits, batch["label"]).mean()

    grad = jax.jit(jax.grad(loss))
    g = grad(params)
    norm = np.sqrt(sum(float(jnp.sum(x**2)) for k, v in g.items() if k != "head"
                       for x in jax.tree.leaves(v)))
    perturbed = {k: jax.tree.map(lambda p, d, k=k: p if k == "head" else p + rho * d / norm, v,
                                 g[k]) for k, v in params.items()}
    g_sam = grad(perturbed)
    want = {k: jax.tree.map(lambda p, d, k=k: p if k == "head" else p - lr * d, v, g_sam[k])
            for k, v in params.items()}
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                 state["params"], want)
    assert float(metrics["train/loss"]) == pytest.approx(float(loss(params)), rel=1e-6)
    plain = {k: jax.tree.map(lambda p, d, k=k: p if k == "head" else p - lr * d, v, g[k])
             for k, v in params.items()}
    gaps = [float(jnp.max(jnp.abs(a - b)))
            for a, b in zip(jax.tree.leaves(state["params"]), jax.tree.leaves(plain), strict=True)]
    assert max(gaps) > 1e-4  # SAM's update is not the plain gradient step


SHARDED_SNIPPET = r"""
import json
import jax, jax.numpy as jnp, numpy as np
from flax import nnx
from vistas.optim.builder import build_optimizer
from vistas.systems import mesh as mesh_lib
from vistas.train import losses, step as step_lib


class TinyNet(nnx.Module):
    def __init__(self, *, rngs):
        self.body = nnx.Linear(196, 16, rngs=rngs)
        self.head = nnx.Linear(16, 3, rngs=rngs)

    def __call__(self, images, rng=None):
        x = jnp.tanh(self.body(images.reshape(images.shape[0], -1)))
        return self.head(x), {}


graphdef, params, rest = nnx.split(TinyNet(rngs=nnx.Rngs(0)), nnx.Param, ...)
params = nnx.to_pure_dict(params)
tx = build_optimizer(params, name="sgd", lr=0.1, schedule=lambda s: 1.0)
fn = step_lib.make_train_step(graphdef, rest, tx, losses.softmax_xent, lambda s: 1e-2,
                              use_rng=False, sam_rho=0.1)
mesh = mesh_lib.data_mesh()
repl = mesh_lib.replicated(mesh)
sharded = jax.jit(fn, out_shardings=(repl, None))
plain = jax.jit(fn)
rng = np.random.default_rng(0)
s1 = jax.device_put(step_lib.init_state(params, tx, 0), repl)
s2 = step_lib.init_state(params, tx, 0)
for t in range(3):
    batch = {"image": rng.normal(size=(16, 14, 14, 1)).astype(np.float32),
             "label": rng.integers(0, 3, 16).astype(np.int32)}
    s1, m1 = sharded(s1, mesh_lib.put_batch(batch, mesh))
    s2, m2 = plain(s2, {k: jnp.asarray(v) for k, v in batch.items()})
diff = max(float(jnp.max(jnp.abs(a - b))) for a, b in
           zip(jax.tree.leaves(s1["params"]), jax.tree.leaves(s2["params"])))
moved = max(float(jnp.max(jnp.abs(a - b))) for a, b in
            zip(jax.tree.leaves(s1["params"]), jax.tree.leaves(params)))
print(json.dumps({"devices": jax.device_count(), "diff": diff, "moved": moved,
                  "loss": [float(m1["train/loss"]), float(m2["train/loss"])],
                  "batch_sharding": str(mesh_lib.put_batch(batch, mesh)["image"].sharding.spec)}))
"""


def test_sam_step_on_8_simulated_devices_matches_one(tmp_path):
    script = tmp_path / "sharded.py"
    script.write_text(SHARDED_SNIPPET)
    env = {**{k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    proc = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["devices"] == 8 and "data" in result["batch_sharding"]
    assert result["moved"] > 1e-3  # the parameters did change
    assert result["diff"] < 1e-5, result
    assert result["loss"][0] == pytest.approx(result["loss"][1], rel=1e-5)


def test_negative_rho_is_a_config_error():
    with pytest.raises(ConfigError, match="optim.sam_rho=-0.1"):
        smoke("optim.sam_rho=-0.1")


@requires_fashion_mnist
@pytest.mark.slow
def test_trains_a_vit(tmp_path):
    from vistas.train import loop
    from vistas.train.metrics import read_metrics

    cfg = smoke("optim.sam_rho=0.05", "train.duration=16", "train.log_every=4", "model.depth=1")
    summary = loop.train(cfg, tmp_path / "r", quiet=True)
    losses_ = [r["train/loss"] for r in read_metrics(tmp_path / "r" / "metrics.jsonl")
               if "train/loss" in r]
    assert summary["finished"] and len(losses_) == 4 and np.all(np.isfinite(losses_))
    assert losses_[-1] < losses_[0] and summary["eval/test[:1000]/top1"] > 0.2
