"""``vistas optim-memory``: optimizer state bytes per parameter, measured abstractly."""

from __future__ import annotations

import argparse
import json

from vistas.cli._args import add_config_file, overrides


def run(args: argparse.Namespace) -> int:
    from vistas import config_files
    from vistas.errors import ConfigError
    from vistas.optim import memory

    sets = overrides(args)
    if bool(args.model) == bool(args.preset or args.config):
        raise ConfigError("give either --model VARIANT [...] or --preset NAME / --config FILE")
    if args.preset or args.config:
        cfg = config_files.build(args.preset, args.config)
        rows = [memory.preset_memory(cfg, o, sets, exact=args.exact)
                for o in (args.optimizer or memory.STANDARD)]
    else:
        rows = memory.table(args.model, args.optimizer, overrides=sets,
                            num_classes=args.num_classes, image_size=args.image_size,
                            exact=args.exact)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'model':<12} {'optimizer':<26} {'parameters':>15} {'state bytes':>17} {'B/param':>8}")
    for r in rows:
        print(f"{r['model']:<12} {r['optimizer']:<26} {r['params']:>15,} "
              f"{r['state_bytes']:>17,} {r['bytes_per_param']:>8.3f}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    om = sub.add_parser("optim-memory", help="optimizer state bytes per parameter (abstract)")
    om.add_argument("--model", nargs="+", help="e.g. vit-B/16 vit-L/16")
    om.add_argument("--preset", help="measure the model (and optimizer settings) of a preset")
    add_config_file(om)
    om.add_argument("--optimizer", nargs="*", metavar="NAME[,KEY=VALUE]",
                    help="e.g. adam adam,mu_dtype=bfloat16 adafactor_bv shampoo sgd (default)")
    om.add_argument("--set", action="append", nargs="+", default=[], metavar="KEY=VALUE",
                    help="optim.* options for every optimizer, e.g. optim.shampoo_block_size=256")
    om.add_argument("--num-classes", type=int, default=1000)
    om.add_argument("--image-size", type=int, default=224)
    om.add_argument("--exact", action="store_true",
                    help="trace every block instead of extrapolating from depths 1 and 2")
    om.add_argument("--json", action="store_true")
    om.set_defaults(fn=run)
