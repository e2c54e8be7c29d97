"""A trained run for serving (``vistas export RUN DST``, docs/serving.md).

- ``stablehlo``: the model's inference function ``images -> logits`` as a serialized
  :mod:`jax.export` artifact. The parameters are baked into it as constants: the file is
  self-contained, and serving it is ``jax.export.deserialize(blob).call(images)`` with
  nothing else to load (the price: the file holds the weights, and one serialized export
  holds at most 2 GiB). ``images`` is float32 ``[b, H, W, C]``, preprocessed as the run's
  evaluation does (resized to the run's image size, in ``data.value_range``), with a
  symbolic batch dimension ``b``: any batch size runs. Every family (ViT, NFNet, BiT).
- ``safetensors``: the weights in timm's ``VisionTransformer`` layout (ViTs only), written
  by :mod:`vistas.models.interop.timm`, which ``vistas convert`` uses too.

Both use the run's EMA parameters when it keeps them (``train.ema_decay > 0``; ``ema=False``
for the trained ones), as ``vistas predict`` does, and write beside ``DST`` a ``DST.json``
describing the input, the output and the class names.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vistas import runs
from vistas.errors import ConfigError, VistasError
from vistas.files import advice, atomic_write

FORMATS = ("stablehlo", "safetensors")
PLATFORMS = ("cpu", "cuda", "rocm", "tpu")
SUFFIXES = {".safetensors": "safetensors", ".stablehlo": "stablehlo"}
MAX_STABLEHLO_BYTES = 2**31 - 2**26  # a serialized export is one flatbuffer (< 2 GiB), with room for the code


def format_for(dst: str | pathlib.Path) -> str:
    """The format a destination's name asks for: ``.safetensors`` or ``.stablehlo``."""
    fmt = SUFFIXES.get(pathlib.Path(dst).suffix)
    if fmt is None:
        raise ConfigError(f"cannot tell the format to write from {pathlib.Path(dst).name!r}: pass "
                          "--format stablehlo|safetensors, or name it .stablehlo or .safetensors")
    return fmt


def parse_platforms(text: str | Sequence[str] | None) -> tuple[str, ...]:
    """``"cpu,cuda"`` -> ``("cpu", "cuda")``; None: the platform JAX runs on here."""
    if text is None:
        backend = jax.default_backend()
        return ("cuda" if backend == "gpu" else backend,)
    names = [p.strip().lower() for p in (text.split(",") if isinstance(text, str) else text) if p.strip()]
    bad = [p for p in names if p not in PLATFORMS]
    if bad or not names:
        raise ConfigError(f"platforms {text!r}: use a comma-separated list of {', '.join(PLATFORMS)}")
    return tuple(dict.fromkeys(names))


def _family(cfg: Any) -> str:
    return cfg.model.name.partition("-")[0].lower()


def _load(workdir: pathlib.Path, *, step: int | None, ema: bool | None, platforms: tuple[str, ...] | None):
    """``(cfg, graphdef, rest, params, step, key)``: the run's model and the chosen parameters
    (``key``: ``params`` or ``ema_params``) as NumPy arrays. With ``platforms`` (a function
    export) a ViT is built to compute attention without cuDNN's fused kernel (a custom call
    that serialized exports do not keep) and in the compute dtype ``model.dtype`` stands for
    on the first target platform."""
    from vistas.models import vit

    cfg = runs.load_config(workdir)
    use_ema = bool(cfg.train.ema_decay) if ema is None else ema
    if use_ema and not cfg.train.ema_decay:
        raise ConfigError(f"{workdir} keeps no EMA parameters (train.ema_decay=0); export without EMA")
    if platforms and _family(cfg) == "vit":
        if cfg.model.attention in ("auto", "cudnn"):
            cfg.model.attention = "recompute"  # what "auto" computes off GPUs, in plain JAX ops
        cfg.model.dtype = vit.resolve_dtype(cfg.model.dtype, platforms[0])
    key = "ema_params" if use_ema else "params"
    cfg, graphdef, rest, params, found = runs.model_params(workdir, step, key=key, cfg=cfg)
    params = jax.tree.map(np.asarray, jax.device_get(params))
    return cfg, graphdef, rest, params, found, key


def _inference(graphdef: Any, rest: Any, params: Any):
    """``images -> float32 logits`` with ``params`` closed over (constants when exported)."""
    def logits(images: jax.Array) -> jax.Array:
        out, _ = nnx.merge(graphdef, jax.tree.map(jnp.asarray, params), rest)(images)
        return out.astype(jnp.float32)

    return logits


def _nbytes(tree: Any) -> int:
    return sum(np.asarray(x).nbytes for x in jax.tree.leaves(tree))


