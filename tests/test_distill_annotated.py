"""Offline "annotated" distillation (distill.mode=annotated): the teacher annotates K views of
every training image once, stored in shards; the student trains on them without the teacher."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import requires_fashion_mnist, smoke

from vistas import cli, runs
from vistas.config import Config
from vistas.data import annotations as store
from vistas.errors import ConfigError, DataError
from vistas.systems import mesh as mesh_lib
from vistas.train import distill, loop

pytestmark = [requires_fashion_mnist, pytest.mark.usefixtures("compilation_cache")]

TINY = ["model.depth=1", "model.width=32", "model.mlp_dim=64", "model.num_heads=2", "schedule.warmup=2",
        "train.log_every=4", "train.duration=8", "train.eval_every=8", "train.ckpt_every=8",
        "train.progress=False", "data.eval_splits=['test[:200]']", "data.eval_batch_size=200"]
N, K, B = 128, 2, 32  # 256 views in 8 batches; 4 shards of 2 batches (VIEWS_PER_SHARD below)


@pytest.fixture(autouse=True)
def small_shards(monkeypatch):
    monkeypatch.setattr(store, "VIEWS_PER_SHARD", 64)


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    """Two tiny teachers (8 steps each, seeds 0 and 1)."""
    root = tmp_path_factory.mktemp("teachers")
    for seed in (0, 1):
        loop.train(smoke(*TINY, f"train.seed={seed}"), root / f"t{seed}", quiet=True)
    return root / "t0", root / "t1"


def student_sets(teacher, *overrides):
    return [*TINY, f"data.num_train_examples={N}", f"data.batch_size={B}", "data.crop=inception",
            "data.flip=True", "distill.mode=annotated", f"distill.views_per_example={K}",
            f"distill.teachers=['{teacher}']", *overrides]


def _annotate(cfg, root, teacher_dir):
    exp = loop.build(cfg)
    teachers, frozen = distill.load_teachers([str(teacher_dir)])
    size = distill.view_size(cfg, teachers)
    return distill.annotate(exp.train_source, teachers, frozen, cfg, size, mesh_lib.data_mesh(), root,
                            say=lambda s: None)


@pytest.fixture
def teacher_calls(monkeypatch):
    """Images the teachers are run on, counted when the compiled programs execute."""
    seen = []
    make = distill.teacher_logits

    def counting(teachers, value_range):
        fn = make(teachers, value_range)

        def run(params, images):
            jax.debug.callback(lambda x: seen.append(len(x)), images[:, 0, 0, 0])
            return fn(params, images)

        return run

    monkeypatch.setattr(distill, "teacher_logits", counting)
    return seen


def test_views_are_annotated_once_and_the_student_never_runs_the_teacher(teachers, teacher_calls, tmp_path):
    cache = tmp_path / "shared"
    cfg = smoke(*student_sets(teachers[0], f"distill.cache_dir={cache}"))
    loop.train(cfg, tmp_path / "a", quiet=True)
    # N·K views annotated once, and the 200 test images once for the agreement metrics; the 8
    # student steps ran no teacher
    assert sum(teacher_calls) == N * K + 200
    root = cache / store.DIRNAME
    source = store.AnnotatedSource(root)
    assert len(source) == N * K and not (root / "annotating.json").exists()
    assert np.all(np.bincount([source[i]["index"] for i in range(len(source))], minlength=N) == K)
    # the stored logits are the teacher's on exactly the stored (mixed) pixels
    teacher, params = distill.load_teachers([str(teachers[0])])
    views = [source[i] for i in (0, 1, 100, 255)]
    x = distill.dequantize(jnp.asarray(np.stack([v["image"] for v in views])), cfg.data.value_range)
    want = distill.teacher_logits(teacher, cfg.data.value_range)(params, x)[0]
    np.testing.assert_allclose(np.stack([v["teacher_logits"][0] for v in views]), want, rtol=1e-4, atol=1e-5)
    assert any(0 < v["soft_label"].max() < 1 for v in views)  # mixed views (mixup alpha 1)
    # a second student reuses the set: the teacher runs on the test images only
    teacher_calls.clear()
    loop.train(smoke(*student_sets(teachers[0], f"distill.cache_dir={cache}", "train.duration=4")),
               tmp_path / "b", quiet=True)
    assert sum(teacher_calls) == 200
    # the step takes no teacher parameters; by default the set lives in the workdir
    exp = loop.build(cfg)
    task = distill.setup(smoke(*student_sets(teachers[0])), exp, tmp_path / "c", mesh_lib.data_mesh(),
                         resuming=False, say=lambda s: None)
    assert task.frozen == [] and (tmp_path / "c" / store.DIRNAME / store.MANIFEST).exists()


def _files(root):
    return {p.name: p.read_bytes() for p in sorted(root.iterdir()) if p.name != store.LOCK}


def test_killed_annotation_resumes_and_equals_an_uninterrupted_one(teachers, tmp_path, monkeypatch):
    cfg = smoke(*student_sets(teachers[0]))
    _annotate(cfg, tmp_path / "straight", teachers[0])
    commit, commits = store.ShardWriter.commit, []

    def killed_after_two(self):
        if len(commits) == 2:
            raise KeyboardInterrupt  # as if killed while writing the third shard
        commits.append(self.name)
        return commit(self)

    monkeypatch.setattr(store.ShardWriter, "commit", killed_after_two)
    with pytest.raises(KeyboardInterrupt):
        _annotate(cfg, tmp_path / "split", teachers[0])
    monkeypatch.setattr(store.ShardWriter, "commit", commit)
    split = tmp_path / "split"
    assert not (split / store.MANIFEST).exists() and (split / "annotating.json").exists()
    # a kill leaves a half-written shard behind, or a shard renamed but not yet described
    (split / ".views-00002-of-00004.array_record.tmp").write_bytes(b"half")
    (split / f"{commits[1]}.json").unlink()
    with pytest.raises(DataError, match="holds no finished"):  # never read while partial
        store.AnnotatedSource(split)
    written = []
    monkeypatch.setattr(store.ShardWriter, "commit", lambda self: written.append(self.name) or commit(self))
    source, reused = _annotate(cfg, split, teachers[0])
    assert not reused and written == [commits[1], "views-00002-of-00004.array_record",
                                      "views-00003-of-00004.array_record"]
    assert _files(split) == _files(tmp_path / "straight")
    source, reused = _annotate(cfg, split, teachers[0])
    assert reused and len(source) == N * K


def test_another_teacher_or_k_is_refused(teachers, tmp_path, monkeypatch):
    cfg = smoke(*student_sets(teachers[0]))
    root = tmp_path / store.DIRNAME
    _annotate(cfg, root, teachers[0])
    with pytest.raises(ConfigError, match=r"another teacher or config \(views_per_example: 2 -> 3\)") as e:
        _annotate(smoke(*student_sets(teachers[0], "distill.views_per_example=3")), root, teachers[0])
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match=r"another teacher or config \(teachers: vit-mu/7 \w+ -> vit-mu/7"):
        _annotate(smoke(*student_sets(teachers[1])), root, teachers[1])
    with pytest.raises(ConfigError, match="distill.cache_dir"):  # also a student sharing it
        loop.train(smoke(*student_sets(teachers[0], "distill.views_per_example=3",
                                       f"distill.cache_dir={tmp_path}")), tmp_path / "run", quiet=True)
    # a partial set of another key is refused too, and a changed manifest is not read
    monkeypatch.setattr(store.ShardWriter, "commit", lambda self: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        _annotate(cfg, tmp_path / "partial", teachers[0])
    with pytest.raises(ConfigError, match="views_per_example: 2 -> 3"):
        _annotate(smoke(*student_sets(teachers[0], "distill.views_per_example=3")), tmp_path / "partial",
                  teachers[0])
    manifest = json.loads((root / store.MANIFEST).read_text())
    manifest["num_views"] = 1
    (root / store.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(DataError, match="damaged or was edited"):
        _annotate(cfg, root, teachers[0])


def test_student_stopped_and_resumed_equals_an_uninterrupted_one(teachers, tmp_path):
    sets = student_sets(teachers[0], f"distill.cache_dir={tmp_path / 'cache'}", "train.ckpt_every=4")
    cfg = smoke(*sets)
    straight = loop.train(cfg, tmp_path / "straight", quiet=True)
    loop.train(cfg, tmp_path / "split", quiet=True, stop_after=4)
    # resumed through the command line
    assert cli.main(["distill", "--preset", "smoke", "--workdir", str(tmp_path / "split"), "--quiet",
                     "--set", *sets]) == 0
    _, a, _ = loop.final_params(tmp_path / "straight")
    _, b, _ = loop.final_params(tmp_path / "split")
    jax.tree.map(np.testing.assert_array_equal, a, b)
    split = json.loads((tmp_path / "split" / "summary.json").read_text())
    assert split["finished"] and split["eval/test[:200]/agreement"] == straight["eval/test[:200]/agreement"]
    # another seed draws other views (and another annotation set: refused in the shared place)
    with pytest.raises(ConfigError, match="seed: 0 -> 1"):
        loop.train(smoke(*sets, "train.seed=1"), tmp_path / "other", quiet=True)


def test_bad_views_per_example_is_one_line(tmp_path, capsys):
    for bad in ("0", "-2"):
        with pytest.raises(ConfigError, match=f"distill.views_per_example={bad} must be at least 1"):
            smoke("distill.mode=annotated", "distill.teachers=[runs/t]", f"distill.views_per_example={bad}")
    with pytest.raises(ConfigError, match="distill.views_per_example='many' has the wrong type"):
        smoke("distill.mode=annotated", "distill.teachers=[runs/t]", "distill.views_per_example=many")
    with pytest.raises(ConfigError, match="needs teachers"):
        smoke("distill.mode=annotated")
    assert cli.main(["distill", "--workdir", str(tmp_path), "--set", "distill.teachers=[runs/t]",
                     "distill.mode=annotated", "distill.views_per_example=0"]) == 2
    err = capsys.readouterr().err.strip()
    assert "views_per_example=0 must be at least 1" in err and "\n" not in err


def test_runs_saved_before_the_key_existed_still_resume(tmp_path):
    cfg = smoke("distill.mode=labels")
    saved = cfg.to_dict()
    del saved["distill"]["views_per_example"]
    (tmp_path / runs.CONFIG_FILE).write_text(json.dumps(saved))
    runs.check_same_run(tmp_path, cfg)  # the missing key counts at its default
    assert Config.from_dict(saved).distill.views_per_example == 4
