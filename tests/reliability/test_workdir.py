"""A run holds its workdir: a second run on it is refused before anything is written, a
killed holder leaves no stale lock, and a workdir of another run is refused even before its
first checkpoint."""

import json
import os
import signal
import socket
import subprocess
import sys

import pytest
from conftest import requires_fashion_mnist
from reliability_helpers import tiny

from vistas import cli, runs
from vistas.errors import ConfigError, VistasError
from vistas.train import loop

HOLD = "import sys, time; from vistas import runs\nwith runs.exclusive(sys.argv[1]):\n    print('held', flush=True); time.sleep(600)"


def _holder(workdir):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(workdir)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_run_is_refused_naming_the_holder_and_a_killed_holder_leaves_no_lock(tmp_path):
    workdir = tmp_path / "run"
    holder = _holder(workdir)
    try:
        (workdir / "config.json").write_text("{}")  # what the holder wrote
        with pytest.raises(VistasError) as e:
            loop.train(tiny(), workdir, quiet=True)
        msg = str(e.value)
        assert "\n" not in msg and f"pid {holder.pid} on {socket.gethostname()}" in msg
        assert "in use by another vistas run" in msg
        assert (workdir / "config.json").read_text() == "{}"  # nothing written
        assert cli.main(["train", "--preset", "smoke", "--workdir", str(workdir)]) == 2
    finally:
        os.kill(holder.pid, signal.SIGKILL)  # no cleanup: the kernel releases the lock
        holder.wait()
    with runs.exclusive(workdir):
        assert "pid " + str(os.getpid()) in (workdir / runs.LOCK_FILE).read_text()
    with runs.exclusive(workdir):  # released on exit, reusable in the same process
        pass


def test_a_workdir_that_is_a_file_is_one_line(tmp_path):
    path = tmp_path / "file"
    path.write_text("x")
    with pytest.raises(VistasError, match="is a file, not a directory"):
        loop.train(tiny(), path, quiet=True)


@requires_fashion_mnist
def test_another_runs_config_is_refused_before_any_checkpoint(tmp_path):
    workdir = tmp_path / "run"
    workdir.mkdir()
    other = tiny("optim.lr=0.5").to_json()
    (workdir / "config.json").write_text(other)  # a run that stopped before saving
    with pytest.raises(ConfigError, match=r"different run \(optim.lr: 0.5 -> "):
        loop.train(tiny(), workdir, quiet=True)
    assert (workdir / "config.json").read_text() == other
    assert json.loads(other)["optim"]["lr"] == 0.5


def test_a_run_saved_with_float32_resumes_under_the_auto_dtype(tmp_path):
    """Runs saved before ``model.dtype`` defaulted to "auto" recorded "float32", which "auto"
    stands for on CPU: the same run. bfloat16 is not."""
    from vistas import runs
    from vistas.config import Config

    saved = json.loads(Config().to_json())
    saved["model"]["dtype"] = "float32"
    (tmp_path / "config.json").write_text(json.dumps(saved))
    runs.check_same_run(tmp_path, Config())
    saved["model"]["dtype"] = "bfloat16"
    (tmp_path / "config.json").write_text(json.dumps(saved))
    with pytest.raises(ConfigError, match=r"model.dtype: 'bfloat16' -> 'auto'"):
        runs.check_same_run(tmp_path, Config())


def _immutable(path) -> bool:
    """Makes ``path`` immutable (chattr +i, which binds root too); False where the
    filesystem or the tools do not allow it."""
    try:
        return subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode == 0
    except FileNotFoundError:
        return False


@requires_fashion_mnist
def test_an_unwritable_checkpoints_folder_is_one_line_before_training(tmp_path, monkeypatch, capsys):
    """Checked before the first step, naming the cause (permission, not space); it used to
    fail at the first checkpoint, print ~270 lines and hang five minutes in orbax."""
    import errno
    import pathlib

    workdir = tmp_path / "run"
    real = pathlib.Path.write_bytes

    def refuse(self, data):
        if self.name.startswith(".vistas-write-test"):
            raise PermissionError(errno.EPERM, "Operation not permitted")
        return real(self, data)

    monkeypatch.setattr(pathlib.Path, "write_bytes", refuse)
    with pytest.raises(VistasError) as e:
        loop.train(tiny(), workdir, quiet=True)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"cannot write in {workdir / 'checkpoints'}: Operation not permitted")
    assert "no permission to write there" in msg and "free space" not in msg
    monkeypatch.undo()
    ckpt = tmp_path / "real" / "checkpoints"
    ckpt.mkdir(parents=True)
    if not _immutable(ckpt):
        return  # the part above covers the logic; this filesystem has no immutable flag
    try:
        assert cli.main(["train", "--preset", "smoke", "--workdir", str(tmp_path / "real"),
                         "--set", "train.duration=2", "schedule.warmup=1"]) == 2
        err = capsys.readouterr().err
        assert "cannot write in" in err and "no permission" in err and err.count("\n") == 1
    finally:
        subprocess.run(["chattr", "-i", str(ckpt)], capture_output=True)
