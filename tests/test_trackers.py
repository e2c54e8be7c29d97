"""Tests for the experiment trackers (``train.loggers``, ``vistas.train.trackers``): W&B in
offline mode and MLflow's local file store, both optional (skipped without their package);
the one-line error of a tracker whose package is missing; today's default (TensorBoard)."""

import json
import struct
import sys

import pytest
from conftest import requires_fashion_mnist, smoke

from vistas import cli
from vistas import config as config_lib
from vistas.errors import ConfigError, VistasError
from vistas.train import loop, trackers
from vistas.train.metrics import MetricsWriter, read_metrics

pytestmark = pytest.mark.usefixtures("compilation_cache")

# 24 steps, a row every 4, stopped after 12 and resumed
RUN = ["train.duration=24", "train.log_every=4", "train.ckpt_every=8", "train.eval_every=24"]
TOP1 = "eval/test[:1000]/top1"


def test_default_loggers_are_tensorboard_only():
    assert config_lib.Config().train.loggers == ["tensorboard"]
    assert "train.loggers" in config_lib.NON_IDENTITY_KEYS  # resuming with other loggers is the same run


def test_loggers_from_the_shell_and_bad_names():
    cfg = config_lib.apply_overrides(config_lib.Config(), ["train.loggers=['tensorboard','wandb']"])
    assert cfg.train.loggers == ["tensorboard", "wandb"]
    cfg = config_lib.apply_overrides(config_lib.Config(), ["train.loggers=[mlflow]"])
    assert cfg.train.loggers == ["mlflow"]
    for bad, culprit in (("['tensorboard', 'comet']", "'comet'"), ("['wandb', 'wandb']", "twice")):
        with pytest.raises(ConfigError) as e:
            config_lib.apply_overrides(config_lib.Config(), [f"train.loggers={bad}"])
        assert "\n" not in str(e.value) and culprit in str(e.value) and "train.loggers" in str(e.value)


def test_writer_keeps_todays_files(tmp_path):
    w = MetricsWriter(tmp_path / "a", loggers=["tensorboard"], config={})
    w.write(1, {"train/loss": 1.0})
    w.close()
    assert (tmp_path / "a" / "tensorboard").is_dir() and not (tmp_path / "a" / trackers.TRACKERS_FILE).exists()
    (tmp_path / "b").mkdir()
    w = MetricsWriter(tmp_path / "b", loggers=[], config={})
    w.write(1, {"train/loss": 1.0})
    w.close()
    assert [p.name for p in (tmp_path / "b").iterdir()] == ["metrics.jsonl"]


def test_only_process_zero_opens_trackers(tmp_path, monkeypatch):
    """A writer that is not enabled (processes other than 0) imports and opens no tracker."""
    monkeypatch.setitem(sys.modules, "wandb", None)
    monkeypatch.setitem(sys.modules, "mlflow", None)
    w = MetricsWriter(tmp_path, enabled=False, loggers=["tensorboard", "wandb", "mlflow"], config={})
    w.write(1, {"train/loss": 1.0})
    w.close()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["wandb", "mlflow"])
def test_missing_package_is_one_line_naming_the_extra(tmp_path, monkeypatch, capsys, name):
    monkeypatch.setitem(sys.modules, name, None)  # `import name` raises ImportError
    workdir = tmp_path / "run"
    with pytest.raises(VistasError) as e:
        loop.train(smoke(*RUN, f"train.loggers=['tensorboard', '{name}']"), workdir, quiet=True)
    msg = str(e.value)
    assert "\n" not in msg and f"pip install 'vistas[{name}]'" in msg and repr(name) in msg
    assert not workdir.exists()  # refused before the run starts
    code = cli.main(["train", "--preset", "smoke", "--workdir", str(workdir), "--quiet",
                     "--set", f"train.loggers=['tensorboard','{name}']"])
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("vistas: error: ")
    assert f"vistas[{name}]" in lines[0] and "Traceback" not in out + err


