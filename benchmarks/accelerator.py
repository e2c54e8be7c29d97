"""The accelerator check: one prepared run that says whether vistas is fast, honest about
memory, and exact on a GPU (issue "Accelerators"), sized for 8 minutes on one H200.

    python benchmarks/accelerator.py [--out DIR] [--budget-s 450] [--sections ...] [--no-timm]
    python benchmarks/accelerator.py --dry-run      # tiny models on whatever backend is here

Writes ``DIR/accelerator.json`` after every measurement (a run cut short keeps what it
measured) and prints a table at the end. Each measurement runs in a process of its own,
so that each peak of device memory is its own and a failed one (out of memory, say)
cannot take the others with it. The sections, most important first:

1. ``throughput``: training images/s and MFU (analytic model FLOPs, 3x forward, against the
   device's dense bf16 peak) of ViT-B/16 and ViT-L/16 at 224 px, ``model.dtype=auto``
   (bfloat16 compute, float32 parameters on an accelerator), Adam and ``adafactor_bv``, at
   the largest batch the shapefinder finds for Adam (section 2's method, on this device's
   memory); beside them timm's same models with ``torch.compile`` and bf16 autocast, same
   batch, same optimizers (timm's ``adamw`` and ``adafactorbv``), in the same run. Goals:
   MFU >= 55% for ViT-L/16 (ViT-22B reported 54.9% on TPUv4), >= 1.0x timm+compile.
2. ``shapefind``: the batch the shapefinder predicts for ViT-B/16 (``adafactor_bv``) within
   this device's memory, then the real step at that batch (it must fit) and at +5% (it
   should not; then +10%, +20% to bracket the real boundary). Goal: within 5%.
3. ``memory``: ViT-L/16's optimizer state on the device and the step's peak, for Adam,
   Adam with a bfloat16 first moment and ``adafactor_bv``, against ``vistas optim-memory``
   and the compiled program's memory analysis (the shapefinder's figure).
4. ``resume``: Fashion-MNIST (``VISTAS_DATA_DIR``), the default preset's model for one
   epoch, once uninterrupted and once SIGKILLed after its first checkpoint and resumed
   (deterministic GPU ops): the final parameters must be the same.
5. ``block``: the ViT-22B block (parallel, QK-norm, bias-free) at ViT-L width against the
   standard block, and the attention paths (``model.attention``: cuDNN fused against the
   recomputing one), same batch.

On a machine without an accelerator ``--dry-run`` runs every section with tiny models,
small batches and a CPU-sized budget (``tests/test_accelerator_check.py`` runs it in CI, so
the script cannot rot while no device is at hand). On the device machine vistas is
installed with ``pip install --no-deps`` beside the image's JAX; docs/performance.md has the
exact command.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

SECTIONS = ("throughput", "resume", "shapefind", "memory", "block")
TIMM_NAMES = {"vit-B/16": "vit_base_patch16_224", "vit-L/16": "vit_large_patch16_224",
              "vit-mu/16": "vit_tiny_patch16_224"}
OPTIMIZERS = {"adam": ("adam", "adamw"), "adafactor_bv": ("adafactor_bv", "adafactorbv"),
              "adam_bf16": ("adam,mu_dtype=bfloat16", None)}
OOM_WORDS = ("RESOURCE_EXHAUSTED", "Out of memory", "out of memory", "OOM")


# --------------------------------------------------------------------------- the workers
def vistas_step(spec: dict[str, Any]) -> dict[str, Any]:
    """One training configuration, measured in this process: optimizer state on the
    device, the compiled step's memory analysis, images/s over timed steps, peak memory."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    from vistas import experiment
    from vistas.models import registry, vit
    from vistas.optim import builder, memory
    from vistas.systems import flops, mfu, shapefind
    from vistas.train import losses
    from vistas.train import step as step_lib

    device = jax.devices()[0]
    cfg = shapefind.shapefind_config(spec["model"], image_size=spec["image_size"],
                                     optimizer=spec["optimizer"], overrides=spec.get("sets", []))
    cfg.model.scan = False  # as users train; the shapefinder scans only to compile faster
    batch_size, num_classes = spec["batch"], spec["num_classes"]
    model, graphdef, params, rest = experiment.init_model(cfg, num_classes)
    schedule = optax.constant_schedule(1.0)
    tx = builder.from_config(params, cfg.optim, schedule)
    before = _bytes_in_use(device)
    state = step_lib.init_state(params, tx, 0)
    jax.block_until_ready(state)
    state_bytes = memory.tree_bytes(state["opt_state"])
    train = jax.jit(step_lib.make_train_step(
        graphdef, rest, tx, losses.get("softmax_xent"),
        lambda s: builder.current_lr(schedule, cfg.optim.lr, s), use_rng=registry.needs_rng(model)),
        donate_argnums=(0,))
    rng = np.random.default_rng(0)
    size, channels = spec["image_size"], cfg.data.channels
    batch = {"image": jnp.asarray(rng.normal(size=(batch_size, size, size, channels)), jnp.float32),
             "label": jnp.asarray(rng.integers(0, num_classes, batch_size), jnp.int32)}
    out: dict[str, Any] = {**spec, "backend": jax.default_backend(), "device": device.device_kind,
                           "jax": jax.__version__, "dtype": vit.resolve_dtype(cfg.model.dtype),
                           "opt_state_bytes": state_bytes,
                           "opt_state_predicted": memory.optimizer_memory(
                               spec["model"], spec["optimizer"], num_classes=num_classes,
                               image_size=size, model_options=_shape_options(spec))["state_bytes"]}
    if before is not None:
        out["state_on_device_bytes"] = _bytes_in_use(device) - before
    start = time.perf_counter()
    try:
        compiled = train.lower(state, batch).compile()
        analysis = compiled.memory_analysis()
        if analysis is not None:
            out["predicted_peak_bytes"] = (analysis.argument_size_in_bytes + analysis.output_size_in_bytes
                                           - analysis.alias_size_in_bytes + analysis.temp_size_in_bytes)
        out["compile_s"] = time.perf_counter() - start
        for _ in range(2):  # warm-up
            state, metrics = compiled(state, batch)
        jax.block_until_ready(metrics)
        rates = []
        for _ in range(spec["repeats"]):
            start = time.perf_counter()
            for _ in range(spec["steps"]):
                state, metrics = compiled(state, batch)
            jax.block_until_ready(metrics)
            rates.append(batch_size * spec["steps"] / (time.perf_counter() - start))
    except Exception as e:  # noqa: BLE001 - an out-of-memory step is a measurement here
        text = str(e)
        if not any(w in text for w in OOM_WORDS):
            raise
        return {**out, "fits": False, "error": text.strip().splitlines()[0][:200]}
    rate = float(np.median(rates))
    step_flops = flops.TRAIN_MULTIPLIER * flops.vit_flops(flops._vit_config(cfg, num_classes)) * batch_size
    peak = mfu.device_peak(device, out["dtype"])
    out.update(fits=True, images_per_s=rate, rates=rates, loss=float(metrics["train/loss"]),
               model_tflops_per_step=step_flops / 1e12,
               mfu=(step_flops * rate / batch_size / peak) if peak else None)
    stats = device.memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        out["peak_bytes"] = int(stats["peak_bytes_in_use"])
    return out


