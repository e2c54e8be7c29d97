"""Tests for vistas.data.pipeline: determinism, exact resume, sharding, eval padding."""

import itertools
import json

import numpy as np
import pytest

from vistas.data import catalog, pipeline, sources, transforms
from vistas.errors import DataError

N = 50


def toy_source(n=N):
    """Example i: label i, image filled with i (so batches can be traced back to examples)."""
    images = np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None, None], (n, 3, 3, 1))
    return sources.ArraySource(np.ascontiguousarray(images), np.arange(n), num_classes=n)


def noisy(image, rng):
    """Augmentation whose output reveals the RNG stream it got."""
    return image.astype(np.float32) + np.float32(rng.random())


def take(it, k):
    return [next(it) for _ in range(k)]


def assert_same_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for key in x:
            assert x[key].dtype == y[key].dtype
            np.testing.assert_array_equal(x[key], y[key])


def make(seed=0, batch=8, **kw):
    return pipeline.train_iterator(toy_source(), global_batch_size=batch, seed=seed,
                                   transform=noisy, **kw)


def test_batches_shape_dtype_and_epochs():
    it = make(batch=10)
    assert it.steps_per_epoch == 5.0
    batches = take(it, 10)  # two epochs
    for b in batches:
        assert b["image"].shape == (10, 3, 3, 1) and b["image"].dtype == np.float32
        assert b["label"].shape == (10,) and b["label"].dtype == np.int32
        np.testing.assert_array_equal(np.floor(b["image"][:, 0, 0, 0]), b["label"])
    epoch1 = np.concatenate([b["label"] for b in batches[:5]])
    epoch2 = np.concatenate([b["label"] for b in batches[5:]])
    assert sorted(epoch1) == list(range(N)) and sorted(epoch2) == list(range(N))
    assert not np.array_equal(epoch1, epoch2)  # reshuffled per epoch
    assert not np.array_equal(epoch1, np.arange(N))


def test_batches_span_epoch_boundary():
    batches = take(make(batch=8), 25)  # 200 examples = 4 epochs of 50, no example dropped
    labels = np.concatenate([b["label"] for b in batches])
    for e in range(4):
        assert sorted(labels[e * N:(e + 1) * N]) == list(range(N))


def test_no_shuffle_is_sequential():
    batches = take(make(batch=8, shuffle=False), 7)
    labels = np.concatenate([b["label"] for b in batches])
    np.testing.assert_array_equal(labels, np.arange(56) % N)


def test_determinism_same_and_different_seed():
    assert_same_batches(take(make(seed=3), 8), take(make(seed=3), 8))
    a, b = take(make(seed=3), 8), take(make(seed=4), 8)
    assert not all(np.array_equal(x["label"], y["label"]) for x, y in zip(a, b, strict=True))


def test_threads_do_not_change_batches():
    ref = take(make(seed=1, num_threads=0), 12)
    assert_same_batches(ref, take(make(seed=1, num_threads=3, prefetch=5), 12))
    assert_same_batches(ref, take(make(seed=1, prefetch=0), 12))


@pytest.mark.parametrize("k", [0, 1, 7, 13])
def test_exact_resume(k):
    it = make(seed=5)
    take(it, k)
    state = it.get_state()
    state = json.loads(json.dumps(state))  # saved in a checkpoint as JSON
    expected = take(it, 6)
    fresh = make(seed=5)
    fresh.set_state(state)
    assert_same_batches(expected, take(fresh, 6))
    assert fresh.get_state()["step"] == k + 6


def test_set_state_mid_stream_rewinds():
    it = make(seed=2)
    take(it, 3)
    state = it.get_state()
    expected = take(it, 4)
    take(it, 5)
    it.set_state(state)
    assert_same_batches(expected, take(it, 4))


def test_set_state_rejects_other_pipelines():
    state = make(seed=1).get_state()
    with pytest.raises(DataError, match="seed=1 but this pipeline has seed=2"):
        make(seed=2).set_state(state)
    with pytest.raises(DataError, match="global_batch_size"):
        make(seed=1, batch=16).set_state(state)
    with pytest.raises(DataError, match="not a data iterator state"):
        make(seed=1).set_state({"step": 3})


