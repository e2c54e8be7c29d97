"""Checkpoints with orbax: atomic, async, keep-last-K plus every M-th.

A checkpoint holds two items: ``state`` (parameters, optimizer state, step, RNG; any
pytree of arrays) and ``data`` (the input iterator's JSON state), so a resumed run sees
exactly the batches the interrupted one would have seen. Orbax writes each checkpoint in
a temporary directory and renames it when complete, so a kill or a full disk mid-write
never leaves something that is taken for a checkpoint; the previous one stays loadable.
"""

from __future__ import annotations

import pathlib
from typing import Any

import jax
import orbax.checkpoint as ocp

from vistas.errors import VistasError


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

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def save(self, step: int, state: Any, data_state: dict | None = None) -> None:
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=ocp.args.JsonSave(data_state or {}),
        )
        try:
            self._manager.save(step, args=args, force=True)
        except OSError as e:
            raise VistasError(
                f"could not write checkpoint {step} in {self.directory}: {e.strerror or e}; "
                f"the previous checkpoint is kept"
            ) from e

    def restore(self, step: int | None, abstract_state: Any) -> tuple[Any, dict]:
        """Restores ``step`` (the latest if None) into the shapes/shardings of ``abstract_state``."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise VistasError(f"no checkpoint in {self.directory}")
        target = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(target),
                data=ocp.args.JsonRestore(),
            ),
        )
        return restored.state, dict(restored.data or {})

    def wait(self) -> None:
        """Blocks until pending asynchronous writes are complete and committed."""
        try:
            self._manager.wait_until_finished()
        except OSError as e:
            raise VistasError(
                f"could not finish writing a checkpoint in {self.directory}: {e.strerror or e}; "
                f"the previous checkpoint is kept"
            ) from e

    def close(self) -> None:
        self.wait()
        self._manager.close()
