"""Tests for vistas.train (loop, step, losses, metrics), vistas.checkpoint and vistas.systems.mesh.

The end-to-end tests train the ``smoke`` preset (a tiny ViT on 2,048 Fashion-MNIST images)
for a few dozen steps: learning, exact resumption after SIGKILL, clean stop on SIGTERM,
divergence, checkpoint retention, and 8 simulated devices against 1.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import cli_env, committed_steps, requires_fashion_mnist, smoke, vistas_cmd
from jax.sharding import AbstractMesh

from vistas import checkpoint as ckpt_lib
from vistas import cli
from vistas import config as config_lib
from vistas.errors import ConfigError, VistasError
from vistas.systems import flops
from vistas.systems import mesh as mesh_lib
from vistas.train import loop, losses
from vistas.train import step as step_lib
from vistas.train.metrics import MetricsWriter, read_metrics

# Each run builds its own jitted step: with the session's compilation cache, runs of one
# config (the 48-step reference, its killed, resumed and split copies) compile it once.
pytestmark = pytest.mark.usefixtures("compilation_cache")

TOP1 = "eval/test[:1000]/top1"
RUN48 = ["train.duration=48", "train.ckpt_every=8", "train.eval_every=48"]


def leaves_with_names(tree):
    return [(jax.tree_util.keystr(p), np.asarray(x)) for p, x in jax.tree_util.tree_leaves_with_path(tree)]


def assert_same_params(a, b):
    a, b = leaves_with_names(a), leaves_with_names(b)
    assert [n for n, _ in a] == [n for n, _ in b]
    assert len(a) > 5
    for (name, x), (_, y) in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y, err_msg=name)


def train_rows(workdir):
    return [r for r in read_metrics(workdir / "metrics.jsonl") if "train/loss" in r]


def wait_for(predicate, proc, what, timeout=300.0):
    """Polls ``predicate`` while the subprocess ``proc`` runs."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, f"the run ended (status {proc.returncode}) before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def start(args, tmp_path, name):
    """``vistas ARGS`` in a subprocess, output to files (a full pipe would block it)."""
    with open(tmp_path / f"{name}.out", "w") as out, open(tmp_path / f"{name}.err", "w") as err:
        return subprocess.Popen(vistas_cmd(*args), env=cli_env(), stdout=out, stderr=err)


def stop(proc):
    if proc.poll() is None:
        proc.kill()
        proc.wait()


# --- units: losses, eval step, metrics, checkpoints, mesh -----------------------------------


def test_losses():
    logits = jnp.array([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]])
    labels = jnp.array([0, 2])
    expected = -jax.nn.log_softmax(logits)[jnp.arange(2), labels]
    np.testing.assert_allclose(losses.softmax_xent(logits, labels), expected, rtol=1e-6)
    zeros = jnp.full((1, 10), -2.0)
    # sigmoid: 9 negatives at softplus(-2) plus one positive at softplus(2)
    np.testing.assert_allclose(losses.sigmoid_xent(zeros, jnp.array([3])),
                               [9 * np.log1p(np.exp(-2.0)) + np.log1p(np.exp(2.0))], rtol=1e-6)
    assert losses.get("sigmoid_xent") is losses.sigmoid_xent
    with pytest.raises(ConfigError, match="train.loss='hinge'.*softmax_xent"):
        losses.get("hinge")


def test_eval_step_counts_only_unmasked_examples():
    cfg = smoke("model.depth=1")
    model = loop.build_model(cfg, num_classes=10)
    from flax import nnx

    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    eval_step = jax.jit(step_lib.make_eval_step(graphdef, rest, losses.softmax_xent))
    batch = {"image": jnp.zeros((4, 28, 28, 1)), "label": jnp.array([0, 1, 2, 3]),
             "mask": jnp.array([True, True, True, False])}
    sums = eval_step(params, batch)
    assert float(sums["count"]) == 3
    assert float(sums["correct"]) == 1  # zero head: argmax is class 0
    np.testing.assert_allclose(float(sums["loss"]), 3 * np.log(10), rtol=1e-5)


def test_metrics_writer_truncates_after_a_resume_point(tmp_path):
    w = MetricsWriter(tmp_path, tensorboard=False)
    for step in (1, 2, 3):
        w.write(step, {"train/loss": float(step), "x": np.float32(np.nan)})
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 4, "train/lo')  # killed in the middle of a row
    w.truncate_after(2)
    w.write(3, {"train/loss": 30.0})
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert [(r["step"], r["train/loss"]) for r in rows] == [(1, 1.0), (2, 2.0), (3, 30.0)]
    assert rows[0]["x"] is None  # non-finite values become null, the JSON stays valid


