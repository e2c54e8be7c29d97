"""Fine-tuning transfer: the recipe, head replacement, position-embedding resampling, and
`vistas finetune` end to end (recorded upstream, fresh head at the start, exact resume)."""

import json

import jax
import numpy as np
import pytest
from conftest import requires_fashion_mnist, smoke

from vistas import cli
from vistas.errors import ConfigError
from vistas.models import adapt
from vistas.train import finetune, loop
from vistas.train.metrics import read_metrics


@pytest.fixture(scope="module")
def upstream(transfer_upstream):
    return transfer_upstream


def test_transfer_recipe():
    cfg = finetune.transfer_config(smoke(), dataset="lfw_faces", resolution=21, duration=40,
                                   lr=0.03, init_from="runs/up", sam_rho=0.05)
    assert cfg.model == smoke().model
    assert (cfg.data.dataset, cfg.data.image_size, cfg.data.channels) == ("lfw_faces", 21, 1)
    o = cfg.optim
    assert (o.name, o.momentum, o.lr, o.wd, o.grad_clip_norm, o.sam_rho) == ("sgd", 0.9, 0.03, 0.0, 1.0, 0.05)
    assert (cfg.schedule.warmup, cfg.schedule.decay) == ("5%", "cosine")
    assert cfg.train.init_from.endswith("runs/up") and cfg.train.init_from.startswith("/")
    assert cfg.train.loss == "softmax_xent"
    multi = finetune.transfer_config(smoke(), dataset="fashion_mnist_pairs", init_from="x",
                                     decay="linear", overrides=["optim.lr=0.1"])
    assert multi.train.loss == "sigmoid_xent" and multi.schedule.decay == "linear"
    assert multi.optim.lr == 0.1
    with pytest.raises(ConfigError, match="decay='rsqrt'.*cosine, linear"):
        finetune.transfer_config(smoke(), dataset="lfw_faces", init_from="x", decay="rsqrt")


@requires_fashion_mnist
def test_init_params_replaces_the_head_and_resamples_the_position_embedding(upstream):
    _, _, _, up, step = finetune.restore_params(upstream)
    assert step == 150
    up = jax.device_get(up)
    cfg = finetune.transfer_config(loop.load_config(upstream), dataset="lfw_faces",
                                   resolution=21, init_from=upstream)
    target = loop.build(cfg).params
    got = finetune.init_params(cfg, target)
    flat_up, flat_got, flat_target = adapt.flatten(up), adapt.flatten(got), adapt.flatten(target)
    assert set(flat_got) == set(flat_target)
    # a fresh, zero-initialised head for the 2 classes of the target
    assert flat_got["head/kernel"].shape == (64, 2) and not np.asarray(flat_got["head/kernel"]).any()
    # the 4x4 position-embedding grid of 28 px resampled to the 3x3 grid of 21 px
    assert flat_up["pos_embedding"].shape == (1, 16, 64) and flat_got["pos_embedding"].shape == (1, 9, 64)
    np.testing.assert_allclose(flat_got["pos_embedding"],
                               adapt.resample_posemb(flat_up["pos_embedding"], (3, 3)), rtol=1e-6)
    # everything else is the upstream's
    for key, value in flat_got.items():
        if not key.startswith("head/") and key != "pos_embedding":
            np.testing.assert_array_equal(value, flat_up[key], err_msg=key)
    # the head is replaced even when the class count is the same (10 -> 10)
    same = finetune.transfer_config(loop.load_config(upstream), dataset="optdigits",
                                    init_from=upstream)
    head = finetune.init_params(same, loop.build(same).params)["head"]
    assert not np.asarray(head["kernel"]).any() and np.asarray(up["head"]["kernel"]).any()
    # a different architecture is a clear error naming the run and the parameter
    other = finetune.transfer_config(loop.load_config(upstream), dataset="lfw_faces",
                                     init_from=upstream, overrides=["model.width=32"])
    with pytest.raises(ConfigError, match="train.init_from=.*has shape"):
        finetune.init_params(other, loop.build(other).params)


FT = ["--dataset", "lfw_faces", "--resolution", "21", "--steps", "8", "--batch-size", "32",
      "--lr", "0.03", "--set", "data.eval_batch_size=40", "train.log_every=1", "train.ckpt_every=4"]


