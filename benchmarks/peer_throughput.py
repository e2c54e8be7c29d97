"""Training and inference throughput of vistas against timm (PyTorch, eager), in one run.

    bash benchmarks/setup_timm.sh                      # once: timm + CPU torch in .venv-timm
    python benchmarks/peer_throughput.py [--models vit-Ti/16,vit-S/16] [--batch 32] \
        [--steps 5] [--repeats 5] [--timm-python .venv-timm/bin/python] [--timm-huge-pages] \
        [--json out.json]

Both sides train the same ViT (224 px, 1000 classes, float32) with AdamW on random images
and labels; warm-up steps are excluded, each repeat times ``--steps`` steps, and the table
gives the median images/s with the spread (min-max) over repeats, the peak resident memory
of each side's process (vistas also runs one process per model), MFU against this
machine's float32 matmul peak measured in the same run (analytic ViT FLOPs: 3x forward
for training), and the ratio vistas / timm. timm runs in its own process and environment
(``--timm-python``), one side after the other, so they never share the cores.

vistas runs as the ``vistas`` command does: restarted with huge pages for XLA's buffers
where that helps, the step compiled and the compiler's freed memory handed back before the
first step, the state donated (``vistas.systems.xla_cpu``, ``vistas.train.loop``). timm runs as its users start it, and, with
``--timm-huge-pages``, a second time with the same ``GLIBC_TUNABLES`` (columns ``timm+hp``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

TIMM_NAMES = {"vit-Ti/16": "vit_tiny_patch16_224", "vit-S/16": "vit_small_patch16_224",
              "vit-B/16": "vit_base_patch16_224"}

TIMM_SCRIPT = r"""
import json, resource, statistics, sys, time
import torch, timm
name, batch, steps, repeats, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
torch.set_num_threads(threads)
torch.manual_seed(0)
model = timm.create_model(name, num_classes=1000)
opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
x = torch.randn(batch, 3, 224, 224)
y = torch.randint(0, 1000, (batch,))
loss_fn = torch.nn.CrossEntropyLoss()

def train_step():
    opt.zero_grad(set_to_none=True)
    loss = loss_fn(model(x), y)
    loss.backward()
    opt.step()
    return float(loss)

def infer_step():
    with torch.inference_mode():
        return float(model(x).sum())

out = {}
for kind, fn in (("train", train_step), ("infer", infer_step)):
    model.train(kind == "train")
    for _ in range(2):
        fn()
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            fn()
        rates.append(batch * steps / (time.perf_counter() - start))
    out[kind] = rates
