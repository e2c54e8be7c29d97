"""Multi-hot labels end to end: sources (Fashion-MNIST pairs, arrays), the pipeline, losses,
precision@1, and a run that trains and evaluates on pairs of real images."""

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import requires_fashion_mnist, smoke

from vistas.data import pipeline, sources, transforms
from vistas.errors import DataError
from vistas.train import loop, losses
from vistas.train import step as step_lib
from vistas.train.metrics import read_metrics


@requires_fashion_mnist
def test_pairs_show_both_items_and_carry_both_labels():
    single = sources.load_source("fashion_mnist", "test")
    pairs = sources.load_source("fashion_mnist_pairs", "test")
    assert len(pairs) == len(single) and pairs.multi_label and pairs.image_shape == (56, 56, 1)
    for i in (0, 17, 9999):
        ex = pairs[i]
        j = int(pairs.partner[i])
        np.testing.assert_array_equal(ex["image"][14:42, :28], single[i]["image"])
        np.testing.assert_array_equal(ex["image"][14:42, 28:], single[j]["image"])
        assert not ex["image"][:14].any() and not ex["image"][42:].any()
        expected = {int(single.labels[i]), int(single.labels[j])}
        assert set(np.flatnonzero(ex["label"])) == expected
    assert (pairs.labels.sum(1) == 2).mean() > 0.85  # mostly two different classes
    again = sources.load_source("fashion_mnist_pairs", "test[:100]")
    assert len(again) == 100 and again.multi_label
    np.testing.assert_array_equal(again[5]["image"], pairs[5]["image"])  # pairs fixed per split


def test_array_source_accepts_multi_hot_labels_and_rejects_bad_ones():
    images = np.zeros((3, 4, 4), np.uint8)
    src = sources.ArraySource(images, np.array([[1, 0, 1], [0, 1, 0], [1, 1, 1]]))
    assert src.multi_label and src.num_classes == 3
    with pytest.raises(DataError, match="multi-hot labels must be 0 or 1"):
        sources.ArraySource(images, np.array([[2, 0, 0], [0, 1, 0], [1, 1, 1]]))
    with pytest.raises(DataError, match="3 columns, expected num_classes=4"):
        sources.ArraySource(images, np.eye(3, dtype=int), num_classes=4)


def test_pipeline_batches_multi_hot_labels_with_padding():
    labels = np.eye(4, dtype=np.int32)[[0, 1, 2, 3, 1]] + np.eye(4, dtype=np.int32)[[1, 2, 3, 0, 0]]
    src = sources.ArraySource(np.zeros((5, 8, 8, 1), np.uint8), labels)
    tf = transforms.make_eval_transform(image_size=8)
    batches = list(pipeline.eval_batches(src, global_batch_size=4, transform=tf))
    assert [b["label"].shape for b in batches] == [(4, 4), (4, 4)]
    np.testing.assert_array_equal(batches[1]["label"][0], labels[4])
    assert not batches[1]["label"][1:].any() and batches[1]["mask"].tolist() == [True] + [False] * 3
    train = pipeline.train_iterator(src, global_batch_size=2, seed=0, shuffle=False,
                                    transform=transforms.make_train_transform(image_size=8, crop="none"))
    first = next(train)
    train.close()
    assert first["label"].shape == (2, 4) and first["label"].dtype == np.int32


def test_losses_and_precision_at_1_on_multi_hot_labels():
    logits = jnp.array([[3.0, 1.0, -1.0], [0.0, 2.0, 0.5]])
    multi = jnp.array([[1, 0, 1], [1, 0, 1]])
    # precision@1: the top class of example 0 (class 0) is a label, that of example 1 (class 1) not
    np.testing.assert_array_equal(step_lib.correct_at_1(logits, multi), [1.0, 0.0])
    np.testing.assert_array_equal(step_lib.correct_at_1(logits, jnp.array([0, 2])), [1.0, 0.0])
    sp = np.log1p(np.exp(-np.asarray(logits)))  # softplus(-z): loss of a positive
    sn = np.log1p(np.exp(np.asarray(logits)))  # softplus(z): loss of a negative
    expected = [sp[0, 0] + sn[0, 1] + sp[0, 2], sp[1, 0] + sn[1, 1] + sp[1, 2]]
    np.testing.assert_allclose(losses.sigmoid_xent(logits, multi), expected, rtol=1e-6)
    # integer labels and their one-hot vectors give the same losses
    one_hot = jnp.eye(3, dtype=jnp.int32)[jnp.array([0, 2])]
    np.testing.assert_allclose(losses.sigmoid_xent(logits, one_hot),
                               losses.sigmoid_xent(logits, jnp.array([0, 2])), rtol=1e-6)
    np.testing.assert_allclose(losses.softmax_xent(logits, one_hot),
                               losses.softmax_xent(logits, jnp.array([0, 2])), rtol=1e-6)
    logp = np.asarray(logits) - np.log(np.exp(np.asarray(logits)).sum(1, keepdims=True))
    np.testing.assert_allclose(losses.softmax_xent(logits, multi),
                               -(logp[:, 0] + logp[:, 2]) / 2, rtol=1e-6)


@requires_fashion_mnist
@pytest.mark.slow
def test_multi_label_run_trains_and_evaluates_precision_at_1(tmp_path):
    cfg = smoke("data.dataset=fashion_mnist_pairs", "train.loss=sigmoid_xent",
                "model.head_bias_init=-2.0", "train.duration=64", "train.log_every=16",
                "train.eval_every=64", "train.ckpt_every=64",
                "data.eval_splits=['test[:1000]']")
    summary = loop.train(cfg, tmp_path / "pairs", quiet=True)
    assert summary["finished"]
    prec = summary["eval/test[:1000]/prec@1"]
    assert "eval/test[:1000]/top1" not in summary and "eval/test[:1000]/ece" not in summary
    assert prec > 0.5  # a constant guess scores about 0.2
    rows = [r for r in read_metrics(tmp_path / "pairs" / "metrics.jsonl") if "train/loss" in r]
    assert "train/prec@1" in rows[-1] and rows[-1]["train/loss"] < 0.92 * rows[0]["train/loss"]
    again = loop.evaluate_workdir(tmp_path / "pairs")
    assert again["eval/test[:1000]/prec@1"] == pytest.approx(prec, abs=1e-9)
