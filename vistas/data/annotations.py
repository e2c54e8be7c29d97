"""Annotated views in ArrayRecord shards: the store of ``distill.mode=annotated``.

A teacher annotates K augmented, mixed views of every training image once
(``vistas.train.distill.annotate``); each view is stored with the teacher logits on it, and
the student later trains on the stored views without running the teacher. This module is
the store: the record format, the resumable, shard-by-shard writing, the manifest and the
source that reads a finished set.

A set is a directory (by default ``WORKDIR/annotations``)::

    annotations/
      manifest.json                               written last: the set is complete
      annotating.json                             while annotating: the key being written
      views-00000-of-00004.array_record           whole batches of views, in position order
      views-00000-of-00004.array_record.json      the shard's description (key, range, sha256)
      .lock                                       held while a process annotates

Each record is one view: a magic tag, the int32 index of the example, of its mixup partner
and the example's label, then the view's pixels as uint8 ``[H, W, C]`` (quantised in the
run's value range; the teacher saw exactly these pixels), the teachers' float32 logits
``[n_teachers, K]`` and the mixed one-hot label, float32 ``[K]``.

Everything a set's content depends on is its *key* (teachers' checksums, K, seed,
augmentation, mixup, view size, data; ``distill.annotation_key``), recorded in
``annotating.json`` when annotating starts, in each shard's description and in the
manifest (sealed by its own SHA-256, as ``vistas data pack`` seals its manifests). A
directory holding a set (whole or partial) of another key is refused with one line naming
what differs, never read or overwritten; a partial set of the same key is resumed: a shard
is written under a temporary name, renamed when complete and then described, and a rerun
keeps every shard whose description and checksum match and writes the rest.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import pathlib
import struct
from collections.abc import Iterator

import numpy as np

from vistas.data.readers.array_record import manifest_digest, seal_manifest
from vistas.data.shards import file_sha256, shard_name
from vistas.errors import ConfigError, DataError
from vistas.files import atomic_write

FORMAT = "vistas-annotations/1"
MAGIC = b"VAN1"
_HEADER = struct.Struct("<4siii")  # magic, example index, partner index, label
DIRNAME = "annotations"
MANIFEST = "manifest.json"
PROGRESS = "annotating.json"
LOCK = ".lock"
VIEWS_PER_SHARD = 8192  # rounded down to whole batches, at least one


def key_digest(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


@dataclasses.dataclass(frozen=True)
class Layout:
    """The shapes of one record."""

    image_shape: tuple[int, int, int]
    num_teachers: int
    num_classes: int

    @property
    def image_bytes(self) -> int:
        return int(np.prod(self.image_shape))

    @property
    def record_bytes(self) -> int:
        return _HEADER.size + self.image_bytes + 4 * self.num_classes * (self.num_teachers + 1)

    def to_dict(self) -> dict:
        return {"image_shape": list(self.image_shape), "num_teachers": self.num_teachers,
                "num_classes": self.num_classes}


def encode(index: int, partner: int, label: int, image: np.ndarray, logits: np.ndarray,
           soft_label: np.ndarray) -> bytes:
    """One view: uint8 image [H, W, C], logits [n_teachers, K], soft label [K]."""
    return (_HEADER.pack(MAGIC, int(index), int(partner), int(label)) + np.asarray(image, np.uint8).tobytes()
            + np.asarray(logits, "<f4").tobytes() + np.asarray(soft_label, "<f4").tobytes())


def decode(record: bytes, layout: Layout, where: str) -> dict:
    if len(record) != layout.record_bytes or record[:4] != MAGIC:
        raise DataError(f"{where} is not an annotated view (corrupt shard?); delete the annotation set "
                        "to annotate again")
    _, index, partner, label = _HEADER.unpack_from(record)
    at = _HEADER.size
    image = np.frombuffer(record, np.uint8, layout.image_bytes, at).reshape(layout.image_shape)
    at += layout.image_bytes
    n, k = layout.num_teachers, layout.num_classes
    logits = np.frombuffer(record, "<f4", n * k, at).reshape(n, k).astype(np.float32)
    soft = np.frombuffer(record, "<f4", k, at + 4 * n * k).astype(np.float32)
    return {"image": image, "label": np.int32(label), "index": np.int32(index), "partner": np.int32(partner),
            "teacher_logits": logits, "soft_label": soft}


# ----------------------------------------------------------------------------- keys


def _describe(name: str, old: object, new: object) -> str:
    if name == "teachers" and isinstance(old, list) and isinstance(new, list):
        def short(ts):
            return ", ".join(f"{t.get('model')} {str(t.get('checksum'))[:12]}" for t in ts if isinstance(t, dict))
        return f"teachers: {short(old)} -> {short(new)}"
    return f"{name}: {old!r} -> {new!r}"


def check_key(root: pathlib.Path, key: dict) -> None:
    """Refuses ``root`` when it holds annotations (a finished set or one being written) of
    another key: one line naming what differs."""
    for name in (MANIFEST, PROGRESS):
        path = root / name
        if not path.exists():
            continue
        try:
            saved = json.loads(path.read_text())["key"]
        except (OSError, ValueError, KeyError, TypeError):
            raise DataError(f"{path} is damaged; delete {root} to annotate again") from None
        if saved != key:
            diffs = [_describe(k, saved.get(k), key.get(k)) for k in sorted({*saved, *key})
                     if saved.get(k) != key.get(k)]
            raise ConfigError(
                f"{root} holds annotations of another teacher or config ({'; '.join(diffs[:3])}); "
                f"point distill.cache_dir elsewhere, or delete {root} to annotate again")


def read_manifest(root: pathlib.Path, key: dict | None = None) -> dict | None:
    """The manifest of the finished set in ``root`` (None: none yet), checked against its
    own checksum and, when given, ``key``."""
    path = root / MANIFEST
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text())
        ok = manifest.get("format") == FORMAT and manifest.get("manifest_sha256") == manifest_digest(manifest)
    except (OSError, ValueError, AttributeError):
        ok = False
    if not ok:
        raise DataError(f"{path} is damaged or was edited (its checksum does not match); delete {root} "
                        "to annotate again")
    if key is not None:
        check_key(root, key)
    return manifest


def plan(num_views: int, batch_size: int) -> list[tuple[str, int, int]]:
    """The shards of ``num_views`` views: (file name, first position, number of views), each
    whole batches of ``batch_size`` (the last shard ends with the last view)."""
    per_shard = max(1, VIEWS_PER_SHARD // batch_size) * batch_size
    n = -(-num_views // per_shard)
    return [(shard_name("views", i, n), i * per_shard, min(per_shard, num_views - i * per_shard))
            for i in range(n)]


def _described(root: pathlib.Path, name: str, digest: str, first: int, count: int) -> dict | None:
    """The description of shard ``name`` when it is complete, of key ``digest``, holds views
    [first, first + count) and matches its checksum; None otherwise."""
    path, desc_path = root / name, root / (name + ".json")
    if not (path.exists() and desc_path.exists()):
        return None
    try:
        desc = json.loads(desc_path.read_text())
    except (OSError, ValueError):
        return None
    want = {"key_digest": digest, "first": first, "num_records": count}
    ok = isinstance(desc, dict) and all(desc.get(k) == v for k, v in want.items()) \
        and desc.get("sha256") == file_sha256(path)
    return desc if ok else None


def start(root: pathlib.Path, key: dict, shards: list[tuple[str, int, int]]) -> list[int]:
    """Begins (or resumes) writing the set of ``key`` in ``root``: records the key, removes
    half-written shards and returns the indices of the shards still to write."""
    root.mkdir(parents=True, exist_ok=True)
    check_key(root, key)
    if not (root / PROGRESS).exists():
        atomic_write(root / PROGRESS, json.dumps({"format": FORMAT, "key": key}, indent=1))
    for tmp in root.glob(".*.tmp"):
        tmp.unlink(missing_ok=True)
    digest = key_digest(key)
    return [i for i, (name, first, count) in enumerate(shards)
            if _described(root, name, digest, first, count) is None]


class ShardWriter:
    """Writes one shard under a temporary name; ``commit`` renames it and writes its
    description (a kill before leaves no shard that looks complete)."""

    def __init__(self, root: pathlib.Path, name: str, first: int, count: int, key: dict):
        from array_record.python.array_record_module import ArrayRecordWriter

        self.root, self.name, self.first, self.count, self.key = root, name, first, count, key
        self.tmp = root / f".{name}.tmp"
        self._writer = ArrayRecordWriter(str(self.tmp), "group_size:1")
        self.written = 0

    def write(self, record: bytes) -> None:
        self._writer.write(record)
        self.written += 1

    def abort(self) -> None:
        self._writer.close()
        self.tmp.unlink(missing_ok=True)

    def commit(self) -> dict:
        self._writer.close()
        if self.written != self.count:
            self.tmp.unlink(missing_ok=True)
            raise DataError(f"shard {self.name} got {self.written} views, expected {self.count}")
        desc = {"file": self.name, "first": self.first, "num_records": self.count,
                "bytes": self.tmp.stat().st_size, "sha256": file_sha256(self.tmp),
                "key_digest": key_digest(self.key)}
        (self.root / (self.name + ".json")).unlink(missing_ok=True)
        os.replace(self.tmp, self.root / self.name)
        atomic_write(self.root / (self.name + ".json"), json.dumps(desc))
        return desc


def finish(root: pathlib.Path, key: dict, layout: Layout, shards: list[tuple[str, int, int]],
           num_examples: int) -> dict:
    """Writes the manifest of the finished set (every shard complete) and returns it."""
    digest = key_digest(key)
    entries = []
    for name, first, count in shards:
        desc = _described(root, name, digest, first, count)
        if desc is None:
            raise DataError(f"shard {root / name} is missing or incomplete; run again to finish annotating")
        entries.append({k: desc[k] for k in ("file", "first", "num_records", "bytes", "sha256")})
    manifest = seal_manifest({
        "format": FORMAT, "key": key, "key_digest": digest, "num_examples": num_examples,
        "num_views": sum(e["num_records"] for e in entries), **layout.to_dict(), "image_dtype": "uint8",
        "shards": entries})
    atomic_write(root / MANIFEST, json.dumps(manifest, indent=1))
    (root / PROGRESS).unlink(missing_ok=True)
    return manifest


@contextlib.contextmanager
def locked(root: pathlib.Path) -> Iterator[None]:
    """Holds ``root`` while annotating: a second process (another student sharing the set)
    waits here, then finds the set finished."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / LOCK, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX)
        except OSError:  # a filesystem without locks
            pass
        yield


