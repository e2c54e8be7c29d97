"""Pretrained weights by name: ``hf-hub:ORG/NAME`` ids read through huggingface_hub's cache in
offline mode (no test needs the network). A local cache is built here in the layout the
hub's client keeps (``models--ORG--NAME/refs/REV``, ``snapshots/COMMIT/FILE``), holding a
tiny timm ViT with the ``config.json`` timm's uploads come with, and a big_vision file."""

import json

import jax
import numpy as np
import pytest
from conftest import requires_fashion_mnist
from flax import nnx

pytest.importorskip("huggingface_hub")

from safetensors.numpy import save_file  # noqa: E402

from vistas import cli  # noqa: E402
from vistas.errors import ConfigError, VistasError  # noqa: E402
from vistas.models import interop, vit  # noqa: E402
from vistas.models.interop import hub, timm  # noqa: E402

REPO = "vistas-test/tiny-vit"
COMMIT, OTHER = "a" * 40, "b" * 40


def tiny_vit(seed=0):
    """A random width-32, depth-2 class-token ViT for 16-px images, patch 4, 5 classes."""
    cfg = vit.ViTConfig(patch=4, width=32, depth=2, mlp_dim=64, num_heads=4, image_size=16, channels=3,
                        num_classes=5, pool="tok", gelu="exact")
    model = nnx.eval_shape(lambda: vit.VisionTransformer(cfg, rngs=nnx.Rngs(0)))
    rng = np.random.default_rng(seed)
    params = jax.tree.map(lambda s: rng.normal(0, 0.2, size=s.shape).astype(np.float32),
                          interop.model_params(model))
    return interop.assign(model, params)


def put(cache, files, commit, ref=None):
    """``files`` ({name: writer(path)}) as snapshot ``commit`` of REPO; ``ref`` names it."""
    root = cache / f"models--{REPO.replace('/', '--')}"
    snapshot = root / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    for name, write in files.items():
        write(snapshot / name)
    if ref:
        (root / "refs").mkdir(exist_ok=True)
        (root / "refs" / ref).write_text(commit)
    return snapshot


