"""Two processes on localhost (CPU collectives) train like one process with as many devices."""

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import committed_steps, requires_fashion_mnist

from vistas.errors import ConfigError
from vistas.systems import distributed
from vistas.train import loop

SCRIPT = r"""
import json, pathlib, sys
from vistas import cli  # noqa: F401  (the command's start-up path)
from vistas.systems import distributed
started = distributed.initialize()
import jax
from vistas import config, presets
from vistas.train import loop
workdir = pathlib.Path(sys.argv[1])
def smoke(*more):
    return config.apply_overrides(presets.get("smoke"), [
        "train.duration=6", "schedule.warmup=2", "train.log_every=1", "train.eval_every=6", "train.ckpt_every=3",
        "data.eval_splits=['test[:200]']", "data.eval_batch_size=200", *more])
summary = loop.train(smoke(), workdir, quiet=True)
# the fixed teacher's logits of every training example, computed over all processes
fixed = smoke("distill.mode=fixed", f"distill.teachers=['{workdir}']", "train.duration=2",
              "schedule.warmup=1", "data.num_train_examples=100")
loop.train(fixed, workdir.parent / (workdir.name + "-fixed"), quiet=True)
import numpy as np
logits = np.load(workdir.parent / (workdir.name + "-fixed") / "teacher_logits.npz")["logits"]
# a signal that reaches only the second process (at its step 3) stops both at the same step
import os, signal
from vistas.train import actions
log = actions.LogMetrics.__call__
def log_and_signal(self, run):
    log(self, run)
    if run.step == 3 and jax.process_index() == jax.process_count() - 1:
        os.kill(os.getpid(), signal.SIGTERM)
actions.LogMetrics.__call__ = log_and_signal
stopped = loop.train(smoke("train.ckpt_every=100"),
                     workdir.parent / (workdir.name + "-stopped"), quiet=True)
if jax.process_index() == 0:
    rows = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    print(json.dumps({"started": started, "processes": jax.process_count(), "devices": jax.device_count(),
                      "losses": [r["train/loss"] for r in rows if "train/loss" in r],
                      "top1": summary["eval/test[:200]/top1"], "teacher_logits": logits.tolist(),
                      "stopped_at": stopped["step"], "interrupted": stopped["interrupted"]}))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@requires_fashion_mnist
@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    base = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "SLURM_JOB_ID")}
    port = free_port()
    procs = [subprocess.Popen(
        [sys.executable, str(script), str(tmp_path / "two")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env={**base, "JAX_PLATFORMS": "cpu", "VISTAS_COORDINATOR": f"localhost:{port}",
                        "VISTAS_NUM_PROCESSES": "2", "VISTAS_PROCESS_ID": str(i)}) for i in range(2)]
    procs.append(subprocess.Popen(
        [sys.executable, str(script), str(tmp_path / "one")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env={**base, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}))
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=550)
        assert p.returncode == 0, err[-3000:]
        outs.append(out)
    two, one = (json.loads(outs[i].strip().splitlines()[-1]) for i in (0, 2))
    assert outs[1].strip() == "" or "{" not in outs[1]  # only process 0 reports
    assert two["started"] and two["processes"] == 2 and two["devices"] == 2
    assert not one["started"] and one["processes"] == 1 and one["devices"] == 2
    assert len(two["losses"]) == 6
    assert two["losses"] == pytest.approx(one["losses"], rel=1e-5)
    assert two["top1"] == pytest.approx(one["top1"], abs=1e-9)
    # fixed-teacher logits: each process computed its part of each batch, all of them gathered
    assert np.asarray(two["teacher_logits"]).shape == (100, 1, 10)
    np.testing.assert_allclose(two["teacher_logits"], one["teacher_logits"], rtol=1e-4, atol=1e-5)
    # SIGTERM at one process only: both stopped and saved at the same step
    assert two["stopped_at"] == 3 and two["interrupted"] and one["stopped_at"] == 3
    assert committed_steps(tmp_path / "two-stopped") == [3]
    # the checkpoint both processes wrote together restores in a single process
    _, params, step = loop.final_params(tmp_path / "two")
    _, ref, _ = loop.final_params(tmp_path / "one")
    assert step == 6
    assert all(float(abs(a - b).max()) < 1e-5
               for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref), strict=True))


def test_environment_errors(monkeypatch):
    monkeypatch.setenv("VISTAS_COORDINATOR", "localhost:1")
    monkeypatch.setenv("VISTAS_NUM_PROCESSES", "two")
    with pytest.raises(ConfigError, match="VISTAS_NUM_PROCESSES='two' must be an integer"):
        distributed.initialize()
    monkeypatch.setenv("VISTAS_NUM_PROCESSES", "2")
    monkeypatch.setenv("VISTAS_PROCESS_ID", "2")
    with pytest.raises(ConfigError, match=r"VISTAS_PROCESS_ID=2 must be in \[0, VISTAS_NUM_PROCESSES=2\)"):
        distributed.initialize()


def test_single_process_by_default(monkeypatch):
    for name in ("VISTAS_COORDINATOR", "VISTAS_DISTRIBUTED", "SLURM_JOB_ID"):
        monkeypatch.delenv(name, raising=False)
    assert not distributed.requested()
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    monkeypatch.setenv("SLURM_NTASKS", "1")
    assert not distributed.requested()  # a one-task SLURM job is one process
    monkeypatch.setenv("SLURM_NTASKS", "4")
    assert distributed.requested()
