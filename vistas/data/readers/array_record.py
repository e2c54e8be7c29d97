"""ArrayRecord shards written by `vistas data pack` (`vistas.data.shards.pack`): the record
format (`encode_record`, `decode_record`), the manifest (`read_manifest`) and the source
that reads one split (`ArrayRecordSource`).

Each record is one example: a magic tag, the int32 label and the image file's bytes
unchanged (a JPEG stays a JPEG), decoded on access by `vistas.data.decode`. `manifest.json`
lists the class names and, per split, its shards with their record counts, sizes and
SHA-256 checksums, plus a `<split>-labels.npy` of every label (read without decoding any
image). Reading a damaged shard names the shard and the record.

The manifest carries a SHA-256 of its own content, `manifest_sha256` (`manifest_digest`:
every other field, as canonical JSON, so reformatting the file is not a change), checked
whenever it is read: an edit by hand of `num_classes`, a record count or a class name is a
one-line DataError. Manifests written before the checksum have none and still load; their
counts are checked against each other (and the labels against `num_classes`) instead.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import struct

import numpy as np

from vistas.data.decode import decode_bytes
from vistas.errors import DataError

FORMAT = "vistas-shards/1"
MAGIC = b"VSR1"
_HEADER = struct.Struct("<4si")  # magic, label
MANIFEST = "manifest.json"
MANIFEST_DIGEST = "manifest_sha256"  # the manifest's checksum of its own other fields


def encode_record(image_bytes: bytes, label: int) -> bytes:
    return _HEADER.pack(MAGIC, int(label)) + image_bytes


def decode_record(record: bytes, where: str) -> tuple[bytes, int]:
    """(image bytes, label) of one record; DataError naming ``where`` if it is not one."""
    if len(record) < _HEADER.size or record[:4] != MAGIC:
        raise DataError(f"{where} is not a vistas image record (corrupt shard?); "
                        "re-pack it with `vistas data pack`")
    _, label = _HEADER.unpack_from(record)
    return record[_HEADER.size:], label


def manifest_digest(manifest: dict) -> str:
    """The SHA-256 of every field of ``manifest`` but ``MANIFEST_DIGEST``, as canonical JSON
    (sorted keys, no spaces): what ``pack`` writes and ``read_manifest`` checks."""
    content = {k: v for k, v in manifest.items() if k != MANIFEST_DIGEST}
    text = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def seal_manifest(manifest: dict) -> dict:
    """``manifest`` with its checksum (``MANIFEST_DIGEST``) set to its content's."""
    return {**{k: v for k, v in manifest.items() if k != MANIFEST_DIGEST},
            MANIFEST_DIGEST: manifest_digest(manifest)}


def _check_counts(manifest: dict, path: pathlib.Path) -> None:
    """The manifest's counts agree with each other: one class name per class, and each
    split's example count is the sum of its shards' record counts."""
    fix = "re-pack it with `vistas data pack`"
    names, n = manifest.get("class_names"), manifest.get("num_classes")
    if not isinstance(names, list) or not isinstance(n, int) or isinstance(n, bool):
        raise DataError(f"{path} lacks its class_names or num_classes; {fix}")
    if n != len(names):
        raise DataError(f"{path} has num_classes {n} but {len(names)} class names; {fix}")
    splits = manifest.get("splits")
    if not isinstance(splits, dict):
        raise DataError(f"{path} lacks its splits; {fix}")
    for split, info in splits.items():
        try:
            total = sum(int(e["num_records"]) for e in info["shards"])
            ok = isinstance(info["labels"]["file"], str) and all(
                isinstance(e["file"], str) and isinstance(e["bytes"], int) for e in info["shards"])
            examples = info["num_examples"]
        except (KeyError, TypeError, ValueError):
            ok = False
        if not ok:
            raise DataError(f"{path}: split {split!r} lacks its shards, labels or counts; {fix}")
        if examples != total:
            raise DataError(f"{path}: split {split} has num_examples {examples} but its shards hold "
                            f"{total} records; {fix}")


