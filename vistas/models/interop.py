"""ViT checkpoints in the wild: big_vision ``.npz`` and timm ``.safetensors``, both ways.

- ``read(path)`` returns a :class:`Checkpoint`: the parameters renamed into vistas' layout
  (NumPy arrays) and the :class:`~vistas.models.vit.ViTConfig` inferred from their shapes
  (or stored with them). It reads big_vision files (``params/...`` keys or bare ones; the
  ``encoderblock_N`` and the scanned ``encoderblock`` layouts; class-token, GAP and MAP
  heads; ``pre_logits``; the older layouts big_vision itself still loads), timm
  ``VisionTransformer`` state dicts in ``.safetensors`` (through the ``safetensors`` NumPy
  API), vistas' own ``.npz`` files, and run directories written by ``vistas train``.
- ``load_params(source, model)`` fills a model's parameters from any of those: scanned or
  unscanned, fused or unfused, another image size (the learned position embedding is
  resampled bilinearly, non-square grids included), optionally a new head.
- ``save(path, params, cfg, fmt)`` writes ``big_vision``, ``timm`` or ``vistas`` files;
  ``convert`` (``vistas convert SRC DST``) chains the two.

Differences that would change the function are errors naming the key (and shape), never
silently dropped: e.g. timm's LayerScale, register tokens or LayerNorm after pooling, or a
ViT-22B parallel block written as big_vision or timm (which have none).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import re
import zipfile
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vistas.errors import ConfigError, VistasError
from vistas.models import adapt, vit

FORMATS = ("big_vision", "timm", "vistas")
_VISTAS_META = "__vistas__"

# big_vision module names -> vistas names, inside an encoder block and inside the MAP head.
_BV_BLOCK = {"LayerNorm_0": "norm1", "LayerNorm_1": "norm2", "MultiHeadDotProductAttention_0": "attn",
             "MlpBlock_0/Dense_0": "mlp/fc1", "MlpBlock_0/Dense_1": "mlp/fc2"}
_BV_MAP = {"probe": "probe", "MultiHeadDotProductAttention_0": "attn", "LayerNorm_0": "norm",
           "MlpBlock_0/Dense_0": "mlp/fc1", "MlpBlock_0/Dense_1": "mlp/fc2"}


@dataclasses.dataclass
class Checkpoint:
    """Parameters in vistas' layout (nested dict of NumPy arrays) and the model they fit."""

    params: dict
    cfg: vit.ViTConfig
    format: str
    path: str

    @property
    def name(self) -> str:
        return describe(self.cfg)


def describe(cfg: vit.ViTConfig) -> str:
    """``vit-B/16`` when the sizes are a named variant's, else ``vit-<width>x<depth>/<patch>``."""
    sizes = (cfg.width, cfg.depth, cfg.mlp_dim, cfg.num_heads)
    for name, known in vit.SIZES.items():
        if known == sizes:
            return f"vit-{name}/{cfg.patch}"
    return f"vit-{cfg.width}x{cfg.depth}/{cfg.patch}"


def _count(params: Mapping) -> int:
    return sum(int(np.prod(np.shape(x))) for x in adapt.flatten(params).values())


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
        try:
            with np.load(p, allow_pickle=False) as z:
                return "vistas" if _VISTAS_META in z.files else "big_vision"
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
            raise VistasError(f"cannot read {p} as .npz: {e}") from None
    raise VistasError(f"cannot tell the format of {p}: expected a .npz (big_vision or vistas), "
                      ".safetensors (timm) file or a run directory")


def _read_npz(path: pathlib.Path) -> dict[str, np.ndarray]:
    import ml_dtypes

    try:
        with np.load(path, allow_pickle=False) as z:
            flat = {k: z[k] for k in z.files}
    except (OSError, ValueError) as e:
        raise VistasError(f"cannot read {path} as .npz: {e}") from e
    for k, v in flat.items():
        if v.dtype == np.dtype("V2"):  # bfloat16 as big_vision writes it
            flat[k] = v.view(ml_dtypes.bfloat16)
    return flat


def _nest(flat: Mapping[str, Any]) -> dict:
    tree: dict = {}
    for key, value in flat.items():
        node = tree
        *parents, leaf = key.split("/")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


