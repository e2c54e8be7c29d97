"""Class labels belong to the dataset, not to a split: every split numbers classes the same
way, a split with a class the training split lacks is one line, and a run records its class
names."""

import json

import numpy as np
import pytest
from conftest import requires_fashion_mnist
from PIL import Image
from reliability_helpers import tiny

from vistas import runs
from vistas.data import shards, sources
from vistas.errors import DataError
from vistas.train import loop


def _folder(root, split_classes):
    rng = np.random.default_rng(0)
    for split, classes in split_classes.items():
        for c in classes:
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(3):
                Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(d / f"{i}.png")
    return root


def test_every_split_of_a_folder_uses_the_training_splits_classes(tmp_path):
    root = _folder(tmp_path / "data", {"train": ["ant", "bee", "cat"], "test": ["cat"], "val": ["bee", "cat"]})
    test = sources.load_source("folder", "test", path=str(root))
    assert test.num_classes == 3 and set(np.asarray(test.labels).tolist()) == {2}
    assert test.class_names == ("ant", "bee", "cat")
    val = sources.load_source("folder", "val", path=str(root))
    assert sorted(set(np.asarray(val.labels).tolist())) == [1, 2]
    # the same data packed into shards numbers the classes the same way
    packed = shards.pack(root, tmp_path / "shards")
    assert packed["class_names"] == ["ant", "bee", "cat"]
    shard_test = sources.load_source("array_record", "test", path=str(tmp_path / "shards"))
    assert [int(shard_test[i]["label"]) for i in range(len(shard_test))] == [2, 2, 2]


def test_a_class_the_training_split_lacks_and_a_single_class_are_one_line(tmp_path):
    root = _folder(tmp_path / "a", {"train": ["ant", "bee"], "test": ["cat"]})
    with pytest.raises(DataError, match=r"class folder .*cat is not a class of this dataset \(2 classes: ant, bee\)") as e:
        sources.load_source("folder", "test", path=str(root))
    assert "\n" not in str(e.value)
    one = _folder(tmp_path / "b", {"train": ["ant"], "test": ["ant"]})
    with pytest.raises(DataError, match="has 1 class .*at least 2 class folders"):
        sources.load_source("folder", "train", path=str(one))


def test_npz_labels_are_checked_against_the_training_split(tmp_path):
    x = np.zeros((4, 8, 8), np.uint8)
    path = tmp_path / "d.npz"
    np.savez(path, x_train=x, y_train=np.array([0, 1, 2, 1]), x_test=x, y_test=np.array([0, 1, 2, 1]))
    assert sources.load_source("npz", "test", path=str(path)).num_classes == 3
    np.savez(path, x_train=x, y_train=np.array([0, 1, 2, 1]), x_test=x, y_test=np.array([0, 1, 2, 7]))
    with pytest.raises(DataError, match=r"labels must lie in \[0, 3\), got \[0, 7\]"):
        sources.load_source("npz", "test", path=str(path))
    np.savez(path, x_train=x, y_train=np.array([0, 1, 10**9, 1]), x_test=x, y_test=np.array([0, 1, 0, 1]))
    with pytest.raises(DataError, match="would make 1,000,000,001 classes"):
        sources.load_source("npz", "test", path=str(path))


@requires_fashion_mnist
@pytest.mark.slow
def test_a_run_records_its_class_names(tmp_path):
    loop.train(tiny("train.duration=2", "schedule.warmup=1"), tmp_path / "run", quiet=True)
    names = runs.class_names(tmp_path / "run")
    assert len(names) == 10 and names[0] == "T-shirt/top"
    assert json.loads((tmp_path / "run" / runs.CLASSES_FILE).read_text()) == names
