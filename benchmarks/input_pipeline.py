"""Input-pipeline throughput on real-size JPEGs: images per CPU-second (one core), with and
without RandAugment, from an image folder and from packed shards (with JPEG resize-on-decode).

    python benchmarks/input_pipeline.py [--images 512] [--size 500x375] [--out runs/input_pipeline] \
        [--torchvision-python .venv-timm/bin/python]

Fashion-MNIST training images are upscaled to SIZE (width x height, ImageNet's typical
500x375 by default), turned to RGB and written as JPEG (quality 90) into class folders;
the folder is packed with `vistas data pack`. Each variant then runs the training pipeline
(`vistas.data.pipeline.train_iterator`, inception crop to 224 px, flip, scaling) on the
calling thread only (``num_threads=0``) and divides the images by the CPU time this process
used (``time.process_time``): images/s per core, not disturbed by other jobs on the
machine. With ``--workers N`` the variants also run in N worker processes, timed by the
wall clock (which other jobs do disturb). Prints a Markdown table and writes
OUT/results.json (docs/recipes.md).

The peer: with ``--torchvision-python`` (the environment of ``benchmarks/setup_timm.sh``) the
same JPEG folder is read by ``torchvision.datasets.ImageFolder`` with ``RandomResizedCrop(224)``,
``RandomHorizontalFlip``, ``ToTensor`` and ``Normalize`` in a ``DataLoader`` (no worker
processes, one thread), timed the same way, and the table gives the ratio vistas / torchvision.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import tempfile
import time

import numpy as np
from PIL import Image

from vistas.data import pipeline, randaugment, shards, sources, transforms


def write_jpegs(root: pathlib.Path, n: int, size: tuple[int, int]) -> None:
    fmnist = sources.load_source("fashion_mnist", f"train[:{n}]")
    for i in range(n):
        example = fmnist[i]
        d = root / f"class_{int(example['label'])}"
        d.mkdir(parents=True, exist_ok=True)
        img = Image.fromarray(example["image"][:, :, 0]).resize(size, Image.Resampling.BILINEAR)
        img.convert("RGB").save(d / f"{i:06d}.jpg", quality=90)


TORCHVISION_SCRIPT = r"""
import sys, time
import torch
from torchvision import datasets, transforms
torch.set_num_threads(1)
torch.manual_seed(0)
folder, batches, batch_size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
tf = transforms.Compose([transforms.RandomResizedCrop(224), transforms.RandomHorizontalFlip(),
                         transforms.ToTensor(), transforms.Normalize([0.5] * 3, [0.5] * 3)])
loader = torch.utils.data.DataLoader(datasets.ImageFolder(folder, tf), batch_size=batch_size,
                                     shuffle=True, num_workers=0, drop_last=True)
it = iter(loader)
next(it)
start = time.process_time()
for _ in range(batches):
    next(it)
print(batches * batch_size / (time.process_time() - start))
"""


def torchvision_throughput(python: str, folder: pathlib.Path, *, batches: int, batch_size: int) -> float:
    out = subprocess.run([python, "-c", TORCHVISION_SCRIPT, str(folder), str(batches), str(batch_size)],
                         check=True, capture_output=True, text=True)
    return float(out.stdout.strip().splitlines()[-1])


def throughput(source, augment, *, batches: int, batch_size: int, workers: int) -> float:
    transform = transforms.make_train_transform(image_size=224, augment=augment)
    it = pipeline.train_iterator(source, global_batch_size=batch_size, seed=0, transform=transform,
                                 num_threads=0 if not workers else 1, workers=workers)
    clock = time.perf_counter if workers else time.process_time
    try:
        next(it)  # worker start-up and first decode excluded
        start = clock()
        for _ in range(batches):
            next(it)
        return batches * batch_size / (clock() - start)
    finally:
        it.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=512)
    p.add_argument("--size", default="500x375", help="JPEG width x height")
    p.add_argument("--batches", type=int, default=6)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=0, help="also run with this many worker processes")
    p.add_argument("--out", default="runs/input_pipeline")
    p.add_argument("--torchvision-python", default=None,
                   help="Python with torchvision (e.g. .venv-timm/bin/python) to time the same folder")
    args = p.parse_args()
    w, h = (int(v) for v in args.size.split("x"))
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder, packed = pathlib.Path(tmp) / "folder", pathlib.Path(tmp) / "shards"
        t0 = time.perf_counter()
        write_jpegs(folder, args.images, (w, h))
        t1 = time.perf_counter()
        shards.pack(folder, packed, examples_per_shard=128, workers=os.cpu_count())
        t2 = time.perf_counter()
        mb = sum(f.stat().st_size for f in packed.glob("*.array_record")) / 2**20
        print(f"wrote {args.images} JPEGs of {w}x{h} ({mb:.1f} MiB) in {t1 - t0:.1f} s; "
              f"packed in {t2 - t1:.1f} s ({args.images / (t2 - t1):.0f} images/s, {os.cpu_count()} processes)")
        variants = {
            "image folder": sources.load_source("folder", "train", path=folder),
            "shards": sources.load_source("array_record", "train", path=packed),
            "shards, resize-on-decode (224)": sources.load_source("array_record", "train", path=packed,
                                                                  decode_size=224),
        }
        augments = {"crop + flip": None, "crop + flip + RandAugment(2, 10)": randaugment.RandAugment(2, 10.0)}
        for workers in sorted({0, args.workers}):
            for source_name, source in variants.items():
                for aug_name, augment in augments.items():
                    ips = throughput(source, augment, batches=args.batches, batch_size=args.batch_size,
                                     workers=workers)
                    rows.append({"source": source_name, "augmentation": aug_name, "workers": workers,
                                 "images_per_s": ips})
                    print(f"{source_name:<32} {aug_name:<34} workers={workers}: {ips:7.1f} images/s", flush=True)
        peer = None
        if args.torchvision_python:
            if args.images < (args.batches + 1) * args.batch_size:
                raise SystemExit(f"--images {args.images} is fewer than the {(args.batches + 1) * args.batch_size} "
                                 "images torchvision reads once each ((batches + 1) x batch size)")
            peer = torchvision_throughput(args.torchvision_python, folder, batches=args.batches,
                                          batch_size=args.batch_size)
            print(f"{'torchvision ImageFolder + DataLoader':<32} {'crop + flip':<34} workers=0: {peer:7.1f} images/s")
    (out / "results.json").write_text(json.dumps({"args": vars(args), "rows": rows, "torchvision": peer},
                                                 indent=2))
    print(f"\n| source ({w}x{h} JPEG -> 224) | augmentation | worker processes | images/s |"
          "\n| --- | --- | --- | --- |")
    for r in rows:
        where = "none: per CPU-second" if not r["workers"] else f"{r['workers']} (wall clock)"
        print(f"| {r['source']} | {r['augmentation']} | {where} | {r['images_per_s']:.0f} |")
    if peer:
        print(f"| torchvision ImageFolder, DataLoader | crop + flip | none: per CPU-second | {peer:.0f} |")
        base = next(r["images_per_s"] for r in rows if r["source"] == "image folder" and not r["workers"]
                    and r["augmentation"] == "crop + flip")
        print(f"\nvistas image folder / torchvision, crop + flip, per CPU-second: {base / peer:.2f}")


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