def _renumber(flat: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Pre-linen module names (one counter for all modules of a parent, e.g. ``LayerNorm_0,
    MultiHeadDotProductAttention_1, LayerNorm_2, MlpBlock_3``) -> one counter per module type.

    Names already numbered per type are unchanged.
    """
    children: dict[tuple[str, ...], set[str]] = {}
    for key in flat:
        parts = key.split("/")
        for i, part in enumerate(parts[:-1]):
            children.setdefault(tuple(parts[:i]), set()).add(part)
    rename: dict[tuple[tuple[str, ...], str], str] = {}
    for parent, names in children.items():
        by_type: dict[str, list[tuple[int, str]]] = {}
        for name in names:
            if m := re.fullmatch(r"(.+)_(\d+)", name):
                by_type.setdefault(m.group(1), []).append((int(m.group(2)), name))
        for typ, numbered in by_type.items():
            for rank, (_, name) in enumerate(sorted(numbered)):
                rename[(parent, name)] = f"{typ}_{rank}"
    out = {}
    for key, value in flat.items():
        parts = key.split("/")
        new = [rename.get((tuple(parts[:i]), part), part) if i < len(parts) - 1 else part
               for i, part in enumerate(parts)]
        out["/".join(new)] = value
    return out


def _fix_old_big_vision(flat: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Layouts of older big_vision / vision_transformer checkpoints, as big_vision loads them."""
    flat = _renumber(flat)
    for old in ("Transformer/posembed_input/pos_embedding", "Transformer/pos_embedding"):
        if old in flat:
            flat["pos_embedding"] = flat.pop(old)
    pe = flat.get("pos_embedding")
    if pe is not None and "cls" in flat:
        n = pe.shape[1]
        side = int(round(np.sqrt(n - 1)))
        if side * side == n - 1 and int(round(np.sqrt(n))) ** 2 != n:  # [cls] + square grid
            flat["cls"] = flat["cls"] + pe[:, :1]
            flat["pos_embedding"] = pe[:, 1:]
    for inlined in ("probe", "MlpBlock_0", "MultiHeadDotProductAttention_0", "LayerNorm_0"):
        for k in [k for k in flat if k == inlined or k.startswith(inlined + "/")]:
            flat["MAPHead_0/" + k] = flat.pop(k)
    return flat


def _sub(mapping: Mapping[str, str], rest: str, key: str, path: Any) -> str:
    for src, dst in mapping.items():
        if rest == src or rest.startswith(src + "/"):
            return dst + rest[len(src):]
    raise ConfigError(f"{path}: big_vision key {key!r} is not part of a ViT that vistas can load")


def from_big_vision(flat: Mapping[str, np.ndarray], path: Any = "checkpoint") -> dict:
    """Flat big_vision keys (``params/...`` or bare) -> vistas' nested parameters."""
    if any(k.startswith("params/") for k in flat):
        flat = {k[len("params/"):]: v for k, v in flat.items() if k.startswith("params/")}
    elif any(k.startswith("opt/target/") for k in flat):
        flat = {k[len("opt/target/"):]: v for k, v in flat.items() if k.startswith("opt/target/")}
    flat = _fix_old_big_vision(dict(flat))
    out: dict[str, np.ndarray] = {}
    for key, value in flat.items():
        if key in ("pos_embedding", "cls") or re.fullmatch(r"(embedding|head|pre_logits)/(kernel|bias)", key):
            new = key
        elif key.startswith("Transformer/encoder_norm/"):
            new = "encoder/norm/" + key.rsplit("/", 1)[1]
        elif m := re.fullmatch(r"Transformer/encoderblock_(\d+)/(.+)", key):
            new = f"encoder/block{int(m.group(1)):02d}/" + _sub(_BV_BLOCK, m.group(2), key, path)
        elif m := re.fullmatch(r"Transformer/encoderblock/(.+)", key):
            new = "encoder/blocks/" + _sub(_BV_BLOCK, m.group(1), key, path)
        elif m := re.fullmatch(r"MAPHead_0/(.+)", key):
            new = "map_head/" + _sub(_BV_MAP, m.group(1), key, path)
        else:
            raise ConfigError(f"{path}: big_vision key {key!r} is not part of a ViT that vistas can load")
        out[new] = np.asarray(value)
    if "embedding/kernel" not in out:
        raise ConfigError(f"{path} holds no 'embedding/kernel': not a big_vision ViT checkpoint")
    return _nest(out)


def _t(w: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(w).T)


def from_timm(sd: Mapping[str, np.ndarray], num_heads: int, path: Any = "checkpoint", *,
              no_embed_class: bool | None = None) -> dict:
    """A timm ``VisionTransformer`` state dict (standard block) -> vistas' nested parameters.

    ``no_embed_class``: whether ``pos_embed`` lacks the class token's slot (timm's option of
    that name); when not given it is told from the token count (a square grid plus one).
    """
    sd = dict(sd)
    out: dict[str, np.ndarray] = {}

    def take(key: str) -> np.ndarray:
        return np.asarray(sd.pop(key))

    def linear(prefix: str, dst: str) -> None:
        out[f"{dst}/kernel"] = _t(take(f"{prefix}.weight"))
        if f"{prefix}.bias" in sd:
            out[f"{dst}/bias"] = take(f"{prefix}.bias")

    def norm(prefix: str, dst: str) -> None:
        out[f"{dst}/scale"] = take(f"{prefix}.weight")
        if f"{prefix}.bias" in sd:
            out[f"{dst}/bias"] = take(f"{prefix}.bias")

    def heads(w: np.ndarray) -> np.ndarray:  # [D_in, H*Dh] -> [D_in, H, Dh]
        return w.reshape(w.shape[0], num_heads, -1)

    if "patch_embed.proj.weight" not in sd:
        raise ConfigError(f"{path} holds no 'patch_embed.proj.weight': not a timm ViT state dict")
    out["embedding/kernel"] = np.ascontiguousarray(take("patch_embed.proj.weight").transpose(2, 3, 1, 0))
    out["embedding/bias"] = take("patch_embed.proj.bias")
    width = out["embedding/bias"].shape[0]
    if width % num_heads:
        raise ConfigError(f"{path}: width {width} is not divisible into {num_heads} heads; give the "
                          "variant whose sizes these are (--model)")
    pe = take("pos_embed") if "pos_embed" in sd else None
    if "cls_token" in sd:
        cls = take("cls_token")
        if pe is not None:
            if no_embed_class is None:
                n = pe.shape[1]
                no_embed_class = int(round(np.sqrt(n - 1))) ** 2 != n - 1
            if not no_embed_class:  # timm adds the class token's own embedding: fold it in
                cls, pe = cls + pe[:, :1], pe[:, 1:]
        out["cls"] = cls
    if pe is not None:
        out["pos_embedding"] = pe
    depth = 1 + max((int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))), default=-1)
    for i in range(depth):
        b, dst = f"blocks.{i}", f"encoder/block{i:02d}"
        norm(f"{b}.norm1", f"{dst}/norm1")
        qkv = take(f"{b}.attn.qkv.weight")  # [3D, D]
        for j, name in enumerate(("query", "key", "value")):
            out[f"{dst}/attn/{name}/kernel"] = heads(_t(qkv[j * width:(j + 1) * width]))
        if f"{b}.attn.qkv.bias" in sd:
            qkv_b = take(f"{b}.attn.qkv.bias")
            for j, name in enumerate(("query", "key", "value")):
                out[f"{dst}/attn/{name}/bias"] = qkv_b[j * width:(j + 1) * width].reshape(num_heads, -1)
        for name, timm_name in (("query_norm", "q_norm"), ("key_norm", "k_norm")):
            if f"{b}.attn.{timm_name}.weight" in sd:
                norm(f"{b}.attn.{timm_name}", f"{dst}/attn/{name}")
        proj = _t(take(f"{b}.attn.proj.weight"))  # [H*Dh, D]
        out[f"{dst}/attn/out/kernel"] = proj.reshape(num_heads, -1, proj.shape[-1])
        out[f"{dst}/attn/out/bias"] = take(f"{b}.attn.proj.bias")
        norm(f"{b}.norm2", f"{dst}/norm2")
        linear(f"{b}.mlp.fc1", f"{dst}/mlp/fc1")
        linear(f"{b}.mlp.fc2", f"{dst}/mlp/fc2")
    if "norm.weight" in sd:
        norm("norm", "encoder/norm")
    if "attn_pool.latent" in sd:
        latent = take("attn_pool.latent")
        if latent.shape[1] != 1:
            raise ConfigError(f"{path}: 'attn_pool.latent' has {latent.shape[1]} latents; vistas' MAP "
                              "head has one probe")
        out["map_head/probe"] = latent
        linear("attn_pool.q", "map_head/attn/query")
        out["map_head/attn/query/kernel"] = heads(out["map_head/attn/query/kernel"])
        if "map_head/attn/query/bias" in out:
            out["map_head/attn/query/bias"] = out["map_head/attn/query/bias"].reshape(num_heads, -1)
        kv = take("attn_pool.kv.weight")
        kv_b = take("attn_pool.kv.bias") if "attn_pool.kv.bias" in sd else None
        for j, name in enumerate(("key", "value")):
            out[f"map_head/attn/{name}/kernel"] = heads(_t(kv[j * width:(j + 1) * width]))
            if kv_b is not None:
                out[f"map_head/attn/{name}/bias"] = kv_b[j * width:(j + 1) * width].reshape(num_heads, -1)
        proj = _t(take("attn_pool.proj.weight"))
        out["map_head/attn/out/kernel"] = proj.reshape(num_heads, -1, proj.shape[-1])
        out["map_head/attn/out/bias"] = take("attn_pool.proj.bias")
        norm("attn_pool.norm", "map_head/norm")
        linear("attn_pool.mlp.fc1", "map_head/mlp/fc1")
        linear("attn_pool.mlp.fc2", "map_head/mlp/fc2")
    if "head.weight" in sd:
        linear("head", "head")
    if sd:
        key = sorted(sd)[0]
        why = {"fc_norm": " (a LayerNorm after pooling, which vistas' ViT does not have)",
               "ls1": " (LayerScale)", "ls2": " (LayerScale)", "reg_token": " (register tokens)",
               "norm_pre": " (a LayerNorm before the blocks)"}
        hint = next((v for k, v in why.items() if k in key), "")
        raise ConfigError(f"{path}: timm key {key!r}{hint} has no counterpart in vistas' ViT"
                          + (f" (and {len(sd) - 1} more)" if len(sd) > 1 else ""))
    return _nest(out)


