"""What every checkpoint format shares: the :class:`Checkpoint` (parameters in vistas'
layout and the :class:`~vistas.models.vit.ViTConfig` they fit), the config inferred from
parameter shapes or stored as JSON, and small helpers on flat ``a/b/c`` keys and arrays.

Nothing here knows a foreign format; ``big_vision`` and ``timm`` build on it, and ``core``
(the public entry points) on all three.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import zipfile
import zlib
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np

from vistas.errors import ConfigError, VistasError
from vistas.models import adapt, vit

VISTAS_META = "__vistas__"  # the key (npz) or metadata entry (safetensors) of vistas' config


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


def count(params: Mapping) -> int:
    return sum(int(np.prod(np.shape(x))) for x in adapt.flatten(params).values())


def npz_problem(path: pathlib.Path) -> str | None:
    """Why ``path`` is not a ``.npz`` archive (NumPy takes any other file for a pickle, and
    says so), or None when it is a zip file."""
    try:
        with open(path, "rb") as f:
            head = f.read(6)
    except OSError as e:
        return e.strerror or str(e)
    if zipfile.is_zipfile(path):
        return None
    if not head:
        return "the file is empty"
    return ("a NumPy .npy file, not an archive of them" if head == b"\x93NUMPY"
            else "not a zip file: cut short, or another kind of file")


def read_npz(path: pathlib.Path) -> dict[str, np.ndarray]:
    import ml_dtypes

    if (why := npz_problem(path)) is not None:
        raise VistasError(f"{path} is not a readable .npz archive ({why})")
    flat = {}
    try:
        with np.load(path, allow_pickle=False) as z:
            for k in z.files:
                flat[k] = z[k]
                if not isinstance(flat[k], np.ndarray):  # a zip member without NumPy's header
                    raise VistasError(f"{path} is not a readable .npz archive (member {k!r} is not "
                                      "a NumPy array)")
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise VistasError(f"cannot read {path} as .npz: {e}") from e
    for k, v in flat.items():
        if v.dtype == np.dtype("V2"):  # bfloat16 as big_vision writes it
            flat[k] = v.view(ml_dtypes.bfloat16)
    return flat


Native = Callable[[str], str]  # a vistas parameter name -> the file's own name for it


def _names(keys: list[str], native: Native | None) -> list[str]:
    """The file's names of ``keys``, each once (timm stores query, key and value in one)."""
    out: list[str] = []
    for k in keys:
        name = native(k) if native else k
        if name not in out:
            out.append(name)
    return out


def incomplete(path: Any, keys: list[str], native: Native | None = None, need: str = "") -> str:
    """The one line for a checkpoint lacking the parameters ``keys`` (vistas names)."""
    names = _names(keys, native)
    more = f" (and {len(names) - 1} more)" if len(names) > 1 else ""
    return (f"{path} is incomplete: it lacks the parameter {names[0]!r}{need}{more}; it is damaged, "
            "cut short or not a whole ViT checkpoint")


def _at(tree: Any, key: str, path: Any, native: Native | None, prefix: str = "") -> Any:
    """``tree[a][b][c]`` for ``key`` "a/b/c"; a missing one is named (as ``prefix + key``)."""
    node = tree
    for part in key.split("/"):
        if not isinstance(node, Mapping) or part not in node:
            raise ConfigError(incomplete(path, [prefix + key], native))
        node = node[part]
    return node


def _companions(extra: list[str], have: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(missing, present) pairs that explain parameters a config has no place for: a bias
    without its kernel (a head whose kernel is gone looks like no head), or a block holding
    what another block lacks (the config is read off the first block)."""
    found: list[tuple[str, str]] = []
    blocks = sorted({k.split("/")[1] for k in have if k.startswith("encoder/block") and k.count("/") > 1})
    for key in extra:
        parent, _, leaf = key.rpartition("/")
        if leaf == "bias" and parent and f"{parent}/kernel" not in have and f"{parent}/scale" not in have:
            found.append((f"{parent}/kernel", key))
        parts = key.split("/")
        if len(parts) > 2 and parts[0] == "encoder" and parts[1] in blocks:
            rest = "/".join(parts[2:])
            found += [(f"encoder/{b}/{rest}", key) for b in blocks if f"encoder/{b}/{rest}" not in have]
    return found


def check_complete(params: Mapping, cfg: vit.ViTConfig, path: Any, native: Native | None = None) -> None:
    """That ``params`` are every parameter of a model of ``cfg``, with its shapes: a file
    lacking some (cut short, edited, or saved from part of a model) is one line naming the
    first missing one in the file's own names, before anything is converted or loaded."""
    from flax import nnx

    abstract = nnx.eval_shape(lambda: vit.VisionTransformer(cfg, rngs=nnx.Rngs(0)))
    target = adapt.flatten(nnx.to_pure_dict(nnx.state(abstract, nnx.Param)))
    have = adapt.flatten(params)
    model = describe(cfg)
    missing = sorted(k for k in target if k not in have)
    extra = sorted(k for k in have if k not in target)
    if missing:
        raise ConfigError(incomplete(path, missing, native, f", which a {model} needs"))
    if extra:
        if pairs := _companions(extra, have):
            present = pairs[0][1]
            name = native(present) if native else present
            raise ConfigError(incomplete(path, [m for m, _ in pairs], native, f" (it has {name!r})"))
        names = _names(extra, native)
        raise ConfigError(f"{path}: parameter {names[0]!r} has no place in a {model}"
                          + (f" (and {len(names) - 1} more)" if len(names) > 1 else ""))
    for key, t in target.items():
        shape, want = tuple(np.shape(have[key])), tuple(t.shape)
        if shape != want:
            name = native(key) if native else key
            raise ConfigError(f"{path}: parameter {name!r} has shape {list(shape)}, but the rest of the "
                              f"file is a {model}, which needs {list(want)}; the file is damaged or mixed")


def nest(flat: Mapping[str, Any]) -> dict:
    tree: dict = {}
    for key, value in flat.items():
        node = tree
        *parents, leaf = key.split("/")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


def transposed(w: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(w).T)


def f32(x: Any) -> np.ndarray:
    return np.asarray(x, dtype=np.float32)


def require(cfg: vit.ViTConfig, fmt: str, **unsupported: bool) -> None:
    for what, bad in unsupported.items():
        if bad:
            raise ConfigError(f"{fmt}'s ViT has no {what.replace('_', ' ')}; this model cannot be "
                              f"written as {fmt} (write it with --to vistas)")


def heads_for_width(width: int, path: Any) -> int:
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
                 path: Any = "checkpoint", native: Native | None = None, **options: Any) -> vit.ViTConfig:
    """The ViTConfig whose parameters have the shapes of ``params`` (vistas layout).

    The number of heads is read from the attention kernels (or QK-norm scales) when they
    show it; ``image_size`` defaults to the square grid of the position embedding (224 for
    sincos models); ``options`` (e.g. ``gelu``) are passed on. A parameter it needs that
    is missing is a one-line ConfigError naming it (``native``: in the file's own names).
    """
    try:
        return _infer_config(params, num_heads, image_size, path, native, options)
    except (ValueError, IndexError, TypeError) as e:  # shapes of the wrong rank or size
        raise ConfigError(f"{path}: its parameters do not fit together as a ViT ({e})") from None


