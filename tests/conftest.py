"""Shared helpers for the training, CLI and model tests."""

import os
import pathlib
import subprocess
import sys

import pytest

from vistas import config as config_lib
from vistas import presets
from vistas.data import catalog

requires_fashion_mnist = pytest.mark.skipif(
    not catalog.is_present("fashion_mnist"), reason="Fashion-MNIST not installed"
)


def smoke(*overrides: str) -> config_lib.Config:
    """The ``smoke`` preset with ``--set``-style overrides applied."""
    return config_lib.apply_overrides(presets.get("smoke"), list(overrides))


def committed_steps(workdir) -> list[int]:
    """Steps of the checkpoints in ``workdir/checkpoints`` that orbax has committed.

    Orbax writes into a temporary name and renames it to the bare step number when done.
    """
    d = pathlib.Path(workdir) / "checkpoints"
    if not d.is_dir():
        return []
    return sorted(int(p.name) for p in d.iterdir() if p.is_dir() and p.name.isdigit())


def cli_env(**extra: str) -> dict:
    """This process's environment (same devices as in-process runs) plus ``extra``."""
    return {**os.environ, **extra}


def vistas_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "vistas.cli", *args]


def start_cli(*args: str, env: dict | None = None, **kw) -> subprocess.Popen:
    return subprocess.Popen(vistas_cmd(*args), env=env or cli_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


@pytest.fixture(scope="session")
def transfer_upstream(tmp_path_factory):
    """A tiny ViT trained on 4,096 Fashion-MNIST images for 150 steps: the upstream checkpoint
    of the few-shot, fine-tuning and calibration tests."""
    from vistas.train import loop

    workdir = tmp_path_factory.mktemp("transfer") / "upstream"
    loop.train(smoke("train.duration=150", "train.ckpt_every=150", "train.eval_every=150",
                     "data.num_train_examples=4096"), workdir, quiet=True)
    return workdir
