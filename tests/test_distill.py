"""Function-matching distillation (vistas.train.distill): views, loss, teachers, cache, resume."""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import requires_fashion_mnist, smoke

from vistas import cli
from vistas.data import pipeline
from vistas.errors import ConfigError
from vistas.systems import mesh as mesh_lib
from vistas.train import distill, loop

pytestmark = requires_fashion_mnist

TINY = ("model.depth=1", "schedule.warmup=2", "train.log_every=4", "train.duration=8",
        "train.eval_every=8", "train.ckpt_every=8")


def student_sets(*overrides):
    """``--set`` values of a depth-1 ViT distilled for 8 steps with inception crops (smoke data)."""
    return [*TINY, "data.crop=inception", "data.flip=True", *overrides]


def student(*overrides):
    return smoke(*student_sets(*overrides))


@pytest.fixture(scope="module")
def teachers(tmp_path_factory, transfer_upstream):
    """Two tiny teachers: a depth-1 ViT trained for 8 steps, and the (depth-2) upstream run of
    the transfer tests."""
    t0 = tmp_path_factory.mktemp("teachers") / "t0"
    loop.train(smoke(*TINY), t0, quiet=True)
    return t0, transfer_upstream


def _setup(cfg, workdir):
    exp = loop.build(cfg)
    return exp, distill.setup(cfg, exp, workdir, mesh_lib.data_mesh(), resuming=False, say=lambda s: None)


def _first_batch(cfg, setup):
    it = pipeline.train_iterator(setup.source, global_batch_size=cfg.data.batch_size, seed=0,
                                 transform=setup.transform, extra_keys=setup.extra_keys)
    try:
        return {k: jnp.asarray(v) for k, v in next(it).items()}
    finally:
        it.close()


def _prepare(setup, batch, seed=0):
    task = setup
    return jax.jit(task.prepare)(task.frozen, batch, jax.random.PRNGKey(seed))


