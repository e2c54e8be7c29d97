"""``vistas predict``: what a trained run sees in images."""

from __future__ import annotations

import argparse
import json


def run(args: argparse.Namespace) -> int:
    from vistas.evaluate import predict

    report = predict.predict(args.workdir, args.images, top_k=args.top_k, step=args.step,
                             batch_size=args.batch_size, ema=False if args.no_ema else None)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"checkpoint step {report['step']} ({report['weights']})")
    for row in report["predictions"]:
        top = "  ".join(f"{t['class']} {t['probability']:.3f}" for t in row["top"])
        print(f"{row['file']}: {top}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="classify images with a trained run",
                       description="The top classes of each image (files, or folders searched "
                       "recursively) by the latest checkpoint of a run, with the run's class names; "
                       "images of any size are preprocessed as the run's evaluation does.")
    p.add_argument("--workdir", required=True, help="the run")
    p.add_argument("images", nargs="+", metavar="IMAGE_OR_FOLDER")
    p.add_argument("--top-k", type=int, default=5, help="classes per image (default 5)")
    p.add_argument("--step", type=int, help="checkpoint step (default: latest)")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default 64)")
    p.add_argument("--no-ema", action="store_true", help="the trained parameters even when the run keeps an EMA")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=run)
