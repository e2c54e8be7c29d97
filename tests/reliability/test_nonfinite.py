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


def test_skip_policy_keeps_the_state_counts_across_a_resume_and_stops_past_the_limit(tmp_path, monkeypatch):
    """Steps 3 (NaN loss) and 6 (NaN gradients) are skipped: the parameters after them equal
    those before; the count is logged, checkpointed and carried through a resume. Step 7,
    a third non-finite step with train.max_skipped=2, stops the run."""
    inject_nonfinite(monkeypatch, {3}, "loss")
    cfg = tiny(*RUN, "train.nonfinite=skip", "train.max_skipped=2", "train.ckpt_every=1", "train.keep=8")
    loop.train(cfg, tmp_path / "run", stop_after=3, quiet=True)
    monkeypatch.undo()
    inject_nonfinite(monkeypatch, {3, 4}, "grad")  # batches 3 and 4 of the resumed session: steps 6, 7
    with pytest.raises(loop.TrainingDiverged) as e:
        loop.train(cfg, tmp_path / "run", quiet=True)
    msg = str(e.value)
    assert "\n" not in msg and "(step 6)" in msg
    assert re.search(r"3 non-finite steps skipped, more than train.max_skipped=2 \(gradients .* at step 7\)", msg)
    rows = {r["step"]: r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "train/loss" in r}
    assert [rows[s]["train/finite"] for s in range(1, 7)] == [1.0, 1.0, 0.0, 1.0, 1.0, 0.0]
    assert [rows[s]["train/skipped"] for s in (2, 3, 5, 6)] == [0, 1, 1, 2]
    assert rows[3]["train/loss"] is None and np.isfinite(rows[6]["train/loss"])
    assert committed_steps(tmp_path / "run")[-1] == 6
    params = checkpointed_params(cfg, tmp_path / "run", range(2, 7))
    assert_same_tree(params[2], params[3])
    assert_same_tree(params[5], params[6])
    assert not np.array_equal(leaves(params[4])[0][1], leaves(params[5])[0][1])  # a normal step moves them


@pytest.mark.parametrize("override, culprit", [("train.nonfinite=ignore", "train.nonfinite='ignore'"),
                                               ("train.max_skipped=-1", "train.max_skipped=-1")])
def test_policy_keys_are_validated(override, culprit):
    with pytest.raises(ConfigError, match=re.escape(culprit)):
        tiny(override)
