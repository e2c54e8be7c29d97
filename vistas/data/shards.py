"""Image folders packed into ArrayRecord shards: ``vistas data pack`` and ``vistas data verify``.

``pack(src, dst)`` (``vistas data pack SRC DST``) turns an image folder
(``src/<split>/<class>/<image>`` or ``src/<class>/<image>``, taken as split "train") into
``dst/<split>-<i>-of-<n>.array_record`` shards that grain reads natively, with random
access. Each record is one example: a magic tag, the int32 label and the image file's
bytes unchanged (a JPEG stays a JPEG). ``dst/manifest.json`` lists the class names and,
per split, its shards with their record counts, sizes and SHA-256 checksums, plus a
``<split>-labels.npy`` of every label (read without decoding any image).

Packing runs shards in parallel worker processes and is resumable: a shard is written
under a temporary name, renamed when complete and described by a ``.json`` file beside
it; a rerun keeps every shard whose description matches its file list and checksum, and
writes the rest. Every image is decoded once while packing (by ``vistas.data.decode``, so
the pixel limit holds), so a corrupt image stops the pack with its path; reading a damaged
shard later names the shard.

The record format, the manifest and the source that reads a split (``ArrayRecordSource``)
are in ``vistas.data.readers.array_record``, re-exported here with ``decode_bytes``.
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import json
import multiprocessing
import os
import pathlib
from collections.abc import Callable

import numpy as np

from vistas.data.decode import decode_bytes, verify_bytes
from vistas.data.readers.array_record import (
    FORMAT,
    MAGIC,
    MANIFEST,
    ArrayRecordSource,
    decode_record,
    encode_record,
    read_manifest,
)
from vistas.data.readers.folder import ImageFolderSource, dataset_classes, split_folders
from vistas.errors import DataError
from vistas.files import atomic_write


def _sha256(path: pathlib.Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _shard_name(split: str, i: int, n: int) -> str:
    return f"{split}-{i:05d}-of-{n:05d}.array_record"


def _list_digest(paths: list[str], labels: list[int]) -> str:
    h = hashlib.sha256()
    for p, y in zip(paths, labels, strict=True):
        h.update(f"{p}\t{y}\n".encode())
    return h.hexdigest()


def _write_shard(dst: str, name: str, root: str, paths: list[str], labels: list[int]) -> dict:
    """Writes one shard (or keeps it when already complete); returns its description."""
    from array_record.python.array_record_module import ArrayRecordWriter

    dst_dir = pathlib.Path(dst)
    final, desc_path = dst_dir / name, dst_dir / (name + ".json")
    digest = _list_digest([os.path.relpath(p, root) for p in paths], labels)
    if final.exists() and desc_path.exists():
        desc = json.loads(desc_path.read_text())
        if desc.get("files_digest") == digest and desc.get("sha256") == _sha256(final):
            return {**desc, "reused": True}
    tmp = dst_dir / f".{name}.tmp"
    writer = ArrayRecordWriter(str(tmp), "group_size:1")
    try:
        for path, label in zip(paths, labels, strict=True):
            try:
                data = pathlib.Path(path).read_bytes()
            except Exception as e:
                raise DataError(f"cannot decode image {path}: {str(e) or type(e).__name__}; "
                                "remove or replace it and run the pack again") from None
            try:
                verify_bytes(data, path)  # within the pixel limit, and decodes in full
            except DataError as e:
                raise DataError(f"{e}; remove or replace it and run the pack again") from None
            writer.write(encode_record(data, label))
    finally:
        writer.close()
    desc = {"file": name, "num_records": len(paths), "bytes": tmp.stat().st_size,
            "sha256": _sha256(tmp), "files_digest": digest}
    tmp.replace(final)
    atomic_write(desc_path, json.dumps(desc))
    return {**desc, "reused": False}


def pack(src: str | os.PathLike, dst: str | os.PathLike, *, examples_per_shard: int = 1000,
         workers: int | None = None, log: Callable[[str], None] = lambda s: None) -> dict:
    """Packs the image folder ``src`` into shards under ``dst``; returns the manifest."""
    src, dst = pathlib.Path(src), pathlib.Path(dst)
    if not src.is_dir():
        raise DataError(f"image folder {src} does not exist or is not a directory")
    if examples_per_shard <= 0:
        raise DataError(f"examples_per_shard={examples_per_shard} must be positive")
    workers = workers or os.cpu_count() or 1
    dst.mkdir(parents=True, exist_ok=True)
    folders = split_folders(src)
    class_names = list(dataset_classes(src))  # one class list for all splits
    listings = {split: ImageFolderSource(root, class_names=tuple(class_names)) for split, root in folders.items()}
    jobs = []
    for split, s in listings.items():
        labels = [int(y) for y in s.labels]
        n = -(-len(s.paths) // examples_per_shard)
        for i in range(n):
            sl = slice(i * examples_per_shard, (i + 1) * examples_per_shard)
            jobs.append((split, _shard_name(split, i, n), str(s.root), s.paths[sl], labels[sl]))
        np.save(dst / f"{split}-labels.npy", np.asarray(labels, np.int32))
    done: dict[str, dict] = {}
    ctx = multiprocessing.get_context("fork" if os.name == "posix" else "spawn")
    with cf.ProcessPoolExecutor(max_workers=min(workers, max(1, len(jobs))), mp_context=ctx) as pool:
        futures = {pool.submit(_write_shard, str(dst), name, root, paths, labels): name
                   for _, name, root, paths, labels in jobs}
        for k, future in enumerate(cf.as_completed(futures), 1):
            desc = future.result()  # a DataError from a worker stops the pack here
            done[desc["file"]] = desc
            log(f"[{k}/{len(jobs)}] {desc['file']}: {desc['num_records']} images"
                + (" (already packed)" if desc["reused"] else ""))
    manifest = {"format": FORMAT, "class_names": class_names, "num_classes": len(class_names),
                "splits": {}}
    for split in listings:
        shards = [{k: v for k, v in done[name].items() if k in ("file", "num_records", "bytes", "sha256")}
                  for sp, name, *_ in jobs if sp == split]
        labels_file = f"{split}-labels.npy"
        manifest["splits"][split] = {
            "num_examples": sum(s["num_records"] for s in shards), "shards": shards,
            "labels": {"file": labels_file, "sha256": _sha256(dst / labels_file)},
        }
    atomic_write(dst / MANIFEST, json.dumps(manifest, indent=1))
    return manifest


def verify(root: str | os.PathLike) -> dict[str, int]:
    """Checks every shard and label file against the manifest's sizes and SHA-256 sums;
    DataError naming the first that differs. Returns examples per split."""
    root = pathlib.Path(root)
    manifest = read_manifest(root)
    for info in manifest["splits"].values():
        for entry in [*info["shards"], info["labels"]]:
            path = root / entry["file"]
            if not path.exists():
                raise DataError(f"shard {path} is missing")
            if _sha256(path) != entry["sha256"]:
                raise DataError(f"{path} does not match its checksum in {root / MANIFEST} "
                                "(corrupt or changed); re-pack it with `vistas data pack`")
    return {split: info["num_examples"] for split, info in manifest["splits"].items()}


__all__ = ["FORMAT", "MAGIC", "MANIFEST", "ArrayRecordSource", "decode_bytes", "decode_record",
           "encode_record", "pack", "read_manifest", "verify"]
