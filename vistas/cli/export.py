"""``vistas export``: a trained run for serving (a StableHLO function, or timm safetensors)."""

from __future__ import annotations

import argparse
import json


def run(args: argparse.Namespace) -> int:
    from vistas import export

    info = export.export(args.run, args.dst, fmt=args.format, step=args.step,
                         ema=False if args.no_ema else None, platforms=args.platforms)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    shape = "x".join(str(s) for s in info["input"]["shape"])
    what = (f"images [{shape}] -> logits for {', '.join(info['platforms'])}" if info["format"] == "stablehlo"
            else "timm VisionTransformer state dict")
    print(f"read  {info['run']}: {info['model']}, step {info['step']} ({info['weights']} weights)")
    print(f"wrote {args.dst} ({info['format']}, {info['bytes']:,} bytes): {what}")
    print(f"      {args.dst}.json (input, output and class names)")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a trained run for serving: StableHLO (jax.export) or "
                       "timm safetensors",
                       description="Writes the latest checkpoint of RUN (its EMA parameters when it keeps "
                       "them) to DST, with DST.json describing the input and output: stablehlo is the "
                       "inference function images -> logits as a serialized jax.export artifact with the "
                       "parameters baked in and a symbolic batch size (ViT, NFNet, BiT); safetensors is "
                       "the weights in timm's ViT layout (ViTs only). See docs/serving.md.")
    p.add_argument("run", help="a `vistas train` run directory")
    p.add_argument("dst", help="output file; .stablehlo or .safetensors picks the format unless --format is given")
    p.add_argument("--format", choices=["stablehlo", "safetensors"], help="output format")
    p.add_argument("--step", type=int, help="checkpoint step (default: latest)")
    p.add_argument("--no-ema", action="store_true", help="the trained parameters even when the run keeps an EMA")
    p.add_argument("--platforms", help="stablehlo: comma-separated platforms to lower for, of cpu, cuda, "
                   "rocm, tpu (default: the one JAX runs on here)")
    p.add_argument("--json", action="store_true", help="print what DST.json holds")
    p.set_defaults(fn=run)
