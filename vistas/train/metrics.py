"""Metrics: JSON lines in ``metrics.jsonl``, TensorBoard event files, experiment trackers
(W&B, MLflow: ``vistas.train.trackers``), and PNG curves."""

from __future__ import annotations

import json
import math
import pathlib
import sys
from collections.abc import Sequence
from typing import Any

from vistas.errors import VistasError
from vistas.files import advice, atomic_write


def _plain(v: Any) -> Any:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return v
    return f if math.isfinite(f) else None


write_file = atomic_write  # whole or not at all; a failed write (a full disk) is one clear line


class MetricsWriter:
    """Appends ``{"step": ..., name: value}`` rows; mirrors scalars to TensorBoard and the
    experiment trackers.

    ``loggers`` (``train.loggers``; None: TensorBoard as ``tensorboard`` says, no tracker)
    names them; the trackers get ``config`` (the run's, as a dict) as their parameters. A
    writer that is not ``enabled`` (every process but 0) writes and opens nothing.
    """

    def __init__(self, workdir: pathlib.Path, *, enabled: bool = True, tensorboard: bool = True,
                 loggers: Sequence[str] | None = None, config: dict | None = None):
        self.path = workdir / "metrics.jsonl"
        self.enabled = enabled
        self._tb = None
        self.trackers: list = []
        if loggers is not None:
            tensorboard = "tensorboard" in loggers
            if enabled:
                from vistas.train import trackers

                self.trackers = trackers.start(loggers, workdir, config or {})
        if enabled and tensorboard:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(str(workdir / "tensorboard"))

    def truncate_after(self, step: int) -> None:
        """Drops rows logged after ``step`` (by a run that was killed and is now resumed)."""
        if not self.enabled or not self.path.exists():
            return
        rows = read_metrics(self.path)
        kept = [r for r in rows if r.get("step", 0) <= step]
        cut_short = not self.path.read_text().endswith("\n")  # the next row would join it
        if len(kept) != len(rows) or cut_short:
            atomic_write(self.path, "".join(json.dumps(r) + "\n" for r in kept))

    def write(self, step: int, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        row = {"step": int(step), **{k: _plain(v) for k, v in metrics.items()}}
        try:
            with open(self.path, "a") as f:
                f.write(json.dumps(row) + "\n")
        except OSError as e:  # a row cut short is dropped when the run resumes
            raise VistasError(f"could not write metrics of step {step} to {self.path}: "
                              f"{e.strerror or e}; {advice(e)}") from e
        scalars = {k: v for k, v in row.items() if k != "step" and isinstance(v, float)}
        if self._tb is not None:
            for k, v in scalars.items():
                self._tb.add_scalar(k, v, int(step))
        for tracker in self.trackers:
            if scalars:
                tracker.log(int(step), scalars)

    def close(self) -> None:
        """Closes TensorBoard and the trackers (a tracker run ends failed when an error is on
        its way out); every one is closed, then the first failure is raised."""
        failed = sys.exc_info()[1] is not None
        first: BaseException | None = None
        if self._tb is not None:
            try:
                self._tb.flush()
                self._tb.close()
            except Exception as e:  # noqa: BLE001  (the trackers are closed too)
                first = e
        trackers, self.trackers = self.trackers, []
        for tracker in trackers:
            try:
                tracker.close(failed)
            except Exception as e:  # noqa: BLE001
                first = first or e
        if first is not None:
            raise first


def read_metrics(path: pathlib.Path) -> list[dict]:
    rows = []
    if not path.exists():
        return rows
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut short by a kill
    return rows


def plot_curves(metrics_path: pathlib.Path, out_path: pathlib.Path) -> pathlib.Path | None:
    """Training loss and eval top-1 against steps, as one PNG."""
    rows = read_metrics(metrics_path)
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    series: dict[str, tuple[list, list]] = {}
    for r in rows:
        for k, v in r.items():
            if k != "step" and isinstance(v, (int, float)) and k.endswith(("loss", "top1", "prec@1")):
                xs, ys = series.setdefault(k, ([], []))
                xs.append(r["step"])
                ys.append(v)
    for k, (xs, ys) in sorted(series.items()):
        ax = ax_loss if k.endswith("loss") else ax_acc
        ax.plot(xs, ys, label=k, marker="o" if k.startswith("eval") else None, markersize=3)
    for ax, title in ((ax_loss, "loss"), (ax_acc, "top-1 accuracy")):
        ax.set_xlabel("step")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    ax_loss.set_yscale("log")
    fig.tight_layout()
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
    return out_path
