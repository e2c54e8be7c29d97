"""NFNet scaling claims at small scale: compute-optimal allocation, and upstream loss vs transfer.

    python benchmarks/nfnet_compute_optimal.py [--out runs/nfnet_compute_optimal] [--parallel 2]
        [--budgets 100,300,800] [--ft-steps 150] [--ft-lr 0.05] [--plot docs/nfnet_compute_optimal.png]

"ConvNets match vision transformers at scale" (Smith, Brock, Berrada, De 2023) reports that
(a) the held-out loss of NFNets against pre-training compute is linear in log-log, with model
size and epochs growing at the same rate along the compute-optimal frontier (params ∝ C^0.5,
examples ∝ C^0.5), and (b) the run with the lowest upstream loss is not the best after
fine-tuning: slightly larger models trained for slightly fewer epochs fine-tune better.

1. Sweep (``vistas.scaling.sweep``, resumable: rerunning skips finished members): four
   small NFNets at 28 px on Fashion-MNIST (widths 8..32 per stage, one or two blocks per
   stage, 4 or 8 channels per group, stem 8/16/16; no dropout or stochastic depth) x the step budgets
   (batch 64; SGD + Nesterov, lr 0.1, AGC 0.04, 5% warmup then cosine: each budget a
   dedicated run, as in the paper), in OUT/sweep.
2. Fit (``vistas.scaling.fit.fit_study(..., with_allocation=True)``, i.e. ``vistas fit
   OUT/sweep --y eval_loss --allocation``): the frontier of test loss against FLOPs, its
   log-log slope, the compute-optimal model size and examples per budget, and the exponents
   alpha and beta. Figure: ``--plot``.
3. Fine-tune every member on MNIST-5k (``vistas finetune --from MEMBER --dataset mnist_5k``,
   ``--ft-steps`` steps at ``--ft-lr``; one at a time beside the sweep as members finish,
   the rest two at a time after it; finished ones are kept) and report the Spearman rank
   correlation between upstream test loss and fine-tuned test accuracy.
   ``--only-finetune`` runs only the fine-tuning of members as they finish, beside a sweep
   already running in OUT.

Prints the tables and the verdicts; writes OUT/summary.json.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import pathlib
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

MODELS = [  # name, stage widths, stage depths, channels per group of the 3x3 convolutions
    ("w8d1", [8, 16, 32, 32], [1, 1, 1, 1], 4),
    ("w16d1", [16, 32, 64, 64], [1, 1, 1, 1], 8),
    ("w16d2", [16, 32, 64, 64], [1, 2, 2, 1], 8),
    ("w32d1", [32, 64, 128, 128], [1, 1, 1, 1], 8),
]
SHARED = ["data.batch_size=64", "optim.lr=0.1", "model.dropout=0.0", "model.drop_path=0.0",
          "model.stem_widths=[8,16,16]", "train.log_every=50",
          "train.eval_every=1000000", "train.ckpt_every=1000000"]


def spec(budgets: list[int]) -> dict:
    return {"name": "nfnet_compute_optimal", "preset": "fashion_mnist_nfnet", "set": SHARED,
            "data_sizes": ["full"], "budgets": budgets, "cooldown": 0,
            "models": [{"name": name, "set": [f"model.widths={w}".replace(" ", ""),
                                              f"model.depths={d}".replace(" ", ""),
                                              f"model.group_width={g}"]}
                       for name, w, d, g in MODELS]}


def _g(value, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def final_top1(workdir: pathlib.Path) -> float | None:
    path = workdir / "metrics.jsonl"
    if not path.exists():
        return None
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    vals = [r["eval/test/top1"] for r in rows if "eval/test/top1" in r]
    return vals[-1] if vals else None


def _busy(workdir: pathlib.Path) -> bool:
    """Whether another process is fine-tuning into ``workdir`` (vistas holds an flock on its
    ``.lock`` while a run lives)."""
    if not (workdir / ".lock").exists():
        return False
    with open(workdir / ".lock") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
    return False


def finetune(member_dir: pathlib.Path, workdir: pathlib.Path, steps: int, lr: float) -> float | None:
    """Fine-tunes one member (kept when finished; waits for one running in another process)."""
    while _busy(workdir):
        time.sleep(10)
    if (workdir / "summary.json").exists() and final_top1(workdir) is not None:
        return final_top1(workdir)
    cmd = [sys.executable, "-m", "vistas.cli", "finetune", "--from", str(member_dir), "--dataset",
           "mnist_5k", "--steps", str(steps), "--lr", str(lr), "--batch-size", "64", "--workdir",
           str(workdir), "--quiet"]
    workdir.parent.mkdir(parents=True, exist_ok=True)
    with open(workdir.parent / (workdir.name + ".log"), "a") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        print(f"  fine-tune of {member_dir} failed (status {rc}); see {workdir}.log", flush=True)
        return None
    return final_top1(workdir)


def finetune_while_sweeping(out: pathlib.Path, ft_dir: pathlib.Path, args: argparse.Namespace,
                            stop: threading.Event) -> None:
    """Fine-tunes members as they finish, one at a time, until ``stop`` is set and none is left:
    the fine-tunes overlap the sweep instead of queueing after it."""
    from vistas.scaling import results

    started: set[str] = set()
    while True:
        try:
            rows = results.collect(out / "sweep", write=False)
        except Exception:  # noqa: BLE001 - the sweep folder is not there yet
            rows = []
        todo = [r for r in rows if r["status"] == "done" and r["member"] not in started
                and not _busy(ft_dir / r["member"].replace("/", "_"))]  # another one has it
        for r in todo:
            if stop.is_set():  # the sweep is over: the rest go two at a time
                return
            started.add(r["member"])
            finetune(out / "sweep" / r["member"], ft_dir / r["member"].replace("/", "_"),
                     args.ft_steps, args.ft_lr)
        if not todo:
            if stop.is_set() or (rows and all(r["status"] in ("done", "failed") for r in rows)):
                return
            time.sleep(20)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/nfnet_compute_optimal")
    p.add_argument("--parallel", type=int, default=2)
    p.add_argument("--budgets", default="100,300,800", help="training steps (batch 64)")
    p.add_argument("--ft-steps", type=int, default=150)
    p.add_argument("--ft-lr", type=float, default=0.05)
    p.add_argument("--plot", default="docs/nfnet_compute_optimal.png")
    p.add_argument("--bootstrap", type=int, default=100)
    p.add_argument("--only-finetune", action="store_true",
                   help="only fine-tune the members of the sweep in OUT as they finish, until it is "
                   "complete (a second process beside a running sweep)")
    args = p.parse_args()
    tick = time.time()
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    spec_path = out / "spec.json"
    spec_path.write_text(json.dumps(spec([int(b) for b in args.budgets.split(",")]), indent=2))

    ft_dir = out / f"finetune_mnist5k_s{args.ft_steps}_lr{args.ft_lr:g}"
    if args.only_finetune:
        finetune_while_sweeping(out, ft_dir, args, threading.Event())
        return 0

    # 1. the sweep; members are fine-tuned (step 3) as they finish, beside it
    from vistas.scaling import sweep

    stop = threading.Event()
    watcher = threading.Thread(target=finetune_while_sweeping, args=(out, ft_dir, args, stop), daemon=True)
    watcher.start()
    rows = sweep.run(str(spec_path), out / "sweep", parallel=args.parallel)
    stop.set()
    print(f"\nsweep: {sum(r['status'] == 'done' for r in rows)} of {len(rows)} members done "
          f"({(time.time() - tick) / 60:.1f} min so far)", flush=True)
    done = [r for r in rows if r["status"] == "done"]

    # 2. the fit: frontier, log-log slope, compute-optimal allocation
    from vistas.scaling import fit, plots

    print("\n| member | params | FLOPs/step | examples | epochs | test loss | test error (%) |\n"
          "| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in sorted(done, key=lambda r: (r["params"], r["budget"])):
        print(f"| {r['member']} | {r['params']:,} | {_g(r['flops_per_step'], '.3g')} | "
              f"{r['examples_seen']:,} | {_g(r['epochs'], '.2f')} | {_g(r['eval_loss'], '.4f')} | "
              f"{_g(r['eval_error'] and 100 * r['eval_error'], '.2f')} |")
    study = fit.fit_study(done, x="compute", y="eval_loss", n_bootstrap=args.bootstrap,
                          with_allocation=True)
    if args.plot:
        plots.write_figures(study, allocation_plot=args.plot)
    print("\n$ vistas fit " + str(out / "sweep") + f" --y eval_loss --allocation --bootstrap {args.bootstrap}")
    print(fit.format_report(study.report))
    alloc = study.report["allocation"]
    a, b = alloc["exponents"]["alpha"], alloc["exponents"]["beta"]
    v = alloc["loss_vs_compute"]
    linear = v["r2"] >= 0.95
    near = abs(a["slope"] - 0.5) <= 0.15 and abs(b["slope"] - 0.5) <= 0.15
    same_rate = "reproduced" if near else ("partly" if a["slope"] > 0 and b["slope"] > 0 else "not reproduced")
    print(f"\nverdict (item 2): frontier log-log linear (r² >= 0.95): {'yes' if linear else 'no'} "
          f"(r² {v['r2']:.3f}, slope {v['slope']:.3f}); model size and examples growing at the same "
          f"rate, alpha ≈ beta ≈ 0.5 (within 0.15): {same_rate} (alpha {a['slope']:.2f}, "
          f"beta {b['slope']:.2f}, fitted on the {alloc['fit_on']} runs)", flush=True)

    # 3. fine-tune every member, rank correlation with the upstream loss
    from scipy import stats

    ft_tick = time.time()
    watcher.join()
    with ThreadPoolExecutor(args.parallel) as pool:
        accs = list(pool.map(lambda r: finetune(out / "sweep" / r["member"],
                                                ft_dir / r["member"].replace("/", "_"),
                                                args.ft_steps, args.ft_lr), done))
    ft_min = (time.time() - ft_tick) / 60
    pairs = [(r, acc) for r, acc in zip(done, accs, strict=True) if acc is not None]
    print(f"\nfine-tuning on MNIST-5k ({args.ft_steps} steps, lr {args.ft_lr:g}, batch 64; "
          f"{ft_min:.1f} min after the sweep):\n"
          "| member | params | examples | upstream test loss | fine-tuned top-1 (%) |\n"
          "| --- | ---: | ---: | ---: | ---: |")
    for r, acc in sorted(pairs, key=lambda t: t[0]["eval_loss"]):
        print(f"| {r['member']} | {r['params']:,} | {r['examples_seen']:,} | {r['eval_loss']:.4f} | "
              f"{100 * acc:.2f} |")
    summary = {"args": vars(args), "allocation": alloc, "report": {k: v for k, v in study.report.items()
                                                                   if k != "allocation"},
               "finetune": [{"member": r["member"], "params": r["params"], "examples_seen": r["examples_seen"],
                             "eval_loss": r["eval_loss"], "finetune_top1": acc} for r, acc in pairs]}
    if len(pairs) >= 3:
        loss = np.array([r["eval_loss"] for r, _ in pairs])
        acc = np.array([a for _, a in pairs])
        rho, pval = stats.spearmanr(loss, acc)
        best_up, best_ft = pairs[int(np.argmin(loss))][0], pairs[int(np.argmax(acc))][0]
        # pairs of members with upstream losses within 10% of each other: does the larger one
        # that saw fewer examples fine-tune better?
        wins = total = 0
        for i, (ri, ai) in enumerate(pairs):
            for rj, aj in pairs[i + 1:]:
                if abs(ri["eval_loss"] - rj["eval_loss"]) > 0.1 * min(ri["eval_loss"], rj["eval_loss"]):
                    continue
                (big, a_big), (small, a_small) = ((ri, ai), (rj, aj)) if ri["params"] > rj["params"] \
                    else ((rj, aj), (ri, ai))
                if big["params"] > small["params"] and big["examples_seen"] < small["examples_seen"]:
                    total += 1
                    wins += a_big > a_small
        print(f"\nSpearman rank correlation, upstream test loss vs fine-tuned top-1: rho = {rho:.3f} "
              f"(p = {pval:.3g}, {len(pairs)} members; -1: lower loss always fine-tunes better)")
        print(f"lowest upstream loss: {best_up['member']} ({best_up['eval_loss']:.4f}); best fine-tuned: "
              f"{best_ft['member']} ({100 * max(acc):.2f}%)")
        print(f"pairs with upstream losses within 10%, the larger model having seen fewer examples: "
              f"{total}; the larger one fine-tunes better in {wins}")
        same = best_up["member"] == best_ft["member"]
        print(f"verdict (item 3): lowest upstream loss is not the best after fine-tuning: "
              f"{'not reproduced (it is the best)' if same else 'reproduced'}; larger-and-shorter "
              f"fine-tunes better: {f'{wins} of {total} pairs' if total else 'no such pairs'}")
        summary["spearman"] = {"rho": float(rho), "p": float(pval), "best_upstream": best_up["member"],
                               "best_finetuned": best_ft["member"], "pairs": total, "larger_wins": wins}
    summary["minutes"] = (time.time() - tick) / 60
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    print(f"\ntotal: {summary['minutes']:.1f} min; {out / 'summary.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
