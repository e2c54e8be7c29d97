"""Checkpoints with orbax: atomic, async, keep-last-K plus every M-th.

A checkpoint holds two items: ``state`` (parameters, optimizer state, step, RNG; any
pytree of arrays) and ``data`` (the input iterator's JSON state), so a resumed run sees
exactly the batches the interrupted one would have seen. Orbax writes each checkpoint in
a temporary directory and renames it when complete, so a kill or a full disk mid-write
never leaves something that is taken for a checkpoint; the previous one stays loadable.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import pathlib
import re
import shutil
from collections.abc import Iterator
from typing import Any

import jax
import orbax.checkpoint as ocp

from vistas.errors import VistasError
from vistas.files import advice

# What a failed write raises: OSError from Python, ValueError/RuntimeError carrying the
# operating system's error code from TensorStore (e.g. 28: no space left, 27: file too large).
WRITE_ERRORS = (OSError, ValueError, RuntimeError)


def write_failure(e: BaseException) -> str:
    """The short reason of a failed write: the OS error's text when there is one."""
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    m = re.search(r"os_error_code='?(\d+)", str(e))
    if m:
        return os.strerror(int(m.group(1)))
    return str(e).splitlines()[0][:200] if str(e) else type(e).__name__


@contextlib.contextmanager
def _library_stderr() -> Iterator[None]:
    """What TensorStore's callbacks print on ``sys.stderr`` while a read fails (dozens of
    "Event loop is closed" tracebacks) goes to the ``orbax`` logger instead: the reason of
    the failure is reported as one line."""
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):
            yield
    finally:
        if captured.getvalue():
            logging.getLogger("orbax").warning("output of a checkpoint read:\n%s", captured.getvalue())


