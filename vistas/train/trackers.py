"""Experiment trackers beside ``metrics.jsonl``: Weights & Biases and MLflow (docs/trackers.md).

``train.loggers`` names where a run's scalars go besides ``metrics.jsonl`` (always written):
``"tensorboard"`` (the default: event files in ``WORKDIR/tensorboard``), ``"wandb"`` and
``"mlflow"``. The trackers are optional extras (``pip install 'vistas[wandb]'``,
``'vistas[mlflow]'``); a run that names one whose package is missing stops before it starts
with one line naming the extra.

A tracker run is opened when the training session starts, on process 0 only: the run's
config is its parameters (W&B's ``config``, MLflow's params as ``section.key``), every row
of ``metrics.jsonl`` is logged at its step, and the session's end closes it (finished, or
failed when the session ends with an error). Its id is recorded in ``WORKDIR/trackers.json``
(written whole or not at all), so a resumed run continues the same tracker run.

Where the tracker run lives comes from each library's own environment variables:
W&B ``WANDB_MODE`` (``offline``: no network), ``WANDB_PROJECT`` (default ``vistas``),
``WANDB_ENTITY``, ``WANDB_DIR`` (default: the workdir); MLflow ``MLFLOW_TRACKING_URI``
(default: MLflow's) and ``MLFLOW_EXPERIMENT_NAME`` (default ``vistas``). A resumed run goes
back to the project, or tracking URI, that ``trackers.json`` recorded; one named differently
in the environment is refused, as the run id would mean nothing there.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import pathlib
import re
import time
from collections.abc import Sequence
from typing import Any, Protocol

from vistas.errors import ConfigError, VistasError
from vistas.files import atomic_write

LOGGERS = ("tensorboard", "wandb", "mlflow")
TRACKERS_FILE = "trackers.json"
# the module each tracker imports and the pip package that provides it
PACKAGES = {"wandb": ("wandb", "wandb"), "mlflow": ("mlflow", "mlflow-skinny")}
DEFAULT_PROJECT = "vistas"


def check(loggers: Sequence[str]) -> None:
    """Known names, each once (``train.loggers``); a one-line :class:`ConfigError` otherwise."""
    for name in loggers:
        if name not in LOGGERS:
            raise ConfigError(f"train.loggers: {name!r} is not known; use any of {', '.join(LOGGERS)}")
    if len(set(loggers)) != len(loggers):
        raise ConfigError(f"train.loggers={list(loggers)!r} names a logger twice")


def _import(name: str) -> Any:
    module, package = PACKAGES[name]
    try:
        return importlib.import_module(module)
    except ImportError as e:
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise VistasError(f"train.loggers includes {name!r} but the {package} package cannot be imported "
                          f"({why}); install it with: pip install 'vistas[{name}]'") from None


def require(loggers: Sequence[str]) -> None:
    """Imports the package of every tracker in ``loggers``: a missing one is one line naming
    the extra to install, before the run starts."""
    for name in loggers:
        if name in PACKAGES:
            _import(name)


class Tracker(Protocol):
    name: str
    record: dict[str, Any]  # what trackers.json keeps to continue this tracker run

    def log(self, step: int, scalars: dict[str, float]) -> None: ...

    def close(self, failed: bool) -> None: ...


def read_records(workdir: pathlib.Path) -> dict[str, dict[str, Any]]:
    """``trackers.json``: ``{tracker: {"run_id": ..., ...}}`` (empty when absent)."""
    path = workdir / TRACKERS_FILE
    if not path.exists():
        return {}
    try:
        records = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise VistasError(f"{path} is damaged ({str(e).splitlines()[0]}); delete it to start new "
                          "tracker runs") from None
    if not isinstance(records, dict) or not all(isinstance(v, dict) and "run_id" in v for v in records.values()):
        raise VistasError(f"{path} is not a vistas trackers file; delete it to start new tracker runs")
    return records


def start(loggers: Sequence[str], workdir: pathlib.Path, config: dict) -> list[Tracker]:
    """Opens (or, where ``trackers.json`` names one, continues) a tracker run for each
    tracker in ``loggers`` and records its id; ``config``: the run's config as a dict."""
    workdir = pathlib.Path(workdir)
    records = read_records(workdir)
    started: list[Tracker] = []
    try:
        for name in loggers:
            if name not in PACKAGES:
                continue
            opener = _WandbTracker if name == "wandb" else _MlflowTracker
            tracker = opener(workdir, config, records.get(name))
            started.append(tracker)
            if records.get(name) != tracker.record:
                records[name] = tracker.record
                atomic_write(workdir / TRACKERS_FILE, json.dumps(records, indent=2) + "\n")
    except BaseException:
        for tracker in started:  # the error on its way out is the one to report
            with contextlib.suppress(Exception):
                tracker.close(failed=True)
        raise
    return started


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _recorded(record: dict | None, key: str, env: str, now: str | None, what: str) -> str | None:
    """The value of ``key`` a resumed tracker run uses: the one recorded; a different one
    named by the environment variable ``env`` is refused."""
    if record is None or record.get(key) is None:
        return now
    if os.environ.get(env) and now != record[key]:
        raise VistasError(f"{TRACKERS_FILE} continues {what} run {record['run_id']} in {record[key]!r}, "
                          f"but {env}={now!r}; unset {env} to continue it, or delete the {what!r} entry "
                          f"of {TRACKERS_FILE} to start a new {what} run")
    return record[key]