def _shape_options(spec: dict[str, Any]) -> dict[str, int]:
    """The ViT shape a spec's ``model.*`` sets give (the dry run's tiny models), for the
    optimizer-memory prediction."""
    out = {}
    for item in spec.get("sets", []):
        key, _, value = item.partition("=")
        if key in ("model.width", "model.depth", "model.mlp_dim", "model.num_heads"):
            out[key.removeprefix("model.")] = int(value)
    return out


def _bytes_in_use(device: Any) -> int | None:
    stats = device.memory_stats() or {}
    return int(stats["bytes_in_use"]) if "bytes_in_use" in stats else None


def shapefind_batch(spec: dict[str, Any]) -> dict[str, Any]:
    """The shapefinder's batch for ``spec`` within this device's memory (its allocator's
    limit; the whole host memory split over the CPU devices in a dry run)."""
    import jax

    from vistas.systems import shapefind

    device = jax.devices()[0]
    limit = (device.memory_stats() or {}).get("bytes_limit") or spec["budget"]
    answer = shapefind.run(spec["model"], device=None, budget=int(limit), headroom=1.0,
                           optimizer=spec["optimizer"], image_size=spec["image_size"],
                           num_classes=spec["num_classes"], overrides=spec.get("sets", []),
                           probe=spec.get("probe", 8))
    return {"batch": answer["batch_per_device"], "budget": int(limit), "dtype": answer["dtype"],
            "compiles": len(answer["candidates"])}


