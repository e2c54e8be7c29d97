"""big_vision ViT checkpoints (``.npz``), read and written.

Reads ``params/...`` keys or bare ones (and ``opt/target/...``); the ``encoderblock_N`` and
the scanned ``encoderblock`` layouts; class-token, GAP and MAP heads; ``pre_logits``; and the
older layouts big_vision itself still loads (pre-linen module numbering, the position
embedding under ``Transformer/``, the class token's embedding folded into ``pos_embedding``,
an inlined MAP head). Writes ``params/...`` keys in the scanned or unscanned layout.
big_vision's ViT has no parallel block, QK-norm, bias-free QKV/LayerNorm, LayerScale,
register tokens or LayerNorm after pooling: a model with any of them is an error.
"""

from __future__ import annotations

import pathlib
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from vistas.errors import ConfigError
from vistas.models import adapt, vit
from vistas.models.interop import base

# big_vision module names -> vistas names, inside an encoder block and inside the MAP head.
_BLOCK = {"LayerNorm_0": "norm1", "LayerNorm_1": "norm2", "MultiHeadDotProductAttention_0": "attn",
          "MlpBlock_0/Dense_0": "mlp/fc1", "MlpBlock_0/Dense_1": "mlp/fc2"}
_MAP = {"probe": "probe", "MultiHeadDotProductAttention_0": "attn", "LayerNorm_0": "norm",
        "MlpBlock_0/Dense_0": "mlp/fc1", "MlpBlock_0/Dense_1": "mlp/fc2"}


def read(path: pathlib.Path, *, model: str | None = None, image_size: Any = None) -> base.Checkpoint:
    """A big_vision ``.npz`` file; its kernels show the number of heads. A parameter missing
    from the file is named as the file names it."""
    flat = base.read_npz(path)
    prefix = next((p for p in ("params/", "opt/target/") if any(k.startswith(p) for k in flat)), "")

    def native(key: str) -> str:
        return prefix + native_key(key)

    params = from_big_vision(flat, path)
    cfg = base.infer_config(params, image_size=image_size, path=path, native=native, gelu="tanh")
    base.check_complete(params, cfg, path, native)
    return base.Checkpoint(params, base.with_variant(cfg, model), "big_vision", str(path))


def native_key(key: str) -> str:
    """big_vision's name (without ``params/``) of the vistas parameter ``key``."""
    try:
        return _big_vision_key(key)
    except ConfigError:
        return key


def write(path: pathlib.Path, params: Mapping, cfg: vit.ViTConfig, *, scan: bool | None = None) -> None:
    """Writes ``params`` as a big_vision ``.npz`` (``scan``: the layout, default ``cfg.scan``)."""
    with open(path, "wb") as f:
        np.savez(f, **to_big_vision(params, cfg, scan=scan))


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
            new = f"encoder/block{int(m.group(1)):02d}/" + _sub(_BLOCK, m.group(2), key, path)
        elif m := re.fullmatch(r"Transformer/encoderblock/(.+)", key):
            new = "encoder/blocks/" + _sub(_BLOCK, m.group(1), key, path)
        elif m := re.fullmatch(r"MAPHead_0/(.+)", key):
            new = "map_head/" + _sub(_MAP, m.group(1), key, path)
        else:
            raise ConfigError(f"{path}: big_vision key {key!r} is not part of a ViT that vistas can load")
        out[new] = np.asarray(value)
    if "embedding/kernel" not in out:
        raise ConfigError(f"{path} holds no 'embedding/kernel': not a big_vision ViT checkpoint")
    return base.nest(out)


def to_big_vision(params: Mapping, cfg: vit.ViTConfig, *, scan: bool | None = None) -> dict[str, np.ndarray]:
    """vistas parameters -> flat big_vision keys (``params/...``)."""
    base.require(cfg, "big_vision", parallel_block=cfg.parallel, qk_norm=cfg.qk_norm,
             bias_free_qkv=not cfg.qkv_bias, bias_free_layernorm=not cfg.norm_bias,
             LayerScale=cfg.init_values is not None, register_tokens=bool(cfg.reg_tokens),
             LayerNorm_after_pooling=cfg.fc_norm)
    scan = cfg.scan if scan is None else scan
    params = vit.stack_blocks(params) if scan else vit.unstack_blocks(params)
    out: dict[str, np.ndarray] = {}
    for key, value in adapt.flatten(params).items():
        if np.size(value):
            out["params/" + _big_vision_key(key)] = base.f32(value)
    return out


_INV_BLOCK = {v: k for k, v in _BLOCK.items()}
_INV_MAP = {v: k for k, v in _MAP.items()}


def _big_vision_key(key: str) -> str:
    """vistas parameter name -> big_vision's (without ``params/``)."""
    if m := re.fullmatch(r"encoder/block(\d+)/(.+)", key):
        return f"Transformer/encoderblock_{int(m.group(1))}/" + _sub(_INV_BLOCK, m.group(2), key, "model")
    if m := re.fullmatch(r"encoder/blocks/(.+)", key):
        return "Transformer/encoderblock/" + _sub(_INV_BLOCK, m.group(1), key, "model")
    if key.startswith("encoder/norm/"):
        return "Transformer/encoder_norm/" + key.rsplit("/", 1)[1]
    if m := re.fullmatch(r"map_head/(.+)", key):
        return "MAPHead_0/" + _sub(_INV_MAP, m.group(1), key, "model")
    return key

