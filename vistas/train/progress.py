"""What a run shows and hears: a progress bar (or log lines) and stop signals."""

from __future__ import annotations

import signal
import sys
from typing import Any

import jax


class StopSignal:
    """Turns SIGTERM/SIGINT into a flag checked between steps. ``agreed(step)`` is the flag
    all processes agree on: on several hosts a signal reaches each at its own moment, so the
    flags are combined (any host stopping stops all) at the same step on every host."""

    def __init__(self):
        self.received: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not in the main thread
                pass
        return self

    def _handle(self, signum, frame):
        self.received = signum

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)

    def agreed(self) -> bool:
        """Whether any process received a signal; called at the same step on every process."""
        local = self.received is not None
        if jax.process_count() == 1:
            return local
        import numpy as np
        from jax.experimental import multihost_utils

        flags = multihost_utils.process_allgather(np.array([local], np.int32))
        return bool(np.any(flags))


class Progress:
    """A rich progress bar on a terminal; plain log lines otherwise."""

    def __init__(self, total: int, start: int, enabled: bool, quiet: bool = False):
        self.total = total
        self.quiet = quiet
        self.bar = None
        if enabled and not quiet and sys.stderr.isatty():
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TextColumn,
                TimeRemainingColumn,
            )
            from rich.progress import Progress as Bar

            self.bar = Bar(
                TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"), TimeRemainingColumn(), transient=False,
            )
            self.bar.start()
            self.task = self.bar.add_task("train", total=total, completed=start, info="")

    def update(self, step: int, info: str | None = None, *, log_line: bool = False) -> None:
        if self.bar is not None:
            if info is None:
                self.bar.update(self.task, completed=step)
            else:
                self.bar.update(self.task, completed=step, info=info)
        elif log_line and not self.quiet:
            print(f"step {step}/{self.total}  {info}", flush=True)

    def print(self, text: str) -> None:
        if self.quiet:
            return
        if self.bar is not None:
            self.bar.console.print(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


__all__ = ["Progress", "StopSignal"]