TIMM_WORKER = r"""
import json, sys, time
import torch, timm
spec = json.loads(sys.argv[1])
dev = "cuda" if torch.cuda.is_available() else "cpu"
torch.manual_seed(0)
model = timm.create_model(spec["timm_name"], num_classes=spec["num_classes"], img_size=spec["image_size"]).to(dev)
opt = timm.optim.create_optimizer_v2(model, spec["timm_opt"], lr=1e-3, weight_decay=0.05)
step_model = torch.compile(model) if spec["compile"] else model
x = torch.randn(spec["batch"], 3, spec["image_size"], spec["image_size"], device=dev)
y = torch.randint(0, spec["num_classes"], (spec["batch"],), device=dev)
loss_fn = torch.nn.CrossEntropyLoss()
def step():
    opt.zero_grad(set_to_none=True)
    with torch.autocast(dev, dtype=torch.bfloat16, enabled=dev == "cuda"):
        loss = loss_fn(step_model(x), y)
    loss.backward()
    opt.step()
    return loss
start = time.perf_counter()
for _ in range(3):
    step()
if dev == "cuda": torch.cuda.synchronize()
compile_s = time.perf_counter() - start
if dev == "cuda": torch.cuda.reset_peak_memory_stats()
rates = []
for _ in range(spec["repeats"]):
    start = time.perf_counter()
    for _ in range(spec["steps"]):
        loss = step()
    if dev == "cuda": torch.cuda.synchronize()
    rates.append(spec["batch"] * spec["steps"] / (time.perf_counter() - start))
rates.sort()
out = {"images_per_s": rates[len(rates) // 2], "rates": rates, "compile_s": compile_s,
       "torch": torch.__version__, "timm": timm.__version__, "loss": float(loss)}
if dev == "cuda": out["peak_bytes"] = torch.cuda.max_memory_allocated()
print(json.dumps(out))
"""