def test_kl_loss_matches_numpy():
    rng = np.random.default_rng(0)
    s, t = rng.normal(size=(5, 7)) * 3, rng.normal(size=(2, 5, 7)) * 3
    temperature = 2.5

    def softmax(x):
        e = np.exp(x - x.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    p = softmax(t / temperature).mean(0)  # the ensemble's averaged probabilities
    q = softmax(s / temperature)
    want = temperature**2 * np.sum(p * (np.log(p) - np.log(q)), -1)
    probs = distill.ensemble_probs(jnp.asarray(t, jnp.float32), temperature)
    np.testing.assert_allclose(probs, p, rtol=1e-5)
    got = distill.kl_loss(jnp.asarray(s, jnp.float32), probs, temperature)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    # a zero teacher probability contributes nothing (0 log 0 = 0), not NaN
    onehot = jnp.eye(7)[:5]
    assert np.all(np.isfinite(distill.kl_loss(jnp.asarray(s, jnp.float32), onehot, 1.0)))


@pytest.fixture(scope="module")
def consistent(teachers, tmp_path_factory):
    """(setup, batch, prepared batch) of the consistent mode with teacher t0."""
    cfg = student("distill.mode=consistent", f"distill.teachers=['{teachers[0]}']")
    _, setup = _setup(cfg, tmp_path_factory.mktemp("consistent"))
    batch = _first_batch(cfg, setup)
    return setup, batch, _prepare(setup, batch)


def test_consistent_teacher_sees_the_students_pixels(consistent):
    setup, batch, out = consistent
    # the view was mixed (mixup alpha 1) and the teacher's distribution is that of exactly the
    # pixels the student receives
    assert not np.allclose(out["image"], batch["image"])
    t = setup
    direct = distill.ensemble_probs(jax.jit(distill.teacher_logits(t.teachers, t.value_range))(
        t.frozen, out["image"]), 1.0)
    np.testing.assert_allclose(out["teacher_probs"], direct, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(out["teacher_image"], out["image"])
    # the mixed label rows are probability vectors and the same weight mixed the images
    np.testing.assert_allclose(out["soft_label"].sum(-1), 1.0, rtol=1e-6)


def test_independent_mode_gives_other_crops_of_the_same_examples(teachers, tmp_path):
    sets = ("distill.mode=independent", f"distill.teachers=['{teachers[0]}']")
    _, setup = _setup(student(*sets), tmp_path)
    batch = _first_batch(student(*sets), setup)
    differs = np.any(np.abs(np.asarray(batch["image"] - batch["teacher_image"])) > 1e-3, axis=(1, 2, 3))
    assert differs.mean() > 0.9
    # the student's view is the one the consistent mode would give (the first draw)
    _, consistent = _setup(student("distill.mode=consistent", *sets[1:]), tmp_path)
    np.testing.assert_array_equal(_first_batch(student(*sets), consistent)["image"], batch["image"])
    # without random crops and flips both views are the same image (the same examples), and
    # the teacher's view is mixed with the same weight as the student's
    plain = student(*sets, "data.crop=none", "data.flip=False")
    _, same = _setup(plain, tmp_path)
    b = _first_batch(plain, same)
    np.testing.assert_array_equal(b["image"], b["teacher_image"])
    out = _prepare(same, b)
    assert not np.allclose(out["image"], b["image"])
    np.testing.assert_allclose(out["teacher_image"], out["image"], atol=1e-6)


def test_ensemble_of_two_copies_equals_the_teacher(teachers, consistent, tmp_path):
    s1, batch, o1 = consistent
    _, s2 = _setup(student("distill.mode=consistent", f"distill.teachers=['{teachers[0]}', '{teachers[0]}']"),
                   tmp_path)
    o2 = _prepare(s2, batch)
    np.testing.assert_array_equal(o1["image"], o2["image"])
    np.testing.assert_allclose(o1["teacher_probs"], o2["teacher_probs"], rtol=1e-6, atol=1e-7)
    logits = jnp.asarray(np.random.default_rng(0).normal(size=o1["teacher_probs"].shape), jnp.float32)
    np.testing.assert_allclose(s1.loss(logits, o1), s2.loss(logits, o2), rtol=1e-6)


def test_teacher_at_another_resolution_gets_the_view_resized(teachers, tmp_path):
    cfg = student("distill.mode=consistent", f"distill.teachers=['{teachers[0]}']", "data.image_size=14")
    _, setup = _setup(cfg, tmp_path)
    batch = _first_batch(cfg, setup)
    assert batch["image"].shape[1:3] == (28, 28)  # the view at the teacher's (larger) size
    out = _prepare(setup, batch)
    assert out["image"].shape[1:3] == (14, 14)
    assert out["teacher_image"].shape[1:3] == (28, 28)


def test_fixed_cache_is_reused_and_invalidated_when_the_teacher_changes(teachers, tmp_path):
    cfg = student("distill.mode=fixed", f"distill.teachers=['{teachers[0]}']", "data.num_train_examples=256")
    exp = loop.build(cfg)
    mesh = mesh_lib.data_mesh()
    t0, p0 = distill.load_teachers([str(teachers[0])])
    t1, p1 = distill.load_teachers([str(teachers[1])])
    first, reused = distill.fixed_logits(exp.train_source, t0, p0, cfg, 28, mesh, tmp_path)
    assert not reused and first.shape == (len(exp.train_source), 1, 10)
    # keyed by example index: row i is the teacher on the central crop of example i
    logits = distill.teacher_logits(t0, cfg.data.value_range)
    image = distill.eval_transform(cfg, 28)(exp.train_source[5]["image"])[None]
    np.testing.assert_allclose(logits(p0, jnp.asarray(image))[0, 0], first[5, 0], rtol=1e-4, atol=1e-5)
    again, reused = distill.fixed_logits(exp.train_source, t0, p0, cfg, 28, mesh, tmp_path)
    assert reused
    np.testing.assert_array_equal(again, first)
    changed, reused = distill.fixed_logits(exp.train_source, t1, p1, cfg, 28, mesh, tmp_path)
    assert not reused and not np.allclose(changed, first)
    resized, reused = distill.fixed_logits(exp.train_source, t1, p1, cfg, 21, mesh, tmp_path)
    assert not reused
    # the training batches carry each example's cached logits
    setup = distill.setup(cfg, exp, tmp_path / "run", mesh, resuming=False, say=lambda s: None)
    it = pipeline.train_iterator(setup.source, global_batch_size=64, seed=0, shuffle=False,
                                 transform=setup.transform, extra_keys=setup.extra_keys)
    np.testing.assert_array_equal(next(it)[distill.TEACHER_LOGITS], first[:64])
    assert len(first) == 256
    it.close()


def _checksum(workdir):
    _, params, _ = loop.final_params(workdir)
    return distill.params_checksum(params)


def test_distillation_resumes_exactly_and_never_touches_the_teacher(teachers, tmp_path):
    teacher = tmp_path / "teacher"
    shutil.copytree(teachers[0], teacher)
    before = _checksum(teacher)
    sets = student_sets("distill.mode=consistent", f"distill.teachers=[{teacher}]", "train.ckpt_every=4")
    cfg = smoke(*sets)
    straight = loop.train(cfg, tmp_path / "straight", quiet=True)
    loop.train(cfg, tmp_path / "split", quiet=True, stop_after=4)
    # a changed teacher: resuming is refused with a clear error
    shutil.move(teacher, tmp_path / "kept")
    shutil.copytree(teachers[1], teacher)
    with pytest.raises(ConfigError, match="changed since this run started"):
        loop.train(cfg, tmp_path / "split", quiet=True)
    shutil.rmtree(teacher)
    shutil.move(tmp_path / "kept", teacher)
    # the same teacher: the run resumes (here through the command line) exactly
    assert cli.main(["distill", "--preset", "smoke", "--workdir", str(tmp_path / "split"), "--quiet",
                     "--set", *sets]) == 0
    _, a, _ = loop.final_params(tmp_path / "straight")
    _, b, _ = loop.final_params(tmp_path / "split")
    jax.tree.map(np.testing.assert_array_equal, a, b)
    split = json.loads((tmp_path / "split" / "summary.json").read_text())
    assert split["finished"] and split["step"] == 8
    for key in ("eval/test[:1000]/agreement", "eval/test[:1000]/kl", "eval/test[:1000]/teacher_top1"):
        assert straight[key] == split[key]
    # the teacher is unchanged, recorded by path and checksum, and not in the checkpoints
    assert _checksum(teacher) == before
    record = json.loads((tmp_path / "straight" / distill.TEACHERS_FILE).read_text())
    assert record == [{"workdir": str(teacher), "step": 8, "checksum": before,
                       "model": "vit-mu/7", "image_size": 28}]
    assert jax.tree.structure(a) == jax.tree.structure(loop.build(cfg, with_train=False).params)


def test_distill_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="needs teachers"):
        smoke("distill.mode=consistent")
    with pytest.raises(ConfigError, match="distill.mode='copy' is not known"):
        smoke("distill.mode=copy")
    with pytest.raises(ConfigError, match="temperature"):
        smoke("distill.mode=labels", "distill.temperature=0")
    with pytest.raises(ConfigError, match="distill.mixup_alpha"):
        smoke("distill.mode=labels", "data.mixup_alpha=0.5")
    with pytest.raises(ConfigError, match="distill.mode='off'"):
        distill.check_active(smoke())
    assert cli.main(["distill", "--workdir", str(tmp_path)]) == 2  # no teachers: a one-line error
    cfg = smoke("distill.mode=fixed", "distill.teachers=[runs/a, runs/b]")
    assert cfg.distill.teachers == ["runs/a", "runs/b"]