def test_metrics_writer_repairs_a_row_cut_short_without_dropping_any(tmp_path):
    w = MetricsWriter(tmp_path, tensorboard=False)
    w.write(1, {"train/loss": 1.0})
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 2, "train/lo')
    w.truncate_after(1)  # resuming at the step of the last complete row
    w.write(2, {"train/loss": 2.0})
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1, 2]


def test_checkpointer_round_trip_and_retention(tmp_path):
    state = {"w": jnp.arange(6.0).reshape(2, 3), "step": jnp.array(0, jnp.int32)}
    c = ckpt_lib.Checkpointer(tmp_path / "checkpoints", keep=2, keep_every=4)
    assert c.latest_step() is None
    for s in range(1, 10):
        c.save(s, {"w": state["w"] * s, "step": jnp.array(s, jnp.int32)}, {"step": s})
    c.close()
    assert committed_steps(tmp_path) == [4, 8, 9]
    c = ckpt_lib.Checkpointer(tmp_path / "checkpoints", read_only=True)
    assert c.latest_step() == 9
    restored, data = c.restore(None, state)
    np.testing.assert_array_equal(restored["w"], state["w"] * 9)
    assert int(restored["step"]) == 9 and data == {"step": 9}
    restored, data = c.restore(4, state)
    np.testing.assert_array_equal(restored["w"], state["w"] * 4)
    c.close()
    with pytest.raises(VistasError, match="no checkpoint"):
        ckpt_lib.Checkpointer(tmp_path / "none").restore(None, state)


def test_check_batch_size_with_8_devices():
    fake_mesh = AbstractMesh((8,), ("data",))
    mesh_lib.check_batch_size(64, fake_mesh)
    # with FSDP and tensor parallelism the batch is split over data x fsdp only
    mixed = AbstractMesh((2, 2, 2), ("data", "fsdp", "model"))
    mesh_lib.check_batch_size(60, mixed)
    with pytest.raises(ConfigError, match="data.batch_size=62 is not divisible by the 4 devices"):
        mesh_lib.check_batch_size(62, mixed)
    with pytest.raises(ConfigError) as e:
        mesh_lib.check_batch_size(60, fake_mesh)
    assert "data.batch_size=60" in str(e.value) and "8 devices" in str(e.value)
    with pytest.raises(ConfigError, match="data.eval_batch_size=500"):
        mesh_lib.check_batch_size(500, fake_mesh, "data.eval_batch_size")


def test_data_mesh_and_put_batch():
    mesh = mesh_lib.data_mesh()
    assert mesh.devices.size == jax.device_count()
    n = 2 * jax.device_count()
    batch = mesh_lib.put_batch({"x": np.arange(n, dtype=np.float32)}, mesh)
    np.testing.assert_array_equal(batch["x"], np.arange(n))
    assert batch["x"].sharding.spec == mesh_lib.batch_sharded(mesh).spec


# --- end to end on Fashion-MNIST --------------------------------------------------------------


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory, compilation_cache):
    workdir = tmp_path_factory.mktemp("smoke") / "run"
    summary = loop.train(smoke(), workdir, quiet=True)
    return workdir, summary


@pytest.fixture(scope="module")
def run48(tmp_path_factory, compilation_cache):
    """An uninterrupted 48-step run keeping the last 2 checkpoints plus every 16th."""
    workdir = tmp_path_factory.mktemp("run48") / "run"
    summary = loop.train(smoke(*RUN48, "train.keep=2", "train.keep_every=16"), workdir, quiet=True)
    assert summary["step"] == 48 and summary["finished"]
    _, params, step = loop.final_params(workdir)
    assert step == 48
    return workdir, params


