"""NaN/Inf in the loss or the gradients: found within the step it happens in; the policy
``train.nonfinite`` stops the run (keeping the last good checkpoint) or skips the step and
counts it, up to ``train.max_skipped``."""

import re

import numpy as np
import pytest
from conftest import committed_steps, requires_fashion_mnist
from reliability_helpers import (
    assert_same_tree,
    checkpointed_params,
    inject_nonfinite,
    leaves,
    tiny,
)

from vistas.errors import ConfigError
from vistas.train import loop
from vistas.train.metrics import read_metrics

pytestmark = requires_fashion_mnist
RUN = ["train.duration=12", "train.ckpt_every=4", "train.log_every=1", "train.eval_every=12"]


@pytest.mark.parametrize("how", ["loss", "grad"])
def test_stop_policy_stops_at_the_poisoned_step_and_keeps_the_last_good_checkpoint(how, tmp_path, monkeypatch):
    inject_nonfinite(monkeypatch, {7}, how)
    with pytest.raises(loop.TrainingDiverged) as e:
        loop.train(tiny(*RUN), tmp_path / "run", quiet=True)
    msg = str(e.value)
    assert "\n" not in msg and "at step 7" in msg and "(step 4)" in msg
    assert ("loss is nan" if how == "loss" else "gradients or updated parameters are non-finite") in msg
    assert committed_steps(tmp_path / "run") == [4]
    _, params, step = loop.final_params(tmp_path / "run")
    assert step == 4 and all(np.isfinite(x).all() for _, x in leaves(params))
    assert max(r["step"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl")) == 6


def test_skip_policy_keeps_the_state_counts_and_resumes_exactly(tmp_path, monkeypatch):
    """Steps 3 (NaN loss) and 6 (NaN gradients) are skipped: the parameters after them equal
    those before; the count is logged, checkpointed and carried through a resume."""
    sets = (*RUN, "train.nonfinite=skip", "train.max_skipped=2")
    inject_nonfinite(monkeypatch, {3, 6}, "loss")
    cfg = tiny(*sets, "train.duration=8", "train.ckpt_every=1", "train.keep=8", "train.eval_every=8")
    loop.train(cfg, tmp_path / "ref", stop_after=3, quiet=True)
    monkeypatch.undo()
    inject_nonfinite(monkeypatch, {3}, "grad")  # the 3rd batch of the resumed session: step 6
    summary = loop.train(cfg, tmp_path / "ref", quiet=True)
    assert summary["finished"]
    rows = {r["step"]: r for r in read_metrics(tmp_path / "ref" / "metrics.jsonl") if "train/loss" in r}
    assert [rows[s]["train/finite"] for s in range(1, 9)] == [0.0 if s in (3, 6) else 1.0 for s in range(1, 9)]
    assert [rows[s]["train/skipped"] for s in (2, 3, 5, 6, 8)] == [0, 1, 1, 2, 2]
    assert rows[3]["train/loss"] is None and np.isfinite(rows[6]["train/loss"])
    params = checkpointed_params(cfg, tmp_path / "ref", range(2, 8))
    assert_same_tree(params[2], params[3])
    assert_same_tree(params[5], params[6])
    assert not np.array_equal(leaves(params[6])[0][1], leaves(params[7])[0][1])  # a normal step moves them


def test_skip_policy_stops_after_max_skipped(tmp_path, monkeypatch):
    inject_nonfinite(monkeypatch, {2, 5, 9}, "loss")
    with pytest.raises(loop.TrainingDiverged) as e:
        loop.train(tiny(*RUN, "train.nonfinite=skip", "train.max_skipped=2"), tmp_path / "run", quiet=True)
    msg = str(e.value)
    assert "\n" not in msg and re.search(r"3 non-finite steps skipped, more than train.max_skipped=2 .*at step 9", msg)
    assert "(step 8)" in msg and committed_steps(tmp_path / "run") == [4, 8]


@pytest.mark.parametrize("override, culprit", [("train.nonfinite=ignore", "train.nonfinite='ignore'"),
                                               ("train.max_skipped=-1", "train.max_skipped=-1")])
def test_policy_keys_are_validated(override, culprit):
    with pytest.raises(ConfigError, match=re.escape(culprit)):
        tiny(override)
