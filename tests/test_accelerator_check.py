"""The accelerator check (benchmarks/accelerator.py) in its dry run: every section runs
with tiny models on this machine and writes its JSON, so the script that proves vistas on a
GPU cannot rot while no device is at hand. Figures here are CPU figures and not the point;
the structure, the optimizer-memory prediction and the exact resume are."""

import json
import pathlib
import subprocess
import sys

import pytest

from tests.conftest import cli_env

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "accelerator.py"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("accelerator")
    proc = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--no-timm", "--out", str(out),
                           "--budget-s", "900"], cwd=ROOT, capture_output=True, text=True,
                          timeout=1200, env=cli_env())
    return proc, json.loads((out / "accelerator.json").read_text())


def test_every_section_runs_and_nothing_failed(dry_run):
    proc, results = dry_run
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert results["dry_run"] is True
    assert set(results["sections"]) == {"throughput", "resume", "shapefind", "memory", "block"}
    assert results["skipped"] == {}
    assert "written:" in proc.stdout and "section | measurement | result" in proc.stdout


def test_throughput_and_block_measure_a_rate(dry_run):
    _, results = dry_run
    thr = results["sections"]["throughput"]
    for model in ("vit-B/16", "vit-L/16"):
        assert thr[f"{model} batch"]["batch"] >= 1
        for optimizer in ("adam", "adafactor_bv"):
            answer = thr[f"{model} {optimizer} vistas"]
            assert answer["fits"] is True and answer["images_per_s"] > 0, answer
            assert answer["dtype"] == "float32"  # model.dtype=auto on CPU
    for label in ("standard", "22B block", "attention=recompute"):
        assert results["sections"]["block"][label]["images_per_s"] > 0


def test_shapefind_prediction_is_run_at_its_batch(dry_run):
    _, results = dry_run
    section = results["sections"]["shapefind"]
    predicted = section["prediction"]["batch"]
    assert predicted >= 1
    assert section[f"x1.00 batch {predicted}"]["fits"] is True


def test_optimizer_state_matches_the_optim_memory_prediction(dry_run):
    _, results = dry_run
    memory = results["sections"]["memory"]
    state = {opt: memory[f"vit-L/16 {opt}"]["opt_state_bytes"] for opt in ("adam", "adam_bf16", "adafactor_bv")}
    for opt, nbytes in state.items():
        assert nbytes == memory[f"vit-L/16 {opt}"]["opt_state_predicted"], opt
    assert state["adam"] > state["adam_bf16"] > state["adafactor_bv"]


def test_a_killed_and_resumed_run_ends_where_the_uninterrupted_one_does(dry_run):
    _, results = dry_run
    comparison = results["sections"]["resume"]["comparison"]
    assert comparison["identical"] is True, comparison
    assert comparison["steps"][0] == comparison["steps"][1] == 24


def test_an_unknown_section_is_one_line(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--sections", "speed",
                           "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    assert "--sections: speed not known; use some of throughput" in proc.stderr