@requires_fashion_mnist
@pytest.mark.slow
def test_smoke_run_learns_and_writes_its_outputs(smoke_run):
    workdir, summary = smoke_run
    assert summary["finished"] and not summary["interrupted"] and summary["step"] == 64
    assert summary[TOP1] > 0.3  # chance is 0.1
    assert json.loads((workdir / "summary.json").read_text())[TOP1] == summary[TOP1]
    assert json.loads((workdir / "config.json").read_text()) == smoke().to_dict()
    rows = train_rows(workdir)
    assert [r["step"] for r in rows] == [16, 32, 48, 64]
    for r in rows:
        assert {"train/loss", "train/lr", "train/examples_per_sec", "train/top1"} <= set(r)
        assert r["train/examples_per_sec"] > 0 and np.isfinite(r["train/loss"])
        # compute accounting from the compiled step: FLOPs near the analytic 3 x forward count
        assert r["train/flops_per_step"] == pytest.approx(flops.analytic_step_flops(smoke(), 10), rel=0.5)
        assert r["train/mfu"] > 0 and r["train/devices"] == 1
    assert rows[-1]["train/loss"] < rows[0]["train/loss"] < 2.4
    assert rows[0]["train/lr"] > rows[-1]["train/lr"]  # cosine decay after warmup
    evals = [r for r in read_metrics(workdir / "metrics.jsonl") if TOP1 in r]
    assert [r["step"] for r in evals] == [64] and evals[0][TOP1] == summary[TOP1]
    assert (workdir / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert any(p.name.startswith("events.out.tfevents") for p in (workdir / "tensorboard").iterdir())
    assert committed_steps(workdir) == [32, 64]


@requires_fashion_mnist
def test_evaluate_workdir_reproduces_the_run(smoke_run):
    workdir, summary = smoke_run
    results = loop.evaluate_workdir(workdir)
    assert results["step"] == 64
    assert results[TOP1] == pytest.approx(summary[TOP1], abs=1e-9)
    assert results["eval/test[:1000]/loss"] == pytest.approx(summary["eval/test[:1000]/loss"], rel=1e-5)
    assert json.loads((workdir / "eval_64.json").read_text()) == results
    earlier = loop.evaluate_workdir(workdir, step=32, splits=["test[:200]"])
    assert earlier["step"] == 32 and set(earlier) == {"step", "eval/test[:200]/top1", "eval/test[:200]/loss",
                                                  "eval/test[:200]/ece"}


@requires_fashion_mnist
def test_final_params_ignore_the_optimizer_state_and_the_training_split(smoke_run):
    """Only parameters are read: the run's checkpoint still evaluates under another optimizer
    (another state shape) and with a duration in epochs (no training split is opened)."""
    workdir, _ = smoke_run
    _, reference, _ = loop.final_params(workdir)
    cfg = config_lib.apply_overrides(loop.load_config(workdir), ["optim.name=sgd", "train.duration=3ep"])
    exp, params, step = loop.final_params(workdir, cfg)
    assert step == 64 and exp.train_source is None
    assert_same_params(params, reference)
    with pytest.raises(VistasError, match="has no checkpoint 7; steps: \\[32, 64\\]"):
        loop.final_params(workdir, step=7)


@requires_fashion_mnist
@pytest.mark.slow
def test_resume_after_sigkill_is_exact(run48, tmp_path, capsys):
    ref_dir, ref_params = run48
    workdir = tmp_path / "killed"
    args = ["train", "--preset", "smoke", "--workdir", str(workdir), "--set", *RUN48, "--quiet"]
    proc = start(args, tmp_path, "killed")
    try:
        wait_for(lambda: any(s >= 16 for s in committed_steps(workdir)), proc, "checkpoint 16")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        stop(proc)
    assert proc.returncode == -signal.SIGKILL
    at_kill = committed_steps(workdir)
    assert 16 <= at_kill[-1] < 48

    assert cli.main(args[:-1]) == 0  # the same command again (not quiet: it says where it resumes)
    out = capsys.readouterr().out
    assert f"resuming at step {at_kill[-1]}" in out
    assert "finished: step 48/48" in out
    _, params, step = loop.final_params(workdir)
    assert step == 48
    assert_same_params(params, ref_params)
    ref_rows = {r["step"]: r["train/loss"] for r in train_rows(ref_dir)}
    rows = train_rows(workdir)
    assert [r["step"] for r in rows] == [16, 32, 48]  # each step logged once despite the kill
    assert {r["step"]: r["train/loss"] for r in rows} == ref_rows


@requires_fashion_mnist
@pytest.mark.slow
def test_stop_after_then_resume_is_exact(run48, tmp_path):
    _, ref_params = run48
    cfg = smoke(*RUN48)
    first = loop.train(cfg, tmp_path / "split", stop_after=20, quiet=True)
    assert first["step"] == 20 and first["interrupted"] and not first["finished"]
    assert committed_steps(tmp_path / "split")[-1] == 20
    second = loop.train(cfg, tmp_path / "split", quiet=True)
    assert second["step"] == 48 and second["finished"]
    _, params, _ = loop.final_params(tmp_path / "split")
    assert_same_params(params, ref_params)


@requires_fashion_mnist
def test_checkpoint_retention_keeps_last_two_and_every_16th(run48):
    workdir, _ = run48
    assert committed_steps(workdir) == [16, 32, 40, 48]


@requires_fashion_mnist
def test_resume_refuses_a_different_run(run48, tmp_path):
    workdir = tmp_path / "copy"
    shutil.copytree(run48[0], workdir)
    saved_config = (workdir / "config.json").read_text()
    with pytest.raises(ConfigError) as e:
        loop.train(smoke(*RUN48, "optim.lr=0.002"), workdir, quiet=True)
    msg = str(e.value)
    assert "\n" not in msg and "optim.lr" in msg and "0.003" in msg and "0.002" in msg
    assert (workdir / "config.json").read_text() == saved_config
    with pytest.raises(ConfigError, match="model.depth"):
        loop.train(smoke(*RUN48, "model.depth=3"), workdir, quiet=True)
    # log cadence is not part of a run's identity: resuming the finished run is allowed
    summary = loop.train(smoke(*RUN48, "train.log_every=4"), workdir, quiet=True)
    assert summary["step"] == 48 and summary["finished"]
    assert json.loads((workdir / "config.json").read_text())["train"]["log_every"] == 4


@requires_fashion_mnist
@pytest.mark.slow
def test_sigterm_saves_and_exits_cleanly_then_resumes(tmp_path, capsys):
    workdir = tmp_path / "term"
    sets = ["train.duration=5000", "train.ckpt_every=8", "train.eval_every=5000", "train.log_every=8"]
    proc = start(["train", "--preset", "smoke", "--workdir", str(workdir), "--set", *sets],
                 tmp_path, "term")
    try:
        wait_for(lambda: committed_steps(workdir), proc, "the first checkpoint")
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    finally:
        stop(proc)
    out = (tmp_path / "term.out").read_text()
    assert proc.returncode == 0, (tmp_path / "term.err").read_text()
    summary = json.loads((workdir / "summary.json").read_text())
    stopped = summary["step"]
    assert summary["interrupted"] is True and summary["finished"] is False
    assert 8 <= stopped < 5000
    assert committed_steps(workdir)[-1] == stopped
    assert f"saved step {stopped}" in out and f"stopped at step {stopped}" in out
    assert "Traceback" not in (tmp_path / "term.err").read_text()

    resumed = loop.train(smoke(*sets), workdir, stop_after=stopped + 1)
    assert f"resuming at step {stopped}" in capsys.readouterr().out
    assert resumed["step"] == stopped + 1


@requires_fashion_mnist
@pytest.mark.slow
def test_divergence_stops_and_keeps_a_finite_checkpoint(tmp_path):
    workdir = tmp_path / "nan"
    cfg = smoke("optim.lr=1e30", "optim.grad_clip_norm=None", "train.ckpt_every=1",
                "train.duration=16", "schedule.warmup=2")
    with pytest.raises(loop.TrainingDiverged) as e:
        loop.train(cfg, workdir, quiet=True)
    msg = str(e.value)
    assert "\n" not in msg and "optim.lr" in msg
    diverged_at = int(re.search(r"at step (\d+)", msg).group(1))
    steps = committed_steps(workdir)
    assert steps and steps[-1] < diverged_at < 16
    assert f"step {steps[-1]})" in msg  # names the checkpoint it kept
    _, params, step = loop.final_params(workdir)
    assert step == steps[-1]
    assert all(np.isfinite(x).all() for _, x in leaves_with_names(params))


@requires_fashion_mnist
@pytest.mark.slow
def test_sigmoid_loss_trains(tmp_path):
    cfg = smoke("train.loss=sigmoid_xent", "model.head_bias_init=-2.0", "train.duration=16",
                "schedule.warmup=2", "train.log_every=1", "train.eval_every=16",
                "data.eval_splits=['test[:200]']", "data.eval_batch_size=200")
    summary = loop.train(cfg, tmp_path / "sig", quiet=True)
    assert summary["finished"]
    loss = [r["train/loss"] for r in train_rows(tmp_path / "sig")]
    assert len(loss) == 16 and all(np.isfinite(loss))
    # zero-initialised head with bias -2: 9 * softplus(-2) + softplus(2)
    assert loss[0] == pytest.approx(9 * np.log1p(np.exp(-2.0)) + np.log1p(np.exp(2.0)), rel=1e-4)
    assert np.mean(loss[-4:]) < 0.95 * np.mean(loss[:4])
    assert 0.0 <= summary["eval/test[:200]/top1"] <= 1.0


DEVICES_SNIPPET = r"""
import json, pathlib, sys
import jax
from vistas import config, presets
from vistas.errors import ConfigError
from vistas.train import loop

workdir = pathlib.Path(sys.argv[1])
sets = ["train.duration=8", "schedule.warmup=2", "train.log_every=1"]
errors = []
for bad in (["data.batch_size=60"], ["data.eval_batch_size=500"]) if jax.device_count() > 1 else ():
    try:
        loop.train(config.apply_overrides(presets.get("smoke"), sets + bad), workdir / "bad", quiet=True)
    except ConfigError as e:
        errors.append(str(e))
summary = loop.train(config.apply_overrides(presets.get("smoke"), sets), workdir / "run", quiet=True)
rows = [json.loads(line) for line in open(workdir / "run" / "metrics.jsonl")]
print(json.dumps({
    "devices": jax.device_count(),
    "losses": [r["train/loss"] for r in rows if "train/loss" in r],
    "top1": summary["eval/test[:1000]/top1"],
    "errors": errors,
    "bad_workdir_exists": (workdir / "bad").exists(),
}))
"""


@requires_fashion_mnist
@pytest.mark.slow
def test_8_simulated_devices_match_1(tmp_path):
    script = tmp_path / "devices.py"
    script.write_text(DEVICES_SNIPPET)
    base = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    procs = {}
    for n in (8, 1):
        env = {**base, "JAX_PLATFORMS": "cpu",
               "XLA_FLAGS": f"--xla_force_host_platform_device_count={n}"}
        (tmp_path / str(n)).mkdir()
        procs[n] = subprocess.Popen([sys.executable, str(script), str(tmp_path / str(n))], env=env,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    results = {}
    for n, proc in procs.items():
        out, err = proc.communicate(timeout=550)
        assert proc.returncode == 0, err[-3000:]
        results[n] = json.loads(out.strip().splitlines()[-1])
    assert results[8]["devices"] == 8 and results[1]["devices"] == 1
    assert len(results[8]["losses"]) == 8
    np.testing.assert_allclose(results[8]["losses"], results[1]["losses"], rtol=1e-4)
    assert results[8]["losses"][-1] < results[8]["losses"][0]
    assert results[8]["top1"] == pytest.approx(results[1]["top1"], abs=0.003)
    # with 8 devices, batch sizes not divisible by 8 are refused before anything is written
    assert len(results[8]["errors"]) == 2
    assert "data.batch_size=60" in results[8]["errors"][0] and "8 devices" in results[8]["errors"][0]
    assert "data.eval_batch_size=500" in results[8]["errors"][1]
    assert not results[8]["bad_workdir_exists"]
    assert results[1]["errors"] == []


@requires_fashion_mnist
@pytest.mark.slow
def test_the_loop_never_waits_on_a_device_value_between_actions(tmp_path, monkeypatch):
    """Every read of a device array's value (``float``, ``np.asarray``, ``device_get``) goes
    through ``ArrayImpl._value``: a run of 3x the steps with the same actions reads exactly
    as many values, so no step makes the host wait for the device (on an accelerator the
    next step and the next batch's transfer are queued while one computes)."""
    from jax._src import array as array_impl

    value = array_impl.ArrayImpl.__dict__["_value"]
    reads = [0]

    def counted(self):
        reads[0] += 1
        return value.fget(self)

    monkeypatch.setattr(array_impl.ArrayImpl, "_value", property(counted))
    float(jnp.ones(()) + 1)
    assert reads[0] == 1  # the counter sees a host read
    counts = []
    for steps in (12, 36):
        reads[0] = 0
        loop.train(smoke(f"train.duration={steps}", "train.log_every=1000", "train.eval_every=1000",
                         "train.ckpt_every=1000"), tmp_path / str(steps), quiet=True)
        counts.append(reads[0])
    assert counts[0] == counts[1] > 0, counts