def test_mlflow_names():
    assert trackers.mlflow_name("eval/test[:1000]/top1") == "eval/test_:1000_/top1"
    assert trackers.mlflow_name("train/loss") == "train/loss"
    params = trackers.flat_params({"data": {"eval_splits": ["test"], "path": None, "dataset": "x"}})
    assert params == {"data.eval_splits": '["test"]', "data.path": "null", "data.dataset": "x"}


def test_damaged_trackers_file_is_one_line(tmp_path):
    (tmp_path / trackers.TRACKERS_FILE).write_text("{not json")
    with pytest.raises(VistasError) as e:
        trackers.read_records(tmp_path)
    assert "\n" not in str(e.value) and trackers.TRACKERS_FILE in str(e.value)


# ----------------------------------------------------------------------------- MLflow


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    uri = f"file:{tmp_path}/mlruns"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 asks for it for file stores
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "vistas-test")
    return uri


def test_mlflow_resume_keeps_params_and_refuses_another_store(tmp_path, mlflow_store, monkeypatch):
    from mlflow import MlflowClient

    workdir = tmp_path / "w"
    workdir.mkdir()
    cfg = config_lib.Config().to_dict()
    (t,) = trackers.start(["tensorboard", "mlflow"], workdir, cfg)
    t.log(1, {"train/loss": 2.0})
    t.close(failed=False)
    run_id = trackers.read_records(workdir)["mlflow"]["run_id"]
    cfg["train"]["log_every"] = 7  # a non-identity key changed on resumption: MLflow keeps the first
    cfg["fewshot"]["new_key"] = 1  # a key the run lacks is added
    (t,) = trackers.start(["mlflow"], workdir, cfg)
    assert t.run_id == run_id
    t.close(failed=True)
    run = MlflowClient(mlflow_store).get_run(run_id)
    assert run.data.params["train.log_every"] == "50" and run.data.params["fewshot.new_key"] == "1"
    assert run.info.status == "FAILED"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"file:{tmp_path}/elsewhere")
    with pytest.raises(VistasError) as e:
        trackers.start(["mlflow"], workdir, cfg)
    assert "\n" not in str(e.value) and "MLFLOW_TRACKING_URI" in str(e.value) and run_id in str(e.value)


def test_mlflow_file_store_refused_is_one_line(tmp_path, mlflow_store, monkeypatch):
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE")
    with pytest.raises(VistasError) as e:
        trackers.start(["mlflow"], tmp_path, config_lib.Config().to_dict())
    assert "\n" not in str(e.value) and "MLFLOW_ALLOW_FILE_STORE=true" in str(e.value)
    assert not (tmp_path / trackers.TRACKERS_FILE).exists()


@requires_fashion_mnist
def test_mlflow_logs_metrics_and_params_and_a_resumed_run_continues(tmp_path, mlflow_store):
    from mlflow import MlflowClient

    workdir = tmp_path / "run"
    cfg = smoke(*RUN, "train.loggers=['tensorboard','mlflow']")
    assert loop.train(cfg, workdir, stop_after=12, quiet=True)["step"] == 12
    first = trackers.read_records(workdir)["mlflow"]["run_id"]
    client = MlflowClient(mlflow_store)
    assert client.get_run(first).info.status == "FINISHED"
    assert loop.train(cfg, workdir, quiet=True)["finished"]
    assert trackers.read_records(workdir)["mlflow"]["run_id"] == first
    run = client.get_run(first)
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    assert run.data.params["data.batch_size"] == "64" and run.data.params["train.duration"] == "24"
    assert run.data.params["model.name"] == "vit-mu/7"
    rows = [r for r in read_metrics(workdir / "metrics.jsonl") if "train/loss" in r]
    history = client.get_metric_history(first, "train/loss")
    assert [m.step for m in history] == [r["step"] for r in rows] == [4, 8, 12, 16, 20, 24]
    assert [m.value for m in history] == pytest.approx([r["train/loss"] for r in rows], rel=1e-12)
    (top1,) = client.get_metric_history(first, "eval/test_:1000_/top1")
    assert top1.step == 24 and top1.value == pytest.approx(read_metrics(workdir / "metrics.jsonl")[-1][TOP1])
    experiment = client.get_experiment_by_name("vistas-test")
    assert len(client.search_runs([experiment.experiment_id])) == 1  # one tracker run for both sessions
    assert (workdir / "tensorboard").is_dir()


