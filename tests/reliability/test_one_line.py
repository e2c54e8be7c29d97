"""Inputs that used to end in a traceback or a misleading message: each is now one line
naming the value and what is allowed, with exit status 2."""

import pytest

from vistas import cli
from vistas.errors import VistasError

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


# --- issue 23, second pass --------------------------------------------------------------------


def one_line_exit_2(argv, capsys) -> str:
    """Runs ``vistas ARGV``: status 2 and one line on stderr, which it returns."""
    assert cli.main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vistas: error: ") and err.count("\n") == 1, err
    return err


def small_vit():
    """A random width-32, depth-2 ViT (16 px images, patch 4, 5 classes)."""
    import jax
    import numpy as np
    from flax import nnx

    from vistas.models import interop, vit

    cfg = vit.ViTConfig(patch=4, width=32, depth=2, mlp_dim=64, num_heads=4, image_size=16,
                        channels=3, num_classes=5)
    model = nnx.eval_shape(lambda: vit.VisionTransformer(cfg, rngs=nnx.Rngs(0)))
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda s: rng.normal(size=s.shape).astype(np.float32),
                          interop.model_params(model))
    return interop.assign(model, params)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """One small ViT written as big_vision (.npz), timm (.safetensors) and vistas (.vistas.npz)."""
    from vistas.models import interop

    d = tmp_path_factory.mktemp("weights")
    model = small_vit()
    return {fmt: interop.export(model, d / name)
            for fmt, name in (("big_vision", "bv.npz"), ("timm", "t.safetensors"), ("vistas", "v.vistas.npz"))}


@pytest.mark.parametrize("dst, culprit", [
    ("a_file/out.safetensors", "a_file is a file, not a folder"),
    ("a_file/deeper/out.npz", "a_file is a file, not a folder"),
    ("a_folder", "a_folder is a folder; name the file to write"),
])
def test_convert_to_an_unwritable_destination_is_one_line(weights, tmp_path, capsys, dst, culprit):
    """(Root writes into any folder whatever its mode, so the faults here fail for root too:
    a destination below a regular file, and one that is a folder.)"""
    (tmp_path / "a_file").write_text("not a folder")
    (tmp_path / "a_folder").mkdir()
    err = one_line_exit_2(["convert", weights["big_vision"], tmp_path / dst], capsys)
    assert f"cannot write {tmp_path / dst}: " in err and culprit in err, err


def test_convert_into_a_folder_without_write_permission_is_one_line(weights, tmp_path, capsys):
    import os

    if os.geteuid() == 0:
        pytest.skip("root writes into any folder whatever its mode (the faults above fail for root too)")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        for name in ("out.safetensors", "out.npz"):
            err = one_line_exit_2(["convert", weights["big_vision"], locked / name], capsys)
            assert f"could not write {locked / name}: Permission denied" in err, err
    finally:
        locked.chmod(0o700)


def test_a_failing_safetensors_write_is_one_line(weights, tmp_path, capsys):
    """safetensors reports a failed write as its own error, not an OSError: here the
    temporary file's name (the writer's own: process and thread) is taken by a folder (a
    fault that fails for root too)."""
    import os
    import threading

    (tmp_path / f"out.safetensors.{os.getpid()}-{threading.get_native_id()}.tmp").mkdir()
    err = one_line_exit_2(["convert", weights["big_vision"], tmp_path / "out.safetensors"], capsys)
    assert f"could not write {tmp_path / 'out.safetensors'}: Is a directory" in err, err


def _without(path, drop, out):
    """A copy of the weights file ``path`` lacking the keys ``drop``, written to ``out``."""
    import numpy as np
    from safetensors import safe_open
    from safetensors.numpy import load_file, save_file

    if path.suffix == ".safetensors":
        with safe_open(str(path), "np") as f:
            meta = f.metadata()
        sd = load_file(str(path))
        save_file({k: v for k, v in sd.items() if k not in drop}, str(out), metadata=meta)
    else:
        with np.load(path) as z:
            np.savez(out, **{k: z[k] for k in z.files if k not in drop})
    return out