def export(workdir: str | pathlib.Path, dst: str | pathlib.Path, *, fmt: str | None = None,
           step: int | None = None, ema: bool | None = None,
           platforms: str | Sequence[str] | None = None) -> dict[str, Any]:
    """Writes the run in ``workdir`` to ``dst`` as ``fmt`` (``stablehlo`` or ``safetensors``;
    default: from ``dst``'s name) and ``dst.json``; returns what ``dst.json`` holds."""
    workdir, dst = pathlib.Path(workdir), pathlib.Path(dst)
    fmt = fmt or format_for(dst)
    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}; use one of {', '.join(FORMATS)}")
    targets = parse_platforms(platforms)
    if fmt == "safetensors" and platforms is not None:
        raise ConfigError("--platforms is for --format stablehlo; safetensors holds weights only")
    cfg = runs.load_config(workdir)  # a missing run is one line before anything is built
    if fmt == "safetensors" and _family(cfg) != "vit":
        raise ConfigError(f"{workdir} holds a {cfg.model.name} run: --format safetensors writes timm's "
                          "ViT layout, for ViTs only; export NFNets and BiT ResNets with --format stablehlo")
    cfg, graphdef, rest, params, found, key = _load(workdir, step=step, ema=ema,
                                                    platforms=targets if fmt == "stablehlo" else None)
    d = cfg.data
    h = w = d.image_size
    info: dict[str, Any] = {
        "run": str(workdir), "format": fmt, "file": dst.name, "model": cfg.model.name, "step": found,
        "weights": "ema" if key == "ema_params" else "trained",
        "input": {"name": "images", "shape": ["b", h, w, d.channels], "dtype": "float32", "layout": "NHWC",
                  "value_range": list(d.value_range), "eval_crop_fraction": d.eval_crop_fraction},
        "output": {"name": "logits", "shape": ["b", None], "dtype": "float32",  # classes: below
                   "activation": "sigmoid" if cfg.train.loss == "sigmoid_xent" else "softmax"},
        "classes": runs.class_names(workdir),
    }
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise VistasError(f"cannot write in {dst.parent}: {e.strerror or e}; {advice(e)}") from None
    if fmt == "stablehlo":
        info.update(_write_stablehlo(dst, cfg, graphdef, rest, params, (h, w, d.channels), targets))
    else:
        info.update(_write_safetensors(dst, graphdef, rest, params))
    info["output"]["shape"][1] = info.pop("num_classes")
    atomic_write(dst.with_name(dst.name + ".json"), json.dumps(info, indent=2) + "\n")
    return info


def _write_stablehlo(dst: pathlib.Path, cfg: Any, graphdef: Any, rest: Any, params: Any,
                     hwc: tuple[int, int, int], platforms: tuple[str, ...]) -> dict[str, Any]:
    size = _nbytes(params)
    if size > MAX_STABLEHLO_BYTES:
        raise ConfigError(f"{cfg.model.name} has {size / 2**30:.2f} GiB of parameters; a stablehlo export "
                          "bakes them in and holds at most 2 GiB; export --format safetensors (ViTs) instead")
    h, w, c = hwc
    (b,) = jax.export.symbolic_shape("b")
    spec = jax.ShapeDtypeStruct((b, h, w, c), jnp.float32)
    fn = jax.jit(_inference(graphdef, rest, params))
    try:
        exported = jax.export.export(fn, platforms=platforms)(spec)
    except (ValueError, TypeError, NotImplementedError) as e:  # e.g. a shape the batch dim cannot take
        raise VistasError(f"cannot export {cfg.model.name} with a symbolic batch dimension: "
                          f"{str(e).splitlines()[0]}") from None
    try:
        blob = exported.serialize()
    except ImportError as e:  # jax serializes with flatbuffers, a dependency of vistas, not of jax
        raise VistasError(f"cannot serialize the export: {str(e).splitlines()[0]} (pip install "
                          "'flatbuffers>=25.12.19,<26', which vistas depends on)") from None
    atomic_write(dst, bytes(blob))
    num_classes = int(exported.out_avals[0].shape[-1])
    return {"platforms": list(exported.platforms), "bytes": len(blob), "num_classes": num_classes,
            "jax": jax.__version__, "calling_convention_version": exported.calling_convention_version}


def _write_safetensors(dst: pathlib.Path, graphdef: Any, rest: Any, params: Any) -> dict[str, Any]:
    from vistas.models import interop

    vit_cfg = nnx.merge(graphdef, params, rest).cfg  # the ViT's config: what timm's args come from
    interop.save(dst, params, vit_cfg, "timm")
    return {"layout": "timm", "num_classes": vit_cfg.num_classes, "bytes": dst.stat().st_size}


__all__ = ["FORMATS", "export", "format_for", "parse_platforms"]
