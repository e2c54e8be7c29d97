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


@pytest.fixture(scope="session")
def compilation_cache_dir(tmp_path_factory):
    """One folder for JAX's persistent compilation cache, shared by the whole session."""
    return tmp_path_factory.mktemp("jax_cache")


@pytest.fixture(scope="module")
def compilation_cache(compilation_cache_dir):
    """JAX's persistent compilation cache, on for a module's tests and for the subprocesses they
    start (through the environment), off again after the module.

    Every ``loop.train`` builds a new jitted step, so without it each run of the same config
    compiles the same program again (seconds each); with it, a program already compiled in
    this session for the same devices is loaded instead. XLA:CPU compiles deterministically:
    a loaded program computes bit for bit what a fresh compilation would.
    """
    import jax
    from jax.experimental.compilation_cache import compilation_cache as cache

    options = {"jax_compilation_cache_dir": str(compilation_cache_dir),
               "jax_persistent_cache_min_compile_time_secs": 0.0,
               "jax_persistent_cache_min_entry_size_bytes": 0}
    before = {name: getattr(jax.config, name) for name in options}
    with pytest.MonkeyPatch.context() as mp:
        for name, value in options.items():
            jax.config.update(name, value)
            mp.setenv(name.upper(), str(value))
        cache.reset_cache()
        try:
            yield compilation_cache_dir
        finally:
            for name, value in before.items():
                jax.config.update(name, value)
            cache.reset_cache()
