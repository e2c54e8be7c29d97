"""Function-matching distillation on Fashion-MNIST: four views, two training lengths.

    python benchmarks/distill_fashion_mnist.py [--out runs/distill] [--short 250] [--factor 4] \
        [--plot docs/distillation.png]

1. The teacher (a ViT of 803k parameters, 3 epochs):
       vistas train --preset fashion_mnist_distill_teacher --workdir OUT/teacher
2. The student (a ViT of 70k parameters) distilled from it under each distill.mode
   (consistent, independent, fixed, labels) for SHORT and FACTOR x SHORT steps:
       vistas distill --preset fashion_mnist_distill_student --workdir OUT/MODE_STEPS \
           --set distill.teachers=[OUT/teacher] distill.mode=MODE train.duration=STEPS ...
   The fixed teacher's logits are cached once in OUT/cache and shared by the fixed runs.

Prints the commands and a Markdown table (final student top-1, agreement and KL on the
10,000 test images, and the teacher's top-1), writes OUT/results.json and the plot (student
test top-1 against steps, per mode and length). Every run resumes, so rerunning skips
finished work.
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
from vistas.train import loop  # noqa: E402
from vistas.train.metrics import read_metrics  # noqa: E402

TEACHER = "fashion_mnist_distill_teacher"
STUDENT = "fashion_mnist_distill_student"
MODES = ("consistent", "independent", "fixed", "labels")
COLORS = {"consistent": "tab:blue", "independent": "tab:orange", "fixed": "tab:red", "labels": "tab:gray"}


def student_sets(out: pathlib.Path, mode: str, steps: int) -> list[str]:
    return [f"distill.teachers=['{out / 'teacher'}']", f"distill.mode={mode}",
            f"distill.cache_dir={out / 'cache'}", f"train.duration={steps}",
            f"train.eval_every={max(1, steps // 4)}", f"train.ckpt_every={steps}",
            "train.log_every=50"]


def _quote(sets: list[str]) -> str:
    return " ".join(f'"{s}"' for s in sets)


def _final(workdir: pathlib.Path) -> dict:
    rows = [r for r in read_metrics(workdir / "metrics.jsonl") if "eval/test/top1" in r]
    return {"curve": [(r["step"], r["eval/test/top1"]) for r in rows], **rows[-1]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/distill")
    p.add_argument("--short", type=int, default=250, help="steps of the short runs")
    p.add_argument("--factor", type=int, default=4, help="long runs: FACTOR x SHORT steps")
    p.add_argument("--plot", default="docs/distillation.png")
    p.add_argument("--runs", help="comma-separated MODE_STEPS names to train in this process (to "
                   "run several processes side by side); the table and plot need every run finished")
    args = p.parse_args()
    out = pathlib.Path(args.out)
    timings: dict[str, float] = {}

    print(f"vistas train --preset {TEACHER} --workdir {out / 'teacher'}", flush=True)
    start = time.perf_counter()
    done = out / "teacher" / "summary.json"
    if done.exists() and json.loads(done.read_text())["finished"]:
        teacher = json.loads(done.read_text())
    else:
        teacher = loop.train(presets.get(TEACHER), out / "teacher", quiet=True)
        timings["teacher"] = time.perf_counter() - start

    results: dict[str, dict] = {}
    for steps in (args.short, args.factor * args.short):
        for mode in MODES:
            name = f"{mode}_{steps}"
            sets = student_sets(out, mode, steps)
            print(f"vistas distill --preset {STUDENT} --workdir {out / name} --set {_quote(sets)}",
                  flush=True)
            summary = out / name / "summary.json"
            if summary.exists() and json.loads(summary.read_text())["finished"]:
                timings[name] = json.loads(summary.read_text()).get("seconds", float("nan"))
            elif args.runs and name not in args.runs.split(","):
                continue
            else:
                start = time.perf_counter()
                loop.train(config_lib.apply_overrides(presets.get(STUDENT), sets), out / name,
                                quiet=True)
                timings[name] = time.perf_counter() - start
                summary.write_text(json.dumps({**json.loads(summary.read_text()),
                                               "seconds": timings[name]}, indent=2))
            results[name] = {"mode": mode, "steps": steps, **_final(out / name)}
            r = results[name]
            print(f"  {name}: top-1 {r['eval/test/top1']:.4f}, agreement "
                  f"{r['eval/test/agreement']:.4f}, KL {r['eval/test/kl']:.4f} "
                  f"({timings[name]:.0f} s)", flush=True)

    if len(results) < 2 * len(MODES):
        print(f"{len(results)} of {2 * len(MODES)} runs finished; run again without --runs for the table")
        return
    teacher_top1 = teacher["eval/test/top1"]
    lengths = (args.short, args.factor * args.short)
    print(f"\nteacher ({TEACHER}): test top-1 {100 * teacher_top1:.2f}%\n")
    print("| mode | " + " | ".join(f"top-1 @{s} | agree @{s} | KL @{s}" for s in lengths) + " |")
    print("| --- |" + " --- | --- | --- |" * len(lengths))
    for mode in MODES:
        cells = []
        for s in lengths:
            r = results[f"{mode}_{s}"]
            cells += [f"{100 * r['eval/test/top1']:.2f}", f"{100 * r['eval/test/agreement']:.2f}",
                      f"{r['eval/test/kl']:.3f}"]
        print(f"| {mode} | " + " | ".join(cells) + " |")
    print("\nseconds: " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()))

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in results.values():
        xs, ys = zip(*r["curve"], strict=True)
        long = r["steps"] != args.short
        ax.plot(xs, [100 * y for y in ys], color=COLORS[r["mode"]], marker="o", markersize=3,
                linestyle="-" if long else "--", label=f"{r['mode']}, {r['steps']} steps")
    ax.axhline(100 * teacher_top1, color="black", linewidth=1, linestyle=":", label="teacher")
    ax.set_xlabel("student step")
    ax.set_ylabel("student test top-1 (%)")
    ax.set_title("Distilling a ViT into a 70k-parameter ViT on Fashion-MNIST")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(args.plot, dpi=100)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(
        {"teacher_top1": teacher_top1, "runs": results, "seconds": timings}, indent=2))
    print(f"wrote {out / 'results.json'} and {args.plot}")


if __name__ == "__main__":
    main()
