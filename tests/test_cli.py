"""Tests for the ``vistas`` command: listings as JSON and one-line errors with exit status 2."""

import argparse
import importlib.metadata
import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import cli_env, requires_fashion_mnist, vistas_cmd
from PIL import Image

from vistas import cli


def run(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, out, err, *culprits):
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("vistas: error: ")
    assert "Traceback" not in err + out
    for culprit in culprits:
        assert culprit in lines[0]
    return lines[0]


def test_console_script_is_declared():
    scripts = {e.name: e.value for e in importlib.metadata.entry_points(group="console_scripts")}
    assert scripts.get("vistas") == "vistas.cli:console"


def test_building_the_parser_imports_nothing_heavy():
    """``vistas --help`` stays fast: the handlers import their modules when they run."""
    code = ("import sys; from vistas import cli; cli.build_parser(); "
            "print(sorted({'jax', 'numpy', 'flax', 'scipy', 'matplotlib'} & set(sys.modules)))")
    proc = subprocess.run([sys.executable, "-c", code], env=cli_env(), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_each_subcommand_module_holds_its_parser_and_handler():
    sub = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    modules = {sp.get_default("fn").__module__ for sp in sub.choices.values()}
    assert modules == {m.__name__ for m in cli.COMMANDS}
    for name, sp in sub.choices.items():
        module = sys.modules[sp.get_default("fn").__module__]
        assert sp.get_default("fn") is module.run, name
    assert list(sub.choices) == ["train", "distill", "evaluate", "predict", "models", "presets", "data",
                                 "optim-memory", "shapefind", "cooldown", "fewshot", "finetune",
                                 "convert", "export", "sweep", "fit", "ckpt"]


def test_help_of_the_module_entry_point():
    proc = subprocess.run(vistas_cmd("--help"), env=cli_env(), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and proc.stdout.startswith("usage: vistas ")
    assert "{train,distill,evaluate,predict,models,presets,data,optim-memory" in proc.stdout


def test_models_json(capsys):
    code, out, _ = run(capsys, "models", "--json")
    assert code == 0
    rows = {r["name"]: r for r in json.loads(out)}
    assert rows["vit-B/16"]["params"] == 86_566_120
    assert rows["vit-B/16"]["num_classes"] == 1000 and rows["vit-B/16"]["image_size"] == 224
    assert {"vit-Ti/16", "vit-S/16", "vit-L/16", "vit-G/14"} <= set(rows)


def test_models_table_honours_classes_and_size(capsys):
    code, out, _ = run(capsys, "models", "--num-classes", "10", "--image-size", "448")
    assert code == 0
    assert "(at 448 px, 10 classes)" in out
    # 784 patches instead of 196 (posemb), 10 classes instead of 1000 (head)
    expected = 86_566_120 + (784 - 196) * 768 - 990 * 769
    assert any(line.split() == ["vit-B/16", f"{expected:,}"] for line in out.splitlines())


def test_presets_json(capsys):
    code, out, _ = run(capsys, "presets", "--json")
    assert code == 0
    rows = {r["name"]: r["doc"] for r in json.loads(out)}
    assert {"smoke", "fashion_mnist_vit"} <= set(rows)
    for name in ("smoke", "fashion_mnist_vit"):
        assert rows[name].strip() and f"--preset {name}" in rows[name]


@requires_fashion_mnist
def test_data_list_json(capsys):
    code, out, _ = run(capsys, "data", "list", "--json")
    assert code == 0
    rows = {r["name"]: r for r in json.loads(out)}
    assert rows["fashion_mnist"]["present"] is True
    assert rows["fashion_mnist"]["num_classes"] == 10


def test_entry_point_in_a_subprocess(tmp_path):
    """The real command: a bad ``--set`` exits with status 2 and one line, nothing else."""
    proc = subprocess.run(
        vistas_cmd("train", "--preset", "smoke", "--workdir", str(tmp_path / "w"),
                   "--set", "train.seed=1", "optim.lr=abc"),
        env=cli_env(), capture_output=True, text=True, timeout=120,
    )
    assert_one_line_error(proc.returncode, proc.stdout, proc.stderr, "optim.lr", "float")
    assert proc.stdout == ""
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("sets, culprits", [
    (["optim.lrr=1"], ["'optim.lrr'", "did you mean 'optim.lr'"]),
    (["optim.lr=abc"], ["optim.lr", "float"]),
    (["train.duration"], ["'train.duration'", "key=value"]),
    (["data.channels=2"], ["data.channels=2", "1 or 3"]),
])
def test_bad_set(capsys, tmp_path, sets, culprits):
    result = run(capsys, "train", "--preset", "smoke", "--workdir", str(tmp_path / "w"), "--set", *sets)
    assert_one_line_error(*result, *culprits)


def test_unknown_preset(capsys, tmp_path):
    result = run(capsys, "train", "--preset", "smok", "--workdir", str(tmp_path / "w"))
    assert_one_line_error(*result, "'smok'", "did you mean 'smoke'")


@requires_fashion_mnist
def test_unknown_model(capsys, tmp_path):
    result = run(capsys, "train", "--preset", "smoke", "--workdir", str(tmp_path / "w"),
                 "--set", "model.name=vit-Q/16")
    assert_one_line_error(*result, "'vit-Q/16'", "did you mean")


def test_missing_dataset(capsys, tmp_path):
    missing = tmp_path / "nowhere"
    result = run(capsys, "train", "--preset", "smoke", "--workdir", str(tmp_path / "w"),
                 "--set", "data.dataset=folder", f"data.path={missing}")
    assert_one_line_error(*result, str(missing), "does not exist")


def test_missing_catalog_dataset_name(capsys, tmp_path):
    result = run(capsys, "train", "--preset", "smoke", "--workdir", str(tmp_path / "w"),
                 "--set", "data.dataset=fashion-mnist")
    assert_one_line_error(*result, "fashion-mnist")


def test_evaluate_without_a_run(capsys, tmp_path):
    result = run(capsys, "evaluate", "--workdir", str(tmp_path / "empty"))
    assert_one_line_error(*result, "no config.json")


def make_folder_dataset(root, *, corrupt):
    """Two classes of 28x28 gray PNGs in train/ and test/; with ``corrupt``, train/b/x.jpg is junk.

    The train split then holds exactly one batch of 4, so the bad file is met at once.
    """
    rng = np.random.default_rng(0)
    for split, per_class in (("train", (2, 1 if corrupt else 2)), ("test", (3, 3))):
        for cls, n in zip(("a", "b"), per_class, strict=True):
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)).save(d / f"{i}.png")
    if corrupt:
        (root / "train" / "b" / "x.jpg").write_bytes(b"\x00 definitely not a JPEG \xff" * 4)


FOLDER_SETS = ["data.dataset=folder", "data.image_size=28", "data.channels=1",
               "data.num_train_examples=None", "data.eval_splits=['test']", "data.batch_size=4",
               "data.eval_batch_size=4"]


def test_corrupt_image_in_a_folder(capsys, tmp_path):
    make_folder_dataset(tmp_path / "images", corrupt=True)
    result = run(capsys, "train", "--preset", "smoke", "--workdir", str(tmp_path / "w"), "--quiet",
                 "--set", *FOLDER_SETS, f"data.path={tmp_path / 'images'}")
    assert_one_line_error(*result, "x.jpg", "cannot decode")