def read_manifest(root: str | os.PathLike) -> dict:
    """The manifest of the shard directory ``root``, checked against its own checksum (when
    it has one: older packs wrote none) and its counts against each other."""
    path = pathlib.Path(root) / MANIFEST
    if not path.exists():
        raise DataError(f"{root} holds no {MANIFEST}; create the shards with `vistas data pack SRC {root}`")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path} is not valid JSON ({e}); re-run `vistas data pack`") from None
    if not isinstance(manifest, dict):
        raise DataError(f"{path} is not a shard manifest (a JSON {type(manifest).__name__}); "
                        "re-run `vistas data pack`")
    if manifest.get("format") != FORMAT:
        raise DataError(f"{path} has format {manifest.get('format')!r}; expected {FORMAT!r}")
    if MANIFEST_DIGEST in manifest and manifest[MANIFEST_DIGEST] != manifest_digest(manifest):
        raise DataError(f"{path} does not match its own checksum ({MANIFEST_DIGEST}): it was edited "
                        "or damaged after packing; restore it, or re-pack with `vistas data pack`")
    _check_counts(manifest, path)
    return manifest


class ArrayRecordSource:
    """The split of a packed dataset (``pack``): random access through grain's
    ArrayRecordDataSource, images decoded on access (``draft_size``: see ``decode_bytes``)."""

    def __init__(self, root: str | os.PathLike, split: str, channels: int = 3,
                 draft_size: int | None = None):
        import grain

        root = pathlib.Path(root)
        manifest = read_manifest(root)
        if split not in manifest["splits"]:
            raise DataError(f"{root} has no split {split!r}; splits: {', '.join(manifest['splits'])}")
        info = manifest["splits"][split]
        paths = []
        for entry in info["shards"]:
            path = root / entry["file"]
            size = path.stat().st_size if path.exists() else None
            if size != entry["bytes"]:
                state = "missing" if size is None else f"{size} bytes, the manifest says {entry['bytes']}"
                raise DataError(f"shard {path} is {state}; re-pack it with `vistas data pack`")
            paths.append(str(path))
        try:
            self._records = grain.sources.ArrayRecordDataSource(paths)
        except Exception as e:
            raise DataError(f"cannot open the shards of {root}:{split}: {e}; "
                            f"check them with `vistas data verify {root}`") from None
        self.labels = np.load(root / info["labels"]["file"], allow_pickle=False).astype(np.int32)
        if len(self._records) != info["num_examples"] or len(self.labels) != info["num_examples"]:
            raise DataError(f"{root}:{split} has {len(self._records)} records and {len(self.labels)} "
                            f"labels, the manifest says {info['num_examples']}; re-pack it")
        self.root, self.split = root, split
        self.channels, self.draft_size = channels, draft_size
        self.class_names = tuple(manifest["class_names"])
        self.num_classes = int(manifest["num_classes"])
        if len(self.labels) and (self.labels.min() < 0 or self.labels.max() >= self.num_classes):
            raise DataError(f"{root / info['labels']['file']}: labels must lie in [0, {self.num_classes}), "
                            f"got [{self.labels.min()}, {self.labels.max()}] (num_classes of "
                            f"{root / MANIFEST}); re-pack it with `vistas data pack`")
        self.image_shape = None
        self._starts = np.cumsum([0] + [e["num_records"] for e in info["shards"]])
        self._files = [e["file"] for e in info["shards"]]

    def _where(self, i: int) -> str:
        k = int(np.searchsorted(self._starts, i, side="right")) - 1
        return f"record {i - self._starts[k]} of shard {self.root / self._files[k]}"

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        i = int(i)
        try:
            record = self._records[i]
        except Exception as e:
            raise DataError(f"cannot read {self._where(i)}: {e}") from None
        data, label = decode_record(record, self._where(i))
        return {"image": decode_bytes(data, self.channels, self._where(i), self.draft_size),
                "label": np.int32(label)}


__all__ = ["FORMAT", "MAGIC", "MANIFEST", "MANIFEST_DIGEST", "ArrayRecordSource", "decode_record",
           "encode_record", "manifest_digest", "read_manifest", "seal_manifest"]
