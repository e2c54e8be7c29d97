"""``vistas evaluate``: evaluate a checkpoint of a run."""

from __future__ import annotations

import argparse
import json


def run(args: argparse.Namespace) -> int:
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


def register(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser("evaluate", help="evaluate the latest checkpoint of a run")
    e.add_argument("--workdir", required=True)
    e.add_argument("--splits", nargs="+", help="splits to evaluate (default: the run's eval splits)")
    e.add_argument("--step", type=int, help="checkpoint step (default: latest)")
    e.add_argument("--json", action="store_true")
    e.set_defaults(fn=run)