class AnnotatedSource:
    """The views of a finished set, random access: ``{"image": uint8 [H, W, C], "label",
    "index", "partner", "teacher_logits": [n_teachers, K], "soft_label": [K]}``."""

    multi_label = False

    def __init__(self, root: str | os.PathLike, key: dict | None = None):
        import grain

        self.root = root = pathlib.Path(root)
        manifest = read_manifest(root, key)
        if manifest is None:
            raise DataError(f"{root} holds no finished annotation set (no {MANIFEST})")
        self.layout = Layout(tuple(manifest["image_shape"]), manifest["num_teachers"], manifest["num_classes"])
        paths = []
        for entry in manifest["shards"]:
            path = root / entry["file"]
            size = path.stat().st_size if path.exists() else None
            if size != entry["bytes"]:
                state = "missing" if size is None else f"{size} bytes, the manifest says {entry['bytes']}"
                raise DataError(f"annotation shard {path} is {state}; delete {root} to annotate again")
            paths.append(str(path))
        self._records = grain.sources.ArrayRecordDataSource(paths)
        if len(self._records) != manifest["num_views"]:
            raise DataError(f"{root} holds {len(self._records)} views, its manifest says "
                            f"{manifest['num_views']}; delete it to annotate again")
        self.manifest = manifest
        self.num_classes = self.layout.num_classes
        self.image_shape = self.layout.image_shape
        self.num_examples = manifest["num_examples"]

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, i: int) -> dict:
        i = int(i)
        return decode(self._records[i], self.layout, f"view {i} of {self.root}")


__all__ = ["DIRNAME", "FORMAT", "AnnotatedSource", "Layout", "ShardWriter", "check_key", "decode", "encode",
           "finish", "key_digest", "locked", "plan", "read_manifest", "start"]
