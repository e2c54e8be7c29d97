"""Image folders packed into ArrayRecord shards: ``vistas data pack`` and ``vistas data verify``.

``pack(src, dst)`` (``vistas data pack SRC DST``) turns an image folder
(``src/<split>/<class>/<image>`` or ``src/<class>/<image>``, taken as split "train") into
``dst/<split>-<i>-of-<n>.array_record`` shards that grain reads natively, with random
access. Each record is one example: a magic tag, the int32 label and the image file's
bytes unchanged (a JPEG stays a JPEG). ``dst/manifest.json`` lists the class names and,
per split, its shards with their record counts, sizes and SHA-256 checksums, plus a
``<split>-labels.npy`` of every label (read without decoding any image), and a SHA-256 of
its own content (``manifest_sha256``), so that a hand edit of ``num_classes`` or a record
count is caught by ``verify`` and when the shards are opened for training.

Packing runs shards in parallel worker processes and writes them into a staging folder,
``dst/.pack-staging``; the set in ``dst`` is replaced only once every image was read and
every shard written (the manifest goes last), so a failed pack leaves the previous set as
it was, and ``vistas data verify`` still passes on it. Packing is resumable: a shard is
written under a temporary name, renamed when complete and described by a ``.json`` file
beside it; a rerun keeps every shard, in ``dst`` or in the staging folder, whose
description matches its file list and checksum, and writes the rest. Every image is
decoded once while packing (by ``vistas.data.decode``, so the pixel limit holds), so a
corrupt image stops the pack with its path; reading a damaged shard later names the shard.

``verify_folder(src)`` (``vistas data verify SRC`` on an image folder) decodes every image
of a folder once, in threads, and reports every one that cannot be decoded.

The record format, the manifest and the source that reads a split (``ArrayRecordSource``)
are in ``vistas.data.readers.array_record``, re-exported here with ``decode_bytes``.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import hashlib
import json
import multiprocessing
import os
import pathlib
import shutil
import warnings
from collections.abc import Callable

import numpy as np

from vistas.data.decode import decode_bytes, verify_bytes, verify_image
from vistas.data.readers.array_record import (
    FORMAT,
    MAGIC,
    MANIFEST,
    MANIFEST_DIGEST,
    ArrayRecordSource,
    decode_record,
    encode_record,
    manifest_digest,
    read_manifest,
    seal_manifest,
)
from vistas.data.readers.folder import ImageFolderSource, dataset_classes, split_folders
from vistas.errors import ConfigError, DataError
from vistas.files import atomic_write


def _workers(workers: int | None) -> int:
    """``workers`` (processes or threads), or one per core when None; below 1 is refused."""
    if workers is None:
        return os.cpu_count() or 1
    if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 1:
        raise ConfigError(f"workers={workers!r} must be at least 1 (None: one per core)")
    return int(workers)


def file_sha256(path: pathlib.Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def shard_name(split: str, i: int, n: int) -> str:
    return f"{split}-{i:05d}-of-{n:05d}.array_record"


def _list_digest(paths: list[str], labels: list[int]) -> str:
    h = hashlib.sha256()
    for p, y in zip(paths, labels, strict=True):
        h.update(f"{p}\t{y}\n".encode())
    return h.hexdigest()


STAGING = ".pack-staging"  # inside the destination: same filesystem, and hidden


def _packed(directory: pathlib.Path, name: str, digest: str) -> dict | None:
    """The description of shard ``name`` in ``directory`` when it is complete and holds
    the files of ``digest``; None otherwise."""
    final, desc_path = directory / name, directory / (name + ".json")
    if not (final.exists() and desc_path.exists()):
        return None
    try:
        desc = json.loads(desc_path.read_text())
    except (OSError, ValueError):
        return None
    ok = isinstance(desc, dict) and desc.get("files_digest") == digest and desc.get("sha256") == file_sha256(final)
    return desc if ok else None


def _write_shard(staging: str, dst: str, name: str, root: str, paths: list[str], labels: list[int]) -> dict:
    """Writes one shard into ``staging`` (or keeps it when already complete there or in
    ``dst``); returns its description, with ``staged`` when the file is in ``staging``."""
    from array_record.python.array_record_module import ArrayRecordWriter

    staging_dir = pathlib.Path(staging)
    digest = _list_digest([os.path.relpath(p, root) for p in paths], labels)
    if (desc := _packed(pathlib.Path(dst), name, digest)) is not None:
        return {**desc, "reused": True, "staged": False}
    if (desc := _packed(staging_dir, name, digest)) is not None:
        return {**desc, "reused": True, "staged": True}
    final, tmp = staging_dir / name, staging_dir / f".{name}.tmp"
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
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    writer.close()
    desc = {"file": name, "num_records": len(paths), "bytes": tmp.stat().st_size,
            "sha256": file_sha256(tmp), "files_digest": digest}
    tmp.replace(final)
    atomic_write(staging_dir / (name + ".json"), json.dumps(desc))
    return {**desc, "reused": False, "staged": True}


def _ours(name: object) -> bool:
    """Whether a manifest entry names a file pack writes (a plain name in the directory)."""
    return (isinstance(name, str) and name == os.path.basename(name) and not name.startswith(".")
            and name.endswith((".array_record", "-labels.npy")))


def _commit(staging: pathlib.Path, dst: pathlib.Path, staged: list[str], manifest: dict) -> None:
    """Replaces the set in ``dst`` by the staged files and ``manifest``. The old manifest
    goes first and the new one last, so a kill in between leaves a set without a manifest
    (refused by name, finished by running the pack again), never a mix that looks whole."""
    try:
        old = read_manifest(dst) if (dst / MANIFEST).exists() else {"splits": {}}
        old_files = {e.get("file") for info in old["splits"].values()
                     for e in [*info.get("shards", []), info.get("labels", {})]}
    except (DataError, AttributeError, TypeError, KeyError):
        old_files = set()
    (dst / MANIFEST).unlink(missing_ok=True)
    for name in staged:
        os.replace(staging / name, dst / name)
    new_files = {e["file"] for info in manifest["splits"].values() for e in [*info["shards"], info["labels"]]}
    for name in old_files - new_files:
        if _ours(name):
            (dst / name).unlink(missing_ok=True)
            (dst / (name + ".json")).unlink(missing_ok=True)
    atomic_write(dst / MANIFEST, json.dumps(manifest, indent=1))
    shutil.rmtree(staging, ignore_errors=True)


def _discard_partial(staging: pathlib.Path) -> None:
    """Removes half-written shards from the staging folder (complete ones stay: the next
    pack keeps those that still match its files)."""
    for tmp in staging.glob(".*.tmp"):
        tmp.unlink(missing_ok=True)


def pack(src: str | os.PathLike, dst: str | os.PathLike, *, examples_per_shard: int = 1000,
         workers: int | None = None, log: Callable[[str], None] = lambda s: None) -> dict:
    """Packs the image folder ``src`` into shards under ``dst``; returns the manifest.
    The set already in ``dst`` is replaced only when the whole pack succeeds."""
    src, dst = pathlib.Path(src), pathlib.Path(dst)
    if not src.is_dir():
        raise DataError(f"image folder {src} does not exist or is not a directory")
    if examples_per_shard <= 0:
        raise DataError(f"examples_per_shard={examples_per_shard} must be positive")
    workers = _workers(workers)
    real_src, real_dst = src.resolve(), dst.resolve()
    if real_dst == real_src or real_src in real_dst.parents:
        raise DataError(f"destination {dst} is inside the image folder {src}; pack into a folder "
                        "outside it (a later pack would read the shards as a class)")
    folders = split_folders(src)
    class_names = list(dataset_classes(src))  # one class list for all splits
    listings = {split: ImageFolderSource(root, class_names=tuple(class_names)) for split, root in folders.items()}
    staging = dst / STAGING
    staging.mkdir(parents=True, exist_ok=True)
    jobs = []
    for split, s in listings.items():
        labels = [int(y) for y in s.labels]
        n = -(-len(s.paths) // examples_per_shard)
        for i in range(n):
            sl = slice(i * examples_per_shard, (i + 1) * examples_per_shard)
            jobs.append((split, shard_name(split, i, n), str(s.root), s.paths[sl], labels[sl]))
        np.save(staging / f"{split}-labels.npy", np.asarray(labels, np.int32))
    done: dict[str, dict] = {}
    ctx = multiprocessing.get_context("fork" if os.name == "posix" else "spawn")
    pool = cf.ProcessPoolExecutor(max_workers=min(workers, max(1, len(jobs))), mp_context=ctx)
    try:
        futures = {pool.submit(_write_shard, str(staging), str(dst), name, root, paths, labels): name
                   for _, name, root, paths, labels in jobs}
        for k, future in enumerate(cf.as_completed(futures), 1):
            try:
                desc = future.result()  # a DataError from a worker stops the pack here
            except DataError as e:
                raise DataError(f"{e} (`vistas data verify {src}` lists every image that cannot be "
                                "decoded)") from None
            done[desc["file"]] = desc
            log(f"[{k}/{len(jobs)}] {desc['file']}: {desc['num_records']} images"
                + (" (already packed)" if desc["reused"] else ""))
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)  # shards being written are finished
        _discard_partial(staging)
        raise
    pool.shutdown()
    manifest = {"format": FORMAT, "class_names": class_names, "num_classes": len(class_names),
                "splits": {}}
    for split in listings:
        shards = [{k: v for k, v in done[name].items() if k in ("file", "num_records", "bytes", "sha256")}
                  for sp, name, *_ in jobs if sp == split]
        labels_file = f"{split}-labels.npy"
        manifest["splits"][split] = {
            "num_examples": sum(s["num_records"] for s in shards), "shards": shards,
            "labels": {"file": labels_file, "sha256": file_sha256(staging / labels_file)},
        }
    manifest = seal_manifest(manifest)
    staged = [f for name, desc in done.items() if desc["staged"] for f in (name, name + ".json")]
    _commit(staging, dst, staged + [f"{split}-labels.npy" for split in listings], manifest)
    return manifest


def verify(root: str | os.PathLike, *, log: Callable[[str], None] = lambda s: None) -> dict[str, int]:
    """Checks the manifest against its own checksum, and every shard and label file against
    the manifest's SHA-256 sums and record counts; DataError naming the first that differs.
    ``log`` is told when the manifest has no checksum (packed before there was one).
    Returns examples per split."""
    from array_record.python.array_record_module import ArrayRecordReader

    root = pathlib.Path(root)
    manifest = read_manifest(root)  # its own checksum and counts
    if MANIFEST_DIGEST not in manifest:
        log(f"{root / MANIFEST} has no checksum of its own (packed before vistas wrote one): the shards "
            "are checked, but a hand edit of its class names could not be noticed; pack again to add one")
    for info in manifest["splits"].values():
        for entry in [*info["shards"], info["labels"]]:
            path = root / entry["file"]
            if not path.exists():
                raise DataError(f"shard {path} is missing")
            if file_sha256(path) != entry["sha256"]:
                raise DataError(f"{path} does not match its checksum in {root / MANIFEST} "
                                "(corrupt or changed); re-pack it with `vistas data pack`")
        for entry in info["shards"]:
            path = root / entry["file"]
            try:
                reader = ArrayRecordReader(str(path))
                count = reader.num_records()
                reader.close()
            except Exception as e:  # the checksum matched: only a manifest written by hand gets here
                raise DataError(f"cannot read shard {path}: {e}; re-pack it with `vistas data pack`") from None
            if count != entry["num_records"]:
                raise DataError(f"shard {path} holds {count} records, the manifest says "
                                f"{entry['num_records']}; re-pack it with `vistas data pack`")
    return {split: info["num_examples"] for split, info in manifest["splits"].items()}


def is_packed(path: str | os.PathLike) -> bool:
    """Whether ``path`` holds packed shards, or a pack into it was begun: a manifest,
    shards or a staging folder (``vistas data verify`` checks those against the manifest)."""
    root = pathlib.Path(path)
    return (root / MANIFEST).exists() or (root / STAGING).exists() or any(root.glob("*.array_record"))


@dataclasses.dataclass
class FolderReport:
    """What ``verify_folder`` found: images per split, every image that cannot be decoded
    as (path, one-line reason), and how many symbolic links to directories were skipped
    (loops, or directories already read through another path)."""

    path: str
    counts: dict[str, int]
    bad: list[tuple[str, str]]
    skipped_dirs: int = 0

    @property
    def ok(self) -> bool:
        return not self.bad

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def _bad_images(paths: list[str]) -> list[tuple[str, str]]:
    bad = []
    for path in paths:
        try:
            verify_image(path)
        except DataError as e:
            bad.append((path, str(e)))
    return bad


def verify_folder(path: str | os.PathLike, *, workers: int | None = None,
                  log: Callable[[str], None] = lambda s: None) -> FolderReport:
    """Decodes every image of the image folder ``path`` (``path/<split>/<class>/<image>`` or
    ``path/<class>/<image>``, as ``pack`` reads it) once, in ``workers`` threads (default:
    one per core), and reports every one that cannot be decoded; ``log`` gets each as it
    is found. A folder that is not laid out as a dataset is a DataError."""
    workers = _workers(workers)
    src = pathlib.Path(path)
    if not src.is_dir():
        raise DataError(f"image folder {src} does not exist or is not a directory")
    class_names = tuple(dataset_classes(src))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # skipped links are counted in the report instead
        listings = {split: ImageFolderSource(root, class_names=class_names)
                    for split, root in split_folders(src).items()}
    paths = [p for s in listings.values() for p in s.paths]
    chunk = 64
    bad: list[tuple[str, str]] = []
    with cf.ThreadPoolExecutor(max_workers=workers) as pool:
        for found in pool.map(_bad_images, [paths[i:i + chunk] for i in range(0, len(paths), chunk)]):
            for item in found:
                log(item[1])
                bad.append(item)
    return FolderReport(str(src), {split: len(s) for split, s in listings.items()}, bad,
                        sum(s.skipped_dirs for s in listings.values()))


__all__ = ["FORMAT", "MAGIC", "MANIFEST", "MANIFEST_DIGEST", "ArrayRecordSource", "FolderReport",
           "decode_bytes", "decode_record", "encode_record", "is_packed", "manifest_digest", "pack",
           "file_sha256", "read_manifest", "seal_manifest", "shard_name", "verify", "verify_folder"]
