"""``vistas convert``: convert ViT checkpoints between big_vision, timm and vistas."""

from __future__ import annotations

import argparse
import json


def run(args: argparse.Namespace) -> int:
    from vistas.models import interop

    r = interop.convert(args.src, args.dst, to=args.to, model=args.model,
                        image_size=args.image_size, scan=args.scan, resample=args.resample,
                        gelu=args.gelu, global_pool=args.global_pool)
    if args.json:
        print(json.dumps(r, indent=2))
        return 0
    extras = [what for what, on in (("LayerScale", r["layer_scale"]), (f"{r['reg_tokens']} registers",
                                     r["reg_tokens"]), ("fc_norm", r["fc_norm"])) if on]
    print(f"read  {r['src']} ({r['src_format']}): {r['model']}, {r['params']:,} parameters, "
          f"{r['src_image_size']} px, pool {r['pool']}, {r['num_classes']} classes"
          + "".join(f", {e}" for e in extras))
    how = f", position embedding resampled as {r['resample']} does" if r["resample"] else ""
    print(f"wrote {r['dst']} ({r['dst_format']}) for {r['image_size']} px{how}, {r['gelu']} GELU")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    cv = sub.add_parser("convert", help="convert ViT checkpoints: big_vision .npz, timm .safetensors, "
                        "vistas runs and files",
                        description="Reads SRC (a big_vision .npz, a timm .safetensors, a vistas "
                        ".vistas.npz file, a `vistas train` run directory or a Hugging Face Hub id "
                        "hf-hub:ORG/NAME) and writes DST.")
    cv.add_argument("src", help="file, run directory or hf-hub:ORG/NAME[@REVISION][/FILE] (needs "
                    "vistas[hub]; HF_HUB_OFFLINE=1 reads the local cache only)")
    cv.add_argument("dst", help="output file; its name picks the format unless --to is given: "
                    ".safetensors -> timm, .vistas.npz -> vistas, .npz -> big_vision")
    cv.add_argument("--to", choices=["big_vision", "timm", "vistas"], help="output format")
    cv.add_argument("--model", help="ViT variant (e.g. vit-B/16) for what the weights do not show, "
                    "such as the number of heads of a timm file")
    cv.add_argument("--image-size", help="write for this image size (N or HxW): the position "
                    "embedding is resampled")
    cv.add_argument("--resample", choices=["vistas", "big_vision", "timm"],
                    help="how the position embedding changes grid with --image-size: bilinear at "
                    "pixel centres (vistas), linear with corners aligned (big_vision), bicubic with "
                    "antialiasing (timm); default: as SRC's own framework does")
    cv.add_argument("--gelu", choices=["tanh", "exact"],
                    help="the GELU the weights were trained with, where SRC does not say or says "
                    "wrongly (e.g. tanh for SigLIP weights in a timm file without its arguments)")
    cv.add_argument("--global-pool", choices=["token", "avg", "map"],
                    help="how a timm file's model pools (timm's global_pool) where the file does not "
                    "say: a class token without fc_norm fits both class-token pooling and averaging")
    cv.add_argument("--scan", action=argparse.BooleanOptionalAction, default=None,
                    help="write the scanned layout (big_vision encoderblock, vistas encoder/blocks)")
    cv.add_argument("--json", action="store_true")
    cv.set_defaults(fn=run)
