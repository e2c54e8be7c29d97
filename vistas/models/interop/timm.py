"""timm ``VisionTransformer`` checkpoints (``.safetensors``), read and written.

Reads a timm state dict through the ``safetensors`` NumPy API, with the constructor
arguments timm stores in its metadata (``timm_model_args``: heads, pooling, GELU, whether
``pos_embed`` has the class token's slot) when present; files vistas wrote also carry the
exact config. Writes the state dict and those arguments. timm's LayerScale, register
tokens, LayerNorm after pooling or before the blocks, and a ViT-22B parallel block have no
counterpart on the other side: errors naming the key.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from vistas.errors import ConfigError, VistasError
from vistas.models import adapt, vit
from vistas.models.interop import base


def read(path: pathlib.Path, *, model: str | None = None, image_size: Any = None) -> base.Checkpoint:
    """A timm ``.safetensors`` file; ``model`` (``vit-B/16``) gives the number of heads when
    neither the metadata nor the weights show it."""
    from safetensors import SafetensorError, safe_open
    from safetensors.numpy import load_file

    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
        sd = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise VistasError(f"cannot read {path} as .safetensors: {e}") from e
    if base.VISTAS_META in meta:  # written by vistas: the exact config
        cfg = base.with_variant(base.config_from_json(meta[base.VISTAS_META]), model)
        return base.Checkpoint(from_timm(sd, cfg.num_heads, path), dataclasses.replace(cfg, scan=False),
                               "timm", str(path))
    args = json.loads(meta.get("timm_model_args", "{}"))
    width = int(np.shape(sd["patch_embed.proj.weight"])[0]) if "patch_embed.proj.weight" in sd else 0
    heads = args.get("num_heads")
    if model:
        heads = base.variant_sizes(model)[4]
    elif heads is None and "blocks.0.attn.q_norm.weight" in sd:
        heads = width // int(np.shape(sd["blocks.0.attn.q_norm.weight"])[0])
    heads = heads or base.heads_for_width(width, path)
    if args.get("global_pool") == "avg" and args.get("class_token", True) and "cls_token" in sd:
        raise ConfigError(f"{path}: timm model averages tokens but has a class token; vistas' "
                          "pools are a class token, an average without one, or MAP")
    gelu = "tanh" if args.get("act_layer") in ("gelu_tanh", "gelu_pytorch_tanh") else "exact"
    params = from_timm(sd, heads, path, no_embed_class=args.get("no_embed_class"))
    cfg = base.infer_config(params, num_heads=heads, image_size=image_size or args.get("img_size"),
                            path=path, gelu=gelu)
    return base.Checkpoint(params, base.with_variant(cfg, model), "timm", str(path))


def write(path: pathlib.Path, params: Mapping, cfg: vit.ViTConfig) -> None:
    """Writes ``params`` as a timm state dict, with timm's constructor arguments and vistas'
    config in the metadata."""
    from safetensors.numpy import save_file

    sd, args = to_timm(params, cfg)
    meta = {"format": "pt", "timm_model_args": json.dumps(args), base.VISTAS_META: base.config_json(cfg)}
    # safetensors writes the memory of each array as it is: make it C-ordered.
    save_file({k: np.ascontiguousarray(v) for k, v in sd.items()}, str(path), metadata=meta)


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
        out[f"{dst}/kernel"] = base.transposed(take(f"{prefix}.weight"))
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
            out[f"{dst}/attn/{name}/kernel"] = heads(base.transposed(qkv[j * width:(j + 1) * width]))
        if f"{b}.attn.qkv.bias" in sd:
            qkv_b = take(f"{b}.attn.qkv.bias")
            for j, name in enumerate(("query", "key", "value")):
                out[f"{dst}/attn/{name}/bias"] = qkv_b[j * width:(j + 1) * width].reshape(num_heads, -1)
        for name, timm_name in (("query_norm", "q_norm"), ("key_norm", "k_norm")):
            if f"{b}.attn.{timm_name}.weight" in sd:
                norm(f"{b}.attn.{timm_name}", f"{dst}/attn/{name}")
        proj = base.transposed(take(f"{b}.attn.proj.weight"))  # [H*Dh, D]
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
            out[f"map_head/attn/{name}/kernel"] = heads(base.transposed(kv[j * width:(j + 1) * width]))
            if kv_b is not None:
                out[f"map_head/attn/{name}/bias"] = kv_b[j * width:(j + 1) * width].reshape(num_heads, -1)
        proj = base.transposed(take("attn_pool.proj.weight"))
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
    return base.nest(out)


def to_timm(params: Mapping, cfg: vit.ViTConfig) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """vistas parameters -> a timm ``VisionTransformer`` state dict and its constructor args."""
    base.require(cfg, "timm", parallel_block=cfg.parallel, bias_free_layernorm=not cfg.norm_bias,
             pre_logits_layer=bool(cfg.representation_size))
    flat = adapt.flatten(vit.unstack_blocks(params))
    d, h = cfg.width, cfg.num_heads
    sd: dict[str, np.ndarray] = {}

    def linear(src: str, dst: str) -> None:
        sd[f"{dst}.weight"] = base.transposed(base.f32(flat[f"{src}/kernel"]).reshape(-1, np.shape(flat[f"{src}/kernel"])[-1]))
        if f"{src}/bias" in flat:
            sd[f"{dst}.bias"] = base.f32(flat[f"{src}/bias"]).reshape(-1)

    def norm(src: str, dst: str) -> None:
        sd[f"{dst}.weight"] = base.f32(flat[f"{src}/scale"])
        sd[f"{dst}.bias"] = base.f32(flat[f"{src}/bias"])

    def qkv_weight(src: str, names: tuple[str, ...]) -> np.ndarray:
        return np.concatenate([base.f32(flat[f"{src}/{n}/kernel"]).reshape(d, -1).T for n in names])

    def qkv_bias(src: str, names: tuple[str, ...]) -> np.ndarray | None:
        if f"{src}/{names[0]}/bias" not in flat:
            return None
        return np.concatenate([base.f32(flat[f"{src}/{n}/bias"]).reshape(-1) for n in names])

    sd["patch_embed.proj.weight"] = np.ascontiguousarray(base.f32(flat["embedding/kernel"]).transpose(3, 2, 0, 1))
    sd["patch_embed.proj.bias"] = base.f32(flat["embedding/bias"])
    pe = base.f32(flat["pos_embedding"]) if cfg.posemb == "learn" else np.asarray(vit.posemb_sincos_2d(cfg.grid, d))
    if cfg.pool == "tok":
        sd["cls_token"] = base.f32(flat["cls"])
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
        sd["attn_pool.latent"] = base.f32(flat["map_head/probe"])
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

