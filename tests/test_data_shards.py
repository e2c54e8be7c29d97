"""Image folders packed into ArrayRecord shards (vistas.data.shards) and read back."""

import json
import pathlib

import numpy as np
import pytest
from PIL import Image

from vistas.data import shards, sources
from vistas.errors import DataError


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("folder")
    rng = np.random.default_rng(0)
    for split, n in (("train", 7), ("test", 3)):
        for c in ("cat", "dog", "eel"):
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(n if c != "eel" or split == "train" else 1):
                a = rng.integers(0, 256, (rng.integers(9, 30), rng.integers(9, 30), 3), dtype=np.uint8)
                fmt = "png" if i % 2 else "jpeg"
                Image.fromarray(a).save(d / f"{i}.{fmt}")
    return root


def _same_as_folder(packed, folder, split):
    original = sources.load_source("folder", split, path=folder)
    source = sources.load_source("array_record", split, path=packed)
    assert len(source) == len(original) and source.class_names == original.class_names
    np.testing.assert_array_equal(source.labels, original.labels)
    for i in range(len(original)):
        a, b = source[i], original[i]
        assert int(a["label"]) == int(b["label"])
        np.testing.assert_array_equal(a["image"], b["image"])


def test_pack_round_trips_every_image_and_label(folder, tmp_path):
    manifest = shards.pack(folder, tmp_path, examples_per_shard=4, workers=2)
    assert manifest["splits"]["train"]["num_examples"] == 21
    assert len(manifest["splits"]["train"]["shards"]) == 6
    for split in ("train", "test"):
        _same_as_folder(tmp_path, folder, split)
    assert shards.verify(tmp_path) == {"test": 7, "train": 21}
    # a rerun keeps every complete shard
    logs = []
    shards.pack(folder, tmp_path, examples_per_shard=4, workers=2, log=logs.append)
    assert all("already packed" in line for line in logs)


def test_resume_rewrites_only_missing_shards(folder, tmp_path):
    shards.pack(folder, tmp_path, examples_per_shard=8, workers=1)
    victim = next(tmp_path.glob("train-00001-*.array_record"))
    victim.unlink()
    logs = []
    shards.pack(folder, tmp_path, examples_per_shard=8, workers=1, log=logs.append)
    assert sum("already packed" not in line for line in logs) == 1
    _same_as_folder(tmp_path, folder, "train")