def _infer_config(params: Mapping, num_heads: int | None, image_size: Any, path: Any,
                  native: Native | None, options: dict) -> vit.ViTConfig:
    def at(key: str) -> Any:
        return _at(params, key, path, native)

    p, _, channels, width = np.shape(at("embedding/kernel"))
    enc = params.get("encoder", {})
    if "blocks" in enc:
        depth = int(np.shape(jax.tree.leaves(enc["blocks"])[0])[0])
        block = jax.tree.map(lambda x: np.asarray(x)[0], enc["blocks"])
        prefix = "encoder/blocks/"
    else:
        names = [k for k in enc if k.startswith("block") and k[5:].isdigit()]
        depth, block = len(names), enc[min(names)] if names else {}
        prefix = f"encoder/{min(names)}/" if names else "encoder/"
    if not block:
        raise ConfigError(f"{path} holds no encoder blocks")

    def in_block(key: str) -> Any:
        return _at(block, key, path, native, prefix)

    fused = "in_proj" in block
    attn = block if fused else in_block("attn")
    qk_norm = "query_norm" in attn
    norm = block.get("norm1", block.get("norm"))
    if not isinstance(norm, Mapping):
        raise ConfigError(incomplete(path, [prefix + "norm1/scale"], native))
    if fused:
        total = np.shape(in_block("in_proj/kernel"))[-1]
        mlp_dim = total - 3 * width
        qkv_bias = np.shape(in_block("in_proj/bias"))[-1] == total
    else:
        mlp_dim = np.shape(in_block("mlp/fc1/kernel"))[-1]
        query_kernel = in_block("attn/query/kernel")
        qkv_bias = "bias" in attn["query"]
        num_heads = num_heads or np.shape(query_kernel)[1]
    if num_heads is None and qk_norm:
        num_heads = width // np.shape(in_block("attn/query_norm/scale"))[-1]
    num_heads = num_heads or heads_for_width(width, path)
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
        num_classes=int(np.shape(head["kernel"])[-1]) if isinstance(head, Mapping) and "kernel" in head else 0,
        representation_size=(int(np.shape(at("pre_logits/kernel"))[-1])
                             if "pre_logits" in params else None),
        parallel="norm" in block, fused=fused, qk_norm=qk_norm, qkv_bias=bool(qkv_bias),
        norm_bias="bias" in norm, scan="blocks" in enc,
    )
    kwargs.update(options)
    return vit.ViTConfig(**kwargs)


def config_from_json(text: str) -> vit.ViTConfig:
    d = json.loads(text)
    if isinstance(d.get("image_size"), list):
        d["image_size"] = tuple(d["image_size"])
    fields = {f.name for f in dataclasses.fields(vit.ViTConfig)}
    return vit.ViTConfig(**{k: v for k, v in d.items() if k in fields})


def config_json(cfg: vit.ViTConfig) -> str:
    return json.dumps(dataclasses.asdict(cfg), sort_keys=True)


def variant_sizes(model: str) -> tuple[int, int, int, int, int]:
    """``vit-B/16`` or ``B/16`` -> (patch, width, depth, mlp_dim, num_heads)."""
    variant = model.split("-", 1)[1] if model.lower().startswith("vit-") else model
    size, patch = vit.parse_variant(variant)
    return (patch, *vit.SIZES[size])


def with_variant(cfg: vit.ViTConfig, model: str | None) -> vit.ViTConfig:
    """Sizes and heads of the variant ``model`` over ``cfg``'s."""
    if not model:
        return cfg
    patch, width, depth, mlp_dim, num_heads = variant_sizes(model)
    return dataclasses.replace(cfg, patch=patch, width=width, depth=depth, mlp_dim=mlp_dim,
                               num_heads=num_heads)

