"""Tests for vistas.optim.memory: optimizer-state bytes per parameter, measured abstractly."""

import json

import jax.numpy as jnp
import pytest
from conftest import requires_fashion_mnist

from vistas import cli, presets
from vistas.errors import ConfigError
from vistas.models import registry
from vistas.optim import memory
from vistas.optim.builder import build_optimizer
from vistas.train import loop


def test_state_bytes_of_a_known_tree():
    params = {"w": jnp.zeros((10, 4)), "b": jnp.zeros((4,))}
    tx = build_optimizer(params, name="adam", lr=1.0, schedule=lambda s: 1.0, mu_dtype="bfloat16")
    # mu bf16 (2 B) + nu f32 (4 B) per parameter, plus the int32 counts of adam and schedule
    assert memory.state_bytes(tx, params) == 44 * 6 + 4 + 4
    assert memory.tree_bytes({"a": jnp.zeros((3,), jnp.bfloat16), "b": jnp.zeros((), jnp.int32)}) \
        == 10


@pytest.mark.parametrize("spec, low, high", [
    ("adam", 7.99, 8.01),
    ("adam,mu_dtype=bfloat16", 5.99, 6.01),
    ("adafactor_bv", 2.0, 2.1),
    ("sgd", 3.99, 4.01),
    ("sgd,momentum=0.0", 0.0, 0.001),
    ("shampoo", 23.0, 25.0),
    ("shampoo,mu_dtype=bfloat16", 21.0, 23.0),
])
def test_bytes_per_parameter_of_vit_b(spec, low, high):
    row = memory.optimizer_memory("vit-B/16", spec)
    assert row["params"] == 86_566_120
    assert low <= row["bytes_per_param"] <= high, row


def test_frozen_parameters_hold_no_state():
    row = memory.optimizer_memory("vit-Ti/16", "adam", overrides=["frozen=['encoder/.*']"])
    full = memory.optimizer_memory("vit-Ti/16", "adam")
    assert row["state_bytes"] < 0.2 * full["state_bytes"]


@pytest.mark.parametrize("spec", ["adafactor_bv", "shampoo"])
def test_depth_extrapolation_equals_the_full_trace(spec):
    kw = {"num_classes": 10, "image_size": 64}
    assert memory.optimizer_memory("vit-S/16", spec, **kw) == \
        memory.optimizer_memory("vit-S/16", spec, exact=True, **kw)


def test_the_largest_vits_are_measured_without_allocating():
    # ViT-e/14 has 3.8e9 parameters: its Adam state alone would be 30 GB if allocated
    rows = memory.table(["vit-G/14", "vit-e/14"], ["adam", "adafactor_bv"])
    assert [r["params"] for r in rows[::2]] == [1_844_437_352, 3_807_210_728]
    assert [round(r["bytes_per_param"], 1) for r in rows] == [8.0, 2.0, 8.0, 2.0]


def test_bad_specs():
    with pytest.raises(ConfigError, match="'adamw' is unknown"):
        memory.optimizer_memory("vit-Ti/16", "adamw")
    with pytest.raises(ConfigError, match="'bf16' is not key=value"):
        memory.optimizer_memory("vit-Ti/16", "adam,bf16")
    with pytest.raises(ConfigError, match="optim.mu_dtype='float8'"):
        memory.optimizer_memory("vit-Ti/16", "adam,mu_dtype=float8")


def test_cli(capsys):
    assert cli.main(["optim-memory", "--model", "vit-B/16", "--optimizer", "adam",
                     "adam,mu_dtype=bfloat16", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["optimizer"] for r in rows] == ["adam", "adam,mu_dtype=bfloat16"]
    assert [r["bytes_per_param"] for r in rows] == pytest.approx([8.0, 6.0], abs=1e-3)
    assert cli.main(["optim-memory", "--model", "vit-Ti/16"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in memory.STANDARD)
    assert cli.main(["optim-memory", "--model", "vit-Ti/16", "--set", "optim.b9=1"]) == 2
    assert "optim.b9" in capsys.readouterr().err


@requires_fashion_mnist
def test_preset_memory_uses_the_presets_model_and_optimizer(capsys):
    cfg = presets.get("smoke")
    row = memory.preset_memory(cfg, "adam")
    assert row["model"] == "vit-mu/7"
    model = loop.build_model(cfg, num_classes=10)
    assert row["params"] == registry.count_params(model)
    assert row["bytes_per_param"] == pytest.approx(8.0, abs=1e-3)
    cfg.optim.mu_dtype = "bfloat16"  # the preset's optimizer settings are the starting point
    assert memory.preset_memory(cfg, "adam")["bytes_per_param"] == pytest.approx(6.0, abs=1e-3)
    assert cli.main(["optim-memory", "--preset", "smoke", "--optimizer", "sgd", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["params"] == row["params"]
    assert cli.main(["optim-memory", "--preset", "smoke", "--model", "vit-B/16"]) == 2
    assert "either --model" in capsys.readouterr().err
