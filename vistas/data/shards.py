"""Image folders packed into ArrayRecord shards, and the source that reads them.

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
writes the rest. Every image is decoded once while packing, so a corrupt image stops the
pack with its path; reading a damaged shard later names the shard.
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import io
import json
import multiprocessing
import os
import pathlib
import struct
from collections.abc import Callable

import numpy as np

from vistas.errors import DataError

FORMAT = "vistas-shards/1"
MAGIC = b"VSR1"
_HEADER = struct.Struct("<4si")  # magic, label
MANIFEST = "manifest.json"


def encode_record(image_bytes: bytes, label: int) -> bytes:
    return _HEADER.pack(MAGIC, int(label)) + image_bytes


def decode_record(record: bytes, where: str) -> tuple[bytes, int]:
    """(image bytes, label) of one record; DataError naming ``where`` if it is not one."""
    if len(record) < _HEADER.size or record[:4] != MAGIC:
        raise DataError(f"{where} is not a vistas image record (corrupt shard?); "
                        "re-pack it with `vistas data pack`")
    _, label = _HEADER.unpack_from(record)
    return record[_HEADER.size:], label


def decode_bytes(data: bytes, channels: int, where: str, draft_size: int | None = None) -> np.ndarray:
    """Encoded image bytes -> uint8 [H, W, channels]. With ``draft_size``, a JPEG is decoded
    at the smallest of the scales 1, 1/2, 1/4, 1/8 whose sides stay >= ``draft_size``
    (libjpeg's DCT scaling, much faster than decoding in full and resizing)."""
    from PIL import Image

    from vistas.data.sources import _pil_to_array

    try:
        with Image.open(io.BytesIO(data)) as img:
            if draft_size and img.format == "JPEG":
                img.draft("RGB" if channels == 3 else "L", (draft_size, draft_size))
            img.load()
            return _pil_to_array(img, channels)
    except Exception as e:  # any decoder failure means a bad image
        raise DataError(f"cannot decode image {where}: {str(e) or type(e).__name__}") from None


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
    from PIL import Image

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
                with Image.open(io.BytesIO(data)) as img:
                    img.load()  # decodes fully: truncated or corrupt files fail here
            except Exception as e:
                raise DataError(f"cannot decode image {path}: {str(e) or type(e).__name__}; "
                                "remove or replace it and run the pack again") from None
            writer.write(encode_record(data, label))
    finally:
        writer.close()
    desc = {"file": name, "num_records": len(paths), "bytes": tmp.stat().st_size,
            "sha256": _sha256(tmp), "files_digest": digest}
    tmp.replace(final)
    desc_tmp = dst_dir / f".{name}.json.tmp"
    desc_tmp.write_text(json.dumps(desc))
    desc_tmp.replace(desc_path)
    return {**desc, "reused": False}


def _split_folders(src: pathlib.Path) -> dict[str, pathlib.Path]:
    from vistas.data.sources import _COMMON_SPLITS

    splits = {d.name: d for d in sorted(src.iterdir()) if d.is_dir() and d.name in _COMMON_SPLITS}
    return splits or {"train": src}


def pack(src: str | os.PathLike, dst: str | os.PathLike, *, examples_per_shard: int = 1000,
         workers: int | None = None, log: Callable[[str], None] = lambda s: None) -> dict:
    """Packs the image folder ``src`` into shards under ``dst``; returns the manifest."""
    from vistas.data.sources import ImageFolderSource

    src, dst = pathlib.Path(src), pathlib.Path(dst)
    if not src.is_dir():
        raise DataError(f"image folder {src} does not exist or is not a directory")
    if examples_per_shard <= 0:
        raise DataError(f"examples_per_shard={examples_per_shard} must be positive")
    workers = workers or os.cpu_count() or 1
    dst.mkdir(parents=True, exist_ok=True)
    folders = _split_folders(src)
    listings = {split: ImageFolderSource(root) for split, root in folders.items()}
    class_names = sorted({c for s in listings.values() for c in s.class_names})
    index = {c: i for i, c in enumerate(class_names)}
    jobs = []
    for split, s in listings.items():
        labels = [index[s.class_names[y]] for y in s.labels]  # one class list for all splits
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
    tmp = dst / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1))
    tmp.replace(dst / MANIFEST)
    return manifest


def read_manifest(root: str | os.PathLike) -> dict:
    path = pathlib.Path(root) / MANIFEST
    if not path.exists():
        raise DataError(f"{root} holds no {MANIFEST}; create the shards with `vistas data pack SRC {root}`")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{path} is not valid JSON ({e}); re-run `vistas data pack`") from None
    if manifest.get("format") != FORMAT:
        raise DataError(f"{path} has format {manifest.get('format')!r}; expected {FORMAT!r}")
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


__all__ = ["ArrayRecordSource", "decode_bytes", "pack", "read_manifest", "verify"]
