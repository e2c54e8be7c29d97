"""The results table of a sweep: one row per member with its compute accounting.

Columns (``results.csv`` and ``results.jsonl`` in the sweep folder):

- ``member``, ``model``, ``data_size`` (examples, or ``full``), ``budget`` (steps),
  ``branch_step`` / ``cooldown_steps`` (cooldown branches), ``status`` (done, failed,
  running, partial, pending) and ``failure`` (the error of a failed member);
- ``params``; ``flops_per_step`` and ``flops_source`` (``cost_analysis``: XLA's count for
  the compiled train step; ``analytic``: the ViT matmul count, ``vistas.systems.flops``),
  ``analytic_flops_per_step``; ``steps``, ``total_flops`` (= flops_per_step x steps: a
  branch counts the steps of its source up to the branch point, as the run it stands for
  would have), ``examples_seen`` (steps x batch), ``epochs``;
- ``wall_s`` (the member's own sessions plus, for a branch, its source's wall time x S /
  source steps), ``devices``, ``device_hours`` (wall_s x devices / 3600);
- ``eval_split``, ``eval_error`` (1 - top-1, or 1 - precision@1), ``eval_loss`` on the
  first held-out split, and ``fewshot_<dataset>_<k>shot_error`` when the runs did few-shot
  evaluation (``fewshot.datasets``);
- ``lr``: the peak learning rate (``optim.lr``), so that a sweep whose models vary it can
  report the best one per budget (``vistas fit --allocation``).
"""

from __future__ import annotations

import csv
import io
import json
import pathlib
from typing import Any

from vistas.errors import VistasError
from vistas.files import atomic_write
from vistas.scaling import folder
from vistas.scaling.spec import Member

COLUMNS = [
    "member", "model", "data_size", "budget", "branch_step", "cooldown_steps", "status", "failure",
    "params", "flops_per_step", "flops_source", "analytic_flops_per_step", "steps", "total_flops",
    "examples_seen", "epochs", "wall_s", "devices", "device_hours", "eval_split", "eval_error",
    "eval_loss", "lr",
]
NUMERIC = [
    "budget", "branch_step", "cooldown_steps", "params", "flops_per_step",
    "analytic_flops_per_step", "steps", "total_flops", "examples_seen", "epochs", "wall_s", "devices",
    "device_hours", "eval_error", "eval_loss", "lr",
]


def _last_metrics(workdir: pathlib.Path) -> dict[str, Any]:
    """The latest value of every metric in ``metrics.jsonl``."""
    from vistas.train.metrics import read_metrics

    latest: dict[str, Any] = {}
    for row in read_metrics(workdir / "metrics.jsonl"):
        latest.update({k: v for k, v in row.items() if v is not None})
    return latest


def member_row(out: pathlib.Path, member: Member, source_steps: int | None) -> dict[str, Any]:
    status, detail = folder.member_status(out, member)
    row: dict[str, Any] = dict.fromkeys(COLUMNS)
    row.update(member=member.id, model=member.model,
               data_size="full" if member.data_size is None else member.data_size,
               budget=member.budget, branch_step=member.branch_step,
               cooldown_steps=member.cooldown_steps, status=status,
               failure=detail if status == "failed" else None)
    if status != "done":
        return row
    wd = out / member.id
    summary = folder.read_json(wd / "summary.json")
    acc = folder.read_json(wd / folder.ACCOUNTING)
    cfg = folder.read_json(wd / "config.json")
    steps = int(summary["total_steps"])
    batch = int(cfg["data"]["batch_size"])
    wall = float(acc.get("wall_s", 0.0))
    if member.branch_step and source_steps:
        src = folder.read_json(out / member.group / "source" / folder.ACCOUNTING)
        wall += float(src.get("wall_s", 0.0)) * member.branch_step / source_steps
    devices = int(acc.get("devices", 1))
    metrics = _last_metrics(wd)
    row.update(params=acc.get("params"), flops_per_step=acc.get("flops_per_step"),
               flops_source=acc.get("flops_source"),
               analytic_flops_per_step=acc.get("analytic_flops_per_step"), steps=steps,
               examples_seen=steps * batch, epochs=metrics.get("train/epoch"), wall_s=wall,
               devices=devices, device_hours=wall * devices / 3600, lr=cfg["optim"].get("lr"))
    if row["flops_per_step"] is not None:
        row["total_flops"] = float(row["flops_per_step"]) * steps
    split = cfg["data"]["eval_splits"][0] if cfg["data"]["eval_splits"] else None
    if split is not None:
        top1 = summary.get(f"eval/{split}/top1", summary.get(f"eval/{split}/prec@1"))
        row.update(eval_split=split, eval_loss=summary.get(f"eval/{split}/loss"),
                   eval_error=None if top1 is None else 1.0 - float(top1))
    for key, value in sorted(metrics.items()):
        parts = key.split("/")
        if len(parts) == 3 and parts[0] == "fewshot" and parts[2].endswith("shot"):
            row[f"fewshot_{parts[1]}_{parts[2]}_error"] = 1.0 - float(value)
    return row


