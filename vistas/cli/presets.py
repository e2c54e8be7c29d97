"""``vistas presets``: the named training presets and their documentation;
``vistas presets show NAME``: one preset's config as a TOML (or JSON) file to start from."""

from __future__ import annotations

import argparse
import json


def run(args: argparse.Namespace) -> int:
    from vistas import presets

    if args.presets_cmd == "show":
        if args.format == "json":
            print(presets.get(args.name).to_json())
        else:
            from vistas import config_files

            print(config_files.preset_toml(args.name), end="")
        return 0
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
    prsub = pr.add_subparsers(dest="presets_cmd")
    show = prsub.add_parser("show", help="a preset's config as a file to start from (vistas train --config)",
                            description="Prints every key of the preset's config; save it, edit it and "
                            "train it with `vistas train --config FILE.toml`. TOML has no null: \"None\" "
                            "stands for None.")
    show.add_argument("name", help="a preset (vistas presets)")
    show.add_argument("--format", choices=("toml", "json"), default="toml",
                      help="toml (default; vistas train --config reads it) or json (as config.json)")
    pr.set_defaults(fn=run)