@pytest.mark.parametrize("fmt, drop, culprit", [
    ("big_vision", ["params/Transformer/encoderblock_1/MlpBlock_0/Dense_0/kernel"],
     "lacks the parameter 'params/Transformer/encoderblock_1/MlpBlock_0/Dense_0/kernel', which a vit-32x2/4 needs"),
    ("big_vision", ["params/Transformer/encoderblock_0/MlpBlock_0/Dense_0/kernel"],
     "lacks the parameter 'params/Transformer/encoderblock_0/MlpBlock_0/Dense_0/kernel'"),
    ("big_vision", ["params/Transformer/encoderblock_0/MultiHeadDotProductAttention_0/query/kernel"],
     "lacks the parameter 'params/Transformer/encoderblock_0/MultiHeadDotProductAttention_0/query/kernel'"),
    ("big_vision", ["params/head/kernel"], "lacks the parameter 'params/head/kernel'"),
    ("big_vision", ["params/Transformer/encoderblock_0/LayerNorm_0/bias"],
     "lacks the parameter 'params/Transformer/encoderblock_0/LayerNorm_0/bias'"),
    ("big_vision", ["params/Transformer/encoder_norm/scale", "params/Transformer/encoder_norm/bias"],
     "lacks the parameter 'params/Transformer/encoder_norm/bias', which a vit-32x2/4 needs (and 1 more)"),
    ("timm", ["blocks.1.norm1.weight"], "lacks the parameter 'blocks.1.norm1.weight'"),
    ("timm", ["patch_embed.proj.bias"], "lacks the parameter 'patch_embed.proj.bias'"),
    ("timm", ["head.bias"], "lacks the parameter 'head.bias', which a vit-32x2/4 needs"),
    ("timm", ["blocks.1.attn.qkv.bias"], "lacks the parameter 'blocks.1.attn.qkv.bias'"),
    ("vistas", ["encoder/block01/mlp/fc2/bias"], "lacks the parameter 'encoder/block01/mlp/fc2/bias'"),
])
def test_convert_from_a_file_missing_parameters_is_one_line(weights, tmp_path, capsys, fmt, drop, culprit):
    src = _without(weights[fmt], drop, tmp_path / f"cut{''.join(weights[fmt].suffixes)}")
    for dst in ("out.safetensors", "out.npz"):
        err = one_line_exit_2(["convert", src, tmp_path / dst], capsys)
        assert f"{src} is incomplete: it {culprit}" in err, err
        assert not (tmp_path / dst).exists()


def results_csv(path, *, model=True, encoding="utf-8", note="run"):
    cols = ["member", "model", "total_flops", "eval_error"] if model else ["member", "total_flops", "eval_error"]
    rows = [",".join(cols)]
    for i, (c, e) in enumerate([(1e9, 0.5), (1e10, 0.3), (1e11, 0.2), (1e12, 0.15), (1e13, 0.12), (1e14, 0.11)]):
        values = {"member": f"{note}{i}", "model": f"vit-{i}", "total_flops": c, "eval_error": e}
        rows.append(",".join(str(values[k]) for k in cols))
    path.write_bytes(("\n".join(rows) + "\n").encode(encoding))
    return path


@pytest.mark.parametrize("args, culprit", [
    (["--bootstrap", "-5"], "--bootstrap -5 must be a whole number >= 0 (0 skips the bootstrap)"),
    (["--extrapolate", "1.5"], "--extrapolate 1.5 must be a fraction in (0, 1): the share of the frontier"),
    (["--extrapolate", "0"], "--extrapolate 0.0 must be a fraction in (0, 1)"),
    (["--extrapolate", "-0.2"], "--extrapolate -0.2 must be a fraction in (0, 1)"),
    (["--extrapolate", "nan"], "--extrapolate nan must be a fraction in (0, 1)"),
])
def test_fit_options_out_of_range_are_one_line(tmp_path, capsys, args, culprit):
    err = one_line_exit_2(["fit", results_csv(tmp_path / "results.csv"), *args], capsys)
    assert culprit in err, err


def test_fit_on_a_csv_that_is_not_utf8_is_one_line(tmp_path, capsys):
    path = results_csv(tmp_path / "results.csv", encoding="latin-1", note="d\u00e9j\u00e0")
    err = one_line_exit_2(["fit", path, "--bootstrap", "0"], capsys)
    assert f"{path} is not UTF-8 text" in err and "byte 0xe9" in err, err


def test_fit_plot_without_a_model_column_is_one_line(tmp_path, capsys):
    path = results_csv(tmp_path / "results.csv", model=False)
    err = one_line_exit_2(["fit", path, "--bootstrap", "0", "--plot", tmp_path / "fit.png"], capsys)
    assert f"{path} has no 'model' column, which --plot colours the runs by" in err, err
    assert not (tmp_path / "fit.png").exists()


@pytest.mark.parametrize("cmd", ["pack", "verify"])
@pytest.mark.parametrize("workers", ["-1", "0"])
def test_data_workers_below_one_are_one_line(tmp_path, capsys, cmd, workers):
    from PIL import Image

    (tmp_path / "src" / "a").mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(tmp_path / "src" / "a" / "0.png")
    argv = ["data", cmd, tmp_path / "src", *([tmp_path / "dst"] if cmd == "pack" else []), "--workers", workers]
    err = one_line_exit_2(argv, capsys)
    assert f"--workers {workers} must be at least 1 (leave it out for one per core)" in err, err
    assert not (tmp_path / "dst").exists()


def _zip(path, members):
    import zipfile

    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)


@pytest.mark.parametrize("content", ["random bytes", "not a zip", "a cut zip", "a zip of text files",
                                     "a .npy file", "a zip of non-arrays"])