def test_corrupt_shard_and_image_are_clear_errors(folder, tmp_path):
    packed = tmp_path / "packed"
    shards.pack(folder, packed, examples_per_shard=8, workers=1)
    shard = next(packed.glob("train-00000-*.array_record"))
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, different bytes
    shard.write_bytes(bytes(data))
    with pytest.raises(DataError, match="does not match its checksum"):
        shards.verify(packed)
    shard.write_bytes(bytes(data[:-10]))  # truncated
    with pytest.raises(DataError, match=r"shard .*train-00000.* bytes, the manifest says"):
        sources.load_source("array_record", "train", path=packed)
    bad = tmp_path / "bad"
    (bad / "a").mkdir(parents=True)
    (bad / "b").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(bad / "a" / "ok.png")
    (bad / "b" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(DataError, match=r"cannot decode image .*broken\.jpg"):
        shards.pack(bad, tmp_path / "out", workers=1)
    with pytest.raises(DataError, match="holds no manifest.json"):
        sources.load_source("array_record", "train", path=tmp_path / "bad")


def test_draft_decode_keeps_at_least_the_asked_size(tmp_path):
    a = np.random.default_rng(1).integers(0, 256, (400, 300, 3), dtype=np.uint8)
    path = tmp_path / "big.jpg"
    Image.fromarray(a).save(path, quality=95)
    data = path.read_bytes()
    full = shards.decode_bytes(data, 3, "big.jpg")
    small = shards.decode_bytes(data, 3, "big.jpg", draft_size=64)
    assert full.shape == (400, 300, 3)
    assert small.shape == (100, 75, 3)  # 1/4 scale: the smallest with both sides >= 64


def test_parquet_source_reads_a_hugging_face_export(folder, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    original = sources.load_source("folder", "train", path=folder)
    images = [{"bytes": pathlib.Path(p).read_bytes(), "path": pathlib.Path(p).name} for p in original.paths]
    table = pa.table({"image": images, "label": original.labels.astype(np.int64)})
    meta = {"info": {"features": {"image": {"_type": "Image"},
                                  "label": {"_type": "ClassLabel", "names": list(original.class_names)}}}}
    table = table.replace_schema_metadata({"huggingface": json.dumps(meta)})
    (tmp_path / "data").mkdir()
    pq.write_table(table.slice(0, 12), tmp_path / "data" / "train-00000-of-00002.parquet", row_group_size=5)
    pq.write_table(table.slice(12), tmp_path / "data" / "train-00001-of-00002.parquet", row_group_size=5)
    source = sources.load_source("parquet", "train", path=tmp_path)
    assert len(source) == len(original) and source.class_names == original.class_names
    for i in (0, 4, 5, 11, 12, 20, 3):
        np.testing.assert_array_equal(source[i]["image"], original[i]["image"])
        assert source[i]["label"] == original[i]["label"]
    with pytest.raises(DataError, match="no Parquet files for split 'test'"):
        sources.load_source("parquet", "test", path=tmp_path)


def test_worker_processes_give_the_same_batches_and_resume(folder, tmp_path):
    from vistas.data import pipeline, randaugment, transforms

    shards.pack(folder, tmp_path, examples_per_shard=8, workers=1)
    source = sources.load_source("array_record", "train", path=tmp_path, decode_size=16)
    transform = transforms.make_train_transform(image_size=16, augment=randaugment.RandAugment(2, 9.0))

    def batches(workers, start=0, n=3):
        it = pipeline.train_iterator(source, global_batch_size=4, seed=1, transform=transform,
                                     workers=workers)
        if start:
            it.set_state({**it.get_state(), "step": start})
        try:
            return [next(it) for _ in range(n)]
        finally:
            it.close()

    local = batches(0)
    parallel = batches(2, start=1, n=2)  # resumed at step 1 in two worker processes
    for a, b in zip(local[1:], parallel, strict=True):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], b["label"])


def test_weighted_mixture_draws_by_weight_and_trains(folder, tmp_path):
    shards.pack(folder, tmp_path, examples_per_shard=8, workers=1)
    entries = [(f"array_record:{tmp_path}", "train", 3.0), (f"folder:{folder}", "test", 1.0)]
    mix = sources.load_mixture(entries, seed=0)
    again = sources.load_mixture(entries, seed=0)
    assert len(mix) == 28 and mix.num_classes == 3
    np.testing.assert_array_equal(mix.which, again.which)
    big = sources.MixtureSource(mix.parts, [3.0, 1.0], seed=1, length=4000)
    assert abs(np.mean(big.which == 0) - 0.75) < 0.03
    # the folder split is used 4x over: every one of its 7 images appears, cycling
    counts = np.bincount(big.index[big.which == 1], minlength=7)
    assert counts.min() >= counts.max() - 1
    for i in (0, 5, 17):
        assert int(mix[i]["label"]) == int(mix.labels[i])
    with pytest.raises(DataError, match="needs a path"):
        sources.load_mixture([("folder", "train", 1.0)], seed=0)
    with pytest.raises(DataError, match="share one label space"):
        sources.MixtureSource([mix.parts[0], sources.ArraySource(np.zeros((2, 4, 4), np.uint8),
                                                                 np.array([0, 1]))], [1, 1])


