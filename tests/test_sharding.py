"""Sharding rules, state placement and sharded training equivalence (8 simulated devices)."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import requires_fashion_mnist
from flax import nnx
from jax.sharding import AbstractMesh
from jax.sharding import PartitionSpec as P

from vistas.errors import ConfigError
from vistas.models import create
from vistas.optim import adafactor
from vistas.systems import shapefind, sharding

# Shape finding compiles the same steps several times (the probes of find_batch, the CLI's
# batch): each is compiled once per session.
pytestmark = pytest.mark.usefixtures("compilation_cache")

MESH_42 = AbstractMesh((1, 4, 2), sharding.AXES)  # fsdp=4, model=2


def vit_params(**kw):
    model = create("vit-mu/7", num_classes=10, image_size=28, channels=1, width=64, depth=2,
                   mlp_dim=128, num_heads=4, **kw)
    return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def specs_by_path(params, mesh, rules=None):
    return {path: spec for path, _, spec in sharding.describe(params, mesh, rules)}


def test_default_rules_give_the_tensor_parallel_layout_and_fsdp_elsewhere():
    s = specs_by_path(vit_params(), MESH_42)
    b = "encoder/block00/"
    assert s[b + "attn/query/kernel"] == str(P("fsdp", "model", None))  # [D=64, H=4, Dh=16]
    assert s[b + "attn/value/bias"] == str(P("model", None))
    assert s[b + "attn/out/kernel"] == str(P("model", None, "fsdp"))
    assert s[b + "mlp/fc1/kernel"] == str(P("fsdp", "model"))
    assert s[b + "mlp/fc2/kernel"] == str(P("model", "fsdp"))
    assert s[b + "mlp/fc1/bias"] == str(P("model"))
    # FSDP: the largest dimension the axis divides; nothing when none does
    assert s["head/kernel"] == str(P("fsdp", None))  # [64, 10]
    assert s["head/bias"] == str(P())  # [10]
    assert s["pos_embedding"] == str(P(None, None, "fsdp"))  # [1, 16, 64]: the largest, 64
    assert s[b + "norm1/scale"] == str(P("fsdp"))


def test_placements_name_trailing_dimensions_so_scanned_layers_stay_whole():
    s = specs_by_path(vit_params(scan=True), MESH_42)
    assert s["encoder/blocks/attn/query/kernel"] == str(P(None, "fsdp", "model", None))
    assert s["encoder/blocks/mlp/fc2/kernel"] == str(P(None, "model", "fsdp"))


def test_axes_of_size_one_and_indivisible_dimensions_split_nothing():
    dp = AbstractMesh((8, 1, 1), sharding.AXES)
    assert set(specs_by_path(vit_params(), dp).values()) == {str(P())}
    three = AbstractMesh((1, 1, 3), sharding.AXES)  # 3 divides neither 4 heads nor 128 hidden
    assert specs_by_path(vit_params(), three)["encoder/block00/mlp/fc1/kernel"] == str(P())


def test_user_rules_first_match_wins():
    rules = [(".*head/.*", "replicate"), (".*fc1/kernel", (None, "fsdp")), (".*", "fsdp")]
    s = specs_by_path(vit_params(), MESH_42, rules)
    assert s["head/kernel"] == str(P())
    assert s["encoder/block01/mlp/fc1/kernel"] == str(P(None, "fsdp"))
    assert s["encoder/block01/attn/query/kernel"] == str(P("fsdp", None, None))


@pytest.mark.parametrize("rules, message", [
    ([(".*", "shard")], "placement 'shard' is unknown"),
    ([(".*", ("fsdp", "tensor"))], "placement ('fsdp', 'tensor') is invalid"),
    ([(".*", ("model", "model"))], "uses a mesh axis twice"),
    ([(".*head/bias", (None, "fsdp"))], "names 2 dimensions but the array has shape (10,)"),
    ([("[", "fsdp")], "regex '[' is invalid"),
])
def test_bad_rules_are_one_line_errors(rules, message):
    with pytest.raises(ConfigError) as e:
        sharding.param_specs(vit_params(), MESH_42, rules)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_optimizer_state_follows_its_parameter():
    params = vit_params()
    tx = optax.adam(1e-3)
    state = {"params": params, "opt_state": tx.init(params), "ema_params": params,
             "step": jnp.zeros((), jnp.int32)}
    specs = sharding.state_specs(state, params, MESH_42)
    pspecs = sharding.param_specs(params, MESH_42)
    is_spec = lambda x: isinstance(x, P)  # noqa: E731
    assert jax.tree.leaves(specs["opt_state"][0].mu, is_leaf=is_spec) == jax.tree.leaves(pspecs, is_leaf=is_spec)
    assert jax.tree.leaves(specs["ema_params"], is_leaf=is_spec) == jax.tree.leaves(pspecs, is_leaf=is_spec)
    assert specs["step"] == P() and specs["opt_state"][0].count == P()
    # factored second moments have other shapes: placed by FSDP on their own shape
    big = {"w": jnp.zeros((64, 128))}
    fstate = adafactor.scale_by_adafactor_bv().init(big)
    fspecs = jax.tree.leaves(sharding.state_specs(fstate, big, MESH_42), is_leaf=is_spec)
    shapes = [np.shape(x) for x in jax.tree.leaves(fstate)]
    factored = [spec for shape, spec in zip(shapes, fspecs, strict=True) if shape in ((64,), (128,))]
    assert factored == [P("fsdp"), P("fsdp")]


def test_bytes_per_device_divide_by_the_shards():
    params = vit_params()
    full = sharding.bytes_per_device(params, sharding.param_specs(params, AbstractMesh((8, 1, 1), sharding.AXES)),
                                     AbstractMesh((8, 1, 1), sharding.AXES))
    assert full == sum(x.nbytes for x in jax.tree.leaves(params))
    split = sharding.bytes_per_device(params, sharding.param_specs(params, MESH_42), MESH_42)
    assert full / 8 <= split < full / 3


@pytest.mark.parametrize("sizes, n, message", [
    ((-1, -1, 1), 8, "at most one may be -1"),
    ((2, 2, 1), 8, "use 4 devices but there are 8"),
    ((-1, 3, 1), 8, "8 devices are not divisible by 3"),
    ((0, 1, 1), 8, "mesh.data=0 is invalid"),
])
def test_bad_mesh_sizes(sizes, n, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        sharding.mesh_shape(*sizes, num_devices=n)


def test_mesh_shape_fills_the_free_axis():
    assert sharding.mesh_shape(-1, 2, 2, num_devices=8) == {"data": 2, "fsdp": 2, "model": 2}
    assert sharding.mesh_shape(num_devices=8) == {"data": 8, "fsdp": 1, "model": 1}


MESHES_SNIPPET = r"""
import json, pathlib, sys
import jax
import numpy as np
from vistas import config, presets
from vistas.systems import sharding
from vistas.train import loop

