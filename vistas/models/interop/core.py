"""The public entry points of :mod:`vistas.models.interop`: reading any supported checkpoint
(``read``, telling the format with ``detect_format``), loading it into a model of any layout
and resolution (``load_params``, ``load_model``, ``assign``), writing one (``save``,
``export``) and ``convert`` (``vistas convert SRC DST``), which chains the two.

The foreign formats are :mod:`~vistas.models.interop.big_vision` and
:mod:`~vistas.models.interop.timm`; vistas' own (``.vistas.npz``: the flat parameters and the
config as JSON) and ``vistas train`` run directories are read here.
"""

from __future__ import annotations

import dataclasses
import pathlib
import zipfile
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vistas.errors import ConfigError, VistasError
from vistas.files import advice, atomic_path
from vistas.models import adapt, vit
from vistas.models.interop import base, big_vision, hub, timm
from vistas.models.interop.base import Checkpoint, describe

FORMATS = ("big_vision", "timm", "vistas")

# ----------------------------------------------------------------------------------------
# Reading


def detect_format(path: str | pathlib.Path) -> str:
    """``big_vision``, ``timm``, ``vistas`` (file) or ``run`` (a ``vistas train`` directory)."""
    p = pathlib.Path(path)
    if p.is_dir():
        if (p / "config.json").exists():
            return "run"
        raise VistasError(f"{p} is a directory without config.json, not a vistas run")
    if not p.exists():
        raise VistasError(f"checkpoint {p} does not exist")
    if p.suffix == ".safetensors":
        return "timm"
    if p.suffix == ".npz":
        if (why := base.npz_problem(p)) is not None:
            raise VistasError(f"{p} is not a readable .npz archive ({why})")
        try:
            with np.load(p, allow_pickle=False) as z:
                return "vistas" if base.VISTAS_META in z.files else "big_vision"
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
            raise VistasError(f"cannot read {p} as .npz: {e}") from None
    raise VistasError(f"cannot tell the format of {p}: expected a .npz (big_vision or vistas), "
                      ".safetensors (timm) file or a run directory")


def read(path: str | pathlib.Path, *, model: str | None = None, image_size: Any = None,
         global_pool: str | None = None) -> Checkpoint:
    """Reads any supported checkpoint (see :mod:`vistas.models.interop`) into vistas' layout:
    a path, or a Hugging Face Hub id ``hf-hub:ORG/NAME`` (:mod:`~vistas.models.interop.hub`).

    ``model`` (``vit-B/16``) gives what the weights cannot show, e.g. the number of heads of
    a timm file; ``image_size`` the image size of a non-square position embedding;
    ``global_pool`` (timm's name: ``token``, ``avg`` or ``map``) how a timm file's model
    pools when the file does not say and its weights cannot show it.
    """
    pool = global_pool
    if pool is not None and pool not in timm.POOLS:
        raise ConfigError(f"unknown global_pool {pool!r}; use one of {', '.join(timm.POOLS)} (timm's names)")
    source = path
    path = hub.resolve(path) if hub.is_hub_id(path) else pathlib.Path(path)
    ckpt = _read(path, model=model, image_size=image_size, pool=pool)
    if pool is not None and ckpt.cfg.pool != timm.POOLS[pool]:
        raise ConfigError(f"{source}: its model pools by {ckpt.cfg.pool!r} (vistas' name), not as "
                          f"global_pool={pool!r} says")
    return ckpt


def _read(path: pathlib.Path, *, model: str | None, image_size: Any, pool: str | None) -> Checkpoint:
    fmt = detect_format(path)
    if fmt == "run":
        from vistas import runs  # a run's experiment builds models: imported only for runs

        exp, state_params, _ = runs.final_params(path)
        params = jax.tree.map(np.asarray, jax.device_get(state_params))
        cfg = getattr(exp.model, "cfg", None)
        if not isinstance(cfg, vit.ViTConfig):
            raise ConfigError(f"{path} holds a {exp.cfg.model.name} run; only ViTs can be converted")
        return Checkpoint(params, base.with_variant(cfg, model), "run", str(path))
    if fmt == "vistas":
        flat = base.read_npz(path)
        try:
            cfg = base.config_from_json(str(flat.pop(base.VISTAS_META)))
        except (ValueError, TypeError) as e:
            raise ConfigError(f"{path}: its config ({base.VISTAS_META!r}) is damaged ({e})") from None
        params = base.nest(flat)
        base.check_complete(params, cfg, path)
        return Checkpoint(params, base.with_variant(cfg, model), fmt, str(path))
    if fmt == "big_vision":
        return big_vision.read(path, model=model, image_size=image_size)
    return timm.read(path, model=model, image_size=image_size, pool=pool)


# ----------------------------------------------------------------------------------------
# Loading into a model


def model_params(model: nnx.Module) -> dict:
    return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def _concrete(tree: Any) -> Any:
    """Zeros for the leaves of an abstract model (``nnx.eval_shape``): shapes and dtypes."""
    return jax.tree.map(lambda t: np.zeros(t.shape, t.dtype) if isinstance(t, jax.ShapeDtypeStruct) else t,
                        tree)


