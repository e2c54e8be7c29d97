"""``vistas models``: the registered models with their parameter counts."""

from __future__ import annotations

import argparse
import json


def run(args: argparse.Namespace) -> int:
    from vistas.models import registry

    rows = registry.catalog(num_classes=args.num_classes, image_size=args.image_size)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'model':<12} {'parameters':>16}   (at {args.image_size} px, {args.num_classes} classes)")
    for r in rows:
        print(f"{r['name']:<12} {r['params']:>16,}")
    from vistas.models import vit

    print(f"any vit-NAME/PATCH works (NAME in {' '.join(vit.SIZES)}); options: docs/models.md")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    m = sub.add_parser("models", help="registered models with parameter counts")
    m.add_argument("--json", action="store_true")
    m.add_argument("--image-size", type=int, default=224)
    m.add_argument("--num-classes", type=int, default=1000)
    m.set_defaults(fn=run)
