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