def default_resample(fmt: str) -> str:
    """How a checkpoint of format ``fmt`` changes resolution in its own framework: big_vision
    files as big_vision does, timm files as timm does, vistas files and runs as vistas does
    (``adapt.RESAMPLES``)."""
    return fmt if fmt in ("big_vision", "timm") else "vistas"


def load_params(source: str | pathlib.Path | Checkpoint, model: nnx.Module, *,
                reset_head: bool = False, resample: str | None = None,
                global_pool: str | None = None) -> dict:
    """``model``'s parameters filled from ``source`` (a path or a :class:`Checkpoint`).

    Converts between scanned/unscanned and fused/unfused layouts, resamples a learned
    position embedding to ``model``'s patch grid (``resample``: ``vistas``, ``big_vision``
    or ``timm``'s convention; default the checkpoint's own framework's, see
    :func:`default_resample`), and with ``reset_head`` keeps ``model``'s own head where the
    checkpoint's has another number of classes (or none). Anything else that differs is a
    one-line :class:`ConfigError` naming the parameter and shapes. ``model`` may be
    abstract (``nnx.eval_shape``): no weights need to be initialised. ``global_pool``: see
    :func:`read`.
    """
    if resample is not None:
        adapt.check_resample(resample)
    ckpt = source if isinstance(source, Checkpoint) else read(source, image_size=_hw(model),
                                                              global_pool=global_pool)
    target = _concrete(model_params(model))
    params = vit.convert_layout(ckpt.params, target)
    target_grid = getattr(getattr(model, "cfg", None), "grid", None)
    return adapt.adapt_params(params, target, reset_head=reset_head, target_grid=target_grid,
                              source_grid=ckpt.cfg.grid if ckpt.cfg.posemb == "learn" else None,
                              resample=resample or default_resample(ckpt.format))


def _hw(model: nnx.Module) -> Any:
    """Image size to assume for a checkpoint whose grid does not tell it: the model's."""
    cfg = getattr(model, "cfg", None)
    return getattr(cfg, "image_size", None)


def assign(model: nnx.Module, params: Mapping) -> nnx.Module:
    """Writes a nested parameter dict into ``model`` (in place, abstract models too) and
    returns it."""
    state = nnx.state(model, nnx.Param)
    nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, dict(params)))
    nnx.update(model, state)
    return model


def load_model(path: str | pathlib.Path | Checkpoint, *, model: str | None = None,
               resample: str | None = None, global_pool: str | None = None, **options: Any) -> nnx.Module:
    """A ``VisionTransformer`` built from a checkpoint's config (``options`` override it,
    e.g. ``image_size=384``, ``scan=True`` or ``gelu="tanh"``) with the checkpoint's weights
    (``resample``: see :func:`load_params`; ``global_pool``: see :func:`read`)."""
    if resample is not None:
        adapt.check_resample(resample)
    ckpt = path if isinstance(path, Checkpoint) else read(path, model=model, global_pool=global_pool)
    cfg = dataclasses.replace(ckpt.cfg, **options)
    new_head = cfg.num_classes != ckpt.cfg.num_classes

    net = nnx.eval_shape(lambda: vit.VisionTransformer(cfg, rngs=nnx.Rngs(0)))
    if new_head:  # the only weights to initialise
        net.reset_head(cfg.num_classes, rngs=nnx.Rngs(0))
    return assign(net, load_params(ckpt, net, reset_head=new_head, resample=resample))


def _adapt_to(ckpt: Checkpoint, cfg: vit.ViTConfig, resample: str) -> dict:
    """``ckpt``'s parameters for a model of ``cfg`` without initialising that model."""
    abstract = nnx.eval_shape(lambda: vit.VisionTransformer(cfg, rngs=nnx.Rngs(0)))
    target = _concrete(model_params(abstract))
    params = vit.convert_layout(ckpt.params, target)
    return adapt.adapt_params(params, target, reset_head=False, target_grid=cfg.grid,
                              source_grid=ckpt.cfg.grid if ckpt.cfg.posemb == "learn" else None,
                              resample=resample)


# ----------------------------------------------------------------------------------------
# Writing


def to_vistas(params: Mapping, cfg: vit.ViTConfig) -> dict[str, np.ndarray]:
    """vistas parameters -> the flat keys of a ``.vistas.npz``, with the config as JSON."""
    flat = {k: np.asarray(v) for k, v in adapt.flatten(params).items()}
    flat[base.VISTAS_META] = np.asarray(base.config_json(cfg))
    return flat


