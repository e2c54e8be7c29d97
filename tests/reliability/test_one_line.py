"""Inputs that used to end in a traceback or a misleading message: each is now one line
naming the value and what is allowed, with exit status 2."""

import pytest

from vistas import cli

SMOKE = ["train", "--preset", "smoke", "--set"]


@pytest.mark.parametrize("argv, expected", [
    (SMOKE + ["train.seed=-1"], "train.seed=-1 must be an integer in [0, 2**63)"),
    (SMOKE + ["train.seed=18446744073709551616"], "train.seed=18446744073709551616 must be an integer"),
    (SMOKE + ["optim.lr=nan"], "optim.lr=nan must be a positive, finite number"),
    (SMOKE + ["optim.lr=1e999"], "optim.lr=inf must be a positive, finite number"),
    (SMOKE + ["train.log_every=0"], "train.log_every=0 is empty; give a cadence of at least one step"),
    (SMOKE + ["train.eval_every='0%'"], "train.eval_every='0%' is empty"),
    (SMOKE + ["optim.lerning_rate=1"], "unknown config key 'optim.lerning_rate'; did you mean 'optim.lr'?"),
    (["models", "--image-size", "0"], "image size 0 must be positive"),
])
def test_bad_values_are_one_line(argv, expected, capsys, tmp_path):
    argv = [*argv[:3], "--workdir", str(tmp_path / "run"), *argv[3:]] if argv[0] == "train" else argv
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert expected in err and err.count("\n") == 1, err


def test_a_duration_too_long_to_count_is_one_line(capsys, tmp_path):
    assert cli.main(["train", "--preset", "smoke", "--workdir", str(tmp_path / "run"),
                     "--set", "train.duration='1e12'"]) == 2
    err = capsys.readouterr().err
    assert "gives 1,000,000,000,000 steps, more than the 2,147,483,647 a run counts" in err
    assert err.count("\n") == 1


@pytest.mark.parametrize("content, expected", [("{not json", "is damaged (Expecting property name"),
                                                ("[1, 2]", "is not a vistas config"),
                                                ('{"optim": {"lrr": 1}}', "unknown config key 'optim.lrr'")])
def test_a_damaged_config_json_is_one_line(content, expected, capsys, tmp_path):
    (tmp_path / "config.json").write_text(content)
    assert cli.main(["evaluate", "--workdir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert expected in err and err.count("\n") == 1, err


@pytest.mark.slow
def test_library_noise_goes_to_a_log_file_not_the_terminal(tmp_path):
    """``vistas evaluate`` on a damaged checkpoint: the one line of the error on the
    terminal; orbax's and absl's notices (read-only manager, missing metadata) in the log."""
    import os
    import subprocess
    import sys

    from conftest import requires_fashion_mnist  # noqa: F401
    from reliability_helpers import tiny

    from vistas.data import catalog
    from vistas.train import loop

    if not catalog.is_present("fashion_mnist"):
        pytest.skip("Fashion-MNIST not installed")
    run = tmp_path / "run"
    loop.train(tiny("train.duration=2", "schedule.warmup=1"), run, quiet=True)
    for f in (run / "checkpoints" / "2" / "state").rglob("d/*"):
        if f.is_file():
            f.write_bytes(f.read_bytes()[:10])
    logs = tmp_path / "logs"
    proc = subprocess.run([sys.executable, "-m", "vistas.cli", "evaluate", "--workdir", str(run)],
                          capture_output=True, text=True, env={**os.environ, "VISTAS_LOG_DIR": str(logs)})
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "is damaged or incomplete" in proc.stderr, proc.stderr
    (log,) = logs.glob("vistas-*.log")
    assert "absl" in log.read_text()
