"""Runs on disk: a work directory's ``config.json``, its identity, and its parameters.

What the training loop, transfer, distillation, few-shot evaluation, interop and the soak
test need to know about a run that exists already, without the loop itself.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import pathlib
import socket
from collections.abc import Iterator, Sequence
from typing import Any

import jax

from vistas import checkpoint as ckpt_lib
from vistas import config as config_lib
from vistas import experiment
from vistas.config import Config
from vistas.errors import ConfigError, VistasError
from vistas.files import atomic_write
from vistas.models import vit
from vistas.systems import mesh as mesh_lib

CONFIG_FILE = "config.json"
CLASSES_FILE = "classes.json"
LOCK_FILE = ".lock"


def load_config(workdir: str | pathlib.Path) -> Config:
    """The resolved config a run wrote into ``workdir``."""
    path = pathlib.Path(workdir) / CONFIG_FILE
    if not path.exists():
        raise VistasError(f"{workdir} holds no run (no config.json); train one with `vistas train`")
    try:
        return Config.from_dict(json.loads(path.read_text()))
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
        raise VistasError(f"{path} is damaged ({str(e).splitlines()[0]}); restore it from a copy, "
                          "or train in a new --workdir") from None
    except (TypeError, AttributeError, KeyError) as e:
        raise VistasError(f"{path} is not a vistas config ({type(e).__name__}: {e}); restore it "
                          "from a copy, or train in a new --workdir") from None


def write_config(workdir: str | pathlib.Path, cfg: Config) -> None:
    """Writes ``cfg`` as the run's ``config.json`` (whole or not at all)."""
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    atomic_write(workdir / CONFIG_FILE, cfg.to_json())


def write_classes(workdir: str | pathlib.Path, class_names: Sequence[str] | None) -> None:
    """Records the class names of the run's dataset (index i is class i) in ``classes.json``."""
    if class_names is not None:
        atomic_write(pathlib.Path(workdir) / CLASSES_FILE, json.dumps(list(class_names), indent=1))


def class_names(workdir: str | pathlib.Path) -> list[str] | None:
    """The class names a run recorded (None for a run without them)."""
    path = pathlib.Path(workdir) / CLASSES_FILE
    return json.loads(path.read_text()) if path.exists() else None


