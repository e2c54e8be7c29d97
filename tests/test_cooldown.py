"""Tests for vistas.train.cooldown: branch schedules, exact branch state, SRC never written."""

import hashlib
import json
import pathlib

import jax
import numpy as np
import pytest
from conftest import committed_steps, requires_fashion_mnist, smoke

from vistas import checkpoint as ckpt_lib
from vistas import cli, experiment
from vistas.errors import ConfigError, VistasError
from vistas.train import cooldown, loop
from vistas.train import step as step_lib

RSQRT = ["schedule.decay=rsqrt", "schedule.timescale=8", "schedule.warmup=4"]


def _schedule(cfg, steps_per_epoch=10.0):
    resolved = experiment.schedule_of(cfg, steps_per_epoch)
    return resolved.fn, resolved.total_steps


def test_branch_follows_the_source_then_decays_linearly_to_zero():
    src = smoke(*RSQRT, "train.duration=1000", "schedule.warmup='2%'")
    cfg = cooldown.branch_config(src, "/runs/src", 300, 100, steps_per_epoch=10.0)
    assert cfg.train.duration == 400 and cfg.schedule.cooldown == 100
    assert cfg.schedule.warmup == 20  # '2%' of the SOURCE's 1000 steps, resolved
    assert cfg.train.branched_from == "/runs/src@300"
    src_fn, _ = _schedule(src)
    dst_fn, total = _schedule(cfg)
    assert total == 400
    t = np.arange(300)
    np.testing.assert_array_equal(src_fn(t), dst_fn(t))
    for i in (0, 1, 50, 99):
        assert float(dst_fn(300 + i)) == pytest.approx(float(src_fn(300 + i)) * (100 - i) / 100)
    assert float(dst_fn(400)) == 0.0 and float(dst_fn(399)) > 0
    # the source's config is not modified
    assert src.train.duration == 1000 and src.schedule.cooldown == 0


def test_cooldown_lengths_in_other_units():
    src = smoke(*RSQRT, "train.duration=1000")
    assert cooldown.branch_config(src, "s", 500, "20%", 10.0).schedule.cooldown == 100  # of S
    assert cooldown.branch_config(src, "s", 500, "3ep", 10.0).schedule.cooldown == 30


@pytest.mark.parametrize("overrides, step, match", [
    (["train.duration=1000"], 300, "decay 'cosine' depends on the run's length"),
    ([*RSQRT, "train.duration=1000", "schedule.cooldown=200"], 900, "source's own cooldown"),
    ([*RSQRT, "train.duration=1000"], 1001, "use a step in 1..1000"),
    ([*RSQRT, "train.duration=1000"], 0, "use a step in 1..1000"),
])
def test_branches_that_cannot_follow_the_source_are_refused(overrides, step, match):
    with pytest.raises(ConfigError, match=match):
        cooldown.branch_config(smoke(*overrides), "s", step, 10, 10.0)


def test_branching_inside_the_source_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="outside the source run"):
        cooldown.branch(tmp_path, 8, 4, tmp_path / "branch")