def collect(out: str | pathlib.Path, *, write: bool = True) -> list[dict[str, Any]]:
    """The results table of the sweep in ``out``; written as CSV and JSON lines."""
    out = pathlib.Path(out)
    spec = folder.load_out(out)
    rows = [member_row(out, m, g.source_steps) for g in spec.groups() for m in g.members]
    if write:
        columns = COLUMNS + sorted({k for r in rows for k in r} - set(COLUMNS))
        with open(out / "results.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=columns)
            w.writeheader()
            for r in rows:
                w.writerow({k: "" if r.get(k) is None else r[k] for k in columns})
        atomic_write(out / "results.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    return rows


def _number(value: Any, column: str, where: str) -> float | None:
    if value is None or value == "":
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise VistasError(f"{where}: column {column!r} holds {value!r}, not a number") from None


def load(path: str | pathlib.Path) -> list[dict[str, Any]]:
    """Rows of a results table: ``results.csv``, ``results.jsonl`` or a sweep folder."""
    path = pathlib.Path(path)
    if path.is_dir():
        if not (path / "sweep.json").exists():
            raise VistasError(f"{path} is not a sweep folder (no sweep.json) nor a results file")
        return collect(path, write=False)
    if not path.is_file():
        raise VistasError(f"results file {path} does not exist")
    if path.suffix not in (".csv", ".jsonl", ".json"):
        raise VistasError(f"results file {path} must be .csv or .jsonl (or a sweep folder)")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise VistasError(f"cannot read results file {path}: {e.strerror or e}") from None
    try:
        text = data.decode("utf-8-sig")  # a spreadsheet's byte-order mark is dropped
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise VistasError(f"{path} is not UTF-8 text (byte 0x{data[e.start]:02x} on line {line}); "
                          "save it as UTF-8") from None
    if path.suffix == ".csv":
        try:
            rows = list(csv.DictReader(io.StringIO(text, newline="")))
        except csv.Error as e:
            raise VistasError(f"{path} is not a readable CSV file ({e})") from None
        for i, row in enumerate(rows, 1):
            if None in row:  # csv.DictReader's key for fields past the header's
                raise VistasError(f"{path} row {i} has more fields than the header's "
                                  f"{len(row) - 1}; quote values that hold commas")
    else:
        rows = []
        for i, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                raise VistasError(f"{path}:{i} is not a JSON object per line") from None
            if not isinstance(row, dict):
                raise VistasError(f"{path}:{i} is not a JSON object")
            rows.append(row)
    if not rows:
        raise VistasError(f"results file {path} holds no rows")
    for i, row in enumerate(rows, 1):
        for col in NUMERIC + [k for k in row if k.startswith("fewshot_")]:
            if col in row:
                row[col] = _number(row[col], col, f"{path} row {i}")
        size = row.get("data_size")
        if isinstance(size, str) and size.isdigit():
            row["data_size"] = int(size)
        row.setdefault("status", "done")
    return rows


__all__ = ["COLUMNS", "collect", "load", "member_row"]
