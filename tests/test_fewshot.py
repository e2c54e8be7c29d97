"""Tests for vistas.evaluate.fewshot: the closed-form ridge solver, sampling, the evaluator on
real checkpoints (trained vs randomly initialised), the CLI and the periodic evaluator."""

import json

import numpy as np
import pytest
from conftest import requires_fashion_mnist, smoke

from vistas import cli
from vistas.data import catalog
from vistas.errors import ConfigError, DataError
from vistas.evaluate import fewshot, predict
from vistas.train import finetune, loop
from vistas.train.metrics import read_metrics

PRESENT_TARGETS = [n for n in catalog.TRANSFER_TARGETS if catalog.is_present(n)]


def direct_ridge(x, labels, num_classes, l2):
    """The ridge normal equations (AᵀA + λI) W = AᵀY solved directly, on the same design."""
    x = np.asarray(x, np.float64)
    mean, std = x.mean(0, keepdims=True), x.std(0, keepdims=True) + 1e-5
    a = fewshot.design_matrix(x, mean, std)
    y = fewshot.targets(labels, num_classes)
    return np.linalg.solve(a.T @ a + l2 * np.eye(a.shape[1]), a.T @ y)


@pytest.mark.parametrize("n,d", [(300, 40), (30, 64)], ids=["N>=D", "N<D"])
def test_closed_form_matches_direct_solve_for_every_l2(n, d):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, d)) * rng.uniform(0.1, 5.0, size=d) + rng.normal(size=d)
    labels = rng.integers(0, 5, n)
    cache = fewshot.ridge_cache(x, labels, 5)
    assert cache.eigvals.shape == (min(n, d + 1),)  # the smaller Gram matrix was decomposed
    for l2 in (2.0**-3, 1.0, 2.0**10, 2.0**14):
        expected = direct_ridge(x, labels, 5, l2)
        got = fewshot.ridge_weights(cache, l2)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
        # the folded classifier scores raw features exactly as the design matrix does
        w, b = fewshot.linear_classifier(cache, l2)
        a = fewshot.design_matrix(x, cache.mean, cache.std)
        np.testing.assert_allclose(x @ w + b, a @ got, rtol=1e-7, atol=1e-7)


def test_ridge_accuracy_on_separable_and_shuffled_labels():
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(4, 16)) * 5
    labels = np.repeat(np.arange(4), 50)
    x = centres[labels] + rng.normal(size=(200, 16))
    cache = fewshot.ridge_cache(x[::2], labels[::2], 4)
    acc = fewshot.ridge_accuracy(cache, [1.0, 1024.0], x[1::2], labels[1::2])
    assert acc.shape == (2,) and (acc == 1.0).all()
    shuffled = rng.permutation(labels[1::2])
    assert fewshot.ridge_accuracy(cache, [1.0], x[1::2], shuffled)[0] < 0.6


def test_sample_is_seeded_per_class_and_disjoint_from_validation():
    labels = np.repeat(np.arange(3), 40)[np.random.default_rng(0).permutation(120)]
    few, val = fewshot.sample(labels, 3, shots=5, seed=0, val_per_class=10)
    assert np.bincount(labels[few], minlength=3).tolist() == [5, 5, 5]
    assert np.bincount(labels[val], minlength=3).tolist() == [10, 10, 10]
    assert not set(few) & set(val)
    again, _ = fewshot.sample(labels, 3, shots=5, seed=0, val_per_class=10)
    other, _ = fewshot.sample(labels, 3, shots=5, seed=1, val_per_class=10)
    np.testing.assert_array_equal(few, again)
    assert not np.array_equal(few, other)
    with pytest.raises(DataError, match="class 0 has 40 training examples, fewer than the 35 shots"):
        fewshot.sample(labels, 3, shots=35, seed=0, val_per_class=10)


def test_bad_options_are_one_line_errors():
    with pytest.raises(ConfigError, match="multi-label"):
        fewshot.check_options(datasets=["fashion_mnist_pairs"], shots=[1], seeds=1, l2=1.0,
                              l2_grid=[], max_test_examples=None)
    with pytest.raises(ConfigError, match=r"shots=\[0\]"):
        fewshot.check_options(datasets=["mnist_5k"], shots=[0], seeds=1, l2=1.0, l2_grid=[],
                              max_test_examples=None)
    with pytest.raises(ConfigError, match="must be positive"):
        fewshot.check_options(datasets=["mnist_5k"], shots=[1], seeds=1, l2=-1.0, l2_grid=[],
                              max_test_examples=None)
    with pytest.raises(DataError, match="unknown dataset 'mnist5k'.*mnist_5k"):
        fewshot.check_options(datasets=["mnist5k"], shots=[1], seeds=1, l2=1.0, l2_grid=[],
                              max_test_examples=None)