# ----------------------------------------------------------------------------- W&B


class _WandbTracker:
    """A W&B run (``wandb.init``): the config as its config, each row with ``log(step=)``.

    W&B keeps the first value logged at a step: rows a killed run logged after its last
    checkpoint, logged again when it resumes, are the same values (resumption is exact)."""

    name = "wandb"

    def __init__(self, workdir: pathlib.Path, config: dict, record: dict | None):
        wandb = _import("wandb")
        project = _recorded(record, "project", "WANDB_PROJECT",
                            os.environ.get("WANDB_PROJECT") or DEFAULT_PROJECT, "wandb")
        entity = (record or {}).get("entity") or os.environ.get("WANDB_ENTITY") or None
        settings = wandb.Settings(console=os.environ.get("WANDB_CONSOLE", "off"))
        try:
            self.run = wandb.init(
                project=project, entity=entity, name=workdir.name, config=config,
                id=record["run_id"] if record else None, resume="allow" if record else None,
                dir=None if os.environ.get("WANDB_DIR") else str(workdir), settings=settings)
        except Exception as e:  # noqa: BLE001  (a service outside vistas: its failure is one line)
            raise VistasError(f"W&B could not start a run: {_first_line(e)}; log in with `wandb login`, "
                              "or set WANDB_MODE=offline and `wandb sync` later") from None
        self.record = {"run_id": self.run.id, "project": self.run.project or project,
                       "entity": self.run.entity or entity}

    def log(self, step: int, scalars: dict[str, float]) -> None:
        self.run.log(scalars, step=step)

    def close(self, failed: bool) -> None:
        try:
            self.run.finish(exit_code=1 if failed else 0)
        except Exception as e:  # noqa: BLE001
            raise VistasError(f"W&B could not finish run {self.run.id}: {_first_line(e)}") from None


# ----------------------------------------------------------------------------- MLflow

_MLFLOW_BATCH = 100  # params per log_batch call (MLflow's limit)
_MLFLOW_VALUE = 6000  # characters of a param value (MLflow's limit)


def mlflow_name(key: str) -> str:
    """A metric or param name MLflow accepts: characters other than letters, digits, ``_``,
    ``-``, ``.``, space, ``:`` and ``/`` become ``_`` (``eval/test[:1000]/top1`` ->
    ``eval/test_:1000_/top1``)."""
    return re.sub(r"[^\w.\- :/]", "_", key)


def flat_params(config: dict) -> dict[str, str]:
    """``{"section.key": value}`` with non-string values as JSON, as MLflow params."""
    return {f"{section}.{key}": (value if isinstance(value, str) else json.dumps(value))[:_MLFLOW_VALUE]
            for section, values in config.items() for key, value in values.items()}


