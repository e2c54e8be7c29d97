"""Train once, cool down many times, on Fashion-MNIST: branches vs dedicated runs.

    python benchmarks/cooldown_fashion_mnist.py [--out runs/cooldown] [--plot docs/cooldown.png]

1. One run with the "infinite" schedule (warmup -> rsqrt, no end) of the `fashion_mnist_vit`
   preset, keeping checkpoints every 150 steps:
       vistas train --preset fashion_mnist_vit --workdir OUT/rsqrt --set <RSQRT + 600 steps>
2. Linear cooldowns over 20% of S branched from it at S = 150, 300, 600 (one command):
       vistas cooldown --workdir OUT/rsqrt --from-step 150 300 600 --steps 20% \
           --workdir-out OUT/branches
3. Three dedicated runs of the branches' lengths (180, 360, 720 steps), warmup then linear
   decay to 0:
       vistas train --preset fashion_mnist_vit --workdir OUT/linear_L --set <LINEAR, L steps>

Prints the commands and a Markdown table, writes OUT/results.json and the plot. Every run
resumes, so rerunning skips finished work.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from vistas import config as config_lib  # noqa: E402
from vistas import presets  # noqa: E402
from vistas.train import cooldown, loop  # noqa: E402
from vistas.train.metrics import read_metrics  # noqa: E402

PRESET = "fashion_mnist_vit"
BRANCHES = (150, 300, 600)
COOLDOWN = "20%"  # of the branch step
COMMON = ["schedule.warmup=30", "train.ckpt_every=100000", "train.log_every=25"]
RSQRT = [*COMMON, "schedule.decay=rsqrt", "schedule.timescale=100", "train.duration=600",
         "train.keep_every=150", "train.eval_every=75"]


def linear(steps: int) -> list[str]:
    return [*COMMON, "schedule.decay=linear", f"train.duration={steps}",
            f"train.eval_every={steps}"]


def _cmd(workdir: pathlib.Path, sets: list[str]) -> str:
    return (f"vistas train --preset {PRESET} --workdir {workdir} --set "
            + " ".join(f"'{s}'" for s in sets))


def _evals(workdir: pathlib.Path) -> dict[int, float]:
    return {r["step"]: r["eval/test/top1"] for r in read_metrics(workdir / "metrics.jsonl")
            if "eval/test/top1" in r}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/cooldown")
    p.add_argument("--plot", default="docs/cooldown.png")
    args = p.parse_args()
    out = pathlib.Path(args.out)
    timings: dict[str, float] = {}

    def timed(name, fn):
        start = time.perf_counter()
        result = fn()
        timings[name] = time.perf_counter() - start
        return result

    src = out / "rsqrt"
    print(_cmd(src, RSQRT), flush=True)
    timed("rsqrt", lambda: loop.train(config_lib.apply_overrides(presets.get(PRESET), RSQRT),
                                      src, quiet=True))
    print(f"vistas cooldown --workdir {src} --from-step {' '.join(map(str, BRANCHES))} "
          f"--steps {COOLDOWN} --workdir-out {out / 'branches'}", flush=True)
    branches = timed("branches", lambda: cooldown.cooldown(src, BRANCHES, COOLDOWN,
                                                          out / "branches", quiet=True))
    rows = []
    src_evals = _evals(src)
    for s, b in zip(BRANCHES, branches, strict=True):
        length = b["total_steps"]
        dedicated = out / f"linear_{length}"
        sets = linear(length)
        print(_cmd(dedicated, sets), flush=True)
        d = timed(f"linear_{length}", lambda sets=sets, dedicated=dedicated: loop.train(
            config_lib.apply_overrides(presets.get(PRESET), sets), dedicated, quiet=True))
        rows.append({"branch_step": s, "cooldown_steps": length - s, "length": length,
                     "rsqrt_at_branch": src_evals.get(s), "branch": b["eval/test/top1"],
                     "dedicated_linear": d["eval/test/top1"]})
    results = {"rows": rows, "rsqrt_evals": src_evals, "seconds": timings}
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2))

    print("\n| length (steps) | rsqrt run at S, no cooldown | cooldown branch from S "
          "| dedicated linear-decay run | branch - dedicated |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for r in rows:
        at = r["rsqrt_at_branch"]
        print(f"| {r['branch_step']} + {r['cooldown_steps']} = {r['length']} | "
              f"{100 * at:.2f}% | {100 * r['branch']:.2f}% | {100 * r['dedicated_linear']:.2f}% | "
              f"{100 * (r['branch'] - r['dedicated_linear']):+.2f} |")

    fig, ax = plt.subplots(figsize=(7, 4.2))
    steps = sorted(src_evals)
    ax.plot(steps, [100 * src_evals[s] for s in steps], "o-", color="0.5",
            label="rsqrt run (no cooldown)")
    for i, r in enumerate(rows):
        branch_evals = _evals(out / "branches" / f"from_{r['branch_step']}")
        ax.plot([r["branch_step"], r["length"]],
                [100 * src_evals[r["branch_step"]], 100 * branch_evals[r["length"]]], "-",
                color="C0", label="cooldown branch" if i == 0 else None)
        ax.plot([r["length"]], [100 * r["branch"]], "o", color="C0")
        ax.plot([r["length"]], [100 * r["dedicated_linear"]], "x", color="C3", ms=9, mew=2,
                label="dedicated linear-decay run" if i == 0 else None)
    ax.set_xlabel("training steps (batch 128)")
    ax.set_ylabel("Fashion-MNIST test top-1 (%)")
    ax.set_title("Train once, cool down many times")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    pathlib.Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.plot, dpi=120)
    print(f"plot: {args.plot}; timings (s): {json.dumps({k: round(v) for k, v in timings.items()})}")


if __name__ == "__main__":
    main()
