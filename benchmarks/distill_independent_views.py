"""Why `distill.mode=independent` falls below the label baseline on Fashion-MNIST.

    python benchmarks/distill_independent_views.py [--out runs/distill_views] [--steps 250]

In docs/distillation.md the student whose teacher sees an independently drawn view of each
example ends far below the same student trained on the labels. This script separates the
candidate causes at equal steps, with the student and teacher presets of that experiment:

1. The teachers:
       vistas train --preset fashion_mnist_distill_teacher --workdir OUT/teacher
   (the experiment's teacher, trained with flips only, no crops), and the same teacher
   trained on the student's crops (inception crops covering 25-100% of the image):
       vistas train --preset fashion_mnist_distill_teacher --workdir OUT/teacher_crops \
           --set data.crop=inception "data.inception_area=[0.25,1.0]"
2. How good a target each teacher gives on the views: its top-1 against the labels on the
   student's view (A) and on the independent view (B) of the same training examples, and
   how often its predictions on A and B agree (unmixed views, 4,096 training examples).
3. Students (`vistas distill --preset fashion_mnist_distill_student --set ...`, STEPS steps,
   the printed commands) in four groups: the experiment's setting (consistent, independent,
   labels); mixup off and milder crops (80-100% of the area), each independent and labels;
   the crop-trained teacher, independent (its labels baseline is the first group's: no
   teacher in that loss, the same views). Eight runs, sized for a shared 2-core CPU.

Prints the commands, a Markdown table (student test top-1 on the 10,000 test images) and a
plain verdict: which change closes the gap between independent and labels. Writes
OUT/views.json. Finished runs are reused, so rerunning skips them.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np

from vistas import config as config_lib
from vistas import experiment, presets
from vistas.data import pipeline
from vistas.train import distill, loop

TEACHER = "fashion_mnist_distill_teacher"
STUDENT = "fashion_mnist_distill_student"
CROP_TEACHER_SETS = ["data.crop=inception", "data.inception_area=[0.25,1.0]"]
MILD = ["data.inception_area=[0.8,1.0]"]
# group -> (teacher run, student overrides, description)
GROUPS = {
    "default": ("teacher", [], "experiment's setting: crops 25-100%, mixup 1, teacher w/o crops"),
    "no_mixup": ("teacher", ["distill.mixup_alpha=0"], "mixup off"),
    "mild_crops": ("teacher", MILD, "milder crops: 80-100% of the area"),
    "crop_teacher": ("teacher_crops", [], "teacher trained on the student's 25-100% crops"),
}
MODES = {"default": ("consistent", "independent", "labels"), "no_mixup": ("independent", "labels"),
         "mild_crops": ("independent", "labels"), "crop_teacher": ("independent",)}


def _quote(sets: list[str]) -> str:
    return " ".join(f'"{s}"' for s in sets)


def _finished(workdir: pathlib.Path) -> dict | None:
    summary = workdir / "summary.json"
    if summary.exists():
        s = json.loads(summary.read_text())
        if s.get("finished"):
            return s
    return None


def train_teacher(out: pathlib.Path, name: str, sets: list[str], timings: dict) -> dict:
    workdir = out / name
    print(f"vistas train --preset {TEACHER} --workdir {workdir}"
          + (f" --set {_quote(sets)}" if sets else ""), flush=True)
    done = _finished(workdir)
    if done:
        return done
    start = time.perf_counter()
    summary = loop.train(config_lib.apply_overrides(presets.get(TEACHER), sets), workdir, quiet=True)
    timings[name] = time.perf_counter() - start
    return summary


def view_stats(teacher: pathlib.Path, sets: list[str], n_batches: int = 8, batch: int = 512) -> dict:
    """The teacher's top-1 on the student's view (A) and the independent view (B) of the same
    training examples, and how often its predictions on A and B agree (unmixed views)."""
    cfg = config_lib.apply_overrides(presets.get(STUDENT), ["distill.mode=independent", *sets])
    teachers, frozen = distill.load_teachers([str(teacher)])
    size = distill.view_size(cfg, teachers)
    fn = jax.jit(distill.teacher_logits(teachers, tuple(cfg.data.value_range)))
    source, _, _ = experiment.build_sources(cfg)
    it = pipeline.train_iterator(source, global_batch_size=batch, seed=cfg.train.seed,
                                 transform=distill.train_transform(cfg, size))
    right_a = right_b = agree = n = 0
    try:
        for _ in range(n_batches):
            b = next(it)
            pa = np.asarray(fn(frozen, jnp.asarray(b["image"])))[0].argmax(-1)
            pb = np.asarray(fn(frozen, jnp.asarray(b[distill.TEACHER_IMAGE])))[0].argmax(-1)
            right_a += int((pa == b["label"]).sum())
            right_b += int((pb == b["label"]).sum())
            agree += int((pa == pb).sum())
            n += len(pa)
    finally:
        it.close()
    return {"top1_a": right_a / n, "top1_b": right_b / n, "agree_ab": agree / n}


def student(out: pathlib.Path, name: str, teacher: str, mode: str, sets: list[str], steps: int,
            timings: dict) -> float:
    workdir = out / name
    full = [f"distill.teachers=['{out / teacher}']", f"distill.mode={mode}", *sets,
            f"train.duration={steps}", f"train.eval_every={steps}", f"train.ckpt_every={steps}",
            "train.log_every=50"]
    print(f"vistas distill --preset {STUDENT} --workdir {workdir} --set {_quote(full)}", flush=True)
    summary = _finished(workdir)
    if summary is None:
        start = time.perf_counter()
        summary = loop.train(config_lib.apply_overrides(presets.get(STUDENT), full), workdir, quiet=True)
        timings[name] = time.perf_counter() - start
        if not summary.get("finished"):
            raise SystemExit(f"{name} stopped at step {summary.get('step')}; run again to resume")
    print(f"  {name}: test top-1 {100 * summary['eval/test/top1']:.2f}%"
          + (f" ({timings[name]:.0f} s)" if name in timings else " (reused)"), flush=True)
    return summary["eval/test/top1"]


def _pct(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.2f}"


def verdict(top1: dict, stats: dict) -> list[str]:
    labels = top1["default"]["labels"]
    gap = {g: 100 * (top1[g]["independent"] - (top1[g].get("labels", labels))) for g in GROUPS}
    lines = ["independent minus labels (points of test top-1): " + ", ".join(
        f"{g} {gap[g]:+.2f}" for g in GROUPS)]
    base = gap["default"]
    if base >= 0:
        return [*lines, "verdict: independent is not below labels in the experiment's setting here"]
    closed = {g: (gap[g] - base) / -base for g in GROUPS if g != "default"}
    best = max(closed, key=closed.get)
    for g in closed:
        lines.append(f"  {GROUPS[g][2]}: closes {100 * closed[g]:.0f}% of the gap")
    s = stats["default"]
    lines.append(
        f"the experiment's teacher (trained without crops) is right on {100 * s['top1_b']:.1f}% of "
        f"the independent views it labels (and predicts the same class on both views of an example "
        f"{100 * s['agree_ab']:.1f}% of the time); trained on those crops: "
        f"{100 * stats['crop_teacher']['top1_b']:.1f}% ({100 * stats['crop_teacher']['agree_ab']:.1f}%)")
    if closed[best] < 0.5:
        lines.append(f"verdict: no single change here closes most of the gap (best: {GROUPS[best][2]})")
    elif best == "no_mixup":
        lines.append("verdict: mixup is the cause: without it independent views are no longer "
                     "far below labels")
    else:
        lines.append(
            "verdict: not a defect of the views (same examples, same mixup partner and weight, "
            f"independent crop draws); most of the gap closes with '{GROUPS[best][2]}': the "
            "experiment's teacher, trained without crops, is wrong on a large part of the "
            "independently cropped views, so its target on view B is a noisy label that the "
            "student cannot predict from view A, worse than the true label; consistent views "
            "escape this because the student matches the teacher on the same pixels")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/distill_views")
    p.add_argument("--steps", type=int, default=250, help="steps of every student run")
    args = p.parse_args()
    out = pathlib.Path(args.out)
    t0 = time.perf_counter()
    timings: dict[str, float] = {}

    teacher_top1 = {"teacher": train_teacher(out, "teacher", [], timings)["eval/test/top1"],
                    "teacher_crops": train_teacher(out, "teacher_crops", CROP_TEACHER_SETS, timings)
                    ["eval/test/top1"]}
    for name, acc in teacher_top1.items():
        print(f"  {name}: test top-1 {100 * acc:.2f}%", flush=True)

    stats = {}
    for g, (teacher, sets, _) in GROUPS.items():
        if g == "no_mixup":
            continue  # mixup is applied on the device; the unmixed views are those of "default"
        stats[g] = view_stats(out / teacher, sets)
        s = stats[g]
        print(f"  teacher on the views of {g}: top-1 A {100 * s['top1_a']:.1f}%, B "
              f"{100 * s['top1_b']:.1f}%, same prediction on A and B {100 * s['agree_ab']:.1f}%",
              flush=True)
    stats["no_mixup"] = stats["default"]

    top1: dict[str, dict[str, float]] = {}
    for g, (teacher, sets, _) in GROUPS.items():
        top1[g] = {}
        for mode in MODES[g]:
            name = f"{g}_{mode}"
            top1[g][mode] = student(out, name, teacher, mode, sets, args.steps, timings)

    labels = top1["default"]["labels"]
    print(f"\nteachers: {TEACHER} {100 * teacher_top1['teacher']:.2f}%, trained on 25-100% crops "
          f"{100 * teacher_top1['teacher_crops']:.2f}% test top-1; students {args.steps} steps\n")
    print("| group | teacher top-1 on view A | on view B | same on A and B | consistent "
          "| independent | labels | independent − labels |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for g in GROUPS:
        s, r = stats[g], top1[g]
        lab = r.get("labels", labels)
        print(f"| {GROUPS[g][2]} | {100 * s['top1_a']:.1f} | {100 * s['top1_b']:.1f} | "
              f"{100 * s['agree_ab']:.1f} | {_pct(r.get('consistent'))} | {100 * r['independent']:.2f} | "
              f"{100 * lab:.2f}{'' if 'labels' in r else ' (default)'} | "
              f"{100 * (r['independent'] - lab):+.2f} |")
    print()
    for line in verdict(top1, stats):
        print(line)
    total = time.perf_counter() - t0
    print("\nseconds: " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()) + f"; total {total:.0f}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "views.json").write_text(json.dumps(
        {"steps": args.steps, "teacher_top1": teacher_top1, "view_stats": stats, "top1": top1,
         "seconds": timings, "total_seconds": total}, indent=2))
    print(f"wrote {out / 'views.json'}")


if __name__ == "__main__":
    main()