def _tree(root: pathlib.Path) -> set[str]:
    """Every entry under ``root`` (hidden ones too), relative to it."""
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_a_failed_pack_keeps_the_packed_set(tmp_path):
    """Packing a folder with a corrupt image into a valid shard directory fails with one line
    naming the image and leaves the old set as it was: verify passes with the old counts,
    shards and manifest are unchanged, and nothing was created in the source folder. Once
    the image is removed, the pack completes, reusing the shards it can."""
    src, dst = tmp_path / "src", tmp_path / "packed"
    rng = np.random.default_rng(3)
    for c, n in (("a", 5), ("b", 4)):
        (src / c).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)).save(src / c / f"{i}.png")
    shards.pack(src, dst, examples_per_shard=4, workers=1)
    assert shards.verify(dst) == {"train": 9}
    before = {p.name: p.read_bytes() for p in dst.iterdir() if p.is_file()}
    (src / "b" / "zz_broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    src_before = _tree(src)
    with pytest.raises(DataError, match=r"cannot decode image .*zz_broken\.jpg") as e:
        shards.pack(src, dst, examples_per_shard=4, workers=1)
    assert "\n" not in str(e.value)
    assert shards.verify(dst) == {"train": 9}
    assert {p.name: p.read_bytes() for p in dst.iterdir() if p.is_file()} == before
    assert _tree(src) == src_before
    assert not [p for p in dst.rglob("*.tmp")]  # no half-written shard left behind
    (src / "b" / "zz_broken.jpg").unlink()
    Image.fromarray(rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)).save(src / "b" / "zz_new.png")
    logs = []
    shards.pack(src, dst, examples_per_shard=4, workers=1, log=logs.append)
    assert shards.verify(dst) == {"train": 10}
    assert sum("already packed" in line for line in logs) == 2  # the first two shards are unchanged
    _same_as_folder(dst, src, "train")
    assert [p.name for p in dst.iterdir() if p.name.startswith(".")] == []
    shards.pack(src, dst, examples_per_shard=8, workers=1)  # another shard count: the old files go
    assert sorted(p.name for p in dst.glob("*.array_record")) == [
        "train-00000-of-00002.array_record", "train-00001-of-00002.array_record"]
    assert shards.verify(dst) == {"train": 10}


def test_verify_an_image_folder_lists_every_bad_image(tmp_path, capsys):
    """``vistas data verify`` on an image folder (with or without split folders) decodes
    every image and names every bad one, one line each, then a summary; status 2 when any
    is bad, 0 otherwise. ``shards.verify_folder`` is the same check in Python. A shard
    directory is still checked against its manifest."""
    import io

    from vistas import cli

    rng = np.random.default_rng(5)
    root = tmp_path / "images"
    for split, c, n in (("train", "a", 3), ("train", "b", 2), ("test", "a", 1), ("test", "b", 1)):
        (root / split / c).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (9, 7, 3), dtype=np.uint8)).save(root / split / c / f"{i}.png")
    (root / "train" / "b" / "empty.png").write_bytes(b"")
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    (root / "test" / "b" / "cut.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])

    report = shards.verify_folder(root, workers=2)
    assert report.counts == {"test": 3, "train": 6}
    assert [pathlib.Path(p).name for p, _ in report.bad] == ["cut.jpg", "empty.png"]
    assert all("cannot decode image" in msg and "\n" not in msg for _, msg in report.bad)
    assert not report.ok

    assert cli.main(["data", "verify", str(root)]) == 2
    out, err = capsys.readouterr()
    lines = (out + err).strip().splitlines()
    bad_lines = [line for line in lines if "cannot decode image" in line]
    assert len(bad_lines) == 2
    assert any("cut.jpg" in line for line in bad_lines) and any("empty.png" in line for line in bad_lines)
    assert err.strip().splitlines()[-1].startswith("vistas: error: ")
    assert "2 of 9 images" in err

    (root / "train" / "b" / "empty.png").unlink()
    (root / "test" / "b" / "cut.jpg").unlink()
    flat = root / "train"  # no split folders: one split, "train"
    assert shards.verify_folder(flat).ok and shards.verify_folder(flat).counts == {"train": 5}
    assert cli.main(["data", "verify", str(root)]) == 0
    out, err = capsys.readouterr()
    assert "train 5 images" in out and "test 2 images" in out and "every image decodes" in out and not err

    shards.pack(root, tmp_path / "packed", workers=1)
    assert cli.main(["data", "verify", str(tmp_path / "packed")]) == 0
    assert "(checksums match)" in capsys.readouterr().out


def _edit(path: pathlib.Path, change) -> None:
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest, indent=1))