def test_a_garbage_npz_is_not_blamed_on_pickles(tmp_path, content):
    import io
    import os

    import numpy as np

    from vistas.data import sources
    from vistas.errors import DataError
    from vistas.models import interop

    path = tmp_path / "data.npz"
    whole = io.BytesIO()
    np.savez(whole, x_train=np.zeros((4, 8, 8), np.uint8), y_train=np.zeros(4, np.int64))
    if content == "random bytes":
        path.write_bytes(os.urandom(512))
    elif content == "not a zip":
        path.write_bytes(b"x_train,y_train\n1,2\n")
    elif content == "a cut zip":
        path.write_bytes(whole.getvalue()[:300])
    elif content == "a zip of text files":
        _zip(path, {"readme.txt": "hello"})
    elif content == "a .npy file":
        np.save(tmp_path / "a.npy", np.zeros(3))
        (tmp_path / "a.npy").rename(path)
    else:
        _zip(path, {"x_train.npy": "not an array", "y_train.npy": "nor this"})
    with pytest.raises(DataError) as e:
        sources.load_source("npz", "train", path=path)
    msg = str(e.value)
    assert "\n" not in msg and "pickle" not in msg, msg
    if content == "a zip of text files":
        assert "has no arrays 'x_train' and 'y_train'" in msg and "readme.txt" in msg, msg
    else:
        assert f"{path} is not a readable .npz archive" in msg, msg
    if content != "a zip of non-arrays":  # interop reads its keys without the arrays
        with pytest.raises(VistasError) as e:
            interop.read(path)
        msg = str(e.value)
        assert "\n" not in msg and "pickle" not in msg, msg


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_files_vistas_writes_get_the_umask_permissions(tmp_path, umask):
    """Written through a temporary file (safetensors' own is 0600), they used to be 0600."""
    import os
    import stat

    from vistas import files
    from vistas.models import interop

    model = small_vit()
    old = os.umask(umask)
    try:
        written = [interop.export(model, tmp_path / name) for name in ("t.safetensors", "bv.npz", "v.vistas.npz")]
        files.atomic_write(tmp_path / "summary.json", "{}")
        written.append(tmp_path / "summary.json")
    finally:
        os.umask(old)
    for path in written:
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, (path, oct(path.stat().st_mode))


@pytest.mark.slow
def test_reading_commands_keep_orbax_notices_off_the_terminal(tmp_path):
    """``evaluate``, ``fewshot`` and ``finetune`` open the upstream run's checkpoints read-only;
    orbax's notices about that ("Given directory is read only", "read_only=True, setting
    max_to_keep=None") go to the command's log file, not the terminal."""
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
    commands = {
        "evaluate": ["--workdir", run],
        "fewshot": ["--workdir", run, "--datasets", "fashion_mnist", "--shots", "1", "--seeds", "1",
                    "--max-test-examples", "50"],
        "finetune": ["--from", run, "--dataset", "fashion_mnist", "--steps", "2", "--batch-size", "16",
                     "--workdir", tmp_path / "ft", "--quiet", "--set", "data.num_train_examples=64",
                     "data.eval_splits=['test[:32]']", "data.eval_batch_size=32"],
    }
    for name, args in commands.items():
        logs = tmp_path / f"logs-{name}"
        proc = subprocess.run([sys.executable, "-m", "vistas.cli", name, *map(str, args)], capture_output=True,
                              text=True, env={**os.environ, "VISTAS_LOG_DIR": str(logs)})
        assert proc.returncode == 0, (name, proc.stderr[-2000:])
        assert "read only" not in proc.stderr and "absl" not in proc.stderr, (name, proc.stderr[-2000:])
        (log,) = logs.glob("vistas-*.log")
        assert "Given directory is read only" in log.read_text(), name


EXIT_WITH_A_FULL_LOG = """
import logging, os, resource, signal, sys, threading
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
from vistas import cli
cli.route_library_logs()
logging.getLogger("absl").error("a library's traceback " * 20)
resource.setrlimit(resource.RLIMIT_FSIZE, (64, resource.RLIM_INFINITY))
sys.stderr = cli._ThreadRoutedStderr(sys.stderr)
thread = threading.Thread(target=lambda: print("an orbax writer thread " * 2000, file=sys.stderr))
thread.start()
thread.join()
print("vistas: error: the command's line", file=sys.stderr)
cli._quiet_exit()
print("a library at shutdown " * 2000, file=sys.stderr)
sys.exit(2)
"""


def test_a_library_log_past_a_full_disk_keeps_the_exit_status(tmp_path):
    """On a full disk the library log cannot take what library threads print, at any moment or
    at shutdown: that text is dropped, and the interpreter's last flush of stderr does not turn
    the command's exit status 2 into 120."""
    import os
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", EXIT_WITH_A_FULL_LOG], capture_output=True, text=True,
                          env={**os.environ, "VISTAS_LOG_DIR": str(tmp_path / "logs")}, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr == "vistas: error: the command's line\n"