class Checkpointer:
    """Saves and restores ``(state, data_state)`` under ``directory/<step>``."""

    def __init__(self, directory: str | pathlib.Path, *, keep: int = 2, keep_every: int | None = None,
                 async_save: bool = True, read_only: bool = False):
        self.directory = pathlib.Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            keep_period=keep_every,
            create=not read_only,
            read_only=read_only,
            cleanup_tmp_directories=not read_only,
            enable_async_checkpointing=async_save,
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options,
                                              item_names=("state", "data"))
        self._writing: int | None = None  # the step of an asynchronous write not yet confirmed

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def save(self, step: int, state: Any, data_state: dict | None = None) -> None:
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=ocp.args.JsonSave(data_state or {}),
        )
        self.wait()  # the previous write's failure is reported as its own
        try:
            self._manager.save(step, args=args, force=True)
        except WRITE_ERRORS as e:
            raise self._failed(step, e) from e
        self._writing = step

    def _failed(self, step: int | None, e: BaseException) -> VistasError:
        kept = self._manager.latest_step()
        kept_text = f"checkpoint {kept} is kept" if kept is not None and kept != step else "no checkpoint is kept"
        return VistasError(f"could not write checkpoint {step} in {self.directory}: "
                           f"{write_failure(e)}; {kept_text} ({advice(e)})")

    def restore(self, step: int | None, abstract_state: Any) -> tuple[Any, dict]:
        """Restores ``step`` (the latest if None) into the shapes/shardings of ``abstract_state``."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise VistasError(f"no checkpoint in {self.directory}")
        target = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
        args = ocp.args.Composite(state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore())
        restored = self._read(step, target, args)
        return restored.state, dict(restored.data or {})

    def restore_params(self, step: int | None, abstract_params: Any, key: str = "params") -> Any:
        """Restores only ``state[key]`` (the parameters) into the shapes/shardings of
        ``abstract_params``, whatever optimizer state the checkpoint also holds."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise VistasError(f"no checkpoint in {self.directory}")
        target = {key: jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_params)}
        restore = ocp.args.PyTreeRestore(
            item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
            partial_restore=True)
        restored = self._read(step, target, ocp.args.Composite(state=restore))
        if any(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(restored.state[key])):
            # a partial restore leaves what the checkpoint lacks unfilled
            raise VistasError(f"checkpoint {step} in {self.directory} is of another model or config: "
                              f"{self._mismatch(step, target)}")
        return restored.state[key]

    def _read(self, step: int, target: Any, args: Any) -> Any:
        """Restores ``args``; a checkpoint of another model or a damaged one is one line."""
        with _library_stderr():
            return self._read_or_explain(step, target, args)

    def _read_or_explain(self, step: int, target: Any, args: Any) -> Any:
        try:
            return self._manager.restore(step, args=args)
        except Exception as e:  # orbax and TensorStore raise many kinds
            where = f"checkpoint {step} in {self.directory}"
            mismatch = self._mismatch(step, target)
            if mismatch:
                raise VistasError(f"{where} is of another model or config: {mismatch}") from None
            earlier = [s for s in self.all_steps() if s < step]
            hint = (f"move {self.directory / str(step)} away to use checkpoint {earlier[-1]}"
                    if earlier else "no earlier checkpoint exists")
            reason = write_failure(e).split(" See full")[0][:160]
            raise VistasError(f"{where} cannot be read, it is damaged or incomplete "
                              f"({reason}); {hint}") from None

    def _mismatch(self, step: int, target: Any) -> str:
        """Which arrays of ``target`` the checkpoint lacks, has in addition, or holds with
        another shape ('' when its layout matches or cannot be read)."""
        try:
            meta = ocp.StandardCheckpointer().metadata(self.directory / str(step) / "state")
            saved_tree = meta.item_metadata.tree
        except Exception:
            return ""
        def shapes(tree):  # "params/head/kernel" -> shape (named tuples are saved as dicts)
            return {"/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in p):
                    tuple(getattr(x, "shape", ())) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}
        want, saved = shapes(target), shapes(saved_tree)
        saved = {k: v for k, v in saved.items() if k.split("/")[0] in target}  # the items restored
        parts = []
        for label, keys in (("missing from the checkpoint", sorted(want.keys() - saved.keys())),
                            ("not in this model", sorted(saved.keys() - want.keys()))):
            if keys:
                parts.append(f"{label}: {', '.join(keys[:3])}" + (f" (+{len(keys) - 3} more)" if len(keys) > 3 else ""))
        differ = [k for k in sorted(want.keys() & saved.keys()) if want[k] != saved[k]]
        if differ:
            parts.append("shapes differ: " + ", ".join(f"{k} {saved[k]} saved, {want[k]} wanted" for k in differ[:3])
                         + (f" (+{len(differ) - 3} more)" if len(differ) > 3 else ""))
        return "; ".join(parts)

    def wait(self) -> None:
        """Blocks until pending asynchronous writes are complete and committed."""
        step, self._writing = self._writing, None
        try:
            self._manager.wait_until_finished()
        except WRITE_ERRORS as e:
            raise self._failed(step, e) from e

    def close(self) -> None:
        self.wait()
        with _library_stderr():
            self._manager.close()


def copy_step(src_dir: str | pathlib.Path, step: int, dst_dir: str | pathlib.Path) -> pathlib.Path:
    """Copies the committed checkpoint ``step`` of ``src_dir`` into ``dst_dir`` (branching a run).

    The source is only read. The copy is written under a temporary name and renamed when
    complete, so ``dst_dir`` never holds a partial checkpoint. Returns ``dst_dir/<step>``.
    """
    src_dir, dst_dir = pathlib.Path(src_dir).absolute(), pathlib.Path(dst_dir).absolute()
    # orbax renames a checkpoint to its bare step number only once it is complete
    steps = [int(p.name) for p in src_dir.iterdir() if p.is_dir() and p.name.isdigit()] \
        if src_dir.is_dir() else []
    if step not in steps:
        have = ", ".join(map(str, sorted(steps))) or "none"
        raise VistasError(
            f"{src_dir} holds no checkpoint of step {step} (it has: {have}); train the source "
            "run with train.keep_every=M so that every M-th step is kept for branching"
        )
    target = dst_dir / str(step)
    if target.exists():
        raise VistasError(f"{target} already exists; branch into a new directory")
    dst_dir.mkdir(parents=True, exist_ok=True)
    partial = dst_dir / f".{step}.copying"
    if partial.exists():
        shutil.rmtree(partial)
    shutil.copytree(src_dir / str(step), partial)
    partial.rename(target)
    return target