out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(out))
"""


def vistas_rates(name: str, batch: int, steps: int, repeats: int) -> dict[str, list[float]]:
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    from flax import nnx

    from vistas import config as config_lib
    from vistas.models import registry
    from vistas.optim import builder
    from vistas.systems import xla_cpu
    from vistas.train import losses
    from vistas.train import step as step_lib

    cfg = config_lib.apply_overrides(config_lib.Config(), [
        f"model.name={name}", "data.image_size=224", "data.channels=3", "optim.name=adam",
        "optim.lr=1e-3", "optim.wd=5e-5"])  # AdamW(lr 1e-3, weight decay 0.05): wd = lr x 0.05
    model = registry.create(name, num_classes=1000, image_size=224, channels=3)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    params = nnx.to_pure_dict(params)
    schedule = optax.constant_schedule(1.0)
    tx = builder.from_config(params, cfg.optim, schedule)
    train = jax.jit(step_lib.make_train_step(
        graphdef, rest, tx, losses.get("softmax_xent"), lambda s: builder.current_lr(schedule, 1e-3, s),
        use_rng=registry.needs_rng(model)), donate_argnums=(0,))
    state = step_lib.init_state(params, tx, 0)
    rng = np.random.default_rng(0)
    batch_arrays = {"image": jnp.asarray(rng.normal(size=(batch, 224, 224, 3)), jnp.float32),
                    "label": jnp.asarray(rng.integers(0, 1000, batch), jnp.int32)}

    @jax.jit
    def infer(params, images):
        logits, _ = nnx.merge(graphdef, params, rest)(images)
        return logits.sum()

    # as `vistas train` does: compile, give the compiler's freed memory back, then run
    train.lower(state, batch_arrays).compile()
    xla_cpu.release_free_memory()
    out: dict[str, list[float]] = {"train": [], "infer": []}
    for _ in range(2):
        state, metrics = train(state, batch_arrays)
        jax.block_until_ready(metrics)
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            state, metrics = train(state, batch_arrays)
        jax.block_until_ready(metrics)
        out["train"].append(batch * steps / (time.perf_counter() - start))
    for _ in range(2):
        infer(state["params"], batch_arrays["image"]).block_until_ready()
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            value = infer(state["params"], batch_arrays["image"])
        value.block_until_ready()
        out["infer"].append(batch * steps / (time.perf_counter() - start))
    return out


def vistas_worker(args: argparse.Namespace, name: str) -> dict:
    """vistas on one model in a process of its own (so its peak memory is its own)."""
    proc = subprocess.run([sys.executable, __file__, "--worker", name, "--batch", str(args.batch),
                           "--steps", str(args.steps), "--repeats", str(args.repeats)],
                          capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"vistas run failed: {proc.stderr.strip().splitlines()[-1]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def timm_rates(args: argparse.Namespace, name: str, env: dict) -> dict[str, list[float]]:
    proc = subprocess.run([args.timm_python, "-c", TIMM_SCRIPT, TIMM_NAMES[name], str(args.batch),
                           str(args.steps), str(args.repeats), str(args.threads)],
                          capture_output=True, text=True, env=env)
    if proc.returncode:
        sys.exit(f"timm run failed: {proc.stderr.strip().splitlines()[-1]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def forward_flops(name: str) -> float:
    from vistas.models import vit
    from vistas.systems import flops

    return float(flops.vit_flops(
        vit.variant_config(name.split("-", 1)[1], num_classes=1000, image_size=224, channels=3)))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="vit-Ti/16,vit-S/16")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2, help="torch threads (default: the 2 cores)")
    p.add_argument("--timm-python", default=".venv-timm/bin/python")
    p.add_argument("--timm-huge-pages", action="store_true",
                   help="also run timm with vistas' huge-page allocator setting")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--worker", help=argparse.SUPPRESS)  # internal: measure vistas on one model
    args = p.parse_args()
    if args.worker:
        import resource

        out = vistas_rates(args.worker, args.batch, args.steps, args.repeats)
        out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(out))
        return 0

    from vistas.systems import mfu, xla_cpu

    xla_cpu.restart_with_huge_pages()  # as the `vistas` command does (returns if nothing changes)
    huge_pages = xla_cpu.huge_pages_status()
    plain_env = xla_cpu.environ_before_restart()
    hp_env = dict(plain_env, GLIBC_TUNABLES=xla_cpu.tunables_with_huge_pages(
        plain_env.get("GLIBC_TUNABLES", "")))

    peak = mfu.cpu_matmul_peak(2048)
    rows = []
    for name in args.models.split(","):
        ours = vistas_worker(args, name)
        theirs = timm_rates(args, name, plain_env)
        theirs_hp = timm_rates(args, name, hp_env) if args.timm_huge_pages else None
        fwd = forward_flops(name)
        for kind, mult in (("train", 3), ("infer", 1)):
            a, b = statistics.median(ours[kind]), statistics.median(theirs[kind])
            row = {"model": name, "kind": kind, "vistas": a, "vistas_min": min(ours[kind]),
                   "vistas_max": max(ours[kind]), "timm": b, "timm_min": min(theirs[kind]),
                   "timm_max": max(theirs[kind]), "ratio": a / b,
                   "vistas_mfu": a * mult * fwd / peak, "timm_mfu": b * mult * fwd / peak,
                   "vistas_rss_mib": ours["peak_rss_mib"], "timm_rss_mib": theirs["peak_rss_mib"]}
            if theirs_hp:
                c = statistics.median(theirs_hp[kind])
                row.update(timm_hp=c, timm_hp_min=min(theirs_hp[kind]), timm_hp_max=max(theirs_hp[kind]),
                           ratio_hp=a / c, timm_hp_mfu=c * mult * fwd / peak,
                           timm_hp_rss_mib=theirs_hp["peak_rss_mib"])
            rows.append(row)
    print(f"float32 matmul peak of this machine: {peak / 1e9:.1f} GFLOP/s; batch {args.batch}, "
          f"{args.repeats} repeats of {args.steps} steps; vistas huge pages: "
          f"{'on' if huge_pages[0] else 'off'} ({huge_pages[1]})")
    hp = args.timm_huge_pages
    print("| model | pass | vistas img/s (min-max) | timm img/s (min-max) | vistas / timm | "
          + ("timm+hp img/s (min-max) | vistas / timm+hp | " if hp else "") + "MFU vistas | MFU timm |")
    print("| --- | --- | ---: | ---: | ---: | " + ("---: | ---: | " if hp else "") + "---: | ---: |")
    for r in rows:
        extra = (f"{r['timm_hp']:.1f} ({r['timm_hp_min']:.1f}-{r['timm_hp_max']:.1f}) | {r['ratio_hp']:.2f} | "
                 if hp else "")
        print(f"| {r['model']} | {r['kind']} | {r['vistas']:.1f} ({r['vistas_min']:.1f}-{r['vistas_max']:.1f}) | "
              f"{r['timm']:.1f} ({r['timm_min']:.1f}-{r['timm_max']:.1f}) | {r['ratio']:.2f} | {extra}"
              f"{r['vistas_mfu']:.1%} | {r['timm_mfu']:.1%} |")
    print("\npeak resident memory of the process (training, then inference), MiB:")
    print("| model | vistas | timm | vistas / timm |" + (" timm+hp |" if hp else ""))
    print("| --- | ---: | ---: | ---: |" + (" ---: |" if hp else ""))
    for r in rows[::2]:
        print(f"| {r['model']} | {r['vistas_rss_mib']:,.0f} | {r['timm_rss_mib']:,.0f} | "
              f"{r['vistas_rss_mib'] / r['timm_rss_mib']:.2f} |"
              + (f" {r['timm_hp_rss_mib']:,.0f} |" if hp else ""))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"peak_flops": peak, "batch": args.batch, "huge_pages": huge_pages[0],
                       "huge_pages_why": huge_pages[1], "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