def _heads_for_width(width: int, path: Any) -> int:
    for w, _, _, h in vit.SIZES.values():
        if w == width:
            return h
    raise ConfigError(f"{path}: cannot tell the number of heads of a width-{width} ViT from its "
                      "weights; give the variant (--model, e.g. vit-B/16)")


def _image_size(grid_tokens: int, patch: int, hint: Any, path: Any) -> Any:
    """The image size of a position embedding: ``hint`` if its grid has that many tokens,
    else the square grid's."""
    if hint is not None:
        h, w = (hint, hint) if isinstance(hint, int) else tuple(hint)
        if (h // patch) * (w // patch) == grid_tokens:
            return hint if isinstance(hint, int) else (int(h), int(w))
    side = int(round(np.sqrt(grid_tokens)))
    if side * side != grid_tokens:
        raise ConfigError(f"{path}: position embedding of {grid_tokens} tokens is not a square grid; "
                          "give the image size it was trained at (--image-size HxW)")
    return side * patch


def infer_config(params: Mapping, *, num_heads: int | None = None, image_size: Any = None,
                 path: Any = "checkpoint", **options: Any) -> vit.ViTConfig:
    """The ViTConfig whose parameters have the shapes of ``params`` (vistas layout).

    The number of heads is read from the attention kernels (or QK-norm scales) when they
    show it; ``image_size`` defaults to the square grid of the position embedding (224 for
    sincos models); ``options`` (e.g. ``gelu``) are passed on.
    """
    p, _, channels, width = np.shape(params["embedding"]["kernel"])
    enc = params["encoder"]
    if "blocks" in enc:
        depth = int(np.shape(jax.tree.leaves(enc["blocks"])[0])[0])
        block = jax.tree.map(lambda x: np.asarray(x)[0], enc["blocks"])
    else:
        names = [k for k in enc if k.startswith("block") and k[5:].isdigit()]
        depth, block = len(names), enc[min(names)] if names else {}
    if not block:
        raise ConfigError(f"{path} holds no encoder blocks")
    fused = "in_proj" in block
    attn = block if fused else block["attn"]
    qk_norm = "query_norm" in attn
    norm = block.get("norm1", block.get("norm"))
    if fused:
        total = np.shape(block["in_proj"]["kernel"])[-1]
        mlp_dim = total - 3 * width
        qkv_bias = np.shape(block["in_proj"]["bias"])[-1] == total
    else:
        mlp_dim = np.shape(block["mlp"]["fc1"]["kernel"])[-1]
        qkv_bias = "bias" in attn["query"]
        num_heads = num_heads or np.shape(attn["query"]["kernel"])[1]
    if num_heads is None and qk_norm:
        num_heads = width // np.shape(attn["query_norm"]["scale"])[-1]
    num_heads = num_heads or _heads_for_width(width, path)
    pool = "map" if "map_head" in params else "tok" if "cls" in params else "gap"
    if "pos_embedding" in params:
        posemb = "learn"
        image_size = _image_size(np.shape(params["pos_embedding"])[1], p, image_size, path)
    else:
        posemb, image_size = "sincos2d", image_size or 224
    head = params.get("head", {})
    kwargs = dict(
        patch=int(p), width=int(width), depth=depth, mlp_dim=int(mlp_dim), num_heads=int(num_heads),
        image_size=image_size, channels=int(channels), pool=pool, posemb=posemb,
        num_classes=int(np.shape(head["kernel"])[-1]) if "kernel" in head else 0,
        representation_size=(int(np.shape(params["pre_logits"]["kernel"])[-1])
                             if "pre_logits" in params else None),
        parallel="norm" in block, fused=fused, qk_norm=qk_norm, qkv_bias=bool(qkv_bias),
        norm_bias="bias" in norm, scan="blocks" in enc,
    )
    kwargs.update(options)
    return vit.ViTConfig(**kwargs)


def _config_from_json(text: str) -> vit.ViTConfig:
    d = json.loads(text)
    if isinstance(d.get("image_size"), list):
        d["image_size"] = tuple(d["image_size"])
    fields = {f.name for f in dataclasses.fields(vit.ViTConfig)}
    return vit.ViTConfig(**{k: v for k, v in d.items() if k in fields})


def _config_json(cfg: vit.ViTConfig) -> str:
    return json.dumps(dataclasses.asdict(cfg), sort_keys=True)


def _variant(model: str) -> tuple[int, int, int, int, int]:
    """``vit-B/16`` or ``B/16`` -> (patch, width, depth, mlp_dim, num_heads)."""
    variant = model.split("-", 1)[1] if model.lower().startswith("vit-") else model
    size, patch = vit.parse_variant(variant)
    return (patch, *vit.SIZES[size])


def _with_variant(cfg: vit.ViTConfig, model: str | None) -> vit.ViTConfig:
    """Sizes and heads of the variant ``model`` over ``cfg``'s."""
    if not model:
        return cfg
    patch, width, depth, mlp_dim, num_heads = _variant(model)
    return dataclasses.replace(cfg, patch=patch, width=width, depth=depth, mlp_dim=mlp_dim,
                               num_heads=num_heads)


def read(path: str | pathlib.Path, *, model: str | None = None, image_size: Any = None) -> Checkpoint:
    """Reads any supported checkpoint (see the module docstring) into vistas' layout.

    ``model`` (``vit-B/16``) gives what the weights cannot show, e.g. the number of heads of
    a timm file; ``image_size`` the image size of a non-square position embedding.
    """
    path = pathlib.Path(path)
    fmt = detect_format(path)
    if fmt == "run":
        from vistas.train import loop

        exp, state_params, _ = loop.final_params(path)
        params = jax.tree.map(np.asarray, jax.device_get(state_params))
        cfg = getattr(exp.model, "cfg", None)
        if not isinstance(cfg, vit.ViTConfig):
            raise ConfigError(f"{path} holds a {exp.cfg.model.name} run; only ViTs can be converted")
        return Checkpoint(params, _with_variant(cfg, model), "run", str(path))
    if fmt == "vistas":
        flat = _read_npz(path)
        cfg = _config_from_json(str(flat.pop(_VISTAS_META)))
        return Checkpoint(_nest(flat), _with_variant(cfg, model), fmt, str(path))
    if fmt == "big_vision":
        params = from_big_vision(_read_npz(path), path)  # its kernels show the number of heads
        cfg = infer_config(params, image_size=image_size, path=path, gelu="tanh")
        return Checkpoint(params, _with_variant(cfg, model), fmt, str(path))
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
        sd = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise VistasError(f"cannot read {path} as .safetensors: {e}") from e
    if _VISTAS_META in meta:  # written by vistas: the exact config
        cfg = _with_variant(_config_from_json(meta[_VISTAS_META]), model)
        return Checkpoint(from_timm(sd, cfg.num_heads, path), dataclasses.replace(cfg, scan=False),
                          fmt, str(path))
    args = json.loads(meta.get("timm_model_args", "{}"))
    width = int(np.shape(sd["patch_embed.proj.weight"])[0]) if "patch_embed.proj.weight" in sd else 0
    heads = args.get("num_heads")
    if model:
        heads = _variant(model)[4]
    elif heads is None and "blocks.0.attn.q_norm.weight" in sd:
        heads = width // int(np.shape(sd["blocks.0.attn.q_norm.weight"])[0])
    heads = heads or _heads_for_width(width, path)
    if args.get("global_pool") == "avg" and args.get("class_token", True) and "cls_token" in sd:
        raise ConfigError(f"{path}: timm model averages tokens but has a class token; vistas' "
                          "pools are a class token, an average without one, or MAP")
    gelu = "tanh" if args.get("act_layer") in ("gelu_tanh", "gelu_pytorch_tanh") else "exact"
    params = from_timm(sd, heads, path, no_embed_class=args.get("no_embed_class"))
    cfg = infer_config(params, num_heads=heads, image_size=image_size or args.get("img_size"),
                       path=path, gelu=gelu)
    return Checkpoint(params, _with_variant(cfg, model), fmt, str(path))


# ----------------------------------------------------------------------------------------
# Loading into a model


def model_params(model: nnx.Module) -> dict:
    return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def _concrete(tree: Any) -> Any:
    """Zeros for the leaves of an abstract model (``nnx.eval_shape``): shapes and dtypes."""
    return jax.tree.map(lambda t: np.zeros(t.shape, t.dtype) if isinstance(t, jax.ShapeDtypeStruct) else t,
                        tree)


def load_params(source: str | pathlib.Path | Checkpoint, model: nnx.Module, *,
                reset_head: bool = False) -> dict:
    """``model``'s parameters filled from ``source`` (a path or a :class:`Checkpoint`).

    Converts between scanned/unscanned and fused/unfused layouts, resamples a learned
    position embedding to ``model``'s patch grid, and with ``reset_head`` keeps ``model``'s
    own head where the checkpoint's has another number of classes (or none). Anything
    else that differs is a one-line :class:`ConfigError` naming the parameter and shapes.
    ``model`` may be abstract (``nnx.eval_shape``): no weights need to be initialised.
    """
    ckpt = source if isinstance(source, Checkpoint) else read(source, image_size=_hw(model))
    target = _concrete(model_params(model))
    params = vit.convert_layout(ckpt.params, target)
    target_grid = getattr(getattr(model, "cfg", None), "grid", None)
    return adapt.adapt_params(params, target, reset_head=reset_head, target_grid=target_grid,
                              source_grid=ckpt.cfg.grid if ckpt.cfg.posemb == "learn" else None)


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
               **options: Any) -> nnx.Module:
    """A ``VisionTransformer`` built from a checkpoint's config (``options`` override it,
    e.g. ``image_size=384`` or ``scan=True``) with the checkpoint's weights."""
    ckpt = path if isinstance(path, Checkpoint) else read(path, model=model)
    cfg = dataclasses.replace(ckpt.cfg, **options)
    new_head = cfg.num_classes != ckpt.cfg.num_classes

    net = nnx.eval_shape(lambda: vit.VisionTransformer(cfg, rngs=nnx.Rngs(0)))
    if new_head:  # the only weights to initialise
        net.reset_head(cfg.num_classes, rngs=nnx.Rngs(0))
    return assign(net, load_params(ckpt, net, reset_head=new_head))