workdir = pathlib.Path(sys.argv[1])
out = {}
meshes = {
    "data": ["mesh.data=8"],
    "fsdp": ["mesh.data=1", "mesh.fsdp=8"],
    "model": ["mesh.data=2", "mesh.model=4"],
    "2d": ["mesh.data=2", "mesh.fsdp=2", "mesh.model=2"],
}
for name in sys.argv[2:]:
    sets = meshes[name]
    cfg = config.apply_overrides(presets.get("smoke"), [
        "train.duration=6", "schedule.warmup=2", "train.log_every=1", "train.eval_every=6",
        "train.ckpt_every=6", "model.num_heads=4", "data.eval_splits=['test[:200]']", "data.eval_batch_size=200",
        *sets])
    summary = loop.train(cfg, workdir / name, quiet=True)
    mesh = sharding.mesh_from_config(cfg.mesh)
    exp = loop.build(cfg, with_train=False)
    specs = sharding.param_specs(exp.params, mesh)
    rows = [json.loads(line) for line in open(workdir / name / "metrics.jsonl")]
    out[name] = {
        "losses": [r["train/loss"] for r in rows if "train/loss" in r],
        "top1": summary["eval/test[:200]/top1"],
        "param_bytes_per_device": sharding.bytes_per_device(exp.params, specs, mesh),
        "resumed_step": loop.final_params(workdir / name)[2],
    }
    if name == "2d":  # parameters created in place equal those created whole on one device
        whole = loop.init_model(cfg, 10)[2]
        _, _, split, _ = loop.init_model(cfg, 10, mesh)
        out[name]["init_max_diff"] = max(float(abs(np.asarray(a) - np.asarray(b)).max())
                                   for a, b in zip(jax.tree.leaves(whole), jax.tree.leaves(split)))
        out[name]["init_sharded"] = sum(len(x.sharding.device_set) > 1 and not x.sharding.is_fully_replicated
                                  for x in jax.tree.leaves(split))
