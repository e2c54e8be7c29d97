"""SIGTERM while the run evaluates (preemption notices arrive at any moment): the evaluation
finishes, a checkpoint of that step is written, the exit is clean (status 0), and the same
checkpoint loads. SIGTERM between training steps, and resuming: tests/test_train.py."""

import json
import signal
import subprocess
import time

import pytest
from conftest import cli_env, committed_steps, requires_fashion_mnist, vistas_cmd
from reliability_helpers import TINY

from vistas.systems import soak
from vistas.train import loop
from vistas.train.metrics import read_metrics

SETS = [*TINY, "train.duration=5000", "train.ckpt_every=1000", "train.log_every=1", "train.eval_every=4",
        "data.eval_splits=['test[:3000]']", "data.eval_batch_size=50"]  # 60 batches: a long evaluation


@requires_fashion_mnist
@pytest.mark.slow
def test_sigterm_during_evaluation_saves_that_step_and_exits_cleanly(tmp_path):
    workdir = tmp_path / "run"
    with open(tmp_path / "out", "w") as out, open(tmp_path / "err", "w") as err:
        proc = subprocess.Popen(vistas_cmd("train", "--preset", "smoke", "--workdir", str(workdir),
                                           "--set", *SETS), env=cli_env(), stdout=out, stderr=err)
    try:
        deadline = time.monotonic() + 300
        while soak.last_logged_step(workdir / "metrics.jsonl") < 4:  # step 4's row: evaluation starts
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "err").read_text()[-2000:]
            time.sleep(0.005)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=300) == 0, (tmp_path / "err").read_text()[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    out = (tmp_path / "out").read_text()
    assert "received signal 15: saved step 4" in out and "Traceback" not in (tmp_path / "err").read_text()
    assert committed_steps(workdir) == [4]
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["interrupted"] and summary["step"] == 4
    evals = [r["step"] for r in read_metrics(workdir / "metrics.jsonl") if "eval/test[:3000]/top1" in r]
    assert evals == [4]  # the evaluation that was running finished and was logged

    _, _, step = loop.final_params(workdir)  # what a resume starts from (resuming: test_train.py)
    assert step == 4
