"""``vistas shapefind``: the largest batch (or model) that fits a device, from the compiled
program's memory analysis."""

from __future__ import annotations

import argparse
import json

from vistas.cli._args import overrides


def run(args: argparse.Namespace) -> int:
    from vistas.systems import shapefind

    sizes = shapefind.parse_mesh(args.mesh)
    import jax

    # simulated CPU devices for the mesh (must happen before JAX starts its backends)
    jax.config.update("jax_platforms", "cpu")
    jax.config.update("jax_num_cpu_devices", max(1, shapefind.mesh_devices(sizes)))
    answer = shapefind.run(
        args.model, device=args.device, budget=args.budget_bytes, headroom=args.headroom, mesh=sizes,
        optimizer=args.optimizer, remat=args.remat, dtype=args.dtype, image_size=args.image_size,
        num_classes=args.num_classes, batch=args.batch, diagonal=args.diagonal,
        overrides=overrides(args), probe=args.probe)
    print(json.dumps(answer, indent=2) if args.json else shapefind.format_answer(answer))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    sf = sub.add_parser("shapefind", help="largest batch (or model) that fits a device, from the "
                        "compiled program's memory analysis (nothing allocated)")
    sf.add_argument("--model", required=True, help="e.g. vit-B/16")
    sf.add_argument("--device", default="h100",
                    help="h100, h200, a100-80g, a100-40g, tpu-v4, tpu-v5e, tpu-v5p (default h100)")
    sf.add_argument("--budget-bytes", type=int, help="memory per device in bytes instead of --device")
    sf.add_argument("--headroom", type=float, default=0.9,
                    help="fraction of the device's memory the step may use (default 0.9)")
    sf.add_argument("--mesh", help="e.g. data=2,fsdp=4,model=1 (simulated devices; default one device)")
    sf.add_argument("--optimizer", default="adam", help="NAME[,KEY=VALUE...], e.g. adafactor_bv")
    sf.add_argument("--remat", help="none, full, dots, dots_no_batch")
    sf.add_argument("--dtype", help="compute dtype: float32, bfloat16 (the default with --device: "
                    "model.dtype=auto computes in bfloat16 on accelerators), float16")
    sf.add_argument("--image-size", type=int, default=224)
    sf.add_argument("--num-classes", type=int, default=1000)
    sf.add_argument("--batch", type=int, help="batch per device: report it (or, with --diagonal, fit models to it)")
    sf.add_argument("--diagonal", action="store_true",
                    help="the largest ViT of the ladder from --model up that fits at --batch")
    sf.add_argument("--probe", type=int, default=8, help="first batch size compiled (default 8)")
    sf.add_argument("--set", nargs="+", action="append", default=[], metavar="KEY=VALUE")
    sf.add_argument("--json", action="store_true")
    sf.set_defaults(fn=run)