def _adapt_to(ckpt: Checkpoint, cfg: vit.ViTConfig) -> dict:
    """``ckpt``'s parameters for a model of ``cfg`` without initialising that model."""
    abstract = nnx.eval_shape(lambda: vit.VisionTransformer(cfg, rngs=nnx.Rngs(0)))
    target = _concrete(model_params(abstract))
    params = vit.convert_layout(ckpt.params, target)
    return adapt.adapt_params(params, target, reset_head=False, target_grid=cfg.grid,
                              source_grid=ckpt.cfg.grid if ckpt.cfg.posemb == "learn" else None)


# ----------------------------------------------------------------------------------------
# Writing


def _f32(x: Any) -> np.ndarray:
    return np.asarray(x, dtype=np.float32)


def _require(cfg: vit.ViTConfig, fmt: str, **unsupported: bool) -> None:
    for what, bad in unsupported.items():
        if bad:
            raise ConfigError(f"{fmt}'s ViT has no {what.replace('_', ' ')}; this model cannot be "
                              f"written as {fmt} (write it with --to vistas)")


def to_big_vision(params: Mapping, cfg: vit.ViTConfig, *, scan: bool | None = None) -> dict[str, np.ndarray]:
    """vistas parameters -> flat big_vision keys (``params/...``)."""
    _require(cfg, "big_vision", parallel_block=cfg.parallel, qk_norm=cfg.qk_norm,
             bias_free_qkv=not cfg.qkv_bias, bias_free_layernorm=not cfg.norm_bias)
    scan = cfg.scan if scan is None else scan
    params = vit.stack_blocks(params) if scan else vit.unstack_blocks(params)
    inv_block = {v: k for k, v in _BV_BLOCK.items()}
    inv_map = {v: k for k, v in _BV_MAP.items()}
    out: dict[str, np.ndarray] = {}
    for key, value in adapt.flatten(params).items():
        if m := re.fullmatch(r"encoder/block(\d+)/(.+)", key):
            new = f"Transformer/encoderblock_{int(m.group(1))}/" + _sub(inv_block, m.group(2), key, "model")
        elif m := re.fullmatch(r"encoder/blocks/(.+)", key):
            new = "Transformer/encoderblock/" + _sub(inv_block, m.group(1), key, "model")
        elif key.startswith("encoder/norm/"):
            new = "Transformer/encoder_norm/" + key.rsplit("/", 1)[1]
        elif m := re.fullmatch(r"map_head/(.+)", key):
            new = "MAPHead_0/" + _sub(inv_map, m.group(1), key, "model")
        else:
            new = key
        if np.size(value):
            out["params/" + new] = _f32(value)
    return out


