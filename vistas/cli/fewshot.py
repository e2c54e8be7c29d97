"""``vistas fewshot``: few-shot linear accuracy of a run's frozen features."""

from __future__ import annotations

import argparse
import json

from vistas.cli._args import _float_list, _int_list


def run(args: argparse.Namespace) -> int:
    from vistas.evaluate import fewshot

    report = fewshot.evaluate_workdir(
        args.workdir, datasets=args.datasets, shots=args.shots, seeds=args.seeds, l2=args.l2,
        l2_grid=args.l2_grid, max_test_examples=args.max_test_examples, step=args.step,
        data_dir=args.data_dir, random_init=args.random_init)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    sec = report["seconds"]
    l2 = (f"L2 chosen on validation from {report['l2']}" if isinstance(report["l2"], list)
          else f"L2 {report['l2']:g}")
    what = "randomly initialised model" if args.random_init else f"checkpoint step {report['step']}"
    print(f"few-shot linear accuracy (%), mean ± std over {report['seeds']} seeds, {l2}; {what}")
    print(fewshot.format_table(report))
    print(f"time: features {sec['features_total']:.1f} s, solves {sec['solve_total']:.2f} s, "
          f"setup {sec['setup']:.1f} s")
    print(f"written to {report['written_to']}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    fs = sub.add_parser("fewshot", help="few-shot linear accuracy of a run's frozen features")
    fs.add_argument("--workdir", required=True, help="the run to evaluate")
    fs.add_argument("--datasets", nargs="+",
                    help="targets (default: the run's fewshot.datasets, else every present one)")
    fs.add_argument("--shots", type=_int_list, help="examples per class, e.g. 1,5,10,25")
    fs.add_argument("--seeds", type=int, help="samples per shot count (default 3)")
    fs.add_argument("--l2", type=float, help="ridge strength (default 1024 = 2^10)")
    fs.add_argument("--l2-grid", type=_float_list,
                    help="choose the strength per sample from these on a validation part")
    fs.add_argument("--max-test-examples", type=int, help="a fixed random subset of each test split")
    fs.add_argument("--step", type=int, help="checkpoint step (default: latest)")
    fs.add_argument("--random-init", action="store_true",
                    help="the same model freshly initialised instead of the checkpoint (a baseline)")
    fs.add_argument("--data-dir")
    fs.add_argument("--json", action="store_true")
    fs.set_defaults(fn=run)
