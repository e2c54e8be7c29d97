"""The loop's shape: tasks it only calls, periodic actions, and the defects the old
switchboard hid (RandAugment lost in distillation, a host sync on every step)."""

import dataclasses

import jax
import numpy as np
import pytest
from conftest import requires_fashion_mnist, smoke

from vistas import experiment
from vistas.evaluate.evaluators import Evaluator
from vistas.train import distill, loop, supervised, task
from vistas.train.metrics import read_metrics

RANDAUG = ["data.randaug_ops=2", "data.randaug_magnitude=15"]


def _views(transform, n=8):
    image = np.random.default_rng(0).integers(0, 256, (28, 28, 1), dtype=np.uint8)
    return [transform(image, np.random.default_rng(s)) for s in range(n)]


@pytest.mark.parametrize("mode", ["consistent", "independent", "fixed"])
def test_distillation_views_are_augmented_as_configured(mode):
    """RandAugment reaches the distillation views (it used to be dropped silently): the
    views differ from the same views without it, and equal the supervised run's."""
    cfg = smoke(f"distill.mode={mode}", "distill.teachers=[runs/t]", *RANDAUG)
    plain = smoke(f"distill.mode={mode}", "distill.teachers=[runs/t]")
    size = cfg.data.image_size
    views, without = _views(distill.train_transform(cfg, size)), _views(distill.train_transform(plain, size))
    first = (lambda v: np.asarray(v["image"])) if mode == "independent" else np.asarray
    assert any(not np.array_equal(first(a), first(b)) for a, b in zip(views, without, strict=True))
    for a, b in zip(views, _views(experiment.train_transform(cfg, size)), strict=True):
        np.testing.assert_array_equal(first(a), b)


def test_tasks_are_chosen_from_the_config():
    assert task.name_of(smoke()) == "supervised"
    assert task.name_of(smoke("distill.mode=labels")) == "distillation"


@dataclasses.dataclass
class _Counting(supervised.Supervised):
    """A supervised task with one more metric and evaluator: what a new task looks like."""

    def metrics(self, logits, batch):
        return {"train/mean_logit": logits.mean()}

    def evaluators(self, every):
        return [Evaluator("counting", every, lambda state: ({"eval/steps_seen": float(state["step"])}, None))]


@requires_fashion_mnist
@pytest.mark.slow
def test_a_new_task_is_a_class_and_one_table_entry(tmp_path, monkeypatch):
    def build(cfg, exp, workdir, mesh, *, resuming, say):
        base = supervised.setup(cfg, exp, workdir, mesh, resuming=resuming, say=say)
        return _Counting(base.source, base.transform, base.loss_fn, base.mix)

    monkeypatch.setattr(task, "TASKS", {"counting": (lambda cfg: cfg.train.seed == 7, build), **task.TASKS})
    summary = loop.train(smoke("train.seed=7", "train.duration=4", "schedule.warmup=1", "train.eval_every=2",
                               "train.log_every=2"), tmp_path / "run", quiet=True)
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in rows if "train/mean_logit" in r] == [2, 4]
    assert [r["eval/steps_seen"] for r in rows if "eval/steps_seen" in r] == [2.0, 4.0]
    assert summary["eval/steps_seen"] == 4.0


def _count_host_reads(monkeypatch):
    """Counts every read of a device array's value by the host (float(), bool(),
    np.asarray(), jax.device_get...)."""
    from jax._src.array import ArrayImpl

    count = [0]
    value = ArrayImpl._value

    def counted(self):
        count[0] += 1
        return value.fget(self)

    monkeypatch.setattr(ArrayImpl, "_value", property(counted))
    for name in ("__float__", "__int__", "__bool__", "__index__", "item", "tolist"):
        original = getattr(ArrayImpl, name)

        def wrapped(self, *a, _original=original, **kw):
            count[0] += 1
            return _original(self, *a, **kw)

        monkeypatch.setattr(ArrayImpl, name, wrapped)
    return count


@requires_fashion_mnist
@pytest.mark.slow
def test_steps_where_nothing_is_due_never_wait_for_the_device(tmp_path, monkeypatch):
    """The host reads device values only when an action runs: a run of 9 steps reads as
    many as one of 3 when both log, evaluate and save only at their end."""
    reads = {}
    for steps in (3, 9):
        cfg = smoke(f"train.duration={steps}", "schedule.warmup=1", f"train.log_every={steps}", f"train.eval_every={steps}",
                    f"train.ckpt_every={steps}")
        exp = experiment.build(cfg)  # compile-time work outside the count
        del exp
        count = _count_host_reads(monkeypatch)
        loop.train(cfg, tmp_path / str(steps), quiet=True)
        reads[steps] = count[0]
        monkeypatch.undo()
    assert reads[9] == reads[3], reads
    jax.clear_caches()