def to_timm(params: Mapping, cfg: vit.ViTConfig) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """vistas parameters -> a timm ``VisionTransformer`` state dict and its constructor args."""
    _require(cfg, "timm", parallel_block=cfg.parallel, bias_free_layernorm=not cfg.norm_bias,
             pre_logits_layer=bool(cfg.representation_size))
    flat = adapt.flatten(vit.unstack_blocks(params))
    d, h = cfg.width, cfg.num_heads
    sd: dict[str, np.ndarray] = {}

    def linear(src: str, dst: str) -> None:
        sd[f"{dst}.weight"] = _t(_f32(flat[f"{src}/kernel"]).reshape(-1, np.shape(flat[f"{src}/kernel"])[-1]))
        if f"{src}/bias" in flat:
            sd[f"{dst}.bias"] = _f32(flat[f"{src}/bias"]).reshape(-1)

    def norm(src: str, dst: str) -> None:
        sd[f"{dst}.weight"] = _f32(flat[f"{src}/scale"])
        sd[f"{dst}.bias"] = _f32(flat[f"{src}/bias"])

    def qkv_weight(src: str, names: tuple[str, ...]) -> np.ndarray:
        return np.concatenate([_f32(flat[f"{src}/{n}/kernel"]).reshape(d, -1).T for n in names])

    def qkv_bias(src: str, names: tuple[str, ...]) -> np.ndarray | None:
        if f"{src}/{names[0]}/bias" not in flat:
            return None
        return np.concatenate([_f32(flat[f"{src}/{n}/bias"]).reshape(-1) for n in names])

    sd["patch_embed.proj.weight"] = np.ascontiguousarray(_f32(flat["embedding/kernel"]).transpose(3, 2, 0, 1))
    sd["patch_embed.proj.bias"] = _f32(flat["embedding/bias"])
    pe = _f32(flat["pos_embedding"]) if cfg.posemb == "learn" else np.asarray(vit.posemb_sincos_2d(cfg.grid, d))
    if cfg.pool == "tok":
        sd["cls_token"] = _f32(flat["cls"])
        pe = np.concatenate([np.zeros((1, 1, d), np.float32), pe], axis=1)
    sd["pos_embed"] = np.ascontiguousarray(pe)
    for i in range(cfg.depth):
        src, dst = f"encoder/block{i:02d}", f"blocks.{i}"
        norm(f"{src}/norm1", f"{dst}.norm1")
        sd[f"{dst}.attn.qkv.weight"] = qkv_weight(f"{src}/attn", ("query", "key", "value"))
        if (b := qkv_bias(f"{src}/attn", ("query", "key", "value"))) is not None:
            sd[f"{dst}.attn.qkv.bias"] = b
        if cfg.qk_norm:
            norm(f"{src}/attn/query_norm", f"{dst}.attn.q_norm")
            norm(f"{src}/attn/key_norm", f"{dst}.attn.k_norm")
        linear(f"{src}/attn/out", f"{dst}.attn.proj")
        norm(f"{src}/norm2", f"{dst}.norm2")
        linear(f"{src}/mlp/fc1", f"{dst}.mlp.fc1")
        linear(f"{src}/mlp/fc2", f"{dst}.mlp.fc2")
    norm("encoder/norm", "norm")
    if cfg.pool == "map":
        if cfg.qk_norm:
            raise ConfigError("timm's attention pooling has no QK-norm here; write this model "
                              "with --to vistas")
        sd["attn_pool.latent"] = _f32(flat["map_head/probe"])
        sd["attn_pool.q.weight"] = qkv_weight("map_head/attn", ("query",))
        sd["attn_pool.kv.weight"] = qkv_weight("map_head/attn", ("key", "value"))
        if (b := qkv_bias("map_head/attn", ("query",))) is not None:
            sd["attn_pool.q.bias"] = b
            sd["attn_pool.kv.bias"] = qkv_bias("map_head/attn", ("key", "value"))
        linear("map_head/attn/out", "attn_pool.proj")
        norm("map_head/norm", "attn_pool.norm")
        linear("map_head/mlp/fc1", "attn_pool.mlp.fc1")
        linear("map_head/mlp/fc2", "attn_pool.mlp.fc2")
    if cfg.num_classes:
        linear("head", "head")
    args = dict(
        img_size=list(cfg.image_hw), patch_size=cfg.patch, in_chans=cfg.channels,
        num_classes=cfg.num_classes, embed_dim=d, depth=cfg.depth, num_heads=h,
        mlp_ratio=cfg.mlp_dim / d, qkv_bias=cfg.qkv_bias, qk_norm=cfg.qk_norm,
        class_token=cfg.pool == "tok", no_embed_class=False, fc_norm=False,
        global_pool={"tok": "token", "gap": "avg", "map": "map"}[cfg.pool],
        act_layer="gelu_tanh" if cfg.gelu == "tanh" else "gelu",
    )
    return sd, args


