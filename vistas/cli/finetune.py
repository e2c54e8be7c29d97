"""``vistas finetune``: fine-tune a trained run, or pretrained ViT weights (a file or a
Hugging Face Hub id), on a target dataset."""

from __future__ import annotations

import argparse
import json
import pathlib

from vistas.cli._args import _duration, overrides


def run(args: argparse.Namespace) -> int:
    from vistas.models.interop import hub
    from vistas.train import finetune

    upstream = str(args.upstream).rstrip("/")
    if hub.is_hub_id(upstream):  # hf-hub:ORG/NAME[@REV][/FILE] -> NAME
        upstream = hub.parse(upstream)[0].split("/")[1]
    elif not pathlib.Path(upstream).is_dir():  # a weights file: beside it, named after it
        upstream = str(pathlib.Path(upstream).with_name(pathlib.Path(upstream).name.split(".")[0]))
    target = args.dataset
    if args.data_path and args.dataset in finetune.FILE_FORMATS:  # the data's own name, not its format
        target = pathlib.Path(str(args.data_path).rstrip("/")).name.split(".")[0] or args.dataset
    workdir = args.workdir or f"{upstream}-ft-{target}"
    summary = finetune.finetune(
        args.upstream, workdir, dataset=args.dataset, resolution=args.resolution,
        duration=args.steps, lr=args.lr, batch_size=args.batch_size, warmup=args.warmup,
        decay=args.decay, sam_rho=args.sam_rho, seed=args.seed, resample=args.resample,
        global_pool=args.global_pool, data_path=args.data_path, overrides=overrides(args), quiet=args.quiet)
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    status = "finished" if summary["finished"] else f"stopped at step {summary['step']}"
    print(f"\nfine-tuning {status}: step {summary['step']}/{summary['total_steps']}")
    for key, value in summary.items():
        if key.startswith("eval/"):
            print(f"  {key:<28} {value:.4f}")
    print(f"  run          {summary['workdir']} (resume: the same command)")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    ft = sub.add_parser("finetune", help="fine-tune a trained run or pretrained ViT weights on a target dataset")
    ft.add_argument("--from", dest="upstream", required=True,
                    help="the upstream: a run (its workdir), a ViT weights file (big_vision .npz, timm "
                    ".safetensors, .vistas.npz) or a Hugging Face Hub id hf-hub:ORG/NAME (vistas[hub])")
    ft.add_argument("--global-pool", choices=["token", "avg", "map"],
                    help="how a timm file's model pools where the file does not say (see vistas convert)")
    ft.add_argument("--dataset", required=True, help="target dataset (see `vistas data list`), or folder, "
                    "npz, array_record or parquet with --data-path")
    ft.add_argument("--data-path", help="the image folder (DIR/train/CLASS/..., DIR/test/CLASS/...), "
                    ".npz file or shards of --dataset folder|npz|array_record|parquet")
    ft.add_argument("--resolution", type=int, help="image size (default: the upstream's)")
    ft.add_argument("--resample", choices=["vistas", "big_vision", "timm"],
                    help="how the position embedding changes grid with --resolution: bilinear at "
                    "pixel centres (vistas, the default for vistas runs), linear with corners aligned "
                    "(big_vision), bicubic with antialiasing (timm)")
    ft.add_argument("--workdir", help="output folder (default FROM-ft-DATASET; for a file or Hub id FROM "
                    "is its name, for --data-path DATASET is the data's name); resumes if it holds the run")
    ft.add_argument("--steps", default=500, type=_duration,
                    help="length: steps, or '10ep', '50000ex' (default 500)")
    ft.add_argument("--lr", type=float, default=0.01, help="SGD learning rate (default 0.01)")
    ft.add_argument("--batch-size", type=int, default=128)
    ft.add_argument("--warmup", default="5%", type=_duration, help="default 5%%")
    ft.add_argument("--decay", default="cosine", choices=["cosine", "linear"])
    ft.add_argument("--sam-rho", type=float, default=0.0, help="SAM radius (default 0: off)")
    ft.add_argument("--seed", type=int, default=0)
    ft.add_argument("--set", action="append", nargs="+", default=[], metavar="KEY=VALUE",
                    help="override any config value of the fine-tuning run")
    ft.add_argument("--quiet", action="store_true")
    ft.add_argument("--json", action="store_true")
    ft.set_defaults(fn=run)