def test_sharding_matches_global_batch_and_is_disjoint():
    ref = take(make(seed=7, batch=12), 10)
    shards = [take(make(seed=7, batch=12, process_index=p, process_count=2), 10) for p in range(2)]
    # Within the first epoch (4 steps x 12 of 50 examples) no example is read twice.
    first_epoch = [s["label"] for shard in shards for s in shard[:4]]
    assert len(set(np.concatenate(first_epoch).tolist())) == 48
    for step, full in enumerate(ref):
        a, b = shards[0][step], shards[1][step]
        assert a["label"].shape == (6,)
        # Same examples and the same augmentation as on one process.
        for key in ("image", "label"):
            np.testing.assert_array_equal(np.concatenate([a[key], b[key]]), full[key])


def test_resume_on_another_process_count():
    one = make(seed=9, batch=12)
    take(one, 4)
    state = one.get_state()
    expected = take(one, 3)
    parts = []
    for p in range(3):
        it = make(seed=9, batch=12, process_index=p, process_count=3)
        it.set_state(state)
        parts.append(take(it, 3))
    for step in range(3):
        np.testing.assert_array_equal(
            np.concatenate([parts[p][step]["image"] for p in range(3)]), expected[step]["image"])


def test_bad_batch_arguments():
    with pytest.raises(DataError, match="not divisible by the process count 3"):
        make(batch=8, process_index=0, process_count=3)
    with pytest.raises(DataError, match="global_batch_size must be a positive integer"):
        make(batch=0)
    with pytest.raises(DataError, match="process_index"):
        make(batch=8, process_index=2, process_count=2)


@pytest.mark.parametrize(
    "n,batch,procs", [(10, 4, 1), (10, 6, 3), (7, 3, 3), (50, 8, 2), (5, 12, 3)]
)
def test_eval_covers_every_example_once(n, batch, procs):
    src = toy_source(n)
    tf = transforms.make_eval_transform(image_size=3, value_range=(0.0, 255.0))
    seen, counts = [], []
    for p in range(procs):
        batches = list(pipeline.eval_batches(src, global_batch_size=batch, transform=tf,
                                             process_index=p, process_count=procs))
        counts.append(len(batches))
        for b in batches:
            assert b["image"].shape == (batch // procs, 3, 3, 1) and b["image"].dtype == np.float32
            assert b["mask"].dtype == bool and b["label"].dtype == np.int32
            np.testing.assert_array_equal(b["image"][b["mask"]][:, 0, 0, 0], b["label"][b["mask"]])
            seen += b["label"][b["mask"]].tolist()
    assert counts == [pipeline.num_eval_batches(n, batch)] * procs
    assert sorted(seen) == list(range(n))


def test_num_eval_batches():
    assert pipeline.num_eval_batches(10, 4) == 3
    assert pipeline.num_eval_batches(8, 4) == 2
    assert pipeline.num_eval_batches(1, 128) == 1


@pytest.mark.skipif(not catalog.is_present("fashion_mnist"), reason="Fashion-MNIST not installed")
def test_fashion_mnist_train_batches():
    src = sources.load_source("fashion_mnist", "train")
    for crop in ("random_pad", "inception"):
        tf = transforms.make_train_transform(image_size=28, crop=crop)
        it = pipeline.train_iterator(src, global_batch_size=64, seed=0, transform=tf)
        for batch in itertools.islice(it, 3):
            assert batch["image"].shape == (64, 28, 28, 1)
            assert -1.0 <= batch["image"].min() and batch["image"].max() <= 1.0
            assert batch["label"].min() >= 0 and batch["label"].max() <= 9
    test = sources.load_source("fashion_mnist", "test[:1000]")
    ev = transforms.make_eval_transform(image_size=28)
    masks = [b["mask"] for b in pipeline.eval_batches(test, global_batch_size=384, transform=ev)]
    assert len(masks) == 3 and sum(m.sum() for m in masks) == 1000
