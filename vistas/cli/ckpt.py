"""``vistas ckpt``: check a run's checkpoints against the digests saved with them."""

from __future__ import annotations

import argparse


def run(args: argparse.Namespace) -> int:
    from vistas import checkpoint
    from vistas.errors import VistasError

    checks = checkpoint.verify(args.run)  # one line per kept checkpoint, oldest first
    for check in checks:
        print(check.line(), flush=True)
    damaged = [c.step for c in checks if c.status == "damaged"]
    if damaged:
        sound = [c.step for c in checks if c.status != "damaged"]
        fall_back = (f"the latest undamaged one is {sound[-1]}" if sound
                     else "none of them is undamaged")
        raise VistasError(f"{len(damaged)} of {len(checks)} checkpoints of {args.run} "
                          f"{'is' if len(damaged) == 1 else 'are'} damaged "
                          f"(step {', '.join(map(str, damaged))}); {fall_back}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser("ckpt", help="check a run's checkpoints")
    csub = c.add_subparsers(dest="ckpt_cmd", required=True)
    v = csub.add_parser(
        "verify", help="check every kept checkpoint of a run against its saved digests",
        description="Reads every kept checkpoint of RUN whole (one at a time, into host memory) and "
        "compares each array with the digest saved with it. Prints one line per step: ok, "
        "damaged (which array), or no digests (a checkpoint written before vistas saved them: "
        "it is read, but its values cannot be checked). Exit status 2 when any is damaged.")
    v.add_argument("run", metavar="RUN", help="a run's work directory (the --workdir of vistas train)")
    c.set_defaults(fn=run)
