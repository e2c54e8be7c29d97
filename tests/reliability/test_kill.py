"""SIGKILL at seeded random moments, including during a checkpoint write: every resume
starts from the last complete checkpoint and the final parameters and losses equal those
of an uninterrupted run (``vistas.systems.soak``; the long version is benchmarks/soak.py)."""

import pytest
from conftest import requires_fashion_mnist
from reliability_helpers import TINY

from vistas.systems import soak


@requires_fashion_mnist
@pytest.mark.slow
def test_five_random_kills_lose_nothing(tmp_path):
    sets = [*TINY, "train.duration=24", "train.ckpt_every=2", "train.eval_every=1000"]
    cache = {"JAX_COMPILATION_CACHE_DIR": str(tmp_path / "jax_cache"),  # later sessions skip compiling
             "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
    report = soak.soak("smoke", sets, tmp_path, kills=5, seed=3, env=cache, say=lambda s: None)
    kills = report["kills"]
    assert len(kills) == 5 and {k.mode for k in kills} == set(soak.MODES)
    assert report["mid_write_kills"] >= 1, kills
    for k in kills:
        assert k.resumed_at == (k.committed or 0), kills
    assert report["lost"] == 0 and report["equal_params"] and report["equal_losses"]
