"""Tests for ``vistas export`` (``vistas.export``): a StableHLO function with a symbolic batch
size that reproduces vistas' logits at any batch size, for every family, self-contained
(served by JAX alone); timm safetensors of a ViT; one-line errors."""

import json
import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import cli_env, smoke
from flax import nnx

from vistas import checkpoint as ckpt_lib
from vistas import cli, experiment, runs
from vistas import export as export_lib
from vistas.errors import ConfigError, VistasError

CONVNET = ["model.width=None", "model.depth=None", "model.mlp_dim=None", "model.num_heads=None",
           "model.depths=[1, 1, 1, 1]"]
FAMILIES = {
    "vit": [],
    "nfnet": ["model.name=nfnet-F0", *CONVNET, "model.widths=[16, 16, 32, 32]", "model.group_width=8",
              "model.stem_widths=[4, 8, 8]"],
    "bit": ["model.name=bit-R50x1", *CONVNET, "model.widths=[8, 16, 16, 32]"],
}
CLASSES = [f"class{i}" for i in range(10)]


def write_run(workdir, cfg, ema=False):
    """A run folder as training leaves it (config, class names, a checkpoint at step 3 whose
    parameters are not an initialisation; with ``ema``, EMA parameters that differ)."""
    _, _, params, _ = experiment.init_model(cfg, len(CLASSES))
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda x: np.asarray(x) + 0.02 * rng.standard_normal(x.shape).astype(x.dtype), params)
    runs.write_config(workdir, cfg)
    runs.write_classes(workdir, CLASSES)
    state = {"params": params}
    if ema:
        state["ema_params"] = jax.tree.map(lambda x: 0.5 * x, params)
    checkpointer = ckpt_lib.Checkpointer(workdir / "checkpoints")
    checkpointer.save(3, state, {})
    checkpointer.close()
    return workdir


@pytest.fixture(scope="module")
def run_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("export_runs")
    return {name: write_run(root / name, smoke(*sets, "train.ema_decay=0.99"), ema=True)
            for name, sets in FAMILIES.items()}


def images(b, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, (b, 28, 28, 1)).astype(np.float32)


def vistas_logits(workdir, x, key="ema_params"):
    _, graphdef, rest, params, _ = runs.model_params(workdir, key=key)
    return np.asarray(jax.jit(lambda p, images: nnx.merge(graphdef, p, rest)(images)[0])(params, x))


@pytest.mark.parametrize("family", list(FAMILIES))
def test_stablehlo_reproduces_the_logits_at_two_batch_sizes(run_dirs, tmp_path, family):
    dst = tmp_path / f"{family}.stablehlo"
    info = export_lib.export(run_dirs[family], dst, fmt="stablehlo")
    exported = jax.export.deserialize(bytearray(dst.read_bytes()))
    assert len(exported.in_avals) == 1  # the images only: the parameters are baked in
    assert str(exported.in_avals[0].shape[0]) == "b" and exported.in_avals[0].shape[1:] == (28, 28, 1)
    for b in (3, 8):
        x = images(b, seed=b)
        got = np.asarray(exported.call(x))
        assert got.shape == (b, 10) and got.dtype == np.float32
        np.testing.assert_allclose(got, vistas_logits(run_dirs[family], x), rtol=1e-5, atol=1e-5)
    assert info["weights"] == "ema" and info["step"] == 3
    assert json.loads((tmp_path / f"{family}.stablehlo.json").read_text()) == info


def test_stablehlo_sidecar_and_trained_weights(run_dirs, tmp_path):
    dst = tmp_path / "vit.stablehlo"
    info = export_lib.export(run_dirs["vit"], dst, ema=False)  # the format from the name
    assert info["format"] == "stablehlo" and info["weights"] == "trained" and info["platforms"] == ["cpu"]
    assert info["input"]["shape"] == ["b", 28, 28, 1] and info["input"]["value_range"] == [-1.0, 1.0]
    assert info["output"]["shape"] == ["b", 10] and info["output"]["activation"] == "softmax"
    assert info["classes"] == CLASSES
    x = images(4)
    got = np.asarray(jax.export.deserialize(bytearray(dst.read_bytes())).call(x))
    np.testing.assert_allclose(got, vistas_logits(run_dirs["vit"], x, key="params"), rtol=1e-5, atol=1e-5)
    assert not np.allclose(got, vistas_logits(run_dirs["vit"], x), atol=1e-3)  # not the EMA


