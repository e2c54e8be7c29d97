"""``vistas presets``: the named training presets and their documentation."""

from __future__ import annotations

import argparse
import json


def run(args: argparse.Namespace) -> int:
    from vistas import presets

    rows = [{"name": n, "doc": presets.describe(n)} for n in presets.names()]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for r in rows:
        default = " (default)" if r["name"] == presets.DEFAULT else ""
        print(f"{r['name']}{default}\n" + "\n".join("    " + line for line in r["doc"].splitlines()) + "\n")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    pr = sub.add_parser("presets", help="named presets and their documentation")
    pr.add_argument("--json", action="store_true")
    pr.set_defaults(fn=run)