def check_same_run(workdir: str | pathlib.Path, cfg: Config) -> None:
    """Refuses ``cfg`` when ``workdir`` holds a run with other identity keys (a key the
    saved config lacks was added since, and counts at its default)."""
    workdir = pathlib.Path(workdir)
    saved_path = workdir / CONFIG_FILE
    if not saved_path.exists():
        return
    try:
        saved = json.loads(saved_path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise VistasError(f"{saved_path} is damaged ({str(e).splitlines()[0]}); restore it from a "
                          "copy, or train in a new --workdir") from None
    if not isinstance(saved, dict):
        raise VistasError(f"{saved_path} is not a vistas config; restore it from a copy, or train "
                          "in a new --workdir")
    now = cfg.to_dict()
    defaults = Config().to_dict()
    diffs = []
    for section, values in now.items():
        for key, value in values.items():
            full = f"{section}.{key}"
            old = saved.get(section, {}).get(key, defaults[section][key])
            if full not in config_lib.NON_IDENTITY_KEYS and not _same_value(full, old, value):
                diffs.append(f"{full}: {old!r} -> {value!r}")
    if diffs:
        raise ConfigError(
            f"{workdir} holds a checkpoint of a different run ({'; '.join(diffs[:3])}); "
            "use a new --workdir, or the same settings to resume"
        )


def _same_value(key: str, old: Any, new: Any) -> bool:
    """Whether a saved identity key's value and today's mean the same run: ``model.dtype``
    "auto" is the dtype it stands for on this backend (float32 on CPU, as runs saved before
    "auto" was the default recorded)."""
    if key == "model.dtype" and isinstance(old, str) and isinstance(new, str):
        return vit.resolve_dtype(old) == vit.resolve_dtype(new)
    return old == new


@contextlib.contextmanager
def exclusive(workdir: str | pathlib.Path) -> Iterator[None]:
    """Holds ``workdir`` for this run: a second run on the same directory (from any process
    on a filesystem with working locks) is refused with one line naming the holder. The
    lock is ``fcntl.flock`` on ``workdir/.lock``, which the kernel releases when the holder
    ends, however it ends (a SIGKILLed run leaves no stale lock). On several hosts the
    process that writes (process 0) holds it. A filesystem without locks (some network
    filesystems) runs unlocked."""
    workdir = pathlib.Path(workdir)
    if workdir.exists() and not workdir.is_dir():
        raise VistasError(f"--workdir {workdir} is a file, not a directory; use a new directory")
    if jax.process_index() != 0:
        yield
        return
    created = not workdir.exists()
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        f = open(workdir / LOCK_FILE, "a+")  # noqa: SIM115  (held for the whole run)
    except OSError as e:
        raise VistasError(f"cannot use {workdir} as a run directory: {e.strerror or e}") from None
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise VistasError(f"{workdir} is in use by another vistas run ({holder}); wait for it "
                              "to end, or use another --workdir") from None
        except OSError as e:
            if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
                raise
            yield  # no locks on this filesystem
            return
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        f.flush()
        try:
            yield
        finally:
            if created and [p.name for p in workdir.iterdir()] == [LOCK_FILE]:
                (workdir / LOCK_FILE).unlink()  # a run that wrote nothing leaves nothing
                workdir.rmdir()
            fcntl.flock(f, fcntl.LOCK_UN)


def _restore(workdir: pathlib.Path, params: Any, step: int | None, key: str) -> tuple[Any, int]:
    checkpointer = ckpt_lib.Checkpointer(workdir / "checkpoints", read_only=True)
    with contextlib.closing(checkpointer):
        found = checkpointer.latest_step() if step is None else step
        if found is None:
            raise VistasError(f"{workdir / 'checkpoints'} holds no checkpoint to evaluate")
        if found not in checkpointer.all_steps():
            raise VistasError(f"{workdir / 'checkpoints'} has no checkpoint {found}; "
                              f"steps: {checkpointer.all_steps()}")
        params = jax.device_put(params, mesh_lib.replicated(mesh_lib.data_mesh()))
        return checkpointer.restore_params(found, params, key), found


def final_params(workdir: str | pathlib.Path, cfg: Config | None = None, step: int | None = None,
                 key: str = "params") -> tuple[experiment.Experiment, Any, int]:
    """Rebuilds the experiment of ``workdir`` (without its training split) and restores the
    parameters of a checkpoint (the latest by default; ``key="ema_params"``: the EMA). Only
    the parameters are read, so a checkpoint stays usable when the optimizer, and so the
    shape of its state, has changed since it was written."""
    workdir = pathlib.Path(workdir)
    cfg = load_config(workdir) if cfg is None else cfg
    exp = experiment.build(cfg, with_train=False)
    params, found = _restore(workdir, exp.params, step, key)
    return exp, params, found


def model_params(workdir: str | pathlib.Path, step: int | None = None, key: str = "params",
                 cfg: Config | None = None) -> tuple[Config, Any, Any, Any, int]:
    """``(config, graphdef, rest, params, step)`` of a run's checkpoint without its data: the
    number of classes comes from the class names the run recorded (a run that recorded
    none opens its evaluation split for it). ``cfg``: the run's config with options that
    change how the model computes, not its parameters (e.g. ``model.attention``)."""
    workdir = pathlib.Path(workdir)
    cfg = load_config(workdir) if cfg is None else cfg
    names = class_names(workdir)
    num_classes = len(names) if names is not None else experiment.num_classes_of(cfg)
    _, graphdef, params, rest = experiment.init_model(cfg, num_classes)
    params, found = _restore(workdir, params, step, key)
    return cfg, graphdef, rest, params, found


def restore_params(workdir: str | pathlib.Path, step: int | None = None
                   ) -> tuple[Config, Any, Any, Any, int]:
    """``(config, graphdef, rest, params, step)`` of a run's checkpoint (the latest by
    default); only the parameters are read and only the evaluation split is opened."""
    exp, params, found = final_params(workdir, step=step)
    return exp.cfg, exp.graphdef, exp.rest, params, found


__all__ = ["class_names", "check_same_run", "exclusive", "final_params", "model_params", "write_classes", "load_config", "restore_params", "write_config"]
