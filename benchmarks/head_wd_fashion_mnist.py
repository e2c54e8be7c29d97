"""The head weight-decay trick ("Scaling Vision Transformers", Zhai et al. 2022, Section 3.5):
a grid of head × body weight decay, each run measured upstream and by few-shot transfer.

    python benchmarks/head_wd_fashion_mnist.py [--out runs/head_wd] [--epochs 2] \
        [--body 1e-5,1e-4,1e-3] [--head 1e-4,1e-3,1e-2] [--shots 10] [--seeds 2] [--plot docs/head_wd.png]

The paper's claim: a much stronger weight decay on the classifier head than on the body
looks worse upstream but transfers much better few-shot, and the best few-shot results lie
off the diagonal (head decay != body decay).

Each grid point is the ``fashion_mnist_vit`` preset (ViT width 128, depth 4, patch 7, GAP head,
Adam) for ``--epochs`` epochs with decoupled weight decay ``optim.wd`` = body and the head's
multiplier ``optim.wd_mults`` = head / body (vistas' decay is per step, Δθ = -sched·wd·mult·θ).
Upstream: Fashion-MNIST test top-1 of the final checkpoint. Few-shot: ``vistas fewshot``'s
linear (ridge) transfer of the pre-logits features to every other present target at
``--shots`` examples per class, ``--seeds`` samples, the ridge strength chosen on validation
examples from a grid (decay changes the features' scale), mean over targets. Runs that finished are
reused (rerunning the command continues the grid). Prints both grids and the verdict, writes
OUT/head_wd.json and, with ``--plot``, the two heatmaps side by side.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

from vistas import cli
from vistas.data import catalog
from vistas.evaluate import fewshot
from vistas.train.metrics import read_metrics

TARGETS = ("mnist_5k", "optdigits", "lfw_faces", "animal_silhouettes")
L2_GRID = "0.125,1,8,64,512,4096"


def run(args: list[str]) -> None:
    print("$ vistas " + " ".join(args), flush=True)
    if cli.main(args) != 0:
        sys.exit(f"vistas {' '.join(args)} failed")


def floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",")]


def upstream_top1(workdir: pathlib.Path) -> float:
    return [r["eval/test/top1"] for r in read_metrics(workdir / "metrics.jsonl") if "eval/test/top1" in r][-1]


def point(out: pathlib.Path, body: float, head: float, args: argparse.Namespace, targets: list[str]) -> dict:
    workdir = out / f"body{body:g}_head{head:g}"
    if not (workdir / "summary.json").exists():
        run(["train", "--preset", "fashion_mnist_vit", "--workdir", str(workdir), "--quiet", "--set",
             f"train.duration={args.epochs}ep", f"optim.wd={body}",
             f"optim.wd_mults=[('.*head/kernel', {head / body}), ('.*/kernel', 1.0)]"])
    shots = workdir / f"fewshot_head_wd_{args.shots}x{args.seeds}.json"
    if not shots.exists():
        # the ridge strength chosen on validation examples per sample: weight decay changes the
        # features' scale, which a fixed strength would favour or penalise
        print(f"$ vistas fewshot --workdir {workdir} --datasets {' '.join(targets)} --shots {args.shots} "
              f"--seeds {args.seeds} --l2-grid {L2_GRID}", flush=True)
        report = fewshot.evaluate_workdir(workdir, datasets=targets, shots=[args.shots], seeds=args.seeds,
                                          l2_grid=[float(v) for v in L2_GRID.split(",")])
        shots.write_text(json.dumps(report, indent=2))
    results = json.loads(shots.read_text())["results"]
    per_target = {name: results[name][str(args.shots)]["mean"] for name in targets}
    # standard error of the mean over targets, from the spread of the few-shot samples
    var = sum(results[name][str(args.shots)]["std"] ** 2 / max(args.seeds, 1) for name in targets)
    return {"body": body, "head": head, "upstream_top1": upstream_top1(workdir), "fewshot": per_target,
            "fewshot_mean": sum(per_target.values()) / len(per_target),
            "fewshot_se": var ** 0.5 / len(targets)}


def table(title: str, bodies: list[float], heads: list[float], value) -> str:
    lines = [title, "| head wd \\ body wd | " + " | ".join(f"{b:g}" for b in bodies) + " |",
             "| ---: | " + " | ".join("---:" for _ in bodies) + " |"]
    for h in heads:
        lines.append(f"| {h:g} | " + " | ".join(f"{100 * value(b, h):.2f}" for b in bodies) + " |")
    return "\n".join(lines)


def plot(path: pathlib.Path, bodies: list[float], heads: list[float], grid: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.8))
    for ax, (key, title) in zip(axes, (("upstream_top1", "Fashion-MNIST test top-1 (%)"),
                                        ("fewshot_mean", "10-shot linear transfer, mean (%)")), strict=True):
        values = np.array([[100 * grid[(b, h)][key] for b in bodies] for h in heads])
        im = ax.imshow(values, origin="lower", cmap="viridis")
        ax.set_xticks(range(len(bodies)), [f"{b:g}" for b in bodies])
        ax.set_yticks(range(len(heads)), [f"{h:g}" for h in heads])
        ax.set_xlabel("body weight decay")
        ax.set_ylabel("head weight decay")
        ax.set_title(title, fontsize=10)
        best = np.unravel_index(np.argmax(values), values.shape)
        for i in range(len(heads)):
            for j in range(len(bodies)):
                ax.text(j, i, f"{values[i, j]:.1f}", ha="center", va="center", fontsize=8,
                        color="red" if (i, j) == best else "white")
        fig.colorbar(im, ax=ax, shrink=0.8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/head_wd")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--body", default="1e-5,1e-4,1e-3")
    p.add_argument("--head", default="1e-4,1e-3,1e-2")
    p.add_argument("--shots", type=int, default=10)
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--plot", help="PNG of the two heatmaps")
    args = p.parse_args()
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    bodies, heads = floats(args.body), floats(args.head)
    targets = [t for t in TARGETS if catalog.is_present(t)]
    if not targets:
        sys.exit("no transfer target is present; see `vistas data list`")
    start = time.perf_counter()
    grid = {(b, h): point(out, b, h, args, targets) for h in heads for b in bodies}
    minutes = (time.perf_counter() - start) / 60
    print()
    print(table("Upstream: Fashion-MNIST test top-1 (%)", bodies, heads, lambda b, h: grid[(b, h)]["upstream_top1"]))
    print()
    print(table(f"{args.shots}-shot linear transfer, mean of {', '.join(targets)} (%)", bodies, heads,
                lambda b, h: grid[(b, h)]["fewshot_mean"]))
    for t in targets:
        print()
        print(table(f"{args.shots}-shot {t} (%)", bodies, heads, lambda b, h, t=t: grid[(b, h)]["fewshot"][t]))
    best_up = max(grid.values(), key=lambda r: r["upstream_top1"])
    best_fs = max(grid.values(), key=lambda r: r["fewshot_mean"])
    print(f"\nbest upstream: body {best_up['body']:g}, head {best_up['head']:g} "
          f"({100 * best_up['upstream_top1']:.2f}%); best few-shot: body {best_fs['body']:g}, head "
          f"{best_fs['head']:g} ({100 * best_fs['fewshot_mean']:.2f}%)")
    # the claim, in three parts: stronger head decay (a) costs upstream, (b) helps few-shot, at
    # each body decay; (c) the best few-shot point is off the diagonal
    lo, hi = min(heads), max(heads)
    worse_up = sum(grid[(b, hi)]["upstream_top1"] < grid[(b, lo)]["upstream_top1"] for b in bodies)
    better_fs = sum(grid[(b, hi)]["fewshot_mean"] > grid[(b, lo)]["fewshot_mean"] for b in bodies)

    def clear(b: float) -> bool:  # stronger head decay higher few-shot by more than twice the noise
        a, z = grid[(b, hi)], grid[(b, lo)]
        return a["fewshot_mean"] - z["fewshot_mean"] > 2 * (a["fewshot_se"] ** 2 + z["fewshot_se"] ** 2) ** 0.5

    clearly = sum(clear(b) for b in bodies)
    off_diagonal = best_fs["head"] != best_fs["body"]
    noise = 100 * max(r["fewshot_se"] for r in grid.values())
    print(f"head decay {hi:g} against {lo:g}: upstream lower at {worse_up} of {len(bodies)} body decays, "
          f"few-shot higher at {better_fs} of {len(bodies)} (by more than twice the few-shot samples' "
          f"standard error, up to {noise:.2f} points, at {clearly}); best few-shot off the diagonal: "
          f"{'yes' if off_diagonal else 'no'}")
    verdict = ("reproduced" if worse_up == len(bodies) and clearly == len(bodies) and off_diagonal
               else "partly reproduced" if clearly > len(bodies) // 2 or worse_up > len(bodies) // 2
               else "not reproduced")
    print(f"verdict: {verdict} ({minutes:.1f} min for the runs not reused)")
    (out / "head_wd.json").write_text(json.dumps(
        {"args": vars(args), "targets": targets, "grid": list(grid.values()), "verdict": verdict}, indent=2))
    if args.plot:
        plot(pathlib.Path(args.plot), bodies, heads, grid)
        print(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