# --------------------------------------------------------------------------- orchestration
class Check:
    """Runs the workers, keeps the results (written after each), and the time budget."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.out = pathlib.Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.start = time.perf_counter()
        self.results: dict[str, Any] = {"dry_run": args.dry_run, "sections": {}, "skipped": {}}
        self.answers: dict[str, dict[str, Any]] = {}  # a measurement asked for twice runs once

    def left(self) -> float:
        return self.args.budget_s - (time.perf_counter() - self.start)

    def save(self) -> None:
        self.results["elapsed_s"] = round(time.perf_counter() - self.start, 1)
        path = self.out / "accelerator.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.results, indent=1, default=str))
        os.replace(tmp, path)

    def record(self, section: str, key: str, value: Any) -> Any:
        self.results["sections"].setdefault(section, {})[key] = value
        self.save()
        return value

    def worker(self, kind: str, spec: dict[str, Any], env: dict[str, str] | None = None) -> dict[str, Any]:
        """``kind`` (vistas_step, shapefind_batch) in a fresh process; its JSON answer, or
        ``{"error": ...}`` with the last line it printed. The same measurement (the dry
        run's stand-ins for ViT-B and ViT-L are one tiny model) is answered once."""
        key = json.dumps([kind, {k: v for k, v in spec.items() if k != "label"}], sort_keys=True)
        if key not in self.answers:
            self.answers[key] = self._run_worker(kind, spec, env)
        return {**self.answers[key], **({"label": spec["label"]} if "label" in spec else {})}

    def _run_worker(self, kind: str, spec: dict[str, Any], env: dict[str, str] | None) -> dict[str, Any]:
        timeout = max(30.0, self.left())
        try:
            proc = subprocess.run([sys.executable, __file__, "--worker", kind, json.dumps(spec)],
                                  capture_output=True, text=True, timeout=timeout,
                                  env={**os.environ, **(env or {})})
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {timeout:.0f} s"}
        return _answer(proc)

    def timm(self, spec: dict[str, Any]) -> dict[str, Any]:
        python = self.args.timm_python or sys.executable
        try:
            proc = subprocess.run([python, "-c", TIMM_WORKER, json.dumps(spec)], capture_output=True,
                                  text=True, timeout=max(30.0, self.left()))
        except subprocess.TimeoutExpired:
            return {"error": "timed out"}
        return _answer(proc)


def _answer(proc: subprocess.CompletedProcess) -> dict[str, Any]:
    lines = proc.stdout.strip().splitlines()
    if proc.returncode == 0 and lines:
        try:
            return json.loads(lines[-1])
        except ValueError:
            pass
    err = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return {"error": f"exit {proc.returncode}: {err[:300]}"}


def sizes(args: argparse.Namespace) -> dict[str, Any]:
    """Models, resolution and step counts: the real check, or the dry run's tiny stand-ins."""
    if args.dry_run:
        tiny = ["model.width=32", "model.depth=2", "model.mlp_dim=64", "model.num_heads=2"]
        return {"models": {"vit-B/16": ("vit-mu/16", tiny), "vit-L/16": ("vit-mu/16", tiny)},
                "image_size": 32, "num_classes": 10, "steps": 2, "repeats": 2, "max_batch": 8,
                "budget": 256 * 2**20, "probe": 2, "timm_compile": False, "resume_preset": "smoke",
                "resume_sets": ["train.duration=24", "train.ckpt_every=8", "train.eval_every=24",
                                "train.log_every=8"]}
    return {"models": {"vit-B/16": ("vit-B/16", []), "vit-L/16": ("vit-L/16", [])},
            "image_size": 224, "num_classes": 1000, "steps": 10, "repeats": 3, "max_batch": 4096,
            "budget": None, "probe": 64, "timm_compile": True, "resume_preset": "fashion_mnist_vit",
            "resume_sets": ["train.duration=1ep", "train.ckpt_every=100", "train.eval_every=1ep"]}


def step_spec(sz: dict[str, Any], model: str, optimizer: str, batch: int, sets: list[str] = ()) -> dict:
    name, model_sets = sz["models"][model]
    return {"model": name, "label": model, "optimizer": OPTIMIZERS[optimizer][0], "batch": batch,
            "image_size": sz["image_size"], "num_classes": sz["num_classes"], "steps": sz["steps"],
            "repeats": sz["repeats"], "sets": [*model_sets, *sets]}


def largest_batch(check: Check, sz: dict[str, Any], model: str, optimizer: str) -> dict[str, Any]:
    name, sets = sz["models"][model]
    answer = check.worker("shapefind_batch", {
        "model": name, "optimizer": OPTIMIZERS[optimizer][0], "image_size": sz["image_size"],
        "num_classes": sz["num_classes"], "sets": sets, "budget": sz["budget"], "probe": sz["probe"]})
    if "batch" in answer:
        answer["batch"] = min(answer["batch"], sz["max_batch"])
    return answer


def section_throughput(check: Check, sz: dict[str, Any]) -> None:
    for model in ("vit-B/16", "vit-L/16"):
        found = check.record("throughput", f"{model} batch", largest_batch(check, sz, model, "adam"))
        batch = found.get("batch")
        if not batch:
            continue
        check.results.setdefault("batches", {})[model] = batch
        for optimizer in ("adam", "adafactor_bv"):
            check.record("throughput", f"{model} {optimizer} vistas",
                         check.worker("vistas_step", step_spec(sz, model, optimizer, batch)))
            if check.args.no_timm:
                continue
            timm_spec = {"timm_name": TIMM_NAMES[model], "timm_opt": OPTIMIZERS[optimizer][1],
                         "batch": batch, "image_size": sz["image_size"], "num_classes": sz["num_classes"],
                         "steps": sz["steps"], "repeats": sz["repeats"], "compile": sz["timm_compile"]}
            check.record("throughput", f"{model} {optimizer} timm", check.timm(timm_spec))


def section_shapefind(check: Check, sz: dict[str, Any]) -> None:
    found = check.record("shapefind", "prediction", largest_batch(check, sz, "vit-B/16", "adafactor_bv"))
    predicted = found.get("batch")
    if not predicted:
        return
    for factor in (1.0, 1.05) if check.args.dry_run else (1.0, 1.05, 1.10, 1.20):
        batch = max(predicted + (factor > 1), round(predicted * factor))
        answer = check.worker("vistas_step", {**step_spec(sz, "vit-B/16", "adafactor_bv", batch),
                                              "steps": 1, "repeats": 1})
        check.record("shapefind", f"x{factor:.2f} batch {batch}",
                     {k: answer.get(k) for k in ("fits", "peak_bytes", "predicted_peak_bytes", "error")})
        if factor > 1 and answer.get("fits") is False:
            break


def section_memory(check: Check, sz: dict[str, Any]) -> None:
    batch = check.results.get("batches", {}).get("vit-L/16") or sz["probe"]
    for optimizer in ("adam", "adam_bf16", "adafactor_bv"):
        key = f"vit-L/16 {optimizer} vistas"
        done = check.results["sections"].get("throughput", {}).get(key)
        answer = done if done and not done.get("error") else check.worker(
            "vistas_step", {**step_spec(sz, "vit-L/16", optimizer, batch), "steps": 2, "repeats": 1})
        check.record("memory", f"vit-L/16 {optimizer}", {k: answer.get(k) for k in (
            "batch", "opt_state_bytes", "opt_state_predicted", "state_on_device_bytes", "peak_bytes",
            "predicted_peak_bytes", "error")})


def section_block(check: Check, sz: dict[str, Any]) -> None:
    batch = check.results.get("batches", {}).get("vit-L/16") or sz["probe"]
    block = ["model.parallel=True", "model.qk_norm=True", "model.qkv_bias=False", "model.norm_bias=False"]
    for label, sets in (("standard", []), ("22B block", block), ("attention=recompute",
                                                                 ["model.attention=recompute"])):
        done = check.results["sections"].get("throughput", {}).get("vit-L/16 adafactor_bv vistas")
        answer = done if label == "standard" and done and not done.get("error") else check.worker(
            "vistas_step", step_spec(sz, "vit-L/16", "adafactor_bv", batch, sets))
        check.record("block", label, {k: answer.get(k) for k in ("batch", "images_per_s", "mfu", "error")})


def section_resume(check: Check, sz: dict[str, Any]) -> None:
    """One run uninterrupted, one SIGKILLed after its first checkpoint and resumed."""
    root = pathlib.Path(tempfile.mkdtemp(prefix="vistas-accel-"))
    env = {**os.environ, "XLA_FLAGS": (os.environ.get("XLA_FLAGS", "") +
                                       " --xla_gpu_deterministic_ops=true").strip()}

    def train(workdir: pathlib.Path) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "vistas.cli", "train", "--preset",
                                 sz["resume_preset"], "--workdir", str(workdir), "--quiet",
                                 "--set", *sz["resume_sets"]], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    try:
        start = time.perf_counter()
        whole = train(root / "whole")
        _, err = whole.communicate(timeout=max(30.0, check.left()))
        if whole.returncode:
            check.record("resume", "error", f"uninterrupted run: {err.strip().splitlines()[-1:]}")
            return
        check.record("resume", "uninterrupted_s", round(time.perf_counter() - start, 1))
        killed = train(root / "killed")
        ckpts = root / "killed" / "checkpoints"
        while killed.poll() is None and not any(p.name.isdigit() for p in ckpts.glob("*")):
            time.sleep(0.2)
        killed.send_signal(signal.SIGKILL)
        killed.wait()
        resumed = train(root / "killed")
        _, err = resumed.communicate(timeout=max(30.0, check.left()))
        if resumed.returncode:
            check.record("resume", "error", f"resumed run: {err.strip().splitlines()[-1:]}")
            return
        check.record("resume", "comparison", _compare_runs(root / "whole", root / "killed"))
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _compare_runs(a: pathlib.Path, b: pathlib.Path) -> dict[str, Any]:
    import logging

    import jax
    import numpy as np

    from vistas import runs

    logging.getLogger("absl").setLevel(logging.ERROR)  # orbax's notes on read-only restores
    (_, pa, sa), (_, pb, sb) = runs.final_params(a), runs.final_params(b)
    la, lb = jax.tree.leaves(pa), jax.tree.leaves(pb)
    diff = max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
               for x, y in zip(la, lb, strict=True))
    return {"steps": [sa, sb], "identical": diff == 0.0, "max_abs_diff": diff}


