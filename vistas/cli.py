"""The ``vistas`` command.

    vistas train --preset NAME --workdir DIR [--set key.path=value ...]
    vistas evaluate --workdir DIR [--splits test ...] [--step N]
    vistas models [--json] [--image-size 224] [--num-classes 1000]
    vistas presets [--json]
    vistas data list [--json] | vistas data fetch NAME

Errors caused by input (config, data, files) print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys

from vistas.errors import VistasError


def _cmd_train(args: argparse.Namespace) -> int:
    from vistas import config as config_lib
    from vistas import presets
    from vistas.train import loop

    cfg = presets.get(args.preset)
    config_lib.apply_overrides(cfg, [s for group in args.set for s in group])
    workdir = args.workdir or f"runs/{args.preset}"
    summary = loop.train(cfg, workdir, quiet=args.quiet)
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    status = "finished" if summary["finished"] else f"stopped at step {summary['step']}"
    print(f"\n{status}: step {summary['step']}/{summary['total_steps']}")
    for key, value in summary.items():
        if key.startswith("eval/"):
            print(f"  {key:<28} {value:.4f}")
    print(f"  metrics      {summary['workdir']}/metrics.jsonl (TensorBoard: {summary['workdir']}/tensorboard)")
    if summary["curves"]:
        print(f"  curves       {summary['curves']}")
    print(f"  checkpoints  {summary['checkpoints']}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from vistas.train import loop

    results = loop.evaluate_workdir(args.workdir, splits=args.splits, step=args.step)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print(f"checkpoint step {results['step']}")
        for key, value in results.items():
            if key != "step":
                print(f"  {key:<28} {value:.4f}")
        print(f"written to {args.workdir}/eval_{results['step']}.json")
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    from vistas.models import registry

    rows = registry.catalog(num_classes=args.num_classes, image_size=args.image_size)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'model':<12} {'parameters':>16}   (at {args.image_size} px, {args.num_classes} classes)")
    for r in rows:
        print(f"{r['name']:<12} {r['params']:>16,}")
    print("any vit-NAME/PATCH works (NAME in mu Ti S M B L H g G e); see docs for options")
    return 0


def _cmd_presets(args: argparse.Namespace) -> int:
    from vistas import presets

    rows = [{"name": n, "doc": presets.describe(n)} for n in presets.names()]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for r in rows:
        default = " (default)" if r["name"] == presets.DEFAULT else ""
        print(f"{r['name']}{default}\n" + "\n".join("    " + line for line in r["doc"].splitlines()) + "\n")
    return 0


def _cmd_data(args: argparse.Namespace) -> int:
    from vistas.data import catalog

    if args.data_cmd == "fetch":
        path = catalog.fetch(args.name, data_dir=args.data_dir)
        print(f"{args.name}: present in {path}")
        return 0
    rows = catalog.list_datasets(data_dir=args.data_dir)
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
        return 0
    for r in rows:
        where = r["location"] if r["present"] else f"missing; {r['how_to_get']}"
        print(f"{r['name']:<16} {'present' if r['present'] else 'absent':<8} {where}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from vistas import presets

    p = argparse.ArgumentParser(prog="vistas", description="Train and study vision models with JAX.")
    sub = p.add_subparsers(dest="cmd", required=True)

    t = sub.add_parser("train", help="train (or resume) a run")
    t.add_argument("--preset", default=presets.DEFAULT, help=f"named recipe (default {presets.DEFAULT})")
    t.add_argument("--workdir", help="output folder (default runs/PRESET); resumes if it holds the run")
    t.add_argument("--set", action="append", nargs="+", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set optim.lr=0.001 train.duration=3ep")
    t.add_argument("--quiet", action="store_true", help="no progress output")
    t.add_argument("--json", action="store_true", help="print the summary as JSON")
    t.set_defaults(fn=_cmd_train)

    e = sub.add_parser("evaluate", help="evaluate the latest checkpoint of a run")
    e.add_argument("--workdir", required=True)
    e.add_argument("--splits", nargs="+", help="splits to evaluate (default: the run's eval splits)")
    e.add_argument("--step", type=int, help="checkpoint step (default: latest)")
    e.add_argument("--json", action="store_true")
    e.set_defaults(fn=_cmd_evaluate)

    m = sub.add_parser("models", help="registered models with parameter counts")
    m.add_argument("--json", action="store_true")
    m.add_argument("--image-size", type=int, default=224)
    m.add_argument("--num-classes", type=int, default=1000)
    m.set_defaults(fn=_cmd_models)

    pr = sub.add_parser("presets", help="named presets and their documentation")
    pr.add_argument("--json", action="store_true")
    pr.set_defaults(fn=_cmd_presets)

    d = sub.add_parser("data", help="known datasets")
    dsub = d.add_subparsers(dest="data_cmd", required=True)
    dl = dsub.add_parser("list", help="known datasets and whether they are present")
    dl.add_argument("--json", action="store_true")
    dl.add_argument("--data-dir")
    df = dsub.add_parser("fetch", help="obtain a dataset (Debian package or official files)")
    df.add_argument("name")
    df.add_argument("--data-dir")
    d.set_defaults(fn=_cmd_data)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except VistasError as e:
        print(f"vistas: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `vistas presets | head`
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("vistas: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
