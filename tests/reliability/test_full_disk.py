"""A full disk while a checkpoint or the metrics are written: one clear line, exit status 2,
the previous checkpoint still loads, nothing half-written is taken for a checkpoint, and the
run resumes once there is space. The disk fills through a file-size limit (RLIMIT_FSIZE) on
the training process: writes past it fail as on a full disk (EFBIG instead of ENOSPC)."""

import os
import subprocess
import sys

import pytest
from conftest import cli_env, committed_steps, requires_fashion_mnist, vistas_cmd
from reliability_helpers import TINY, tiny

from vistas import checkpoint as ckpt_lib
from vistas.train import loop
from vistas.train.metrics import read_metrics

pytestmark = [requires_fashion_mnist, pytest.mark.slow]
SETS = [*TINY, "train.duration=16", "train.ckpt_every=4", "train.log_every=1", "train.eval_every=16"]


@pytest.fixture(scope="module")
def run8(tmp_path_factory):
    """The first 8 steps of the run, checkpointed at 4 and 8."""
    workdir = tmp_path_factory.mktemp("disk") / "run"
    loop.train(tiny(*SETS), workdir, stop_after=8, quiet=True)
    assert committed_steps(workdir) == [4, 8]
    return workdir


def copy_run(src, dst):
    subprocess.run(["cp", "-a", str(src), str(dst)], check=True)
    return dst


# SIGXFSZ ignored: a write past the limit fails (EFBIG) instead of killing the process
LIMITED = ("import os, resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
           "resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]), resource.RLIM_INFINITY)); "
           "os.execv(sys.argv[2], sys.argv[2:])")


def resume_with_file_limit(workdir, limit):
    """``vistas train`` resuming ``workdir`` with files limited to ``limit`` bytes."""
    args = ["train", "--preset", "smoke", "--workdir", str(workdir), "--quiet", "--set", *SETS]
    cmd = [sys.executable, "-c", LIMITED, str(limit), *vistas_cmd(*args)]
    return subprocess.run(cmd, env=cli_env(), capture_output=True, text=True, timeout=600)


def file_sizes(directory):
    return {os.path.relpath(os.path.join(d, f), directory): os.path.getsize(os.path.join(d, f))
            for d, _, fs in os.walk(directory) for f in fs}


def largest_stable_file(checkpoints, steps=(4, 8)):
    """The largest file that every checkpoint writes at the same path and size (tree metadata):
    a limit below it fails every later checkpoint. Orbax splits array data into files whose
    number and sizes vary from write to write, so the largest data file is not a safe bound."""
    sizes = [file_sizes(checkpoints / str(step)) for step in steps]
    return max(size for path, size in sizes[0].items() if all(s.get(path) == size for s in sizes[1:]))


def test_checkpoint_write_fails_cleanly_and_the_previous_one_loads(run8, tmp_path):
    workdir = copy_run(run8, tmp_path / "run")
    metrics_size = (workdir / "metrics.jsonl").stat().st_size
    limit = largest_stable_file(workdir / "checkpoints") // 2  # a checkpoint file does not fit
    assert limit > 4 * metrics_size  # the metrics and event files do
    proc = resume_with_file_limit(workdir, limit)
    assert proc.returncode == 2, proc.stderr[-2000:]
    # one line from vistas (orbax's writer thread may log its own traceback around it)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("vistas: error:")]
    assert len(errors) == 1, proc.stderr[-2000:]
    last = errors[0]
    assert last.startswith("vistas: error: could not write checkpoint 12 in ")
    assert "File too large; checkpoint 8 is kept" in last
    assert committed_steps(workdir) == [4, 8]  # the partial write is not a checkpoint
    assert ckpt_lib.Checkpointer(workdir / "checkpoints", read_only=True).latest_step() == 8
    _, params, step = loop.final_params(workdir)  # what a resume starts from
    assert step == 8


def test_metrics_write_fails_cleanly_and_a_resume_repairs_the_file(run8, tmp_path):
    workdir = copy_run(run8, tmp_path / "run")
    metrics = workdir / "metrics.jsonl"
    padding = (workdir / "config.json").stat().st_size  # so that the metrics reach the limit first
    metrics.write_text(metrics.read_text() + '{"step": 0, "padding": "%s"}\n' % ("x" * padding))
    limit = metrics.stat().st_size + 40  # step 9's row does not fit
    proc = resume_with_file_limit(workdir, limit)
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("vistas: error: could not write metrics of step 9 to ")
    assert last.endswith("File too large; free space, then resume")
    assert committed_steps(workdir) == [4, 8] and max(r["step"] for r in read_metrics(metrics)) == 8
    assert not (workdir / "metrics.jsonl").read_text().endswith("\n")  # a row was cut short
    loop.train(tiny(*SETS), workdir, stop_after=10, quiet=True)
    rows = [r["step"] for r in read_metrics(workdir / "metrics.jsonl") if "train/loss" in r]
    assert rows == list(range(1, 11))


@requires_fashion_mnist
def test_a_writer_failing_to_close_never_hides_the_error_that_stopped_the_run(tmp_path, monkeypatch):
    """A full disk fails the checkpoint and then the TensorBoard flush in the loop's cleanup:
    the run's error is the checkpoint's one line; a close failure alone is one line too."""
    import errno

    from vistas.errors import VistasError
    from vistas.train.metrics import MetricsWriter

    def full(*args, **kw):
        raise OSError(errno.ENOSPC, "No space left on device")

    def failed_save(self, step, *args, **kw):
        raise VistasError(f"could not write checkpoint {step} in {self.directory}: No space left on device")

    monkeypatch.setattr(MetricsWriter, "close", full)
    monkeypatch.setattr(ckpt_lib.Checkpointer, "save", failed_save)
    with pytest.raises(VistasError, match="could not write checkpoint 2 in"):
        loop.train(tiny("train.duration=4", "train.ckpt_every=2", "schedule.warmup=1"), tmp_path / "a", quiet=True)
    monkeypatch.undo()
    monkeypatch.setattr(MetricsWriter, "close", full)
    with pytest.raises(VistasError) as e:
        loop.train(tiny("train.duration=2", "schedule.warmup=1"), tmp_path / "b", quiet=True)
    assert str(e.value) == ("could not finish writing the run's files: No space left on device; "
                            "free space, then resume")