# --------------------------------------------------------------------------- report
def table(results: dict[str, Any]) -> str:
    rows = ["section | measurement | result", "--- | --- | ---"]
    for section, entries in results["sections"].items():
        for key, value in entries.items():
            rows.append(f"{section} | {key} | {_brief(value)}")
    thr = results["sections"].get("throughput", {})
    for model in ("vit-B/16", "vit-L/16"):
        for optimizer in ("adam", "adafactor_bv"):
            ours, peer = thr.get(f"{model} {optimizer} vistas", {}), thr.get(f"{model} {optimizer} timm", {})
            if ours.get("images_per_s") and peer.get("images_per_s"):
                rows.append(f"ratio | {model} {optimizer} vistas / timm+compile | "
                            f"{ours['images_per_s'] / peer['images_per_s']:.2f}x")
    for section, why in results["skipped"].items():
        rows.append(f"{section} | skipped | {why}")
    return "\n".join(rows)


def _brief(value: Any) -> str:
    if not isinstance(value, dict):
        return str(value)
    keys = ("batch", "images_per_s", "mfu", "fits", "peak_bytes", "predicted_peak_bytes",
            "opt_state_bytes", "opt_state_predicted", "identical", "max_abs_diff", "compiles", "error")
    parts = []
    for k in keys:
        v = value.get(k)
        if v is None:
            continue
        if k.endswith("bytes") or k == "opt_state_predicted":
            v = f"{v / 2**30:.2f} GiB"
        elif isinstance(v, float):
            v = f"{v:.1%}" if k == "mfu" else f"{v:,.1f}"
        parts.append(f"{k} {v}")
    return ", ".join(parts)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="tiny models and batches (no accelerator needed)")
    p.add_argument("--out", default="runs/accelerator", help="folder for accelerator.json")
    p.add_argument("--budget-s", type=float, default=450.0,
                   help="seconds for the whole check; sections that would start later are skipped")
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"some of {', '.join(SECTIONS)}")
    p.add_argument("--no-timm", action="store_true", help="leave out the timm side")
    p.add_argument("--timm-python", help="a Python with torch and timm (default: this one)")
    p.add_argument("--worker", nargs=2, metavar=("KIND", "SPEC"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        kind, spec = args.worker
        print(json.dumps({"vistas_step": vistas_step, "shapefind_batch": shapefind_batch}[kind](json.loads(spec))))
        return 0
    wanted = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = [s for s in wanted if s not in SECTIONS]
    if unknown:
        p.error(f"--sections: {', '.join(unknown)} not known; use some of {', '.join(SECTIONS)}")
    if not args.no_timm and not args.timm_python and _missing("torch", "timm"):
        args.no_timm = True
        print("torch or timm is not installed here: the timm side is left out")
    check = Check(args)
    sz = sizes(args)
    check.results["sizes"] = {k: v for k, v in sz.items() if k != "models"}
    runners = {"throughput": section_throughput, "shapefind": section_shapefind,
               "memory": section_memory, "block": section_block, "resume": section_resume}
    for section in SECTIONS:
        if section not in wanted:
            continue
        if check.left() < 20:
            check.results["skipped"][section] = "the time budget (--budget-s) was spent"
            continue
        print(f"[{time.perf_counter() - check.start:6.1f} s] {section}", flush=True)
        runners[section](check, sz)
    check.save()
    print(table(check.results))
    print(f"written: {check.out / 'accelerator.json'} ({check.results['elapsed_s']} s)")
    errors = [f"{s}: {k}" for s, e in check.results["sections"].items() for k, v in e.items()
              if isinstance(v, dict) and v.get("error") and v.get("fits") is not False]
    if errors:
        print("failed measurements: " + "; ".join(errors))
    return 1 if errors else 0


def _missing(*modules: str) -> bool:
    import importlib.util

    return any(importlib.util.find_spec(m) is None for m in modules)


if __name__ == "__main__":
    sys.exit(main())