def save(path: str | pathlib.Path, params: Mapping, cfg: vit.ViTConfig, fmt: str, *,
         scan: bool | None = None) -> pathlib.Path:
    """Writes ``params`` of a model of ``cfg`` as ``fmt`` (``big_vision``, ``timm``, ``vistas``).

    The file is written next to ``path`` and renamed into place when complete.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"unknown checkpoint format {fmt!r}; use one of {', '.join(FORMATS)}")
    path = pathlib.Path(path)
    check_destination(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise VistasError(f"cannot write {path}: cannot create the folder {path.parent}: "
                          f"{e.strerror or e}; {advice(e)}") from None
    params = jax.tree.map(np.asarray, jax.device_get(dict(params)))
    with atomic_path(path) as tmp:
        if fmt == "timm":
            timm.write(tmp, params, cfg)
        elif fmt == "big_vision":
            big_vision.write(tmp, params, cfg, scan=scan)
        else:
            if scan is not None and scan != cfg.scan:
                params = vit.stack_blocks(params) if scan else vit.unstack_blocks(params)
                cfg = dataclasses.replace(cfg, scan=scan)
            with open(tmp, "wb") as f:
                np.savez(f, **to_vistas(params, cfg))
    return path


def check_destination(path: str | pathlib.Path) -> None:
    """One line, before anything is read or written, for a destination that cannot be a
    file: a folder, or a path below a regular file. (Permissions and space are found by
    the write itself, whose failure is one line too.)"""
    path = pathlib.Path(path)
    if path.is_dir():
        raise VistasError(f"cannot write {path}: {path} is a folder; name the file to write")
    for parent in path.parents:
        if parent.exists() or parent.is_symlink():
            if not parent.is_dir():
                raise VistasError(f"cannot write {path}: {parent} is a file, not a folder")
            return


def export(model: nnx.Module, path: str | pathlib.Path, fmt: str | None = None) -> pathlib.Path:
    """Writes a ``VisionTransformer``'s weights; the format defaults from the file name."""
    return save(path, model_params(model), model.cfg, fmt or format_for(path))


def format_for(path: str | pathlib.Path) -> str:
    """``timm`` for ``.safetensors``, ``vistas`` for ``.vistas.npz``, ``big_vision`` for ``.npz``."""
    name = pathlib.Path(path).name
    if name.endswith(".safetensors"):
        return "timm"
    if name.endswith(".vistas.npz"):
        return "vistas"
    if name.endswith(".npz"):
        return "big_vision"
    raise ConfigError(f"cannot tell the format to write from {name!r}: name it .npz (big_vision), "
                      ".vistas.npz (vistas) or .safetensors (timm), or pass --to")


def parse_image_size(text: str | int | None) -> Any:
    """``"384"`` -> 384, ``"224x320"`` -> (224, 320) (height x width)."""
    if text is None or isinstance(text, int):
        return text
    parts = str(text).lower().split("x")
    if not 1 <= len(parts) <= 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise ConfigError(f"image size {text!r} must be N or HxW with positive integers, e.g. 384 or 224x320")
    return int(parts[0]) if len(parts) == 1 else (int(parts[0]), int(parts[1]))


def convert(src: str | pathlib.Path, dst: str | pathlib.Path, *, to: str | None = None,
            model: str | None = None, image_size: Any = None, scan: bool | None = None,
            resample: str | None = None, gelu: str | None = None,
            global_pool: str | None = None) -> dict:
    """Reads ``src`` (any supported checkpoint), optionally changes the image size (the
    position embedding is resampled as ``resample`` says, by default as the checkpoint's
    own framework does: :func:`default_resample`) and the GELU recorded for the weights
    (``tanh`` or ``exact``: a file may not say which its model was trained with), and writes
    ``dst``; returns a summary. ``src`` may be a Hugging Face Hub id (``hf-hub:ORG/NAME``);
    ``global_pool``: see :func:`read`."""
    check_destination(dst)
    fmt = to or format_for(dst)
    if fmt not in FORMATS:
        raise ConfigError(f"unknown checkpoint format {fmt!r}; use one of {', '.join(FORMATS)}")
    if resample is not None:
        adapt.check_resample(resample)
    if gelu is not None and gelu not in vit.GELUS:
        raise ConfigError(f"unknown GELU {gelu!r}; use one of {', '.join(vit.GELUS)}")
    image_size = parse_image_size(image_size)
    ckpt = read(src, model=model, image_size=image_size, global_pool=global_pool)
    cfg = ckpt.cfg
    if image_size is not None:
        cfg = dataclasses.replace(cfg, image_size=image_size)
    if gelu is not None:
        cfg = dataclasses.replace(cfg, gelu=gelu)
    resample = resample or default_resample(ckpt.format)
    try:
        params = _adapt_to(ckpt, cfg, resample)  # also checks every shape against the config
    except ConfigError as e:  # e.g. --model with other sizes than the file's
        raise ConfigError(f"{src}: {e}" + (f" (--model {model})" if model else "")) from None
    save(dst, params, cfg, fmt, scan=scan)
    return {"src": str(src), "src_format": ckpt.format, "dst": str(dst), "dst_format": fmt,
            "model": describe(cfg), "params": base.count(params), "src_image_size": ckpt.cfg.image_size,
            "image_size": cfg.image_size, "pool": cfg.pool, "num_classes": cfg.num_classes,
            "resample": resample if cfg.grid != ckpt.cfg.grid and cfg.posemb == "learn" else None,
            "gelu": cfg.gelu, "fc_norm": cfg.fc_norm, "reg_tokens": cfg.reg_tokens,
            "layer_scale": cfg.init_values is not None}

