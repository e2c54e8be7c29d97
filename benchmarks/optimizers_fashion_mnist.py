"""Each optimizer trains the `fashion_mnist_vit` ViT briefly: test top-1 and state memory.

    python benchmarks/optimizers_fashion_mnist.py [--out runs/optimizers] [--epochs 2]
        [--examples 20000]

Every run is `vistas train --preset fashion_mnist_vit` on a seeded subset of the training
set with the overrides below (the exact command of each run is printed and saved), so
any row can be reproduced alone. Runs resume: rerunning the script skips finished runs.
Writes OUT/results.json and prints a Markdown table (docs/optimizers.md).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time

from vistas import config as config_lib
from vistas import presets
from vistas.optim import memory
from vistas.train import loop

PRESET = "fashion_mnist_vit"
# label -> overrides; learning rates: the preset's 2e-3 for the Adam family, 0.05 for SGD
RUNS = {
    "adam": [],
    "adam, bf16 first moment": ["optim.mu_dtype=bfloat16"],
    "adafactor_bv": ["optim.name=adafactor_bv"],
    "shampoo (Adam graft)": ["optim.name=shampoo"],
    "sgd (momentum 0.9)": ["optim.name=sgd", "optim.lr=0.05"],
    "adam + SAM (rho 0.05)": ["optim.sam_rho=0.05"],
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/optimizers")
    p.add_argument("--epochs", type=float, default=2)
    p.add_argument("--examples", type=int, default=20000)
    p.add_argument("--only", nargs="*", help="labels of RUNS to run (default all)")
    args = p.parse_args()
    out = pathlib.Path(args.out)
    common = [f"data.num_train_examples={args.examples}", f"train.duration='{args.epochs}ep'",
              f"train.eval_every='{args.epochs}ep'", "train.ckpt_every=100000"]
    results_path = out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    for label, sets in RUNS.items():
        if args.only and label not in args.only:
            continue
        workdir = out / "_".join("".join(c if c.isalnum() else " " for c in label).split())
        overrides = common + sets
        cfg = config_lib.apply_overrides(presets.get(PRESET), overrides)
        command = (f"vistas train --preset {PRESET} --workdir {workdir} --set "
                   + " ".join(f'"{o}"' for o in overrides))
        print(command, flush=True)
        start = time.perf_counter()
        summary = loop.train(cfg, workdir, quiet=True)
        seconds = time.perf_counter() - start
        mem = memory.preset_memory(cfg)
        results[label] = {
            "command": command,
            # a finished run only evaluates again: keep the time of the run that trained
            "seconds": results.get(label, {}).get("seconds", seconds),
            "top1": summary["eval/test/top1"], "loss": summary["eval/test/loss"],
            "steps": summary["step"], "params": mem["params"],
            "state_bytes": mem["state_bytes"], "bytes_per_param": mem["bytes_per_param"],
        }
        out.mkdir(parents=True, exist_ok=True)
        results_path.write_text(json.dumps(results, indent=2))
        print(json.dumps(results[label]), flush=True)
    print("\n| optimizer | test top-1 | test loss | state bytes | bytes / param | wall time |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for label, r in results.items():
        print(f"| {label} | {100 * r['top1']:.2f}% | {r['loss']:.3f} | {r['state_bytes']:,} | "
              f"{r['bytes_per_param']:.2f} | {r['seconds'] / 60:.1f} min |")


if __name__ == "__main__":
    main()