# --- on real checkpoints ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def upstream(transfer_upstream):
    return transfer_upstream


@requires_fashion_mnist
@pytest.mark.slow
def test_trained_features_beat_random_ones(upstream, monkeypatch):
    cfg, graphdef, rest, params, step = finetune.restore_params(upstream)
    assert step == 150
    cfg.fewshot.shots, cfg.fewshot.seeds, cfg.fewshot.max_test_examples = [10], 2, 500
    evaluator = fewshot.from_config(cfg, graphdef, rest, datasets=PRESENT_TARGETS)
    calls = []
    real_outputs = predict.outputs
    monkeypatch.setattr(predict, "outputs", lambda *a, **k: calls.append(1) or real_outputs(*a, **k))
    trained = evaluator(params)["results"]
    assert len(calls) == 2 * len(PRESENT_TARGETS)  # features once per split, not per shot/seed/L2
    untrained = evaluator(fewshot.random_params(cfg))["results"]
    gaps = {n: trained[n]["10"]["mean"] - untrained[n]["10"]["mean"] for n in PRESENT_TARGETS}
    assert gaps["fashion_mnist"] > 0.15, gaps  # the upstream task itself: far above
    for name in PRESENT_TARGETS:
        r = trained[name]["10"]
        assert len(r["accuracy"]) == 2 and r["l2"] == [1024.0, 1024.0]
        assert r["mean"] > 1.5 / catalog.get_info(name).num_classes, (name, r)  # above chance


@requires_fashion_mnist
def test_cli_prints_a_table_and_writes_json(upstream, capsys):
    args = ["fewshot", "--workdir", str(upstream), "--datasets", "fashion_mnist", "lfw_faces",
            "--shots", "1,5", "--seeds", "2", "--max-test-examples", "300"]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert "fashion_mnist" in out and "lfw_faces" in out and "5-shot" in out and "±" in out
    report = json.loads((upstream / "fewshot_150.json").read_text())
    assert report["step"] == 150 and report["shots"] == [1, 5] and report["seeds"] == 2
    assert set(report["results"]) == {"fashion_mnist", "lfw_faces"}
    assert report["seconds"]["solve_total"] >= 0 and report["seconds"]["features_total"] > 0
    # choosing L2 on a validation part: each sample records the strength it chose
    assert cli.main([*args[:3], "--datasets", "optdigits", "--shots", "5", "--seeds", "2",
                     "--l2-grid", "0.25,16,1024", "--json"]) == 0
    chosen = json.loads(capsys.readouterr().out)["results"]["optdigits"]["5"]["l2"]
    assert len(chosen) == 2 and set(chosen) <= {0.25, 16.0, 1024.0}
    assert cli.main([*args, "--random-init"]) == 0
    assert "randomly initialised model" in capsys.readouterr().out
    baseline = json.loads((upstream / "fewshot_random_init.json").read_text())
    assert baseline["step"] is None
    assert baseline["results"]["fashion_mnist"]["5"]["mean"] < report["results"]["fashion_mnist"]["5"]["mean"]
    assert cli.main(["fewshot", "--workdir", str(upstream), "--datasets", "nope"]) == 2
    assert "unknown dataset 'nope'" in capsys.readouterr().err


@requires_fashion_mnist
@pytest.mark.slow
def test_periodic_fewshot_goes_to_metrics_and_tensorboard(tmp_path):
    cfg = smoke("train.duration=8", "schedule.warmup=2", "train.eval_every=8",
                "fewshot.datasets=['lfw_faces']",
                "fewshot.shots=[2, 5]", "fewshot.seeds=2", "fewshot.every=4")
    loop.train(cfg, tmp_path / "run", quiet=True)
    rows = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl")
            if "fewshot/lfw_faces/5shot" in r]
    assert [r["step"] for r in rows] == [4, 8]
    assert all(0.0 <= r["fewshot/lfw_faces/2shot"] <= 1.0 for r in rows)
    assert "fewshot/lfw_faces/5shot" in tensorboard_tags(tmp_path / "run" / "tensorboard")


def tensorboard_tags(directory):
    """Scalar tags in the TFRecord event files of ``directory``."""
    import struct

    from tensorboardX.proto import event_pb2

    tags = set()
    for path in directory.glob("events.out.tfevents*"):
        data = path.read_bytes()
        pos = 0
        while pos + 12 <= len(data):
            (length,) = struct.unpack("<Q", data[pos:pos + 8])
            event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
            tags |= {v.tag for v in event.summary.value}
            pos += 12 + length + 4
    return tags