def _absolute_uri(uri: str) -> str:
    """A local tracking URI with an absolute path (a resumed run may start elsewhere)."""
    if "://" not in uri and not uri.startswith("file:"):  # a bare path
        return pathlib.Path(uri).resolve().as_uri()
    if uri.startswith("file:") and not uri.startswith("file:/"):
        return pathlib.Path(uri[len("file:"):]).resolve().as_uri()
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str(pathlib.Path(uri[len("sqlite:///"):]).resolve())
    return uri


def _mlflow_hint(e: BaseException, uri: str) -> str:
    text = str(e)
    if isinstance(e, ImportError):
        return (f"MLflow's tracking store {uri} needs a package mlflow-skinny lacks ({_first_line(e)}); "
                "install the full `mlflow` for database stores, or set MLFLOW_TRACKING_URI to a tracking "
                "server (http://...) or a file: store")
    if "MLFLOW_ALLOW_FILE_STORE" in text:
        return (f"MLflow 3 refuses the file store {uri} unless MLFLOW_ALLOW_FILE_STORE=true is set; "
                "set it, or set MLFLOW_TRACKING_URI to a tracking server or database")
    return f"MLflow at {uri}: {_first_line(e)}"


class _MlflowTracker:
    """An MLflow run (through ``MlflowClient``, not the fluent API's global active run): the
    config as params, each row as metrics at its step. Params cannot change in MLflow: a
    resumed run adds the keys its run lacks and keeps the first value of the others (a
    non-identity key such as ``train.log_every`` changed on resumption); the workdir's
    ``config.json`` holds the latest."""

    name = "mlflow"

    def __init__(self, workdir: pathlib.Path, config: dict, record: dict | None):
        mlflow = _import("mlflow")
        from mlflow.entities import Param

        uri = _recorded(record, "tracking_uri", "MLFLOW_TRACKING_URI",
                        _absolute_uri(mlflow.get_tracking_uri()), "mlflow")
        try:
            self.client = mlflow.MlflowClient(tracking_uri=uri)
            if record is not None:
                try:
                    run = self.client.get_run(record["run_id"])
                except mlflow.exceptions.MlflowException as e:
                    raise VistasError(f"{TRACKERS_FILE} continues MLflow run {record['run_id']}, which {uri} "
                                      f"does not hold ({_first_line(e)}); delete the 'mlflow' entry of "
                                      f"{TRACKERS_FILE} to start a new MLflow run") from None
                self.client.update_run(run.info.run_id, status="RUNNING")
            else:
                name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_PROJECT
                experiment = self.client.get_experiment_by_name(name)
                experiment_id = (experiment.experiment_id if experiment is not None
                                 else self.client.create_experiment(name))
                run = self.client.create_run(experiment_id, run_name=workdir.name,
                                             tags={"vistas.workdir": str(workdir.resolve())})
            self.run_id = run.info.run_id
            have = run.data.params
            params = [Param(mlflow_name(k), v) for k, v in flat_params(config).items()
                      if mlflow_name(k) not in have]
            for i in range(0, len(params), _MLFLOW_BATCH):
                self.client.log_batch(self.run_id, params=params[i:i + _MLFLOW_BATCH])
        except VistasError:
            raise
        except Exception as e:  # noqa: BLE001  (a store outside vistas: its failure is one line)
            raise VistasError(_mlflow_hint(e, uri)) from None
        self.record = {"run_id": self.run_id, "experiment_id": run.info.experiment_id, "tracking_uri": uri}

    def log(self, step: int, scalars: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(mlflow_name(k), v, now, step) for k, v in scalars.items()]
        try:
            self.client.log_batch(self.run_id, metrics=metrics)
        except Exception as e:  # noqa: BLE001
            raise VistasError(f"MLflow could not log step {step} of run {self.run_id}: {_first_line(e)}; "
                              "the run resumes from its last checkpoint") from None

    def close(self, failed: bool) -> None:
        try:
            self.client.set_terminated(self.run_id, status="FAILED" if failed else "FINISHED")
        except Exception as e:  # noqa: BLE001
            raise VistasError(f"MLflow could not end run {self.run_id}: {_first_line(e)}") from None


__all__ = ["LOGGERS", "TRACKERS_FILE", "Tracker", "check", "flat_params", "mlflow_name", "read_records",
           "require", "start"]
