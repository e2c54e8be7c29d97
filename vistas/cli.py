"""The ``vistas`` command.

    vistas train --preset NAME --workdir DIR [--set key.path=value ...]
    vistas distill --preset NAME --workdir DIR --set distill.teachers=[RUN, ...] [distill.mode=...]
    vistas evaluate --workdir DIR [--splits test ...] [--step N]
    vistas models [--json] [--image-size 224] [--num-classes 1000]
    vistas presets [--json]
    vistas data list [--json] | vistas data fetch NAME
    vistas fewshot --workdir DIR [--datasets NAME ...] [--shots 1,5,10,25] [--seeds 3]
    vistas finetune --from DIR --dataset NAME [--resolution R] [--steps N] [--workdir OUT]
    vistas optim-memory --model VARIANT [...] | --preset NAME [--optimizer NAME[,KEY=VALUE] ...]
    vistas shapefind --model VARIANT [--device h100|...|--budget-bytes N] [--mesh data=..,fsdp=..,model=..]
    vistas cooldown --workdir SRC --from-step S [S ...] --steps N --workdir-out DST
    vistas convert SRC DST [--model VARIANT] [--to FORMAT] [--image-size N|HxW] [--scan|--no-scan]
    vistas sweep run SPEC --out DIR [--parallel N] | commands SPEC --out DIR | status DIR | presets
    vistas fit RESULTS [--x compute|examples|params] [--y METRIC] [--plot out.png]

Errors caused by input (config, data, files) print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys

from vistas.errors import VistasError


def _cmd_train(args: argparse.Namespace) -> int:
    from vistas import config as config_lib
    from vistas import presets
    from vistas.train import loop

    cfg = presets.get(args.preset)
    config_lib.apply_overrides(cfg, [s for group in args.set for s in group])
    workdir = args.workdir or f"runs/{args.preset}"
    if args.cmd == "distill":
        from vistas.train import distill

        summary = distill.distill(cfg, workdir, quiet=args.quiet)
    else:
        summary = loop.train(cfg, workdir, quiet=args.quiet)
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    status = "finished" if summary["finished"] else f"stopped at step {summary['step']}"
    print(f"\n{status}: step {summary['step']}/{summary['total_steps']}")
    for key, value in summary.items():
        if key.startswith(("eval/", "ema/eval/")):
            print(f"  {key:<28} {value:.4f}")
    print(f"  metrics      {summary['workdir']}/metrics.jsonl (TensorBoard: {summary['workdir']}/tensorboard)")
    if summary["curves"]:
        print(f"  curves       {summary['curves']}")
    print(f"  checkpoints  {summary['checkpoints']}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from vistas.train import loop

    results = loop.evaluate_workdir(args.workdir, splits=args.splits, step=args.step)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print(f"checkpoint step {results['step']}")
        for key, value in results.items():
            if key != "step":
                print(f"  {key:<28} {value:.4f}")
        print(f"written to {args.workdir}/eval_{results['step']}.json")
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    from vistas.models import registry

    rows = registry.catalog(num_classes=args.num_classes, image_size=args.image_size)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'model':<12} {'parameters':>16}   (at {args.image_size} px, {args.num_classes} classes)")
    for r in rows:
        print(f"{r['name']:<12} {r['params']:>16,}")
    from vistas.models import vit

    print(f"any vit-NAME/PATCH works (NAME in {' '.join(vit.SIZES)}); options: docs/models.md")
    return 0


def _cmd_presets(args: argparse.Namespace) -> int:
    from vistas import presets

    rows = [{"name": n, "doc": presets.describe(n)} for n in presets.names()]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for r in rows:
        default = " (default)" if r["name"] == presets.DEFAULT else ""
        print(f"{r['name']}{default}\n" + "\n".join("    " + line for line in r["doc"].splitlines()) + "\n")
    return 0


def _cmd_data(args: argparse.Namespace) -> int:
    from vistas.data import catalog

    if args.data_cmd == "fetch":
        path = catalog.fetch(args.name, data_dir=args.data_dir)
        print(f"{args.name}: present in {path}")
        return 0
    if args.data_cmd in ("pack", "verify"):
        from vistas.data import shards

        if args.data_cmd == "verify":
            counts = shards.verify(args.dst)
        else:
            manifest = shards.pack(args.src, args.dst, examples_per_shard=args.examples_per_shard,
                                   workers=args.workers, log=print)
            counts = {k: v["num_examples"] for k, v in manifest["splits"].items()}
        print(f"{args.dst}: " + ", ".join(f"{k} {v:,} images" for k, v in counts.items())
              + (" (checksums match)" if args.data_cmd == "verify" else "")
              + f"; train on it with --set data.dataset=array_record data.path={args.dst}")
        return 0
    rows = catalog.list_datasets(data_dir=args.data_dir)
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
        return 0
    for r in rows:
        where = r["location"] if r["present"] else f"missing; {r['how_to_get']}"
        print(f"{r['name']:<20} {'present' if r['present'] else 'absent':<8} {where}")
    return 0


def _cmd_optim_memory(args: argparse.Namespace) -> int:
    from vistas import presets
    from vistas.errors import ConfigError
    from vistas.optim import memory

    overrides = [s for g in args.set for s in g]
    if bool(args.model) == bool(args.preset):
        raise ConfigError("give either --model VARIANT [...] or --preset NAME")
    if args.preset:
        cfg = presets.get(args.preset)
        rows = [memory.preset_memory(cfg, o, overrides, exact=args.exact)
                for o in (args.optimizer or memory.STANDARD)]
    else:
        rows = memory.table(args.model, args.optimizer, overrides=overrides,
                            num_classes=args.num_classes, image_size=args.image_size,
                            exact=args.exact)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'model':<12} {'optimizer':<26} {'parameters':>15} {'state bytes':>17} {'B/param':>8}")
    for r in rows:
        print(f"{r['model']:<12} {r['optimizer']:<26} {r['params']:>15,} "
              f"{r['state_bytes']:>17,} {r['bytes_per_param']:>8.3f}")
    return 0


def _cmd_shapefind(args: argparse.Namespace) -> int:
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
        overrides=[s for g in args.set for s in g], probe=args.probe)
    print(json.dumps(answer, indent=2) if args.json else shapefind.format_answer(answer))
    return 0


def _cmd_cooldown(args: argparse.Namespace) -> int:
    from vistas.train import cooldown

    summaries = cooldown.cooldown(args.workdir, args.from_step, args.steps, args.workdir_out,
                                  quiet=args.quiet)
    if args.json:
        print(json.dumps(summaries, indent=2))
        return 0
    for s in summaries:
        status = "finished" if s["finished"] else f"stopped at step {s['step']}"
        print(f"\nbranch from step {s['from_step']} -> {s['workdir']}: {status}, "
              f"step {s['step']}/{s['total_steps']}")
        for key, value in s.items():
            if key.startswith("eval/"):
                print(f"  {key:<28} {value:.4f}")
    return 0


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None
    if not values:
        raise argparse.ArgumentTypeError("give at least one integer, e.g. 1,5,10,25")
    return values


def _float_list(text: str) -> list[float]:
    try:
        return [float(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers") from None


def _duration(text: str) -> int | str:
    return int(text) if text.isdigit() else text


def _cmd_fewshot(args: argparse.Namespace) -> int:
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


def _cmd_finetune(args: argparse.Namespace) -> int:
    from vistas.train import finetune

    workdir = args.workdir or f"{str(args.upstream).rstrip('/')}-ft-{args.dataset}"
    summary = finetune.finetune(
        args.upstream, workdir, dataset=args.dataset, resolution=args.resolution,
        duration=args.steps, lr=args.lr, batch_size=args.batch_size, warmup=args.warmup,
        decay=args.decay, sam_rho=args.sam_rho, seed=args.seed,
        overrides=[s for group in args.set for s in group], quiet=args.quiet)
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


def _cmd_convert(args: argparse.Namespace) -> int:
    from vistas.models import interop

    r = interop.convert(args.src, args.dst, to=args.to, model=args.model,
                        image_size=args.image_size, scan=args.scan)
    if args.json:
        print(json.dumps(r, indent=2))
        return 0
    print(f"read  {r['src']} ({r['src_format']}): {r['model']}, {r['params']:,} parameters, "
          f"{r['src_image_size']} px, pool {r['pool']}, {r['num_classes']} classes")
    print(f"wrote {r['dst']} ({r['dst_format']}) for {r['image_size']} px")
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    from vistas.scaling import sweep

    if args.sweep_cmd == "run":
        try:
            rows = sweep.run(args.spec, args.out, parallel=args.parallel, only=args.only,
                             in_process=args.in_process)
        except sweep.Interrupted as e:  # a checkpoint was saved: not a failure
            print(f"vistas: {e}", file=sys.stderr)
            return sweep.INTERRUPTED_STATUS
        return 1 if any(r["status"] == "failed" for r in rows) else 0
    if args.sweep_cmd == "commands":
        lines, _ = sweep.commands(args.spec, args.out)
        print("\n".join(lines))
        print(f"# written to {args.out}/commands.txt; SLURM array script: {args.out}/slurm_array.sh",
              file=sys.stderr)
        return 0
    if args.sweep_cmd == "presets":
        from vistas.scaling import presets

        for name in presets.names():
            print(name + "\n" + "\n".join("    " + line for line in presets.describe(name).splitlines()) + "\n")
        return 0
    rows = sweep.status(args.out)
    from vistas.scaling import results

    results.collect(args.out)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    width = max(len(r["member"]) for r in rows)
    for r in rows:
        print(f"{r['member']:<{width}}  {r['status']:<8} {r['detail']}")
    counts = {s: sum(r["status"] == s for r in rows) for s in ("done", "running", "partial", "failed", "pending")}
    print(", ".join(f"{n} {s}" for s, n in counts.items() if n) + f"; results: {args.out}/results.csv")
    return 0


def _cmd_fit(args: argparse.Namespace) -> int:
    from vistas.scaling import fit

    report = fit.fit_results(args.results, x=args.x, y=args.y, n_bootstrap=args.bootstrap,
                             extrapolate=args.extrapolate, plot=args.plot,
                             examples_plot=args.examples_plot, seed=args.seed)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(fit.format_report(report))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from vistas import presets

    p = argparse.ArgumentParser(prog="vistas", description="Train and study vision models with JAX.")
    sub = p.add_subparsers(dest="cmd", required=True)

    t = sub.add_parser("train", help="train (or resume) a run")
    t.add_argument("--preset", default=presets.DEFAULT, help=f"named recipe (default {presets.DEFAULT})")
    t.add_argument("--workdir", help="output folder (default runs/PRESET); resumes if it holds the run")
    t.add_argument("--set", action="append", nargs="+", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set optim.lr=0.001 train.duration=3ep")
    t.add_argument("--quiet", action="store_true", help="no progress output")
    t.add_argument("--json", action="store_true", help="print the summary as JSON")
    t.set_defaults(fn=_cmd_train)

    ds = sub.add_parser("distill", help="distil frozen teacher runs into a student (function matching)",
                        description="A training run whose distill.mode is not 'off': the teachers "
                        "(distill.teachers, run directories) are evaluated in the student's step; "
                        "see docs/distillation.md.")
    ds.add_argument("--preset", default="fashion_mnist_distill_student",
                    help="named recipe (default fashion_mnist_distill_student)")
    ds.add_argument("--workdir", help="output folder (default runs/PRESET); resumes if it holds the run")
    ds.add_argument("--set", action="append", nargs="+", default=[], metavar="KEY=VALUE",
                    help="e.g. --set distill.teachers=[runs/teacher] distill.mode=consistent "
                    "distill.temperature=1 distill.mixup_alpha=1")
    ds.add_argument("--quiet", action="store_true", help="no progress output")
    ds.add_argument("--json", action="store_true", help="print the summary as JSON")
    ds.set_defaults(fn=_cmd_train)

    e = sub.add_parser("evaluate", help="evaluate the latest checkpoint of a run")
    e.add_argument("--workdir", required=True)
    e.add_argument("--splits", nargs="+", help="splits to evaluate (default: the run's eval splits)")
    e.add_argument("--step", type=int, help="checkpoint step (default: latest)")
    e.add_argument("--json", action="store_true")
    e.set_defaults(fn=_cmd_evaluate)

    m = sub.add_parser("models", help="registered models with parameter counts")
    m.add_argument("--json", action="store_true")
    m.add_argument("--image-size", type=int, default=224)
    m.add_argument("--num-classes", type=int, default=1000)
    m.set_defaults(fn=_cmd_models)

    pr = sub.add_parser("presets", help="named presets and their documentation")
    pr.add_argument("--json", action="store_true")
    pr.set_defaults(fn=_cmd_presets)

    d = sub.add_parser("data", help="known datasets")
    dsub = d.add_subparsers(dest="data_cmd", required=True)
    dl = dsub.add_parser("list", help="known datasets and whether they are present")
    dl.add_argument("--json", action="store_true")
    dl.add_argument("--data-dir")
    df = dsub.add_parser("fetch", help="obtain a dataset (Debian package or official files)")
    df.add_argument("name")
    df.add_argument("--data-dir")
    dp = dsub.add_parser("pack", help="pack an image folder into ArrayRecord shards (resumable)",
                         description="Reads SRC/<split>/<class>/<image> (or SRC/<class>/<image>) and "
                         "writes DST/<split>-*.array_record shards with a manifest of checksums; "
                         "run it again to finish an interrupted pack.")
    dp.add_argument("src")
    dp.add_argument("dst")
    dp.add_argument("--examples-per-shard", type=int, default=1000)
    dp.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    dv = dsub.add_parser("verify", help="check packed shards against their manifest's checksums")
    dv.add_argument("dst")
    d.set_defaults(fn=_cmd_data)

    om = sub.add_parser("optim-memory", help="optimizer state bytes per parameter (abstract)")
    om.add_argument("--model", nargs="+", help="e.g. vit-B/16 vit-L/16")
    om.add_argument("--preset", help="measure the model (and optimizer settings) of a preset")
    om.add_argument("--optimizer", nargs="*", metavar="NAME[,KEY=VALUE]",
                    help="e.g. adam adam,mu_dtype=bfloat16 adafactor_bv shampoo sgd (default)")
    om.add_argument("--set", action="append", nargs="+", default=[], metavar="KEY=VALUE",
                    help="optim.* options for every optimizer, e.g. optim.shampoo_block_size=256")
    om.add_argument("--num-classes", type=int, default=1000)
    om.add_argument("--image-size", type=int, default=224)
    om.add_argument("--exact", action="store_true",
                    help="trace every block instead of extrapolating from depths 1 and 2")
    om.add_argument("--json", action="store_true")
    om.set_defaults(fn=_cmd_optim_memory)

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
    sf.add_argument("--dtype", help="compute dtype, e.g. bfloat16")
    sf.add_argument("--image-size", type=int, default=224)
    sf.add_argument("--num-classes", type=int, default=1000)
    sf.add_argument("--batch", type=int, help="batch per device: report it (or, with --diagonal, fit models to it)")
    sf.add_argument("--diagonal", action="store_true",
                    help="the largest ViT of the ladder from --model up that fits at --batch")
    sf.add_argument("--probe", type=int, default=8, help="first batch size compiled (default 8)")
    sf.add_argument("--set", nargs="+", action="append", default=[], metavar="KEY=VALUE")
    sf.add_argument("--json", action="store_true")
    sf.set_defaults(fn=_cmd_shapefind)

    c = sub.add_parser("cooldown", help="branch cooldowns from checkpoints of an rsqrt run")
    c.add_argument("--workdir", required=True, help="the source run (only read)")
    c.add_argument("--from-step", type=int, nargs="+", required=True, metavar="S",
                   help="checkpoint steps to branch from (kept by train.keep_every)")
    c.add_argument("--steps", required=True,
                   help="cooldown length: steps, '1ep', '50000ex' or percent of S ('20%%')")
    c.add_argument("--workdir-out", required=True,
                   help="the branch; with several steps, one folder DIR/from_S per step")
    c.add_argument("--quiet", action="store_true", help="no progress output")
    c.add_argument("--json", action="store_true", help="print the summaries as JSON")
    c.set_defaults(fn=_cmd_cooldown)

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
    fs.set_defaults(fn=_cmd_fewshot)

    ft = sub.add_parser("finetune", help="fine-tune a trained run on a target dataset")
    ft.add_argument("--from", dest="upstream", required=True, help="the upstream run (its workdir)")
    ft.add_argument("--dataset", required=True, help="target dataset (see `vistas data list`)")
    ft.add_argument("--resolution", type=int, help="image size (default: the upstream's)")
    ft.add_argument("--workdir", help="output folder (default FROM-ft-DATASET); resumes if it holds the run")
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
    ft.set_defaults(fn=_cmd_finetune)

    cv = sub.add_parser("convert", help="convert ViT checkpoints: big_vision .npz, timm .safetensors, "
                        "vistas runs and files",
                        description="Reads SRC (a big_vision .npz, a timm .safetensors, a vistas "
                        ".vistas.npz file or a `vistas train` run directory) and writes DST.")
    cv.add_argument("src")
    cv.add_argument("dst", help="output file; its name picks the format unless --to is given: "
                    ".safetensors -> timm, .vistas.npz -> vistas, .npz -> big_vision")
    cv.add_argument("--to", choices=["big_vision", "timm", "vistas"], help="output format")
    cv.add_argument("--model", help="ViT variant (e.g. vit-B/16) for what the weights do not show, "
                    "such as the number of heads of a timm file")
    cv.add_argument("--image-size", help="write for this image size (N or HxW): the position "
                    "embedding is resampled")
    cv.add_argument("--scan", action=argparse.BooleanOptionalAction, default=None,
                    help="write the scanned layout (big_vision encoderblock, vistas encoder/blocks)")
    cv.add_argument("--json", action="store_true")
    cv.set_defaults(fn=_cmd_convert)

    sw = sub.add_parser("sweep", help="scaling sweeps: run, emit cluster commands, show status")
    swsub = sw.add_subparsers(dest="sweep_cmd", required=True)
    sr = swsub.add_parser("run", help="run every member (skips finished, resumes interrupted ones)")
    sr.add_argument("spec", help="a .toml/.json sweep spec or a sweep preset (vistas sweep presets)")
    sr.add_argument("--out", required=True, help="sweep folder: one run folder per member, results table")
    sr.add_argument("--parallel", type=int, default=1, help="groups run at once, each in its own process")
    sr.add_argument("--only", help="run only this group (MODEL/nSIZE), model or member")
    sr.add_argument("--in-process", action="store_true",
                    help="run in this process instead of one child process per group")
    sc = swsub.add_parser("commands", help="one command per member and a SLURM array script")
    sc.add_argument("spec")
    sc.add_argument("--out", required=True)
    ss = swsub.add_parser("status", help="what is done, running, interrupted, failed or pending")
    ss.add_argument("out")
    ss.add_argument("--json", action="store_true")
    swsub.add_parser("presets", help="named sweeps and their documentation")
    sw.set_defaults(fn=_cmd_sweep)

    fi = sub.add_parser("fit", help="fit E = a(C + d)^-b + c on the Pareto frontier of a sweep")
    fi.add_argument("results", help="results.csv / results.jsonl of a sweep, or its folder")
    fi.add_argument("--x", default="compute", choices=["compute", "examples", "params"],
                    help="total training FLOPs, examples seen or parameters (default compute)")
    fi.add_argument("--y", default="eval_error", help="a results column (default eval_error)")
    fi.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples (default 200)")
    fi.add_argument("--extrapolate", type=float, default=0.3,
                    help="fraction of the frontier (highest x) held out and predicted (default 0.3)")
    fi.add_argument("--plot", help="write the figure here (PNG)")
    fi.add_argument("--examples-plot", help="also plot error vs examples seen per model size here")
    fi.add_argument("--seed", type=int, default=0, help="seed of the bootstrap")
    fi.add_argument("--json", action="store_true")
    fi.set_defaults(fn=_cmd_fit)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        from vistas.systems import distributed

        distributed.initialize()  # multi-host jobs (VISTAS_COORDINATOR, SLURM): before any device use
        return args.fn(args)
    except VistasError as e:
        print(f"vistas: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `vistas presets | head`
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("vistas: interrupted", file=sys.stderr)
        return 130


def console() -> None:
    """The ``vistas`` console script: restart with huge pages when that helps, then run."""
    from vistas.systems import xla_cpu

    xla_cpu.restart_with_huge_pages()  # replaces the process (same arguments) or returns
    sys.exit(main())


if __name__ == "__main__":
    console()
