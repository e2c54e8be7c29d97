"""Does a Fashion-MNIST ViT transfer? Few-shot against random features, fine-tuning against scratch.

    python benchmarks/transfer_fashion_mnist.py [--out runs/transfer] [--aug-level light2] \
        [--lrs 0.1,0.3] [--steps 300] [--resolution 35]

1. Upstream: the ``fashion_mnist_vit`` preset (5 epochs) with ``data.aug_level`` (big_vision's
   RandAugment + mixup levels; ``none`` for the plain preset), in OUT/upstream_<level>
   (kept and reused when it is complete).
2. Few-shot linear transfer to every present target, 1/5/10/25 shots x 3 seeds, L2 chosen
   per sample on validation examples, for the trained checkpoint and for the same model
   freshly initialised (``vistas fewshot --l2-grid ... [--random-init]``).
3. Fine-tuning on MNIST-5k at ``--resolution`` (a new patch grid) for ``--steps`` steps at each
   learning rate, from the upstream and from scratch (``vistas finetune ... [--set
   train.init_from=None]``); test top-1 at the end.

Prints the tables (docs/transfer.md) and writes OUT/transfer_<level>.json. The exit status is 1
when the trained features are not above the random ones at 10 and 25 shots on every target,
or when the best fine-tuned run does not beat the best run from scratch.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

from vistas import cli

L2_GRID = "0.125,1,8,64,512,4096"


def final_top1(workdir: pathlib.Path) -> float:
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [r["eval/test/top1"] for r in rows if "eval/test/top1" in r][-1]


def run(args: list[str]) -> None:
    print("$ vistas " + " ".join(args), flush=True)
    if cli.main(args) != 0:
        sys.exit(f"vistas {' '.join(args)} failed")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/transfer")
    p.add_argument("--aug-level", default="light2")
    p.add_argument("--lrs", default="0.1,0.3")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--resolution", type=int, default=35)
    args = p.parse_args()
    out = pathlib.Path(args.out)
    upstream = out / f"upstream_{args.aug_level}"
    if not (upstream / "summary.json").exists():
        run(["train", "--preset", "fashion_mnist_vit", "--workdir", str(upstream),
             "--set", f"data.aug_level={args.aug_level}"])
    run(["fewshot", "--workdir", str(upstream), "--l2-grid", L2_GRID])
    run(["fewshot", "--workdir", str(upstream), "--l2-grid", L2_GRID, "--random-init"])
    trained_file = max(upstream.glob("fewshot_[0-9]*.json"), key=lambda f: int(f.stem.split("_")[1]))
    trained = json.loads(trained_file.read_text())["results"]
    random = json.loads((upstream / "fewshot_random_init.json").read_text())["results"]
    ok = True
    print("\n| target | shots | trained | random init | gap |\n| --- | ---: | ---: | ---: | ---: |")
    for name in trained:
        for k in ("1", "5", "10", "25"):
            a, b = trained[name][k], random[name][k]
            gap = 100 * (a["mean"] - b["mean"])
            if k in ("10", "25") and gap <= 0:
                ok = False
            print(f"| {name} | {k} | {100 * a['mean']:.2f} ± {100 * a['std']:.2f} | "
                  f"{100 * b['mean']:.2f} ± {100 * b['std']:.2f} | {gap:+.2f} |")
    finetune: dict[str, dict[str, float]] = {"upstream": {}, "scratch": {}}
    for lr in args.lrs.split(","):
        for start in ("upstream", "scratch"):
            workdir = out / f"{start}_{args.aug_level}_mnist{args.resolution}_lr{lr}"
            extra = ["--set", "train.init_from=None"] if start == "scratch" else []
            run(["finetune", "--from", str(upstream), "--dataset", "mnist_5k", "--resolution",
                 str(args.resolution), "--steps", str(args.steps), "--lr", lr, "--workdir", str(workdir), *extra])
            finetune[start][lr] = final_top1(workdir)
    print(f"\nMNIST-5k at {args.resolution} px, {args.steps} steps, test top-1 (%):\n"
          "| lr | from the upstream | from scratch |\n| ---: | ---: | ---: |")
    for lr in args.lrs.split(","):
        print(f"| {lr} | {100 * finetune['upstream'][lr]:.1f} | {100 * finetune['scratch'][lr]:.1f} |")
    best_up, best_scratch = max(finetune["upstream"].values()), max(finetune["scratch"].values())
    ok = ok and best_up > best_scratch
    print(f"best: upstream {100 * best_up:.1f}, scratch {100 * best_scratch:.1f}")
    (out / f"transfer_{args.aug_level}.json").write_text(json.dumps(
        {"args": vars(args), "fewshot": {"trained": trained, "random_init": random}, "finetune": finetune},
        indent=2))
    print("trained features above random ones at 10 and 25 shots on every target, and fine-tuning "
          f"beats scratch: {'yes' if ok else 'NO'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
