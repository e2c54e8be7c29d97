"""Three further claims of "a good teacher is patient and consistent", measured on Fashion-MNIST.

    python benchmarks/distill_claims.py --claim shampoo|other-data|warm-start|all \
        [--out runs/distill_claims] [--teacher runs/distill/teacher] [--steps 1000] \
        [--patience 2] [--other-data mnist_5k] [--runs NAME,...] [--plot FILE.png]

The teacher and the student are those of docs/distillation.md (benchmarks/distill_fashion_mnist.py):
the teacher run is trained once (``vistas train --preset fashion_mnist_distill_teacher``) unless
``--teacher`` already holds a finished one; every student is
``vistas distill --preset fashion_mnist_distill_student --set distill.teachers=[TEACHER] ...``
with consistent function matching (same crop, flip and mixup for teacher and student, KL, no
label loss), tested on the 10,000 Fashion-MNIST test images.

- ``shampoo`` (paper: Shampoo converges about 4x faster than Adam in function matching): the
  student with Adam and with ``optim.name=shampoo`` (Adam graft, the same lr and schedule) for
  STEPS steps, and Shampoo (and Adam) with 4x and 2x shorter schedules. Reported: the steps
  Shampoo needs to reach the Adam run's final top-1 and agreement, and what the short
  Shampoo schedules reach.
- ``other-data`` (paper: distilling on images the teacher was not trained on still works): the
  student distilled on another dataset's training images (``data.mixture=[(DATASET, 'train',
  1.0)]``: the training images come from DATASET, the evaluation split from Fashion-MNIST;
  the other dataset's labels are never used), against the student distilled on Fashion-MNIST
  and the student trained on the labels (``distill.mode=labels``, the same views and mixup).
- ``warm-start`` (paper, figure 2c: a student initialised from a supervised model looks good
  at first, then plateaus and is overtaken by patient function matching from scratch): the
  label-trained student of ``other-data`` (STEPS steps) starts a consistent distillation of
  PATIENCE x STEPS steps (``train.init_from``: its body, with a fresh head), against the same
  distillation from scratch.

Each run is trained in this process unless its ``summary.json`` says it finished (an
interrupted run resumes from its last checkpoint). ``--runs`` trains only the named runs, in
that order (to run several processes side by side); the tables need every run of the claim.
Prints the commands, per claim a table and a verdict, and writes OUT/results.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import time

from vistas import config as config_lib
from vistas import presets
from vistas.errors import VistasError
from vistas.train import loop
from vistas.train.metrics import read_metrics

TEACHER = "fashion_mnist_distill_teacher"
STUDENT = "fashion_mnist_distill_student"
CLAIMS = ("shampoo", "other-data", "warm-start")


@dataclasses.dataclass
class Spec:
    name: str
    steps: int
    sets: list[str]
    eval_every: int
    after: str | None = None  # a run that must finish first (the warm start's upstream)


def specs(args: argparse.Namespace, out: pathlib.Path) -> dict[str, list[Spec]]:
    """The runs of each claim (a run shared by claims is the same Spec)."""
    s, teacher = args.steps, args.teacher

    def spec(name: str, steps: int, sets: list[str], evals: int = 10, after: str | None = None,
             mode: str = "consistent") -> Spec:
        every = max(1, steps // evals)
        return Spec(name, steps, [f"distill.teachers=['{teacher}']", f"distill.mode={mode}",
                                  f"train.duration={steps}", f"train.eval_every={every}",
                                  f"train.ckpt_every={max(every, steps // 4)}", "train.log_every=50",
                                  *sets], every, after)

    # the Adam run is evaluated every STEPS/20 steps: it is the target of the Shampoo runs
    adam = spec(f"consistent_adam_{s}", s, [], evals=20)
    shampoo = [spec(f"consistent_shampoo_{s}", s, ["optim.name=shampoo"], evals=20),
               spec(f"consistent_shampoo_{s // 4}", s // 4, ["optim.name=shampoo"], evals=5),
               spec(f"consistent_shampoo_{s // 2}", s // 2, ["optim.name=shampoo"], evals=5),
               spec(f"consistent_adam_{s // 4}", s // 4, [], evals=5)]
    labels = spec(f"labels_{s}", s, [], mode="labels")
    other = [spec(f"on_{d}_{s}", s, [f"data.mixture=[('{d}', 'train', 1.0)]"]) for d in args.other_data]
    long = args.patience * s
    scratch = spec(f"consistent_adam_{long}", long, [])
    warm = spec(f"warm_{long}", long, [f"train.init_from={out / labels.name}"], after=labels.name)
    return {"shampoo": [adam, *shampoo], "other-data": [adam, *other, labels],
            "warm-start": [labels, scratch, warm]}


def _quote(sets: list[str]) -> str:
    return " ".join(f'"{s}"' for s in sets)


def _finished(workdir: pathlib.Path) -> dict | None:
    summary = workdir / "summary.json"
    if summary.exists():
        s = json.loads(summary.read_text())
        if s.get("finished"):
            return s
    return None


def train_run(out: pathlib.Path, spec: Spec) -> None:
    workdir = out / spec.name
    if _finished(workdir):
        return
    if spec.after and not _finished(out / spec.after):
        raise SystemExit(f"{spec.name} starts from {out / spec.after}, which has not finished; "
                         f"train it first (--runs {spec.after})")
    start = time.perf_counter()
    try:
        loop.train(config_lib.apply_overrides(presets.get(STUDENT), spec.sets), workdir, quiet=True)
    except VistasError as e:
        if "in use by another vistas run" not in str(e):
            raise
        print(f"  {spec.name}: skipped, another process is training it ({e})", flush=True)
        return
    seconds = time.perf_counter() - start
    summary = json.loads((workdir / "summary.json").read_text())
    # the time of this process (a resumed run: of its last part)
    (workdir / "summary.json").write_text(json.dumps({**summary, "seconds": seconds}, indent=2))
    print(f"  {spec.name}: finished in {seconds / 60:.1f} min", flush=True)


def curve(workdir: pathlib.Path) -> list[dict]:
    """The evaluations of a run: step, top-1, agreement, KL (on the test split)."""
    return [{"step": r["step"], "top1": r["eval/test/top1"], "agreement": r["eval/test/agreement"],
             "kl": r["eval/test/kl"]}
            for r in read_metrics(workdir / "metrics.jsonl") if "eval/test/top1" in r]


def steps_to(points: list[dict], key: str, target: float) -> int | None:
    """The first evaluated step whose ``key`` reaches ``target`` (None: never)."""
    return next((p["step"] for p in points if p[key] >= target), None)


def pct(x: float) -> str:
    return f"{100 * x:.2f}"


def minutes(out: pathlib.Path, name: str) -> str:
    s = (_finished(out / name) or {}).get("seconds")
    return f"{s / 60:.1f}" if s else "?"


def claim_shampoo(out: pathlib.Path, runs: dict[str, list[dict]], s: int) -> dict:
    adam, sham = runs[f"consistent_adam_{s}"], runs[f"consistent_shampoo_{s}"]
    final = adam[-1]
    print(f"\n## Claim: Shampoo converges ~4x faster in function matching ({s}-step budget)\n")
    print("| run | steps | top-1 | agreement | KL | steps to Adam's final top-1 | "
          "steps to Adam's final agreement | wall min |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    rows = {}
    for name in (f"consistent_adam_{s}", f"consistent_shampoo_{s}", f"consistent_shampoo_{s // 2}",
                 f"consistent_shampoo_{s // 4}", f"consistent_adam_{s // 4}"):
        pts = runs[name]
        last = pts[-1]
        t1, ag = steps_to(pts, "top1", final["top1"]), steps_to(pts, "agreement", final["agreement"])
        rows[name] = {"final": last, "steps_to_top1": t1, "steps_to_agreement": ag}
        print(f"| {name} | {last['step']} | {pct(last['top1'])} | {pct(last['agreement'])} | "
              f"{last['kl']:.3f} | {t1 or 'never'} | {ag or 'never'} | {minutes(out, name)} |")
    print("\nTest top-1 / agreement at each evaluation (same schedule, Adam vs Shampoo):\n")
    print("| step | Adam top-1 | Shampoo top-1 | Adam agreement | Shampoo agreement |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    for a, b in zip(adam, sham, strict=False):
        print(f"| {a['step']} | {pct(a['top1'])} | {pct(b['top1'])} | {pct(a['agreement'])} | "
              f"{pct(b['agreement'])} |")
    same = rows[f"consistent_shampoo_{s}"]
    reach = [same["steps_to_top1"], same["steps_to_agreement"]]
    speedup = s / max(reach) if all(reach) else None

    def matches(name: str) -> bool:
        f = rows[name]["final"]
        return f["top1"] >= final["top1"] and f["agreement"] >= final["agreement"]

    quarter, half = matches(f"consistent_shampoo_{s // 4}"), matches(f"consistent_shampoo_{s // 2}")
    same_text = (f"in the same {s}-step schedule it reaches Adam's final top-1 and agreement at step "
                 f"{max(reach)} ({speedup:.1f}x fewer steps)" if speedup
                 else "in the same schedule it does not reach both of Adam's final values")
    short_text = (f"its own {s // 2}- and {s // 4}-step schedules reach "
                  f"{pct(rows[f'consistent_shampoo_{s // 2}']['final']['top1'])}% and "
                  f"{pct(rows[f'consistent_shampoo_{s // 4}']['final']['top1'])}% top-1 "
                  f"(Adam, {s} steps: {pct(final['top1'])}%)")
    if quarter:
        verdict = f"reproduced: Shampoo with a 4x shorter schedule matches Adam's final values; {short_text}"
    elif half or (speedup and speedup >= 1.5):
        verdict = f"partly: Shampoo is faster, but not 4x: {same_text}; {short_text}"
    else:
        verdict = f"not reproduced: {same_text}; {short_text}"
    print(f"\nVerdict: {verdict}.")
    return {"rows": rows, "speedup_same_schedule": speedup, "verdict": verdict}


def claim_other_data(out: pathlib.Path, runs: dict[str, list[dict]], s: int, datasets: list[str],
                     teacher_top1: float) -> dict:
    print(f"\n## Claim: distilling on other images ({s} steps, tested on Fashion-MNIST)\n")
    print("| student | training images | top-1 | agreement | KL | wall min |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    named = [(f"consistent_adam_{s}", "consistent, Fashion-MNIST", "Fashion-MNIST train (60,000)"),
             *[(f"on_{d}_{s}", "consistent, other data", f"{d} train") for d in datasets],
             (f"labels_{s}", "labels (no teacher)", "Fashion-MNIST train (60,000)")]
    finals = {}
    for name, what, images in named:
        f = runs[name][-1]
        finals[name] = f
        print(f"| {what} (`{name}`) | {images} | {pct(f['top1'])} | {pct(f['agreement'])} | "
              f"{f['kl']:.3f} | {minutes(out, name)} |")
    print(f"| *teacher* | Fashion-MNIST | *{pct(teacher_top1)}* | | | |")
    inside, labels = finals[f"consistent_adam_{s}"]["top1"], finals[f"labels_{s}"]["top1"]
    verdicts = {}
    for d in datasets:
        top1 = finals[f"on_{d}_{s}"]["top1"]
        if top1 >= labels:
            v = "reproduced"
        elif top1 >= 0.5 * (labels + 0.1):  # well above chance (10%), short of the labels
            v = "partly"
        else:
            v = "not reproduced"
        verdicts[d] = (f"{v}: distilled on {d} the student gets {pct(top1)}% on Fashion-MNIST test "
                       f"(chance 10%), against {pct(inside)}% distilled on Fashion-MNIST and "
                       f"{pct(labels)}% trained on its labels")
        print(f"\nVerdict ({d}): {verdicts[d]}.")
    return {"finals": finals, "verdicts": verdicts}


def claim_warm_start(out: pathlib.Path, runs: dict[str, list[dict]], s: int, long: int) -> dict:
    scratch, warm, init = runs[f"consistent_adam_{long}"], runs[f"warm_{long}"], runs[f"labels_{s}"][-1]
    print(f"\n## Claim: patience beats a warm start (figure 2c; {long} distillation steps)\n")
    print(f"Warm start: the label-trained student `labels_{s}` ({s} steps; test top-1 "
          f"{pct(init['top1'])}, agreement {pct(init['agreement'])}); its body initialises "
          f"`warm_{long}` (fresh head).\n")
    print("| distillation step | scratch top-1 | warm top-1 | scratch agreement | warm agreement | "
          "scratch KL | warm KL |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for a, b in zip(scratch, warm, strict=False):
        print(f"| {a['step']} | {pct(a['top1'])} | {pct(b['top1'])} | {pct(a['agreement'])} | "
              f"{pct(b['agreement'])} | {a['kl']:.3f} | {b['kl']:.3f} |")
    half = len(scratch) // 2 - 1  # the evaluation at half the run

    def gain(pts: list[dict]) -> float:
        return pts[-1]["top1"] - pts[half]["top1"]

    first_lead = warm[0]["top1"] - scratch[0]["top1"]
    final_lead = warm[-1]["top1"] - scratch[-1]["top1"]
    lead_agree = warm[-1]["agreement"] - scratch[-1]["agreement"]
    print(f"\nwarm - scratch, top-1: {100 * first_lead:+.2f} points at step {scratch[0]['step']}, "
          f"{100 * final_lead:+.2f} at step {long} (agreement {100 * lead_agree:+.2f}); gain over the "
          f"second half: scratch {100 * gain(scratch):+.2f}, warm {100 * gain(warm):+.2f} points; "
          f"minutes: labels {minutes(out, f'labels_{s}')}, warm {minutes(out, f'warm_{long}')}, "
          f"scratch {minutes(out, f'consistent_adam_{long}')}")
    # at equal total steps: the warm start's label steps count too (s label + long - s distillation)
    matched = [p for p in warm if p["step"] <= long - s]
    if matched:
        m = matched[-1]
        print(f"about equal total steps: warm at distillation step {m['step']} ({s} label steps + "
              f"{m['step']} = {s + m['step']}) {pct(m['top1'])}% vs scratch at {long} "
              f"{pct(scratch[-1]['top1'])}%")
    plateau = gain(warm) < 0.5 * gain(scratch)
    shrinking = final_lead < 0.5 * first_lead
    if first_lead > 0 and final_lead <= 0:
        verdict = (f"reproduced: the warm start leads at first ({100 * first_lead:+.1f} points) and is "
                   f"caught up by the student from scratch ({100 * final_lead:+.1f} at step {long})")
    elif first_lead > 0 and (plateau or shrinking):
        verdict = (f"partly: the warm start leads at first ({100 * first_lead:+.1f} points) and its "
                   f"lead shrinks (second-half gain {100 * gain(warm):+.1f} vs {100 * gain(scratch):+.1f} "
                   f"points from scratch), but it is still {100 * final_lead:+.1f} points ahead at step {long}")
    elif first_lead > 0:
        verdict = (f"not reproduced at this length: the warm start leads throughout "
                   f"({100 * final_lead:+.1f} points at step {long}) and is not flattening "
                   "faster than the student from scratch")
    else:
        verdict = "not reproduced: the warm start does not even lead at first"
    print(f"\nVerdict: {verdict}.")
    return {"first_lead": first_lead, "final_lead": final_lead, "gain_scratch": gain(scratch),
            "gain_warm": gain(warm), "verdict": verdict}


def plot(path: str, runs: dict[str, list[dict]], claims: list[str], s: int, long: int,
         datasets: list[str], teacher_top1: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(claims), figsize=(5 * len(claims), 4), squeeze=False)
    groups = {
        "shampoo": ("Adam vs Shampoo", [(f"consistent_adam_{s}", "Adam"), (f"consistent_shampoo_{s}", "Shampoo"),
                                       (f"consistent_shampoo_{s // 2}", f"Shampoo, {s // 2} steps"),
                                       (f"consistent_shampoo_{s // 4}", f"Shampoo, {s // 4} steps"),
                                       (f"consistent_adam_{s // 4}", f"Adam, {s // 4} steps")]),
        "other-data": ("Distilling on other images", [(f"consistent_adam_{s}", "on Fashion-MNIST"),
                                                      *[(f"on_{d}_{s}", f"on {d}") for d in datasets],
                                                      (f"labels_{s}", "labels, no teacher")]),
        "warm-start": ("Warm start vs scratch", [(f"consistent_adam_{long}", "from scratch"),
                                                 (f"warm_{long}", "from the label-trained student")]),
    }
    for ax, claim in zip(axes[0], claims, strict=True):
        title, lines = groups[claim]
        for name, label in lines:
            xs = [p["step"] for p in runs[name]]
            ax.plot(xs, [100 * p["top1"] for p in runs[name]], marker="o", markersize=3, label=label)
        ax.axhline(100 * teacher_top1, color="black", linewidth=1, linestyle=":", label="teacher")
        ax.set_title(title)
        ax.set_xlabel("student step")
        ax.set_ylabel("Fashion-MNIST test top-1 (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--claim", choices=[*CLAIMS, "all"], default="all")
    p.add_argument("--out", default="runs/distill_claims")
    p.add_argument("--teacher", default="runs/distill/teacher",
                   help="the teacher run (trained here with the teacher preset unless it finished)")
    p.add_argument("--steps", type=int, default=1000, help="steps of the shampoo and other-data runs")
    p.add_argument("--patience", type=int, default=2, help="warm-start runs: PATIENCE x STEPS steps")
    p.add_argument("--other-data", default="mnist_5k",
                   help="comma-separated datasets whose training images the other-data students see")
    p.add_argument("--runs", help="comma-separated run names to train in this process, in this order")
    p.add_argument("--plot", help="write a figure of the claims' test top-1 curves here")
    args = p.parse_args()
    args.other_data = [d for d in args.other_data.split(",") if d]
    out = pathlib.Path(args.out)
    s, long = args.steps, args.patience * args.steps
    claims = list(CLAIMS) if args.claim == "all" else [args.claim]
    by_claim = specs(args, out)
    todo = {sp.name: sp for c in claims for sp in by_claim[c]}

    teacher = pathlib.Path(args.teacher)
    print(f"vistas train --preset {TEACHER} --workdir {teacher}", flush=True)
    if not _finished(teacher):
        loop.train(presets.get(TEACHER), teacher, quiet=True)
    teacher_top1 = _finished(teacher)["eval/test/top1"]
    for sp in todo.values():
        print(f"vistas distill --preset {STUDENT} --workdir {out / sp.name} --set {_quote(sp.sets)}",
              flush=True)

    if args.runs:
        names = args.runs.split(",")
        unknown = [n for n in names if n not in todo]
        if unknown:
            raise SystemExit(f"unknown runs {unknown}; the claims' runs are {sorted(todo)}")
        for name in names:
            train_run(out, todo[name])
        missing = [n for n in todo if not _finished(out / n)]
        if missing:
            print(f"still to train: {', '.join(missing)}; run again without --runs for the tables")
            return
    else:
        for sp in sorted(todo.values(), key=lambda sp: sp.after is not None):
            train_run(out, sp)

    runs = {name: curve(out / name) for name in todo}
    print(f"\nteacher ({args.teacher}): Fashion-MNIST test top-1 {pct(teacher_top1)}%")
    results: dict = {"teacher_top1": teacher_top1, "curves": runs}
    if "shampoo" in claims:
        results["shampoo"] = claim_shampoo(out, runs, s)
    if "other-data" in claims:
        results["other-data"] = claim_other_data(out, runs, s, args.other_data, teacher_top1)
    if "warm-start" in claims:
        results["warm-start"] = claim_warm_start(out, runs, s, long)
    if args.plot:
        plot(args.plot, runs, claims, s, long, args.other_data, teacher_top1)
        print(f"wrote {args.plot}")
    out.mkdir(parents=True, exist_ok=True)
    name = "results.json" if args.claim == "all" else f"results_{args.claim}.json"
    (out / name).write_text(json.dumps(results, indent=2))
    print(f"wrote {out / name}")


if __name__ == "__main__":
    main()