def to_vistas(params: Mapping, cfg: vit.ViTConfig) -> dict[str, np.ndarray]:
    flat = {k: np.asarray(v) for k, v in adapt.flatten(params).items()}
    flat[_VISTAS_META] = np.asarray(_config_json(cfg))
    return flat


def save(path: str | pathlib.Path, params: Mapping, cfg: vit.ViTConfig, fmt: str, *,
         scan: bool | None = None) -> pathlib.Path:
    """Writes ``params`` of a model of ``cfg`` as ``fmt`` (``big_vision``, ``timm``, ``vistas``).

    The file is written next to ``path`` and renamed into place when complete.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"unknown checkpoint format {fmt!r}; use one of {', '.join(FORMATS)}")
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    params = jax.tree.map(np.asarray, jax.device_get(dict(params)))
    if fmt == "timm":
        from safetensors.numpy import save_file

        sd, args = to_timm(params, cfg)
        meta = {"format": "pt", "timm_model_args": json.dumps(args), _VISTAS_META: _config_json(cfg)}
        # safetensors writes the memory of each array as it is: make it C-ordered.
        save_file({k: np.ascontiguousarray(v) for k, v in sd.items()}, str(tmp), metadata=meta)
    else:
        if fmt == "big_vision":
            flat = to_big_vision(params, cfg, scan=scan)
        else:
            if scan is not None and scan != cfg.scan:
                params = vit.stack_blocks(params) if scan else vit.unstack_blocks(params)
                cfg = dataclasses.replace(cfg, scan=scan)
            flat = to_vistas(params, cfg)
        with open(tmp, "wb") as f:
            np.savez(f, **flat)
    tmp.replace(path)
    return path


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
            model: str | None = None, image_size: Any = None, scan: bool | None = None) -> dict:
    """Reads ``src`` (any supported checkpoint), optionally changes the image size (the
    position embedding is resampled), and writes ``dst``; returns a summary."""
    fmt = to or format_for(dst)
    if fmt not in FORMATS:
        raise ConfigError(f"unknown checkpoint format {fmt!r}; use one of {', '.join(FORMATS)}")
    image_size = parse_image_size(image_size)
    ckpt = read(src, model=model, image_size=image_size)
    cfg = ckpt.cfg
    if image_size is not None:
        cfg = dataclasses.replace(cfg, image_size=image_size)
    params = _adapt_to(ckpt, cfg)  # also checks every shape against the config
    save(dst, params, cfg, fmt, scan=scan)
    return {"src": str(src), "src_format": ckpt.format, "dst": str(dst), "dst_format": fmt,
            "model": describe(cfg), "params": _count(params), "src_image_size": ckpt.cfg.image_size,
            "image_size": cfg.image_size, "pool": cfg.pool, "num_classes": cfg.num_classes}