def _hash_tree(root: pathlib.Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


RUN = [*RSQRT, "model.depth=1", "train.ckpt_every=100", "train.log_every=4",
       "train.eval_every=100"]
SRC_SETS = [*RUN, "train.duration=24", "train.keep=1", "train.keep_every=8"]


@pytest.fixture(scope="module")
def source_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("cooldown") / "src"
    cfg = smoke(*SRC_SETS)
    loop.train(cfg, workdir, quiet=True)
    exp = loop.build(cfg)
    abstract = step_lib.init_state(exp.params, exp.tx, cfg.train.seed)
    return workdir, abstract  # the state's structure is the same in every branch


def _restore(workdir, step, abstract):
    c = ckpt_lib.Checkpointer(workdir / "checkpoints", read_only=True)
    try:
        return c.restore(step, abstract)
    finally:
        c.close()


@requires_fashion_mnist
@pytest.mark.slow
def test_cooldown_branches_leave_the_source_untouched_and_equal_dedicated_runs(
        source_run, tmp_path, capsys):
    src, abstract = source_run
    # train.keep_every checkpoints are saved even off the ckpt_every cadence, and kept
    assert committed_steps(src) == [8, 16, 24]
    before = _hash_tree(src)
    dst = tmp_path / "branches"
    args = ["cooldown", "--workdir", str(src), "--from-step", "8", "16", "--steps", "4",
            "--workdir-out", str(dst), "--quiet", "--json"]
    assert cli.main(args) == 0
    summaries = json.loads(capsys.readouterr().out)
    assert _hash_tree(src) == before  # the source run is never written
    assert [s["from_step"] for s in summaries] == [8, 16]
    assert [s["step"] for s in summaries] == [12, 20] and all(s["finished"] for s in summaries)
    assert all(0 <= s["eval/test[:1000]/top1"] <= 1 for s in summaries)
    cfg = loop.load_config(dst / "from_8")
    assert cfg.train.branched_from == f"{src.absolute()}@8"
    assert cfg.train.duration == 12 and cfg.schedule.cooldown == 4
    rows = [json.loads(line) for line in (dst / "from_8" / "metrics.jsonl").read_text().splitlines()]
    src_rows = [json.loads(line) for line in (src / "metrics.jsonl").read_text().splitlines()]
    assert [r for r in rows if r["step"] <= 8] == [r for r in src_rows if r["step"] <= 8]
    assert max(r["step"] for r in rows) == 12

    # a branch is the run of S + N steps with an N-step cooldown, trained from scratch
    dedicated = tmp_path / "dedicated"
    summary = loop.train(smoke(*RUN, "train.duration=12", "schedule.cooldown=4"), dedicated,
                         quiet=True)
    branch_state, _ = _restore(dst / "from_8", 12, abstract)
    dedicated_state, _ = _restore(dedicated, 12, abstract)
    for a, b in zip(jax.tree.leaves(branch_state), jax.tree.leaves(dedicated_state), strict=True):
        np.testing.assert_array_equal(a, b)
    assert summaries[0]["eval/test[:1000]/top1"] == summary["eval/test[:1000]/top1"]


@requires_fashion_mnist
@pytest.mark.slow
def test_branch_reproduces_the_exact_state_of_the_source(source_run, tmp_path):
    src, abstract = source_run
    before = _hash_tree(src)
    cfg = cooldown.branch(src, 16, 4, tmp_path / "b")
    assert _hash_tree(src) == before
    assert committed_steps(tmp_path / "b") == [16]
    assert cfg.train.branched_from == f"{src.absolute()}@16"
    src_state, src_data = _restore(src, 16, abstract)
    state, data = _restore(tmp_path / "b", 16, abstract)
    assert data == src_data and data["step"] == 16
    assert int(state["step"]) == 16
    names = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(state)]
    assert any("opt_state" in n and "mu" in n for n in names)  # Adam's moments are there
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(src_state), strict=True):
        np.testing.assert_array_equal(a, b)
    # branching again into the same directory leaves it as it is (training would resume)
    again = _hash_tree(tmp_path / "b")
    assert cooldown.branch(src, 16, 4, tmp_path / "b").to_dict() == cfg.to_dict()
    assert _hash_tree(tmp_path / "b") == again
    with pytest.raises(VistasError, match="no checkpoint of step 12 .*8, 16, 24.*keep_every"):
        cooldown.branch(src, 12, 4, tmp_path / "c")
    assert not (tmp_path / "c" / "checkpoints").exists()


@requires_fashion_mnist
@pytest.mark.slow
def test_a_failed_branch_write_leaves_no_half_written_config(source_run, tmp_path, monkeypatch):
    """A full disk while the branch's config.json is written: the file is whole or absent,
    and the error is one line."""
    src, _ = source_run
    real = pathlib.Path.write_text

    def half_then_full(self, text, *args, **kw):
        if self.name.startswith("config.json"):
            real(self, text[: len(text) // 2], *args, **kw)
            raise OSError(28, "No space left on device")
        return real(self, text, *args, **kw)

    monkeypatch.setattr(pathlib.Path, "write_text", half_then_full)
    with pytest.raises(VistasError, match="could not write .*config.json: No space left on device") as e:
        cooldown.branch(src, 16, 4, tmp_path / "b")
    assert "\n" not in str(e.value)
    assert not (tmp_path / "b" / "config.json").exists()
    assert not list((tmp_path / "b").glob("config.json*"))
