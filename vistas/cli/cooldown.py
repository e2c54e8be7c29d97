"""``vistas cooldown``: branch cooldowns from checkpoints of an rsqrt run."""

from __future__ import annotations

import argparse
import json


def run(args: argparse.Namespace) -> int:
    from vistas.train import cooldown

    summaries = cooldown.cooldown(args.workdir, args.from_step, args.steps, args.workdir_out,
                                  quiet=args.quiet)
    if args.json:
        print(json.dumps(summaries, indent=2))
        return 0
    for s in summaries:
        status = "finished" if s["finished"] else f"stopped at step {s['step']}"
        print(f"\nbranch from step {s['from_step']} -> {s['workdir']}: {status}, "
              f"step {s['step']}/{s['total_steps']}")
        for key, value in s.items():
            if key.startswith("eval/"):
                print(f"  {key:<28} {value:.4f}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser("cooldown", help="branch cooldowns from checkpoints of an rsqrt run")
    c.add_argument("--workdir", required=True, help="the source run (only read)")
    c.add_argument("--from-step", type=int, nargs="+", required=True, metavar="S",
                   help="checkpoint steps to branch from (kept by train.keep_every)")
    c.add_argument("--steps", required=True,
                   help="cooldown length: steps, '1ep', '50000ex' or percent of S ('20%%')")
    c.add_argument("--workdir-out", required=True,
                   help="the branch; with several steps, one folder DIR/from_S per step")
    c.add_argument("--quiet", action="store_true", help="no progress output")
    c.add_argument("--json", action="store_true", help="print the summaries as JSON")
    c.set_defaults(fn=run)