def timm_files(model, global_pool):
    """timm's upload of ``model``: bare weights and config.json (architecture, pooling,
    constructor arguments, input size), as ``push_to_hf_hub`` writes them."""
    sd, args = timm.to_timm(interop.model_params(model), model.cfg)

    def config(path):
        path.write_text(json.dumps({
            "architecture": "vit_tiny_test_patch4_16", "num_classes": 5, "num_features": 32,
            "global_pool": global_pool,
            "model_args": {k: args[k] for k in ("patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio")},
            "pretrained_cfg": {"input_size": [3, 16, 16], "mean": [0.5] * 3, "std": [0.5] * 3}}))

    # safetensors writes each array's memory as it lies: C order, as torch's would be
    weights = {k: np.ascontiguousarray(v) for k, v in sd.items()}
    return {"model.safetensors": lambda p: save_file(weights, str(p)), "config.json": config}


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An offline Hugging Face cache: REPO at ``main`` (a class-token model whose config.json
    says it averages) and at ``v1`` (the same weights, class-token pooling, and a big_vision
    file)."""
    cache = tmp_path / "hf"
    model = tiny_vit()
    put(cache, timm_files(model, "avg"), COMMIT, ref="main")
    put(cache, {**timm_files(model, "token"),
                "bv/tiny.npz": lambda p: (p.parent.mkdir(exist_ok=True),
                                          interop.save(p, interop.model_params(model), model.cfg, "big_vision"))},
        OTHER, ref="v1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def images(n=3):
    return np.random.default_rng(7).normal(size=(n, 16, 16, 3)).astype(np.float32)


@nnx.jit
def _logits(model, x):
    return model(x)[0]


def logits(model):
    return np.asarray(_logits(model, jax.numpy.asarray(images())))


def test_hub_ids_are_read_from_the_cache_offline_with_timms_config(cache):
    model = tiny_vit()
    # main: the config.json beside the weights says it averages (keeping the class token)
    ckpt = interop.read(f"hf-hub:{REPO}")
    assert ckpt.format == "timm" and ckpt.cfg.pool == "gap" and ckpt.cfg.reg_tokens == 1
    assert ckpt.path.endswith(f"snapshots/{COMMIT}/model.safetensors")
    snapshot = cache / f"models--{REPO.replace('/', '--')}" / "snapshots" / COMMIT
    averaged = interop.load_model(f"hf-hub:{REPO}")
    np.testing.assert_allclose(logits(averaged),
                               logits(interop.load_model(snapshot / "model.safetensors", global_pool="avg")))
    # v1: class-token pooling, the very function of the model the files were written from
    pooled = interop.load_model(f"hf-hub:{REPO}@v1")
    assert pooled.cfg.pool == "tok"
    np.testing.assert_allclose(logits(pooled), logits(model), rtol=1e-5, atol=1e-5)
    assert np.abs(logits(pooled) - logits(averaged)).max() > 1e-3
    # one file of a repository: a big_vision .npz (whose GELU big_vision takes for tanh), at a commit
    bv = interop.load_model(f"hf-hub:{REPO}@{OTHER}/bv/tiny.npz", gelu="exact")
    np.testing.assert_allclose(logits(bv), logits(model), rtol=1e-5, atol=1e-5)


def test_vistas_convert_reads_hub_ids(cache, tmp_path, capsys):
    assert cli.main(["convert", f"hf-hub:{REPO}@v1", str(tmp_path / "m.vistas.npz")]) == 0
    assert "(timm): vit-32x2/4" in capsys.readouterr().out
    np.testing.assert_allclose(logits(interop.load_model(tmp_path / "m.vistas.npz")), logits(tiny_vit()),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("source, message", [
    ("hf-hub:vistas-test/absent", r"hf-hub:vistas-test/absent: model.safetensors is not in the Hugging Face "
                                  r"cache \(.*\) and HF_HUB_OFFLINE=1 forbids downloading it"),
    (f"hf-hub:{REPO}@v2", r"is not in the Hugging Face cache"),
    (f"hf-hub:{REPO}/weights.bin", r"is not a Hugging Face Hub id; use hf-hub:ORG/NAME"),
    ("hf-hub:just-a-name", r"'hf-hub:just-a-name' is not a Hugging Face Hub id"),
])
def test_what_the_cache_lacks_or_a_malformed_id_is_one_line(cache, source, message, tmp_path, capsys):
    with pytest.raises((VistasError, ConfigError), match=message) as e:
        interop.read(source)
    assert "\n" not in str(e.value)
    assert cli.main(["convert", source, str(tmp_path / "o.npz")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vistas: error: ") and err.count("\n") == 1


def test_without_huggingface_hub_the_error_names_the_extra(cache, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # import fails
    with pytest.raises(VistasError, match=r"need the huggingface_hub package: pip install 'vistas\[hub\]'"):
        hub.resolve(f"hf-hub:{REPO}")


def test_a_fine_tuning_run_starts_from_the_hub_weights(cache):
    from vistas import experiment
    from vistas.train import finetune, initial

    upstream = finetune.checkpoint_config(f"hf-hub:{REPO}@v1")
    assert (upstream.model.name, upstream.model.width, upstream.model.depth) == ("vit-B/4", 32, 2)
    assert (upstream.model.pool, upstream.model.gelu, upstream.data.image_size) == ("tok", "exact", 16)
    assert upstream.train.init_resample == "timm"  # as timm changes resolution
    cfg = finetune.transfer_config(upstream, dataset="fashion_mnist", init_from=f"hf-hub:{REPO}@v1",
                                   resolution=24, resample="timm")
    assert cfg.train.init_from == f"hf-hub:{REPO}@v1"  # an id, not a path
    exp = experiment.build(cfg, with_train=False)
    start = initial.initial_params(cfg, exp.params)
    source = interop.model_params(tiny_vit())
    np.testing.assert_array_equal(start["encoder"]["block00"]["mlp"]["fc1"]["kernel"],
                                  source["encoder"]["block00"]["mlp"]["fc1"]["kernel"])
    assert start["pos_embedding"].shape == (1, 36, 32)  # resampled from 4x4 to 6x6 patches
    assert not np.any(start["head"]["kernel"]) and start["head"]["kernel"].shape == (32, 10)


@requires_fashion_mnist
def test_vistas_finetune_from_a_hub_id(cache, tmp_path, capsys):
    workdir = tmp_path / "ft"
    argv = ["finetune", "--from", f"hf-hub:{REPO}", "--dataset", "fashion_mnist", "--steps", "2",
            "--batch-size", "16", "--workdir", str(workdir), "--quiet", "--json", "--set",
            "data.num_train_examples=64", "data.eval_splits=['test[:32]']", "data.eval_batch_size=32"]
    assert cli.main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["step"] == 2 and np.isfinite(summary["eval/test[:32]/loss"]), summary
    saved = json.loads((workdir / "config.json").read_text())
    assert saved["train"]["init_from"] == f"hf-hub:{REPO}" and saved["model"]["pool"] == "gap"
    assert saved["model"]["reg_tokens"] == 1  # the class token timm does not pool
