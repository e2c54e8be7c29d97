"""``vistas sweep``: run a scaling sweep, emit its cluster commands, show its status."""

from __future__ import annotations

import argparse
import json
import sys


def run(args: argparse.Namespace) -> int:
    from vistas.scaling import sweep

    if args.sweep_cmd == "run":
        try:
            rows = sweep.run(args.spec, args.out, parallel=args.parallel, only=args.only,
                             in_process=args.in_process)
        except sweep.Interrupted as e:  # a checkpoint was saved: not a failure
            print(f"vistas: {e}", file=sys.stderr)
            return sweep.INTERRUPTED_STATUS
        return 1 if any(r["status"] == "failed" for r in rows) else 0
    if args.sweep_cmd == "commands":
        lines, _ = sweep.commands(args.spec, args.out)
        print("\n".join(lines))
        print(f"# written to {args.out}/commands.txt; SLURM array script: {args.out}/slurm_array.sh",
              file=sys.stderr)
        return 0
    if args.sweep_cmd == "presets":
        from vistas.scaling import presets

        for name in presets.names():
            print(name + "\n" + "\n".join("    " + line for line in presets.describe(name).splitlines()) + "\n")
        return 0
    rows = sweep.status(args.out)
    from vistas.scaling import results

    results.collect(args.out)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    width = max(len(r["member"]) for r in rows)
    for r in rows:
        print(f"{r['member']:<{width}}  {r['status']:<8} {r['detail']}")
    counts = {s: sum(r["status"] == s for r in rows) for s in ("done", "running", "partial", "failed", "pending")}
    print(", ".join(f"{n} {s}" for s, n in counts.items() if n) + f"; results: {args.out}/results.csv")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    sw = sub.add_parser("sweep", help="scaling sweeps: run, emit cluster commands, show status")
    swsub = sw.add_subparsers(dest="sweep_cmd", required=True)
    sr = swsub.add_parser("run", help="run every member (skips finished, resumes interrupted ones)")
    sr.add_argument("spec", help="a .toml/.json sweep spec or a sweep preset (vistas sweep presets)")
    sr.add_argument("--out", required=True, help="sweep folder: one run folder per member, results table")
    sr.add_argument("--parallel", type=int, default=1, help="groups run at once, each in its own process")
    sr.add_argument("--only", help="run only this group (MODEL/nSIZE), model or member")
    sr.add_argument("--in-process", action="store_true",
                    help="run in this process instead of one child process per group")
    sc = swsub.add_parser("commands", help="one command per member and a SLURM array script")
    sc.add_argument("spec")
    sc.add_argument("--out", required=True)
    ss = swsub.add_parser("status", help="what is done, running, interrupted, failed or pending")
    ss.add_argument("out")
    ss.add_argument("--json", action="store_true")
    swsub.add_parser("presets", help="named sweeps and their documentation")
    sw.set_defaults(fn=run)
