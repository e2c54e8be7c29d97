"""Tests for vistas.data.catalog: finding, fetching and listing known datasets."""

import dataclasses
import gzip
import hashlib
import json
import struct

import numpy as np
import pytest

from vistas.data import catalog, sources
from vistas.errors import DataError

FILES = (
    "train-images-idx3-ubyte", "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte",
)


def idx_bytes(array: np.ndarray) -> bytes:
    code = {np.dtype(np.uint8): 0x08, np.dtype(np.int32): 0x0C}[array.dtype]
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_fake_fashion_mnist(directory, *, gz=True, n_train=12, n_test=5):
    """Writes the 4 IDX files of a tiny Fashion-MNIST look-alike; returns {file name: md5}."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    arrays = {
        FILES[0]: rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        FILES[1]: (np.arange(n_train) % 10).astype(np.uint8),
        FILES[2]: rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        FILES[3]: (np.arange(n_test) % 10).astype(np.uint8),
    }
    md5 = {}
    for name, array in arrays.items():
        data = idx_bytes(array)
        if gz:
            data, name = gzip.compress(data), f"{name}.gz"
        (directory / name).write_bytes(data)
        md5[name] = hashlib.md5(data).hexdigest()
    return md5


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """Fashion-MNIST visible nowhere: no env dir, empty cache, a missing system dir, no apt."""
    monkeypatch.delenv("VISTAS_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    info = dataclasses.replace(catalog.CATALOG["fashion_mnist"],
                               system_dir=str(tmp_path / "system"))
    monkeypatch.setitem(catalog.CATALOG, "fashion_mnist", info)
    apt_calls = []
    monkeypatch.setattr(catalog, "_apt_install", lambda pkg: apt_calls.append(pkg) or False)
    return apt_calls


def test_catalog_entry():
    info = catalog.CATALOG["fashion_mnist"]
    assert info.num_classes == 10 and len(info.class_names) == 10
    assert info.image_shape == (28, 28, 1)
    assert dict(info.splits) == {"train": 60000, "test": 10000}
    assert sorted(info.md5) == sorted(f"{f}.gz" for f in FILES)


def test_find_search_order(tmp_path, monkeypatch, isolated):
    assert catalog.find_fashion_mnist() is None
    assert not catalog.is_present("fashion_mnist")
    env = tmp_path / "env"
    write_fake_fashion_mnist(env)  # $VISTAS_DATA_DIR itself
    monkeypatch.setenv("VISTAS_DATA_DIR", str(env))
    assert catalog.find_fashion_mnist() == env
    write_fake_fashion_mnist(env / "fashion_mnist", gz=False)  # ...then its sub-folder wins
    assert catalog.find_fashion_mnist() == env / "fashion_mnist"
    explicit = tmp_path / "explicit"
    write_fake_fashion_mnist(explicit)
    assert catalog.find_fashion_mnist(explicit) == explicit
    assert catalog.is_present("fashion_mnist", explicit)


def test_find_needs_all_four_files(tmp_path, isolated):
    d = tmp_path / "partial"
    write_fake_fashion_mnist(d)
    (d / "t10k-labels-idx1-ubyte.gz").unlink()
    assert catalog.find_fashion_mnist(d) is None


def test_unknown_name_suggests_closest():
    with pytest.raises(DataError, match=r"unknown dataset 'fashion_mnst'.*fashion_mnist.*"
                                        r"Did you mean 'fashion_mnist'"):
        catalog.is_present("fashion_mnst")
    with pytest.raises(DataError, match="known datasets: .*fashion_mnist.*mnist_5k"):
        catalog.fetch("imagenet21k")


def test_fetch_when_present_returns_dir(tmp_path, isolated):
    d = tmp_path / "here"
    write_fake_fashion_mnist(d)
    assert catalog.fetch("fashion_mnist", d) == d
    assert isolated == []  # no apt-get attempted


def test_fetch_downloads_into_cache_with_md5(tmp_path, monkeypatch, isolated):
    remote = tmp_path / "remote"
    md5 = write_fake_fashion_mnist(remote, n_train=7)
    info = dataclasses.replace(catalog.CATALOG["fashion_mnist"], url=remote.as_uri() + "/", md5=md5)
    monkeypatch.setitem(catalog.CATALOG, "fashion_mnist", info)
    got = catalog.fetch("fashion_mnist")
    assert got == tmp_path / "cache" / "vistas" / "fashion_mnist"
    assert sorted(p.name for p in got.iterdir()) == sorted(md5)
    assert isolated == ["dataset-fashion-mnist"]  # apt tried first (and "failed")
    assert len(sources.load_source("fashion_mnist", "train")) == 7


def test_fetch_checksum_mismatch_leaves_no_files(tmp_path, monkeypatch, isolated):
    remote = tmp_path / "remote"
    md5 = write_fake_fashion_mnist(remote)
    md5 = {k: "0" * 32 for k in md5}
    info = dataclasses.replace(catalog.CATALOG["fashion_mnist"], url=remote.as_uri() + "/", md5=md5)
    monkeypatch.setitem(catalog.CATALOG, "fashion_mnist", info)
    with pytest.raises(DataError, match="checksum mismatch"):
        catalog.fetch("fashion_mnist")
    cache = tmp_path / "cache" / "vistas" / "fashion_mnist"
    assert list(cache.iterdir()) == []


def test_fetch_failure_says_what_to_do(tmp_path, monkeypatch, isolated):
    info = dataclasses.replace(catalog.CATALOG["fashion_mnist"],
                               url=(tmp_path / "nowhere").as_uri() + "/")
    monkeypatch.setitem(catalog.CATALOG, "fashion_mnist", info)
    with pytest.raises(DataError, match=r"cannot download fashion_mnist.*apt-get install "
                                        r"dataset-fashion-mnist.*VISTAS_DATA_DIR/fashion_mnist"):
        catalog.fetch("fashion_mnist")


def test_fetch_uses_apt_when_it_works(tmp_path, monkeypatch, isolated):
    system = tmp_path / "system"
    monkeypatch.setattr(catalog, "_apt_install",
                        lambda pkg: write_fake_fashion_mnist(system) and True)
    assert catalog.fetch("fashion_mnist") == system


def test_apt_install_runs_update_when_install_fails(monkeypatch):
    calls = []

    def fake_run(cmd, **kwargs):
        calls.append(cmd[:2])
        ok = cmd[1] == "update" or ["apt-get", "update"] in calls
        return type("R", (), {"returncode": 0 if ok else 100})()

    monkeypatch.setattr(catalog.os, "geteuid", lambda: 0)
    monkeypatch.setattr(catalog.shutil, "which", lambda name: "/usr/bin/" + name)
    monkeypatch.setattr(catalog.subprocess, "run", fake_run)
    assert catalog._apt_install("dataset-fashion-mnist")
    assert calls == [["apt-get", "install"], ["apt-get", "update"], ["apt-get", "install"]]
    calls.clear()
    monkeypatch.setattr(catalog.os, "geteuid", lambda: 1000)  # not root: no apt at all
    assert not catalog._apt_install("dataset-fashion-mnist")
    assert calls == []


def test_list_datasets(tmp_path, isolated):
    rows = catalog.list_datasets()
    row = next(r for r in rows if r["name"] == "fashion_mnist")
    assert row["present"] is False and row["location"] is None
    write_fake_fashion_mnist(tmp_path / "d")
    row = next(r for r in catalog.list_datasets(tmp_path / "d") if r["name"] == "fashion_mnist")
    assert row["present"] is True and row["location"] == str(tmp_path / "d")
    assert row["num_classes"] == 10 and row["splits"] == {"train": 60000, "test": 10000}
    assert row["how_to_get"]
    json.dumps(rows)
