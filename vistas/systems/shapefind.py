"""Shapefinder: what fits on a device, predicted from the compiled program, nothing allocated.

"Scaling Vision Transformers" found the shapes that fit by trial and error. Here the train
step of a configuration is lowered and compiled for a (simulated) device mesh with abstract
parameters and batch (``jax.ShapeDtypeStruct``: no weights exist), and XLA's memory analysis
of the per-device program gives its footprint:

- parameters and optimizer state per device, from their placement (``vistas.systems.sharding``);
- the batch, the step's outputs and the temporaries (activations kept for the backward pass
  and the scratch of every op) from ``compiled.memory_analysis()``.

Peak per device ≈ arguments + outputs − donated (aliased) buffers + temporaries. Memory is
affine in the batch size, so ``find_batch`` compiles two batch sizes, solves for the largest
that fits the budget and confirms it with one more compile (stepping down if it does not).
The encoder is compiled with ``scan`` over its layers, so compile time does not grow with
depth. The figures are those of the program XLA builds for THIS backend: on a CPU host they
predict a GPU's or TPU's footprint only approximately (fusion and scheduling differ).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import jax

from vistas import config as config_lib
from vistas.config import Config
from vistas.errors import ConfigError
from vistas.systems import flops, sharding
from vistas.systems import mesh as mesh_lib

GIB = 2**30
# Memory per device (bytes) of the accelerators the papers and users train on.
DEVICE_MEMORY = {
    "h100": 80 * 10**9,
    "h200": 141 * 10**9,
    "a100-80g": 80 * 10**9,
    "a100-40g": 40 * 10**9,
    "tpu-v4": 32 * GIB,
    "tpu-v5e": 16 * GIB,
    "tpu-v5p": 95 * GIB,
}
VIT_LADDER = ("Ti", "S", "M", "B", "L", "H", "g", "G", "e", "22B")


@dataclasses.dataclass(frozen=True)
class StepMemory:
    """Bytes per device of one compiled train step."""

    batch_per_device: int
    params: int
    optimizer: int  # the rest of the train state: optimizer state, EMA, step, RNG
    batch: int
    temporaries: int  # activations saved for the backward pass and every op's scratch
    peak: int  # arguments + outputs - donated + temporaries

    def row(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), **{f"{k}_gib": getattr(self, k) / GIB for k in
                                              ("params", "optimizer", "batch", "temporaries", "peak")}}


def compile_step(cfg: Config, num_classes: int, mesh: Any, global_batch: int) -> tuple[Any, Any, Any]:
    """``(compiled, state, specs)``: the train step compiled for ``mesh`` with the state
    placed by ``cfg.mesh.rules`` and the batch split over the batch axes (donated state)."""
    train_step, state, batch = flops.abstract_step(cfg, num_classes, global_batch)
    specs = sharding.state_specs(state, state["params"], mesh, cfg.mesh.rules)
    placement = sharding.to_shardings(specs, mesh)
    batch_sharding = {k: mesh_lib.batch_sharded(mesh) for k in batch}
    jitted = jax.jit(train_step, in_shardings=(placement, batch_sharding),
                     out_shardings=(placement, None), donate_argnums=(0,))
    with jax.set_mesh(mesh):
        return jitted.lower(state, batch).compile(), state, specs


def step_memory(cfg: Config, num_classes: int, mesh: Any, batch_per_device: int) -> StepMemory:
    """Per-device memory of the train step at ``batch_per_device`` examples per device."""
    shards = mesh_lib.batch_shards(mesh)
    compiled, state, specs = compile_step(cfg, num_classes, mesh, batch_per_device * shards)
    analysis = compiled.memory_analysis()
    if analysis is None:
        raise ConfigError(f"the {jax.default_backend()} backend gives no memory analysis; "
                          "run vistas shapefind on CPU (it simulates the devices)")
    params = sharding.bytes_per_device(state["params"], specs["params"], mesh)
    whole = sharding.bytes_per_device(state, specs, mesh)
    peak = (analysis.argument_size_in_bytes + analysis.output_size_in_bytes
            - analysis.alias_size_in_bytes + analysis.temp_size_in_bytes)
    return StepMemory(batch_per_device, params, whole - params,
                      analysis.argument_size_in_bytes - whole, analysis.temp_size_in_bytes, peak)


@dataclasses.dataclass
class Search:
    """The answer of ``find_batch``: the largest batch per device that fits, and every
    compile it took to find it."""

    budget: int
    batch_per_device: int  # 0: not even one example fits
    tried: list[StepMemory]

    @property
    def fits(self) -> StepMemory | None:
        ok = [m for m in self.tried if m.peak <= self.budget]
        return max(ok, key=lambda m: m.batch_per_device) if ok else None


def find_batch(cfg: Config, num_classes: int, mesh: Any, budget: int, *, probe: int = 8,
               max_batch: int = 65536) -> Search:
    """The largest batch per device whose step fits ``budget`` bytes: two compiles fix the
    affine law ``peak(b) = fixed + b·per_example``, a third confirms its answer. Where the
    answer does not fit (memory grows faster than the small probes showed, as XLA changes
    its fusion and layouts with the batch), the law is refitted through the answer and the
    largest batch known to fit, and the search steps down along it until one fits."""
    tried = [step_memory(cfg, num_classes, mesh, probe), step_memory(cfg, num_classes, mesh, 2 * probe)]
    a, b = tried
    per_example = max(1, (b.peak - a.peak) / probe)
    fixed = a.peak - per_example * probe
    guess = int(min(max_batch, math.floor((budget - fixed) / per_example)))
    known = {m.batch_per_device: m for m in tried}
    while guess >= 1:
        m = known.get(guess) or step_memory(cfg, num_classes, mesh, guess)
        if guess not in known:
            tried.append(m)
            known[guess] = m
        if m.peak <= budget:
            return Search(budget, guess, tried)
        fits = [k for k, v in known.items() if v.peak <= budget and k < guess]
        ref = known[max(fits)] if fits else None
        if ref is None:  # nothing known to fit: the law through the smallest probe
            slope = (m.peak - a.peak) / max(1, guess - a.batch_per_device)
            step_down = int(math.floor(guess - (m.peak - budget) / max(1.0, slope)))
        else:  # secant between the largest fit and this miss
            slope = (m.peak - ref.peak) / (guess - ref.batch_per_device)
            step_down = int(math.floor(ref.batch_per_device + (budget - ref.peak) / max(1.0, slope)))
        guess = min(guess - 1, step_down)
    return Search(budget, 0, tried)


def shapefind_config(model: str, *, image_size: int = 224, channels: int = 3,
                     optimizer: str = "adam", remat: str | None = None, dtype: str | None = None,
                     mesh: dict[str, int] | None = None, overrides: Sequence[str] = ()) -> Config:
    """A training config for shape finding: ``model`` with ``scan`` on, the optimizer
    ``NAME[,key=value...]`` (``vistas optim-memory``'s syntax), remat policy and compute
    dtype, mesh sizes, then any ``--set`` overrides."""
    from vistas.optim import memory

    name, optim_sets = memory.parse_optimizer(optimizer)
    sets = [f"model.name={model}", "model.scan=True", f"data.image_size={image_size}",
            f"data.channels={channels}", f"optim.name={name}", *optim_sets]
    if remat is not None:
        sets.append(f"model.remat={remat}")
    if dtype is not None:
        sets.append(f"model.dtype={dtype}")
    for axis, size in (mesh or {}).items():
        sets.append(f"mesh.{axis}={size}")
    cfg = config_lib.apply_overrides(Config(), [*sets, *overrides])
    config_lib.validate(cfg)
    return cfg


def parse_mesh(text: str | None) -> dict[str, int]:
    """``"data=2,fsdp=4,model=1"`` -> sizes (unnamed axes: data -1, fsdp 1, model 1)."""
    sizes: dict[str, int] = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        axis, eq, value = part.partition("=")
        axis = axis.strip()
        if not eq or axis not in sharding.AXES:
            raise ConfigError(f"--mesh part {part!r} is not AXIS=SIZE with AXIS one of {', '.join(sharding.AXES)}")
        try:
            sizes[axis] = int(value)
        except ValueError:
            raise ConfigError(f"--mesh {axis}={value!r} is not an integer") from None
    return sizes


def mesh_devices(sizes: dict[str, int]) -> int:
    """How many devices a mesh of explicit ``sizes`` needs (1 when an axis is -1 and the rest fit)."""
    return math.prod(s for s in sizes.values() if s > 0)


def budget_bytes(device: str | None, budget: int | None, headroom: float) -> int:
    if budget is not None:
        if budget <= 0:
            raise ConfigError(f"--budget-bytes={budget} must be positive")
        return budget
    if device not in DEVICE_MEMORY:
        raise ConfigError(f"--device={device!r} is not known; use one of {', '.join(DEVICE_MEMORY)} "
                          "or --budget-bytes N")
    if not 0 < headroom <= 1:
        raise ConfigError(f"--headroom={headroom} must be in (0, 1]")
    return int(DEVICE_MEMORY[device] * headroom)


def ladder(model: str) -> list[str]:
    """ViT variants from ``model``'s size upwards with its patch size, e.g. vit-B/16 ->
    [vit-B/16, vit-L/16, ... vit-22B/16]."""
    family, _, rest = model.partition("-")
    size, slash, patch = rest.partition("/")
    if family != "vit" or size not in VIT_LADDER or not slash:
        raise ConfigError(f"--diagonal needs a ViT name such as vit-B/16; got {model!r}")
    return [f"vit-{s}/{patch}" for s in VIT_LADDER[VIT_LADDER.index(size):]]


def _row(model: str, m: StepMemory, budget: int) -> dict[str, Any]:
    return {"model": model, **m.row(), "budget": budget, "fits": m.peak <= budget}


def run(model: str, *, device: str | None = "h100", budget: int | None = None, headroom: float = 0.9,
        mesh: dict[str, int] | None = None, optimizer: str = "adam", remat: str | None = None,
        dtype: str | None = None, image_size: int = 224, num_classes: int = 1000,
        batch: int | None = None, diagonal: bool = False, overrides: Sequence[str] = (),
        probe: int = 8) -> dict[str, Any]:
    """What ``vistas shapefind`` answers, as a dict: the largest batch per device of
    ``model`` (or, with ``diagonal``, the largest ViT of the ladder at ``batch``) within the
    device's memory, and the memory breakdown of every candidate compiled."""
    limit = budget_bytes(device, budget, headroom)
    if dtype is None and device is not None:
        dtype = "bfloat16"  # what model.dtype="auto" computes in on an accelerator
    if diagonal and batch is None:
        raise ConfigError("--diagonal needs --batch (the batch per device to fit)")

    def config_of(name: str) -> Config:
        return shapefind_config(name, image_size=image_size, optimizer=optimizer, remat=remat,
                                dtype=dtype, mesh=mesh, overrides=overrides)

    cfg = config_of(model)
    mesh_obj = sharding.mesh_from_config(cfg.mesh)
    answer: dict[str, Any] = {"device": device, "budget": limit, "mesh": dict(mesh_obj.shape),
                              "optimizer": optimizer, "remat": cfg.model.remat, "dtype": cfg.model.dtype}
    if diagonal:
        rows, largest = [], None
        for name in ladder(model):
            m = step_memory(config_of(name), num_classes, mesh_obj, batch)
            rows.append(_row(name, m, limit))
            if m.peak > limit:
                break
            largest = name
        return {**answer, "batch_per_device": batch, "largest_model": largest, "candidates": rows}
    if batch is not None:
        m = step_memory(cfg, num_classes, mesh_obj, batch)
        return {**answer, "model": model, "batch_per_device": batch if m.peak <= limit else None,
                "candidates": [_row(model, m, limit)]}
    found = find_batch(cfg, num_classes, mesh_obj, limit, probe=probe)
    return {**answer, "model": model, "batch_per_device": found.batch_per_device,
            "candidates": [_row(model, m, limit) for m in found.tried]}


def format_answer(answer: dict[str, Any]) -> str:
    """The table ``vistas shapefind`` prints."""
    gib = answer["budget"] / GIB
    lines = [f"device {answer['device'] or '-'}: budget {gib:.2f} GiB per device; mesh {answer['mesh']}; "
             f"optimizer {answer['optimizer']}; remat {answer['remat']}; compute dtype {answer['dtype']}",
             f"{'model':<14} {'batch/dev':>9} {'params':>9} {'optimizer':>9} {'temps':>9} {'peak':>9}  fits",
             ]
    for r in answer["candidates"]:
        lines.append(f"{r['model']:<14} {r['batch_per_device']:>9} {r['params_gib']:>8.2f}G "
                     f"{r['optimizer_gib']:>8.2f}G {r['temporaries_gib']:>8.2f}G {r['peak_gib']:>8.2f}G  "
                     f"{'yes' if r['fits'] else 'no'}")
    if "largest_model" in answer:
        lines.append(f"largest model at batch {answer['batch_per_device']} per device: "
                     f"{answer['largest_model'] or 'none fits'}")
    else:
        b = answer["batch_per_device"]
        lines.append(f"largest batch per device for {answer['model']}: {b if b else 'none fits'}")
    return "\n".join(lines)


__all__ = ["DEVICE_MEMORY", "Search", "StepMemory", "budget_bytes", "compile_step",
           "find_batch", "format_answer", "ladder", "parse_mesh", "run", "shapefind_config",
           "step_memory"]
