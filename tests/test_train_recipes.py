"""Recipe features of the training step and loop: mixup/CutMix from the step RNG, label
smoothing, gradient accumulation, EMA of the parameters, RandAugment in the pipeline, and
exact resumption with all of them on."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import requires_fashion_mnist, smoke
from flax import nnx

from vistas import config as config_lib
from vistas.errors import ConfigError
from vistas.models import registry
from vistas.train import loop, losses, supervised
from vistas.train import step as step_lib


@pytest.fixture(scope="module")
def tiny():
    model = registry.create("vit-mu/7", num_classes=10, seed=0, image_size=14, channels=1,
                            width=32, depth=1, mlp_dim=64, num_heads=2)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    return graphdef, nnx.to_pure_dict(params), rest


def _batch(b=16):
    rng = np.random.default_rng(0)
    return {"image": jnp.asarray(rng.normal(size=(b, 14, 14, 1)), jnp.float32),
            "label": jnp.asarray(rng.integers(0, 10, b), jnp.int32)}


def _step(graphdef, rest, tx, **kw):
    mix = supervised.batch_mixing(config_lib.apply_overrides(
        config_lib.Config(), ["data.mixup_alpha=0.4", "data.cutmix_alpha=1.0"]), 10)
    task = supervised.from_loss(losses.get("softmax_xent", 0.1), mix)
    return jax.jit(step_lib.make_train_step(graphdef, rest, tx, task, lambda s: 0.1, use_rng=False, **kw))


@pytest.fixture(scope="module")
def ema_step(tiny):
    """A jitted step with mixup/CutMix, label smoothing and an EMA (decay 0.9), and its state."""
    graphdef, params, rest = tiny
    tx = optax.sgd(0.5)
    return step_lib.init_state(params, tx, seed=0, ema=True), _step(graphdef, rest, tx, ema_decay=0.9)


def test_gradient_accumulation_equals_the_large_batch(tiny, ema_step):
    graphdef, params, rest = tiny
    start, whole = ema_step
    micro = _step(graphdef, rest, optax.sgd(0.5), ema_decay=0.9, accum_steps=2)
    out = []
    for step in (whole, micro):
        state = start
        for _ in range(2):  # the second step sees updated parameters and another mixing draw
            state, metrics = step(state, _batch())
        out.append((state, metrics))
    (s1, m1), (s2, m2) = out
    for key in ("params", "ema_params"):
        for a, b in zip(jax.tree.leaves(s1[key]), jax.tree.leaves(s2[key]), strict=True):
            np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6)
    assert not np.allclose(jax.tree.leaves(s1["params"])[0], jax.tree.leaves(params)[0])
    for key in ("train/loss", "train/top1", "train/grad_norm"):
        np.testing.assert_allclose(m1[key], m2[key], rtol=2e-5)


def test_ema_follows_the_hand_computation(ema_step):
    state, step = ema_step
    decay = 0.9
    trajectory = [state["params"]]
    for _ in range(3):
        state, _ = step(state, _batch())
        trajectory.append(state["params"])
    p0, p1, p2, p3 = (jax.tree.leaves(p) for p in trajectory)
    for i, ema in enumerate(jax.tree.leaves(state["ema_params"])):
        expected = (decay**3 * np.asarray(p0[i]) + decay**2 * (1 - decay) * np.asarray(p1[i])
                    + decay * (1 - decay) * np.asarray(p2[i]) + (1 - decay) * np.asarray(p3[i]))
        np.testing.assert_allclose(ema, expected, rtol=1e-5, atol=1e-7)
    tree = {"a": jnp.ones(3, jnp.bfloat16), "b": jnp.zeros(2)}
    new = step_lib.ema_update(tree, {"a": jnp.zeros(3), "b": jnp.ones(2)}, 0.75)
    assert new["a"].dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(new["a"], np.float32), 0.75)
    np.testing.assert_allclose(new["b"], 0.25)


def test_mixing_is_drawn_from_the_step_rng(ema_step):
    state, step = ema_step
    a, _ = step(state, _batch())
    b, _ = step(state, _batch())
    c, _ = step({**state, "step": state["step"] + 1}, _batch())
    flat = [np.concatenate([np.ravel(x) for x in jax.tree.leaves(s["params"])]) for s in (a, b, c)]
    np.testing.assert_array_equal(flat[0], flat[1])
    assert not np.allclose(flat[0], flat[2])


def test_recipe_config_errors():
    bad = {
        "data.aug_level=heavy": "data.aug_level='heavy' is not known",
        "train.grad_accum_steps=3": "must be >= 1 and divide data.batch_size=128",
        "train.ema_decay=1.0": "train.ema_decay=1.0 must be in",
        "train.label_smoothing=-0.1": "train.label_smoothing=-0.1",
        "data.randaug_magnitude=31": "data.randaug_magnitude=31.0 must be in",
    }
    for override, message in bad.items():
        with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
            config_lib.apply_overrides(config_lib.Config(), [override])
    with pytest.raises(ConfigError, match="sets RandAugment and mixup itself"):
        config_lib.apply_overrides(config_lib.Config(), ["data.aug_level=light2", "data.mixup_alpha=0.1"])
    level = config_lib.apply_overrides(config_lib.Config(), ["data.aug_level=medium1"])
    assert config_lib.augmentation(level.data) == {
        "randaug_ops": 2, "randaug_magnitude": 15.0, "autoaugment": False, "mixup_alpha": 0.2,
        "cutmix_alpha": 0.0}


# accumulation has no state of its own (its equality is tested above), so it stays off here
RECIPE = ["train.duration=16", "train.ckpt_every=8", "train.eval_every=16", "data.randaug_ops=2",
          "data.randaug_magnitude=9", "data.mixup_alpha=0.2", "data.cutmix_alpha=1.0",
          "train.label_smoothing=0.1", "train.ema_decay=0.9", "data.num_train_examples=512",
          "model.depth=1", "data.eval_splits=['test[:500]']", "data.eval_batch_size=500"]


@requires_fashion_mnist
def test_recipe_run_resumes_exactly_and_evaluates_the_ema(tmp_path):
    cfg = smoke(*RECIPE)
    full = loop.train(cfg, tmp_path / "full", quiet=True)
    assert full["finished"]
    assert 0.0 <= full["ema/eval/test[:500]/top1"] <= 1.0
    assert full["ema/eval/test[:500]/top1"] != full["eval/test[:500]/top1"]
    first = loop.train(cfg, tmp_path / "split", stop_after=7, quiet=True)
    assert first["step"] == 7
    second = loop.train(cfg, tmp_path / "split", quiet=True)
    assert second["finished"]
    for key in ("params", "ema_params"):
        _, a, _ = loop.final_params(tmp_path / "full", key=key)
        _, b, _ = loop.final_params(tmp_path / "split", key=key)
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
            np.testing.assert_array_equal(x, y)
    evaluated = loop.evaluate_workdir(tmp_path / "split")
    assert evaluated["ema/eval/test[:500]/top1"] == full["ema/eval/test[:500]/top1"]