@requires_fashion_mnist
@pytest.mark.slow
def test_finetune_cli_runs_records_its_upstream_and_resumes_exactly(upstream, tmp_path, capsys):
    whole = tmp_path / "whole"
    assert cli.main(["finetune", "--from", str(upstream), "--workdir", str(whole), *FT]) == 0
    out = capsys.readouterr().out
    assert "fine-tuning finished: step 8/8" in out and "eval/test/top1" in out
    saved = json.loads((whole / "config.json").read_text())
    assert saved["train"]["init_from"] == str(upstream.absolute())
    assert saved["data"]["image_size"] == 21 and saved["optim"]["name"] == "sgd"
    losses = [r["train/loss"] for r in read_metrics(whole / "metrics.jsonl") if "train/loss" in r]
    assert losses[0] == pytest.approx(np.log(2), rel=1e-4)  # zero head: uniform over 2 classes
    # interrupted after 3 steps, then the same command: resumes from its own checkpoint
    split = tmp_path / "split"
    cfg = finetune.transfer_config(loop.load_config(upstream), dataset="lfw_faces", resolution=21,
                                   duration=8, batch_size=32, lr=0.03, init_from=upstream,
                                   overrides=FT[-3:])
    first = loop.train(cfg, split, stop_after=3, quiet=True)
    assert first["step"] == 3 and first["interrupted"]
    assert cli.main(["finetune", "--from", str(upstream), "--workdir", str(split), *FT]) == 0
    assert "resuming at step 3" in capsys.readouterr().out
    a = jax.device_get(finetune.restore_params(whole)[3])
    b = jax.device_get(finetune.restore_params(split)[3])
    for (path, x), (_, y) in zip(jax.tree_util.tree_leaves_with_path(a),
                                 jax.tree_util.tree_leaves_with_path(b), strict=True):
        np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(path))


NFNET = ["model.name=nfnet-F0", "model.width=None", "model.depth=None", "model.mlp_dim=None",
         "model.num_heads=None", "model.widths=[16, 16, 32, 32]", "model.group_width=8",
         "model.stem_widths=[4, 8, 8]", "model.depths=[1, 1, 1, 1]",
         "data.eval_splits=['test[:200]']", "data.eval_batch_size=200"]


def write_run(workdir, cfg, params, step=1):
    """A run folder as training leaves it (config.json, a checkpoint holding the parameters)."""
    from vistas import checkpoint as ckpt_lib

    workdir.mkdir(parents=True)
    (workdir / "config.json").write_text(cfg.to_json())
    checkpointer = ckpt_lib.Checkpointer(workdir / "checkpoints")
    checkpointer.save(step, {"params": params}, {})
    checkpointer.close()


@requires_fashion_mnist
@pytest.mark.slow
def test_convnets_transfer_without_position_embeddings(tmp_path):
    from vistas.evaluate import fewshot

    upstream_cfg = smoke(*NFNET)
    params = jax.tree.map(lambda x: x + 0.01, loop.build(upstream_cfg).params)  # not an init
    write_run(tmp_path / "up", upstream_cfg, params)
    cfg = finetune.transfer_config(upstream_cfg, dataset="lfw_faces", resolution=21,
                                   init_from=tmp_path / "up")
    target = loop.build(cfg).params
    got = adapt.flatten(finetune.init_params(cfg, target))
    flat_up = adapt.flatten(jax.device_get(params))
    assert got["head/kernel"].shape[-1] == 2 and not np.asarray(got["head/kernel"]).any()
    body = [k for k in got if not k.startswith("head/")]
    assert len(body) > 10 and set(body) == {k for k in flat_up if not k.startswith("head/")}
    for key in body:
        np.testing.assert_array_equal(got[key], flat_up[key], err_msg=key)
    report = fewshot.evaluate_workdir(tmp_path / "up", datasets=["lfw_faces"], shots=[2], seeds=2)
    assert report["step"] == 1 and len(report["results"]["lfw_faces"]["2"]["accuracy"]) == 2


def test_the_target_may_be_a_dataset_read_from_a_path(tmp_path):
    cfg = finetune.transfer_config(smoke(), dataset="folder", data_path=tmp_path / "pets", init_from="x")
    assert (cfg.data.dataset, cfg.data.path) == ("folder", str(tmp_path / "pets"))
    assert cfg.train.loss == "softmax_xent"
    with pytest.raises(ConfigError, match=r"dataset 'npz' is read from a path; give it \(--data-path PATH\)"):
        finetune.transfer_config(smoke(), dataset="npz", init_from="x")


@pytest.mark.parametrize("argv, workdir", [
    (["--from", "runs/up/", "--dataset", "mnist_5k"], "runs/up-ft-mnist_5k"),
    (["--from", "w/vit_b16.safetensors", "--dataset", "folder", "--data-path", "data/pets/"], "w/vit_b16-ft-pets"),
    (["--from", "hf-hub:timm/vit_tiny@v2/m.npz", "--dataset", "npz", "--data-path", "x/d.npz"], "vit_tiny-ft-d"),
])
def test_the_default_workdir_names_the_upstream_and_the_target(argv, workdir, monkeypatch, tmp_path):
    seen = {}

    def fake(upstream, workdir, **options):
        seen["workdir"] = workdir
        return {"finished": True, "step": 0, "total_steps": 0, "workdir": workdir}

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "up").mkdir(parents=True)
    monkeypatch.setattr(finetune, "finetune", fake)
    assert cli.main(["finetune", *argv, "--quiet"]) == 0
    assert seen["workdir"] == workdir