print(json.dumps(out))
"""


@requires_fashion_mnist
@pytest.mark.slow
def test_data_fsdp_tensor_and_2d_parallel_training_give_the_same_losses(tmp_path):
    script = tmp_path / "meshes.py"
    script.write_text(MESHES_SNIPPET)
    env = {**{k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    # two processes side by side (compiling is single-threaded), two meshes each
    procs = [subprocess.Popen([sys.executable, str(script), str(tmp_path), *names], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for names in (["data", "2d"], ["fsdp", "model"])]
    r = {}
    for proc in procs:
        out, err = proc.communicate(timeout=550)
        assert proc.returncode == 0, err[-3000:]
        r.update(json.loads(out.strip().splitlines()[-1]))
    assert set(r) == {"data", "fsdp", "model", "2d"}
    ref = r["data"]
    assert len(ref["losses"]) == 6 and ref["losses"][-1] < ref["losses"][0]
    for name in ("fsdp", "model", "2d"):
        np.testing.assert_allclose(r[name]["losses"], ref["losses"], rtol=2e-4, err_msg=name)
        assert r[name]["top1"] == pytest.approx(ref["top1"], abs=0.011), name
        assert r[name]["resumed_step"] == 6
    # the placement really splits the parameters
    whole = ref["param_bytes_per_device"]
    assert r["fsdp"]["param_bytes_per_device"] < whole / 4
    assert r["model"]["param_bytes_per_device"] < whole * 0.8
    assert r["2d"]["param_bytes_per_device"] < whole / 2
    assert r["2d"]["init_max_diff"] < 1e-6 and r["2d"]["init_sharded"] > 10  # float rounding only


# --- shapefinder --------------------------------------------------------------------------------

TINY = ["model.width=32", "model.depth=1", "model.mlp_dim=64", "model.num_heads=2"]


def tiny_cfg(**kw):
    return shapefind.shapefind_config("vit-Ti/8", image_size=32, overrides=TINY, **kw)


@pytest.fixture(scope="module")
def one_device():
    return sharding.make_mesh(devices=jax.devices()[:1])


def test_step_memory_counts_the_state_and_grows_with_the_batch(one_device):
    cfg = tiny_cfg(optimizer="adam")
    # batches 8 and 16: the steps find_batch probes first and the CLI test compiles (cached)
    small, big = (shapefind.step_memory(cfg, 10, one_device, b) for b in (8, 16))
    params = vit_like_param_bytes(cfg)
    assert small.params == big.params == params
    assert 2 * params <= small.optimizer <= 2 * params + 64  # m and v, a count and the RNG
    assert small.batch == 8 * (32 * 32 * 3 * 4 + 4)  # float32 images and int32 labels
    assert big.temporaries > small.temporaries > 0
    assert big.peak > small.peak >= small.params + small.optimizer + small.temporaries


def vit_like_param_bytes(cfg):
    from vistas.train import loop

    model = nnx.eval_shape(lambda: loop.build_model(cfg, 10))
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def test_find_batch_steps_down_along_the_refitted_law_when_the_probes_mislead(one_device):
    """Probes of 2 and 4 examples of a tiny model see almost no growth per example, so the
    law's first answer (~21,000) needs 3x the budget; the search refits the law through
    that miss and the largest fit instead of giving up."""
    cfg = shapefind.shapefind_config("vit-mu/16", image_size=32, overrides=[
        "model.width=32", "model.depth=2", "model.mlp_dim=64", "model.num_heads=2"])
    budget = 256 * 2**20
    found = shapefind.find_batch(cfg, 10, one_device, budget, probe=2)
    assert found.tried[2].peak > budget  # the first answer did not fit
    assert found.fits is not None and found.fits.peak <= budget
    assert found.batch_per_device > 1000 and len(found.tried) <= 6


def test_find_batch_returns_the_largest_batch_within_the_budget(one_device):
    cfg = tiny_cfg(optimizer="adam")  # its probes, batches 8 and 16, are the steps of the test above
    budget = shapefind.step_memory(cfg, 10, one_device, 40).peak + 1000
    found = shapefind.find_batch(cfg, 10, one_device, budget, probe=8)
    best = found.fits
    assert best is not None and best.batch_per_device == found.batch_per_device >= 40
    assert best.peak <= budget
    assert shapefind.step_memory(cfg, 10, one_device, found.batch_per_device + 1).peak > budget
    assert len(found.tried) <= 6  # two probes, then the law's guess and a few steps down
    assert shapefind.find_batch(cfg, 10, one_device, 1000).batch_per_device == 0  # nothing fits


@pytest.mark.parametrize("call, message", [
    (lambda: shapefind.parse_mesh("data=2,tensor=4"), "'tensor=4' is not AXIS=SIZE"),
    (lambda: shapefind.parse_mesh("data=two"), "--mesh data='two' is not an integer"),
    (lambda: shapefind.budget_bytes("h900", None, 0.9), "--device='h900' is not known"),
    (lambda: shapefind.budget_bytes(None, 0, 0.9), "--budget-bytes=0 must be positive"),
    (lambda: shapefind.ladder("nfnet-F0"), "--diagonal needs a ViT name"),
    (lambda: shapefind.run("vit-B/16", diagonal=True), "--diagonal needs --batch"),
])
def test_shapefind_input_errors(call, message):
    with pytest.raises(ConfigError) as e:
        call()
    assert message in str(e.value)


def test_ladder_and_budgets():
    assert shapefind.ladder("vit-L/14") == ["vit-L/14", "vit-H/14", "vit-g/14", "vit-G/14", "vit-e/14",
                                            "vit-22B/14"]
    assert shapefind.budget_bytes("tpu-v4", None, 0.5) == 16 * 2**30
    assert shapefind.parse_mesh("data=2, model=4") == {"data": 2, "model": 4}


@pytest.mark.slow
def test_shapefind_cli_on_a_simulated_mesh():
    """The command simulates the mesh's devices itself: 4 here, FSDP over all of them."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    base = [sys.executable, "-m", "vistas.cli", "shapefind", "--model", "vit-Ti/8", "--image-size", "32",
            "--num-classes", "10", "--budget-bytes", str(64 * 2**20), "--json", "--set", *TINY]
    one, four = (subprocess.Popen(base + ["--batch", "8", *mesh], env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)  # side by side
                 for mesh in ([], ["--mesh", "data=1,fsdp=4"]))
    (a_out, a_err), (b_out, b_err) = one.communicate(timeout=300), four.communicate(timeout=300)
    assert one.returncode == 0 and four.returncode == 0, (a_err[-2000:], b_err[-2000:])
    a, b = json.loads(a_out), json.loads(b_out)
    assert b["mesh"] == {"data": 1, "fsdp": 4, "model": 1} and a["batch_per_device"] == 8
    ra, rb = a["candidates"][0], b["candidates"][0]
    assert rb["params"] * 4 <= ra["params"] * 1.1 and rb["optimizer"] < ra["optimizer"] / 2
