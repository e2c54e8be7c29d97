"""Offline "annotated" distillation against function matching, at equal student steps.

    python benchmarks/distill_annotated.py [--out runs/distill_annotated] [--steps 1000] \
        [--examples 10000] [--views 1,4,16] [--teacher RUN_DIR]

1. The teacher (a ViT of 803k parameters, 3 epochs; skipped when --teacher names a run):
       vistas train --preset fashion_mnist_distill_teacher --workdir OUT/teacher
2. For each K of --views, the teacher annotates K views (inception crop, flip, mixup) of
   each of the EXAMPLES training images once (`distill.annotate`, timed), into
   OUT/cache_kK/annotations.
3. The student (a ViT of 72k parameters) trained for STEPS steps under each mode, with the
   same seed, data subset, batch and schedule:
       vistas distill --preset fashion_mnist_distill_student --workdir OUT/MODE \
           --set distill.teachers=[OUT/teacher] distill.mode=MODE train.duration=STEPS ...
   MODE: annotated (K = each of --views, reading OUT/cache_kK), consistent (the teacher
   runs in every step) and fixed (teacher logits on central crops, cached once).

Prints the commands, a Markdown table (student test top-1, agreement and KL against the
teacher on the 10,000 test images; teacher forward passes; annotation time and disk) and a
verdict; writes OUT/results.json. Finished runs are read back, so rerunning skips them.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time

from vistas import config as config_lib
from vistas import presets
from vistas.systems import mesh as mesh_lib
from vistas.train import distill, loop
from vistas.train.metrics import read_metrics

TEACHER = "fashion_mnist_distill_teacher"
STUDENT = "fashion_mnist_distill_student"


def student_sets(out: pathlib.Path, teacher: pathlib.Path, mode: str, steps: int, examples: int,
                 views: int | None = None) -> list[str]:
    sets = [f"distill.teachers=['{teacher}']", f"distill.mode={mode}", f"train.duration={steps}",
            f"data.num_train_examples={examples}", f"train.eval_every={max(1, steps // 4)}",
            f"train.ckpt_every={steps}", "train.log_every=50"]
    if mode == "annotated":
        sets += [f"distill.views_per_example={views}", f"distill.cache_dir={out / f'cache_k{views}'}"]
    elif mode == "fixed":
        sets += [f"distill.cache_dir={out / 'cache_fixed'}"]
    return sets


def _quote(sets: list[str]) -> str:
    return " ".join(f'"{s}"' for s in sets)


def _final(workdir: pathlib.Path) -> dict:
    rows = [r for r in read_metrics(workdir / "metrics.jsonl") if "eval/test/top1" in r]
    return {"curve": [(r["step"], r["eval/test/top1"]) for r in rows], **rows[-1]}


def _finished(workdir: pathlib.Path) -> dict | None:
    path = workdir / "summary.json"
    if path.exists():
        summary = json.loads(path.read_text())
        if summary.get("finished"):
            return summary
    return None


def annotate(cfg: config_lib.Config, root: pathlib.Path) -> dict:
    """Annotates (or reads) the set of ``cfg`` in ``root``; seconds, views and bytes."""
    exp = loop.build(cfg)
    teachers, frozen = distill.load_teachers(cfg.distill.teachers)
    size = distill.view_size(cfg, teachers)
    start = time.perf_counter()
    source, reused = distill.annotate(exp.train_source, teachers, frozen, cfg, size, mesh_lib.data_mesh(), root,
                                      say=lambda s: print("   ", s, flush=True))
    seconds = time.perf_counter() - start
    saved = root.parent / "annotation_seconds.json"  # kept for a rerun that reads the set
    if reused and saved.exists():
        seconds = json.loads(saved.read_text())["seconds"]
    elif not reused:
        saved.write_text(json.dumps({"seconds": seconds}))
    shards = source.manifest["shards"]
    return {"seconds": seconds, "views": len(source), "bytes": sum(s["bytes"] for s in shards),
            "reused": reused}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/distill_annotated")
    p.add_argument("--steps", type=int, default=1000, help="student steps of every mode")
    p.add_argument("--examples", type=int, default=10000, help="training images (a seeded subset)")
    p.add_argument("--views", default="1,4,16", help="views per example (K) of the annotated runs")
    p.add_argument("--teacher", help="an existing teacher run (default: train OUT/teacher)")
    p.add_argument("--teacher-duration", help="train.duration of the teacher (default: the preset's 3ep)")
    args = p.parse_args()
    out = pathlib.Path(args.out)
    ks = [int(k) for k in args.views.split(",")]
    timings: dict[str, float] = {}
    wall = time.perf_counter()

    teacher = pathlib.Path(args.teacher) if args.teacher else out / "teacher"
    tsets = [f"train.duration={args.teacher_duration}"] if args.teacher_duration else []
    if not args.teacher:
        print(f"vistas train --preset {TEACHER} --workdir {teacher} {('--set ' + _quote(tsets)) if tsets else ''}",
              flush=True)
    start = time.perf_counter()
    summary = _finished(teacher)
    if summary is None:
        summary = loop.train(config_lib.apply_overrides(presets.get(TEACHER), tsets), teacher, quiet=True)
        timings["teacher"] = time.perf_counter() - start
    teacher_top1 = summary["eval/test/top1"]
    print(f"  teacher: test top-1 {teacher_top1:.4f}", flush=True)

    runs = [("consistent", None), ("fixed", None), *(("annotated", k) for k in ks)]
    results: dict[str, dict] = {}
    for mode, k in runs:
        name = mode if k is None else f"annotated_k{k}"
        sets = student_sets(out, teacher, mode, args.steps, args.examples, k)
        cfg = config_lib.apply_overrides(presets.get(STUDENT), sets)
        row: dict = {"mode": mode, "views": k}
        if mode == "annotated":
            row["annotation"] = annotate(cfg, out / f"cache_k{k}" / "annotations")
            a = row["annotation"]
            print(f"  {name}: {a['views']:,} views annotated in {a['seconds']:.0f} s, "
                  f"{a['bytes'] / 2**20:.1f} MiB ({a['bytes'] / a['views']:.0f} B/view)", flush=True)
        print(f"vistas distill --preset {STUDENT} --workdir {out / name} --set {_quote(sets)}", flush=True)
        done = _finished(out / name)
        if done is not None and "seconds" in done:
            timings[name] = done["seconds"]
        else:
            start = time.perf_counter()
            loop.train(cfg, out / name, quiet=True)
            timings[name] = time.perf_counter() - start
            path = out / name / "summary.json"
            path.write_text(json.dumps({**json.loads(path.read_text()), "seconds": timings[name]}, indent=2))
        results[name] = {**row, **_final(out / name), "seconds": timings[name]}
        r = results[name]
        print(f"  {name}: top-1 {r['eval/test/top1']:.4f}, agreement {r['eval/test/agreement']:.4f}, "
              f"KL {r['eval/test/kl']:.4f} ({timings[name]:.0f} s)", flush=True)

    n, s = args.examples, args.steps
    batch = presets.get(STUDENT).data.batch_size
    print(f"\nteacher ({teacher}): test top-1 {100 * teacher_top1:.2f}%; students: {s} steps of batch "
          f"{batch} ({s * batch / n:.1f} epochs of {n:,} images)\n")
    print("| mode | teacher forward passes | annotation | disk | student top-1 | agreement | KL | student time |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in results.values():
        if r["mode"] == "annotated":
            a = r["annotation"]
            label, passes = f"annotated K={r['views']}", f"{a['views']:,} (once)"
            ann = f"{a['seconds']:.0f} s"
            disk = f"{a['bytes'] / 2**20:.1f} MiB ({a['bytes'] / a['views']:.0f} B/view)"
        elif r["mode"] == "consistent":
            label, passes, ann, disk = "consistent", f"{s * batch:,} (every step)", "-", "-"
        else:
            label, passes, ann, disk = "fixed", f"{n:,} (once, central crops)", "-", "-"
        print(f"| {label} | {passes} | {ann} | {disk} | {100 * r['eval/test/top1']:.2f} | "
              f"{100 * r['eval/test/agreement']:.2f} | {r['eval/test/kl']:.3f} | {r['seconds']:.0f} s |")

    top1 = {name: 100 * r["eval/test/top1"] for name, r in results.items()}
    ann = [f"annotated_k{k}" for k in ks]
    best = max(ann, key=top1.get)
    ordered = all(top1[a] <= top1[b] for a, b in zip(ann, ann[1:], strict=False))
    print("\nverdict: " + "; ".join([
        f"more stored views {'help monotonically' if ordered else 'do not help monotonically'} "
        f"(K={', '.join(map(str, ks))}: {', '.join(f'{top1[a]:.2f}' for a in ann)}% top-1)",
        f"the best annotated run ({best}) is {top1[best] - top1['consistent']:+.2f} points from consistent "
        f"({top1['consistent']:.2f}%) and {top1[best] - top1['fixed']:+.2f} from fixed ({top1['fixed']:.2f}%)",
        f"K={ks[0]} is {top1[ann[0]] - top1['consistent']:+.2f} points from consistent"]))
    print("\nseconds: " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items())
          + f"; wall {time.perf_counter() - wall:.0f}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(
        {"teacher_top1": teacher_top1, "steps": s, "examples": n, "runs": results, "seconds": timings}, indent=2))
    print(f"wrote {out / 'results.json'}")


if __name__ == "__main__":
    main()
