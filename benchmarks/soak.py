"""Kill-and-resume soak of `vistas train` (vistas.systems.soak): N SIGKILLs at seeded random
moments (while starting, at a random step, during a checkpoint write), resumed each time;
the final parameters and logged losses must equal those of an uninterrupted run.

    python benchmarks/soak.py --kills 15 --seed 0 --workdir runs/soak

Prints one line per kill and a summary; exits 1 if a resume did not start from the last
complete checkpoint or the result differs. Results: docs/reliability.md.
"""

import argparse
import json
import pathlib
import shutil
import sys

from vistas.systems import soak

# A depth-1, width-32 ViT on 1,024 Fashion-MNIST images, a checkpoint every 4 steps.
DEFAULT_SET = ["model.depth=1", "model.width=32", "model.mlp_dim=64", "model.num_heads=2",
               "data.num_train_examples=1024", "data.batch_size=32", "schedule.warmup=4",
               "data.eval_splits=['test[:200]']", "data.eval_batch_size=200",
               "train.ckpt_every=4", "train.eval_every=1000"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=15)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=200, help="length of the run in steps")
    ap.add_argument("--preset", default="smoke")
    ap.add_argument("--set", nargs="*", default=None, help="overrides (default: a tiny ViT run)")
    ap.add_argument("--workdir", default="runs/soak")
    args = ap.parse_args()
    workdir = pathlib.Path(args.workdir)
    if workdir.exists():
        shutil.rmtree(workdir)
    overrides = (DEFAULT_SET if args.set is None else args.set) + [f"train.duration={args.steps}"]
    report = soak.soak(args.preset, overrides, workdir, kills=args.kills, seed=args.seed)
    kills = [vars(k) for k in report.pop("kills")]
    (workdir / "report.json").write_text(json.dumps({**report, "kills": kills}, indent=2))
    print(json.dumps({k: v for k, v in report.items() if k != "overrides"}))
    return 0 if report["equal"] and not report["lost"] and len(kills) == args.kills else 1


if __name__ == "__main__":
    sys.exit(main())