def test_stablehlo_for_several_platforms_is_served_by_jax_alone(run_dirs, tmp_path):
    """Lowered for CPU and CUDA on this CPU; a fresh Python that imports only JAX and NumPy
    (never vistas) deserialises it and calls it on the CPU."""
    dst = tmp_path / "vit.stablehlo"
    info = export_lib.export(run_dirs["vit"], dst, platforms="cpu,cuda")
    assert info["platforms"] == ["cpu", "cuda"]
    x = images(5, seed=1)
    np.save(tmp_path / "x.npy", x)
    code = ("import sys, jax, numpy as np; from jax import export; "
            f"exp = export.deserialize(bytearray(open({str(dst)!r}, 'rb').read())); "
            f"np.save({str(tmp_path / 'y.npy')!r}, np.asarray(exp.call(np.load({str(tmp_path / 'x.npy')!r})))); "
            "print(sorted(m for m in sys.modules if m.startswith('vistas')))")
    proc = subprocess.run([sys.executable, "-c", code], env=cli_env(), capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), vistas_logits(run_dirs["vit"], x), rtol=1e-5, atol=1e-5)


def test_safetensors_of_a_vit_in_timm_layout(run_dirs, tmp_path):
    from safetensors.numpy import load_file

    from vistas.models import interop

    dst = tmp_path / "vit.safetensors"
    info = export_lib.export(run_dirs["vit"], dst)
    assert info["format"] == "safetensors" and info["weights"] == "ema" and info["layout"] == "timm"
    sd = load_file(str(dst))
    assert {"patch_embed.proj.weight", "pos_embed", "blocks.0.attn.qkv.weight", "head.weight"} <= set(sd)
    x = images(3)
    got = np.asarray(interop.load_model(dst)(x)[0])  # read back through vistas' timm reader
    np.testing.assert_allclose(got, vistas_logits(run_dirs["vit"], x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", ["nfnet", "bit"])
def test_safetensors_of_a_convnet_is_one_line(run_dirs, tmp_path, family):
    with pytest.raises(ConfigError) as e:
        export_lib.export(run_dirs[family], tmp_path / "m.safetensors")
    msg = str(e.value)
    assert "\n" not in msg and "ViTs only" in msg and "stablehlo" in msg
    assert not (tmp_path / "m.safetensors").exists()


def test_cli_export_and_its_one_line_errors(run_dirs, tmp_path, capsys):
    dst = tmp_path / "out" / "model.bin"
    code = cli.main(["export", str(run_dirs["nfnet"]), str(dst), "--format", "stablehlo", "--json"])
    out, _ = capsys.readouterr()
    assert code == 0 and json.loads(out)["model"] == "nfnet-F0" and dst.exists()
    code = cli.main(["export", str(run_dirs["vit"]), str(tmp_path / "v.stablehlo"), "--no-ema"])
    out, _ = capsys.readouterr()
    assert code == 0 and "trained weights" in out and "images [bx28x28x1] -> logits for cpu" in out
    for argv, culprit in (
        ([str(run_dirs["vit"]), str(tmp_path / "model.onnx")], "--format stablehlo|safetensors"),
        ([str(tmp_path / "nothing"), str(tmp_path / "m.stablehlo")], "holds no run"),
        ([str(run_dirs["vit"]), str(tmp_path / "m.stablehlo"), "--platforms", "cpu,metal"], "metal"),
        ([str(run_dirs["vit"]), str(tmp_path / "m.safetensors"), "--platforms", "cpu"], "--platforms"),
        ([str(run_dirs["vit"]), str(tmp_path / "m.stablehlo"), "--step", "7"], "no checkpoint 7"),
    ):
        code = cli.main(["export", *argv])
        out, err = capsys.readouterr()
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 2 and len(lines) == 1 and lines[0].startswith("vistas: error: "), err
        assert culprit in lines[0] and "Traceback" not in out + err


def test_ema_asked_of_a_run_without_one(tmp_path):
    workdir = write_run(tmp_path / "run", smoke())
    with pytest.raises(ConfigError, match="keeps no EMA"):
        export_lib.export(workdir, tmp_path / "m.stablehlo", ema=True)
    assert export_lib.export(workdir, tmp_path / "m.stablehlo")["weights"] == "trained"


def test_missing_flatbuffers_is_one_line(run_dirs, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "flatbuffers", None)
    monkeypatch.delitem(sys.modules, "jax._src.export.serialization", raising=False)
    with pytest.raises(VistasError) as e:
        export_lib.export(run_dirs["vit"], tmp_path / "m.stablehlo")
    assert "\n" not in str(e.value) and "flatbuffers" in str(e.value)
    assert not (tmp_path / "m.stablehlo").exists()


def test_too_large_for_one_export_is_one_line(run_dirs, tmp_path, monkeypatch):
    monkeypatch.setattr(export_lib, "MAX_STABLEHLO_BYTES", 1000)
    with pytest.raises(ConfigError) as e:
        export_lib.export(run_dirs["vit"], tmp_path / "m.stablehlo")
    assert "\n" not in str(e.value) and "2 GiB" in str(e.value) and "safetensors" in str(e.value)
    assert not (tmp_path / "m.stablehlo").exists()
