"""``vistas data``: list, fetch, pack and verify datasets."""

from __future__ import annotations

import argparse
import json
import pathlib


def run(args: argparse.Namespace) -> int:
    from vistas.data import catalog

    if args.data_cmd == "fetch":
        path = catalog.fetch(args.name, data_dir=args.data_dir)
        print(f"{args.name}: present in {path}")
        return 0
    if args.data_cmd in ("pack", "verify"):
        from vistas.data import shards
        from vistas.errors import ConfigError

        if args.workers is not None and args.workers < 1:
            raise ConfigError(f"--workers {args.workers} must be at least 1 (leave it out for one per core)")

        if args.data_cmd == "verify" and pathlib.Path(args.dst).is_dir() and not shards.is_packed(args.dst):
            return _verify_folder(args.dst, args.workers)  # an image folder
        if args.data_cmd == "verify":
            counts = shards.verify(args.dst, log=print)
        else:
            manifest = shards.pack(args.src, args.dst, examples_per_shard=args.examples_per_shard,
                                   workers=args.workers, log=print)
            counts = {k: v["num_examples"] for k, v in manifest["splits"].items()}
        print(f"{args.dst}: " + ", ".join(f"{k} {v:,} images" for k, v in counts.items())
              + (" (checksums match)" if args.data_cmd == "verify" else "")
              + f"; train on it with --set data.dataset=array_record data.path={args.dst}")
        return 0
    rows = catalog.list_datasets(data_dir=args.data_dir)
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
        return 0
    for r in rows:
        where = r["location"] if r["present"] else f"missing; {r['how_to_get']}"
        print(f"{r['name']:<20} {'present' if r['present'] else 'absent':<8} {where}")
    return 0


def _verify_folder(path: str, workers: int | None) -> int:
    from vistas.data import shards
    from vistas.errors import DataError

    report = shards.verify_folder(path, workers=workers, log=print)  # one line per bad image
    if report.skipped_dirs:
        print(f"{path}: skipped {report.skipped_dirs} symbolic link(s) to directories already read "
              "or holding the folder itself (loops); every image was read once")
    if not report.ok:
        raise DataError(f"{len(report.bad):,} of {report.total:,} images in {path} cannot be decoded "
                        "(listed above); remove or replace them")
    print(f"{path}: " + ", ".join(f"{k} {v:,} images" for k, v in report.counts.items())
          + f"; every image decodes; pack it with `vistas data pack {path} DST`")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    d = sub.add_parser("data", help="known datasets")
    dsub = d.add_subparsers(dest="data_cmd", required=True)
    dl = dsub.add_parser("list", help="known datasets and whether they are present")
    dl.add_argument("--json", action="store_true")
    dl.add_argument("--data-dir")
    df = dsub.add_parser("fetch", help="obtain a dataset (Debian package or official files)")
    df.add_argument("name")
    df.add_argument("--data-dir")
    dp = dsub.add_parser("pack", help="pack an image folder into ArrayRecord shards (resumable)",
                         description="Reads SRC/<split>/<class>/<image> (or SRC/<class>/<image>) and "
                         "writes DST/<split>-*.array_record shards with a manifest of checksums; "
                         "run it again to finish an interrupted pack.")
    dp.add_argument("src")
    dp.add_argument("dst")
    dp.add_argument("--examples-per-shard", type=int, default=1000)
    dp.add_argument("--workers", type=int, default=None,
                    help="processes, at least 1 (default: one per core)")
    dv = dsub.add_parser("verify", help="check packed shards against their manifest's checksums, "
                         "or decode every image of an image folder",
                         description="PATH is a shard directory (with a manifest.json): every shard is "
                         "checked against its checksum. Otherwise PATH is an image folder "
                         "(PATH/<split>/<class>/<image> or PATH/<class>/<image>): every image is "
                         "decoded once, each one that cannot be is listed, and the status is 2 if any.")
    dv.add_argument("dst", metavar="PATH")
    dv.add_argument("--workers", type=int, default=None,
                    help="threads decoding an image folder, at least 1 (default: one per core)")
    d.set_defaults(fn=run)
