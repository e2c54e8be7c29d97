"""``vistas train`` and ``vistas distill``: train (or resume) a run from a preset or a config
file (``--config``, ``vistas.config_files``)."""

from __future__ import annotations

import argparse
import json
import pathlib

from vistas.cli._args import add_config_file, overrides


def run(args: argparse.Namespace) -> int:
    from vistas import config_files
    from vistas.train import loop

    cfg = config_files.build(args.preset, args.config, overrides(args), default=args.default_preset)
    workdir = args.workdir or f"runs/{config_files.run_name(args.preset, args.config, args.default_preset)}"
    if args.cmd == "distill":
        from vistas.train import distill

        distill.check_active(cfg)
    summary = loop.train(cfg, workdir, quiet=args.quiet)
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    status = "finished" if summary["finished"] else f"stopped at step {summary['step']}"
    print(f"\n{status}: step {summary['step']}/{summary['total_steps']}")
    for key, value in summary.items():
        if key.startswith(("eval/", "ema/eval/")):
            print(f"  {key:<28} {value:.4f}")
    tb = f" (TensorBoard: {summary['workdir']}/tensorboard)" if "tensorboard" in cfg.train.loggers else ""
    print(f"  metrics      {summary['workdir']}/metrics.jsonl{tb}")
    for name in cfg.train.loggers:
        if name != "tensorboard":
            from vistas.train import trackers

            run_id = trackers.read_records(pathlib.Path(summary["workdir"])).get(name, {}).get("run_id")
            print(f"  {name:<12} run {run_id}")
    if summary["curves"]:
        print(f"  curves       {summary['curves']}")
    print(f"  checkpoints  {summary['checkpoints']}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from vistas import presets

    t = sub.add_parser("train", help="train (or resume) a run")
    t.add_argument("--preset", help=f"named recipe (default {presets.DEFAULT}, or none with --config)")
    add_config_file(t)
    t.add_argument("--workdir", help="output folder (default runs/PRESET or runs/FILE_STEM); resumes "
                   "if it holds the run")
    t.add_argument("--set", action="append", nargs="+", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set optim.lr=0.001 train.duration=3ep")
    t.add_argument("--quiet", action="store_true", help="no progress output")
    t.add_argument("--json", action="store_true", help="print the summary as JSON")
    t.set_defaults(fn=run, default_preset=presets.DEFAULT)

    ds = sub.add_parser("distill", help="distil frozen teacher runs into a student (function matching)",
                        description="A training run whose distill.mode is not 'off': the teachers "
                        "(distill.teachers, run directories) are evaluated in the student's step (consistent, "
                        "independent), or once before training (fixed: central crops; annotated: "
                        "distill.views_per_example stored views per image); see docs/distillation.md.")
    ds.add_argument("--preset", help="named recipe (default fashion_mnist_distill_student, or none "
                    "with --config)")
    add_config_file(ds)
    ds.add_argument("--workdir", help="output folder (default runs/PRESET or runs/FILE_STEM); resumes "
                    "if it holds the run")
    ds.add_argument("--set", action="append", nargs="+", default=[], metavar="KEY=VALUE",
                    help="e.g. --set distill.teachers=[runs/teacher] distill.mode=consistent "
                    "distill.temperature=1 distill.mixup_alpha=1")
    ds.add_argument("--quiet", action="store_true", help="no progress output")
    ds.add_argument("--json", action="store_true", help="print the summary as JSON")
    ds.set_defaults(fn=run, default_preset="fashion_mnist_distill_student")