def test_a_hand_edited_manifest_is_refused_and_an_old_one_still_loads(folder, tmp_path, capsys):
    """The manifest carries a SHA-256 of its own content (``manifest_sha256``, everything
    but itself, in a canonical form): an edit of ``num_classes``, a record count or a class
    name is one line from ``vistas data verify`` and from the training source; reformatting
    alone is not an edit. A manifest written before the checksum (none) still loads; verify
    says it has none, and the counts it holds are still checked against each other."""
    from vistas import cli

    packed = tmp_path / "packed"
    manifest = shards.pack(folder, packed, examples_per_shard=8, workers=1)
    path = packed / shards.MANIFEST
    original = path.read_text()
    assert json.loads(original)["manifest_sha256"] == manifest["manifest_sha256"]
    path.write_text(json.dumps(json.loads(original), indent=4, sort_keys=True))  # reformatted
    assert shards.verify(packed) == {"test": 7, "train": 21}

    def set_classes(m):
        m["num_classes"] = 2

    def set_records(m):
        m["splits"]["train"]["shards"][0]["num_records"] += 1
        m["splits"]["train"]["num_examples"] += 1

    def swap_names(m):
        m["class_names"] = m["class_names"][::-1]

    for change in (set_classes, set_records, swap_names):
        path.write_text(original)
        _edit(path, change)
        with pytest.raises(DataError) as e:
            shards.verify(packed)
        msg = str(e.value)
        assert "\n" not in msg and f"{path} does not match its own checksum" in msg, msg
        with pytest.raises(DataError, match="does not match its own checksum"):
            sources.load_source("array_record", "train", path=packed)
        assert cli.main(["data", "verify", str(packed)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "does not match its own checksum" in err, err
    path.write_text(original)
    _edit(path, lambda m: m.update(manifest_sha256="0" * 64))
    with pytest.raises(DataError, match="does not match its own checksum"):
        shards.verify(packed)

    # written before manifests had a checksum: loads, and verify says so
    path.write_text(original)
    _edit(path, lambda m: m.pop("manifest_sha256"))
    logs = []
    assert shards.verify(packed, log=logs.append) == {"test": 7, "train": 21}
    assert any("has no checksum of its own" in line for line in logs), logs
    _same_as_folder(packed, folder, "train")
    assert cli.main(["data", "verify", str(packed)]) == 0
    assert "has no checksum of its own" in capsys.readouterr().out
    # ... and its counts are still checked against each other and the labels
    for change, culprit in ((set_classes, "num_classes 2 but 3 class names"),
                            (set_records, r"train-00000-of-00003.array_record holds 8 records, the manifest says 9"),
                            (lambda m: m["splits"]["train"]["shards"][0].update(num_records=9),
                             "train has num_examples 21 but its shards hold 22 records")):
        path.write_text(original)
        _edit(path, lambda m: m.pop("manifest_sha256"))
        _edit(path, change)
        with pytest.raises(DataError, match=culprit):
            shards.verify(packed)
    path.write_text(original)
    _edit(path, lambda m: (m.pop("manifest_sha256"), m.update(num_classes=2, class_names=["cat", "dog"])))
    with pytest.raises(DataError, match=r"labels must lie in \[0, 2\), got \[0, 2\]"):
        sources.load_source("array_record", "train", path=packed)
    # a pack over it writes a manifest with a checksum again
    shards.pack(folder, packed, examples_per_shard=8, workers=1)
    assert "manifest_sha256" in json.loads(path.read_text())
    assert shards.verify(packed) == {"test": 7, "train": 21}