# ----------------------------------------------------------------------------- W&B


def wandb_records(path):
    """The protobuf records of an offline W&B run file (``run-ID.wandb``): a 7-byte header,
    then LevelDB-log framing (32 KiB blocks; records of 7-byte headers and full, first,
    middle or last chunks)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, parts = 7, 32768, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind in (1, 2):
            parts = chunk
        elif kind in (3, 4):
            parts += chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(parts)
            yield record


def item_key(item):
    """The key of a history or config item: ``key``, or its ``nested_key`` path."""
    return item.key or "/".join(item.nested_key)


def wandb_offline_run(directory):
    """(run id, config, {step: {key: value}}) of one offline run folder."""
    (path,) = directory.glob("run-*.wandb")
    run_id, config, history = None, {}, {}
    for r in wandb_records(path):
        kind = r.WhichOneof("record_type")
        if kind == "run":
            run_id = r.run.run_id
            config = {item_key(i): json.loads(i.value_json) for i in r.run.config.update}
        elif kind == "history":
            items = {item_key(i): json.loads(i.value_json) for i in r.history.item}
            history.setdefault(r.history.step.num, {}).update(items)
    return run_id, config, history


@requires_fashion_mnist
def test_wandb_offline_logs_metrics_and_config_and_a_resumed_run_continues(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    for var, sub in (("WANDB_DIR", "wandb_dir"), ("WANDB_CONFIG_DIR", "wandb_config"),
                     ("WANDB_CACHE_DIR", "wandb_cache"), ("WANDB_DATA_DIR", "wandb_data")):
        (tmp_path / sub).mkdir()
        monkeypatch.setenv(var, str(tmp_path / sub))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    workdir = tmp_path / "run"
    cfg = smoke(*RUN, "train.loggers=['wandb']")
    loop.train(cfg, workdir, stop_after=12, quiet=True)
    record = trackers.read_records(workdir)["wandb"]
    assert record["project"] == "vistas"
    loop.train(cfg, workdir, quiet=True)
    assert trackers.read_records(workdir)["wandb"] == record
    assert not (workdir / "tensorboard").exists()  # not among the loggers
    sessions = sorted((tmp_path / "wandb_dir" / "wandb").glob("offline-run-*"))
    assert len(sessions) == 2
    rows = {}
    for r in read_metrics(workdir / "metrics.jsonl"):
        rows.setdefault(r["step"], {}).update(r)
    logged = {}
    for directory in sessions:
        run_id, config, history = wandb_offline_run(directory)
        assert run_id == record["run_id"]  # the resumed session continues the same W&B run
        assert config["data"]["batch_size"] == 64 and config["train"]["loggers"] == ["wandb"]
        assert config["model"]["name"] == "vit-mu/7"
        logged.update(history)
    assert sorted(s for s, h in logged.items() if "train/loss" in h) == [4, 8, 12, 16, 20, 24]
    for step, h in logged.items():
        assert h["train/loss"] == pytest.approx(rows[step]["train/loss"], rel=1e-12)
    assert logged[24][TOP1] == pytest.approx(rows[24][TOP1])
    monkeypatch.setenv("WANDB_PROJECT", "another")  # the recorded run id means nothing there
    with pytest.raises(VistasError) as e:
        trackers.start(["wandb"], workdir, cfg.to_dict())
    assert "\n" not in str(e.value) and "WANDB_PROJECT" in str(e.value) and record["run_id"] in str(e.value)
