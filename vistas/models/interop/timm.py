"""timm ``VisionTransformer`` checkpoints (``.safetensors``), read and written.

Reads a timm state dict through the ``safetensors`` NumPy API, with timm's constructor
arguments (heads, pooling, GELU, whether ``pos_embed`` has the prefix tokens' slots...)
from the file's metadata (``timm_model_args``, which vistas writes) or else from the
``config.json`` that timm's Hugging Face Hub files come with, beside the weights; files
vistas wrote also carry the exact config. Writes the state dict and those arguments.

What the arguments do not say is read off the weights by timm's own defaults: attention
pooling where there is ``attn_pool``, average pooling where there is ``fc_norm`` or no class
token. A class token without either fits class-token pooling and averaging without ``fc_norm``
alike: with nothing to say which, reading it is an error asking for ``global_pool``. LayerScale (``ls1``/``ls2``), register tokens (``reg_token``)
and ``fc_norm`` are vistas ViT options (``init_values``, ``reg_tokens``, ``fc_norm``); a class
token that timm does not pool (average or attention pooling) takes part in attention only,
as a register does, and is read as the first register. Pooling vistas has not (``max``,
``avgmax``, none, prefix tokens pooled with the patches), another activation than GELU,
a LayerNorm before the blocks and a ViT-22B parallel block are errors naming the file and
the reason (or key).
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import pathlib
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from vistas.errors import ConfigError, VistasError
from vistas.models import adapt, vit
from vistas.models.interop import base


def read(path: pathlib.Path, *, model: str | None = None, image_size: Any = None,
         pool: str | None = None) -> base.Checkpoint:
    """A timm ``.safetensors`` file; ``model`` (``vit-B/16``) gives the number of heads when
    neither the metadata nor the weights show it, ``pool`` timm's ``global_pool`` when the
    file does not say it (see :func:`_pool`)."""
    from safetensors import SafetensorError, safe_open
    from safetensors.numpy import load_file

    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
        sd = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise VistasError(f"cannot read {path} as .safetensors: {e}") from e
    for key in (base.VISTAS_META, "timm_model_args"):
        try:
            json.loads(meta.get(key, "{}"))
        except ValueError as e:
            raise ConfigError(f"{path}: its metadata {key!r} is not JSON ({e})") from None
    args = json.loads(meta.get("timm_model_args", "{}")) or hub_args(path)
    if not isinstance(args, dict):
        raise ConfigError(f"{path}: its metadata 'timm_model_args' is not a JSON object of timm's arguments")
    if pool is not None and args.get("global_pool", pool) != pool:
        raise ConfigError(f"{path}: timm's arguments with the file say global_pool={args['global_pool']!r}, "
                          f"not {pool!r}")
    if pool is not None:
        args = {**args, "global_pool": pool}
    try:
        return _checkpoint(sd, meta, args, path, model, image_size)
    except (ValueError, IndexError) as e:  # tensors of the wrong rank or size
        raise ConfigError(f"{path}: its tensors do not fit together as a timm ViT ({e})") from None


# timm's global_pool -> vistas' pool
POOLS = {"token": "tok", "avg": "gap", "map": "map"}
_GELUS = {None: "exact", "gelu": "exact", "gelu_tanh": "tanh", "gelu_pytorch_tanh": "tanh"}


def hub_args(path: pathlib.Path) -> dict[str, Any]:
    """timm's constructor arguments from the ``config.json`` beside ``path`` when it is the
    one timm's Hugging Face Hub files come with (it names the ``architecture``), else {}:
    its ``model_args``, its ``global_pool`` and the image size of its ``pretrained_cfg``."""
    try:
        hub = json.loads((pathlib.Path(path).parent / "config.json").read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return {}
    if not isinstance(hub, dict) or "architecture" not in hub:
        return {}
    args = dict(hub["model_args"]) if isinstance(hub.get("model_args"), dict) else {}
    if isinstance(hub.get("global_pool"), str):
        args["global_pool"] = hub["global_pool"]
    size = (hub.get("pretrained_cfg") or {}).get("input_size") if isinstance(hub.get("pretrained_cfg"), dict) else None
    if "img_size" not in args and isinstance(size, list) and len(size) == 3:
        args["img_size"] = size[1:]
    return args


def default_pool(sd: Mapping[str, Any]) -> str:
    """timm's ``global_pool`` as its defaults leave it for these weights: ``map`` with an
    ``attn_pool``, ``avg`` with an ``fc_norm`` (timm's default only for averaging) or without
    a class token, else ``token``."""
    if "attn_pool.latent" in sd:
        return "map"
    return "avg" if "fc_norm.weight" in sd or "cls_token" not in sd else "token"


def pooling_is_ambiguous(sd: Mapping[str, Any]) -> bool:
    """Whether ``sd``'s weights fit both class-token pooling and averaging that keeps the
    class token without ``fc_norm`` (timm's ``global_pool='avg', fc_norm=False``): the same
    arrays, two functions."""
    return "cls_token" in sd and "fc_norm.weight" not in sd and "attn_pool.latent" not in sd


def _pool(sd: Mapping[str, Any], args: Mapping[str, Any], path: Any) -> str:
    """timm's ``global_pool`` of ``sd``: the arguments' when they give it, else what the
    weights show; weights that fit two poolings, with nothing to say which, and any pooling
    vistas cannot compute exactly are one-line errors."""
    pool = args.get("global_pool")
    if pool is None and pooling_is_ambiguous(sd):
        raise ConfigError(f"{path}: its weights fit both class-token pooling and averaging with the "
                          "class token kept (timm's global_pool='avg', fc_norm=False), and nothing with "
                          "them says which; give global_pool='token' or 'avg' (vistas convert --global-pool), "
                          "or put timm's config.json of the model beside the file")
    pool = default_pool(sd) if pool is None else pool
    if pool not in POOLS:
        raise ConfigError(f"{path}: timm model pools with global_pool={pool!r}; vistas' ViT pools by "
                          "the class token ('token'), the average of the patch tokens ('avg') or "
                          "attention ('map')")
    prefix = ("cls_token" in sd) + (int(np.shape(sd["reg_token"])[1]) if "reg_token" in sd else 0)
    if pool != "token" and prefix and args.get("pool_include_prefix"):
        raise ConfigError(f"{path}: timm model's {pool!r} pooling takes in its class and register "
                          "tokens (pool_include_prefix=True); vistas' ViT pools the patch tokens only")
    if pool == "token" and "cls_token" not in sd:
        raise ConfigError(f"{path}: timm model pools its class token (global_pool='token') but holds "
                          "no 'cls_token'; it is damaged or not a whole ViT checkpoint")
    if (pool == "map") != ("attn_pool.latent" in sd):
        why = ("pools by attention (global_pool='map') but holds no 'attn_pool.latent'" if pool == "map"
               else f"holds attention pooling ('attn_pool.latent') but global_pool={pool!r}")
        raise ConfigError(f"{path}: timm model {why}; its weights and arguments disagree")
    return pool


def _grid(image_size: Any, patch: int) -> tuple[int, int] | None:
    if image_size is None or not patch:
        return None
    h, w = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    return int(h) // patch, int(w) // patch


def _checkpoint(sd: dict, meta: dict, args: dict, path: pathlib.Path, model: str | None,
                image_size: Any) -> base.Checkpoint:
    if base.VISTAS_META in meta:  # written by vistas: the exact config
        cfg = dataclasses.replace(base.config_from_json(meta[base.VISTAS_META]), scan=False)
        params = from_timm(sd, cfg.num_heads, path, no_embed_class=args.get("no_embed_class"),
                           global_pool={v: k for k, v in POOLS.items()}[cfg.pool], grid=cfg.grid)
        base.check_complete(params, cfg, path, native_key)
        return base.Checkpoint(params, base.with_variant(cfg, model), "timm", str(path))
    width = int(np.shape(sd["patch_embed.proj.weight"])[0]) if "patch_embed.proj.weight" in sd else 0
    patch = int(np.shape(sd["patch_embed.proj.weight"])[-1]) if "patch_embed.proj.weight" in sd else 0
    heads = args.get("num_heads")
    if model:
        heads = base.variant_sizes(model)[4]
    elif heads is None and "blocks.0.attn.q_norm.weight" in sd:
        heads = width // int(np.shape(sd["blocks.0.attn.q_norm.weight"])[0])
    heads = heads or base.heads_for_width(width, path)
    act = args.get("act_layer")
    if not isinstance(act, (str, type(None))) or act not in _GELUS:
        raise ConfigError(f"{path}: timm model's activation act_layer={act!r} is not one vistas' ViT "
                          "has (exact GELU 'gelu', or 'gelu_tanh')")
    pool = _pool(sd, args, path)
    image_size = image_size or args.get("img_size")
    params = from_timm(sd, heads, path, no_embed_class=args.get("no_embed_class"), global_pool=pool,
                       grid=_grid(image_size, patch))
    options: dict[str, Any] = dict(gelu=_GELUS[act], fc_norm="fc_norm" in params,
                                   reg_tokens=int(np.shape(params["registers"])[1]) if "registers" in params else 0)
    blocks = params.get("encoder", {})
    if any(isinstance(b, Mapping) and "ls1" in b for b in blocks.values()):
        # the learned scales are in the weights; init_values only starts a new model's
        options["init_values"] = float(args.get("init_values") or 1e-5)
    cfg = base.infer_config(params, num_heads=heads, image_size=image_size, path=path, native=native_key,
                            **options)
    base.check_complete(params, cfg, path, native_key)
    return base.Checkpoint(params, base.with_variant(cfg, model), "timm", str(path))


# vistas module -> timm module (a parameter's leaf: kernel and scale -> weight, bias -> bias)
_MODULES = [
    (r"embedding", "patch_embed.proj"), (r"encoder/norm", "norm"), (r"head", "head"),
    (r"encoder/block(?P<i>\d+)/norm(?P<n>[12])", "blocks.{i}.norm{n}"),
    (r"encoder/block(?P<i>\d+)/attn/(query|key|value)", "blocks.{i}.attn.qkv"),
    (r"encoder/block(?P<i>\d+)/attn/(?P<qk>[qk])[a-z]*_norm", "blocks.{i}.attn.{qk}_norm"),
    (r"encoder/block(?P<i>\d+)/attn/out", "blocks.{i}.attn.proj"),
    (r"encoder/block(?P<i>\d+)/mlp/(?P<fc>fc[12])", "blocks.{i}.mlp.{fc}"),
    (r"map_head/attn/query", "attn_pool.q"), (r"map_head/attn/(key|value)", "attn_pool.kv"),
    (r"map_head/attn/out", "attn_pool.proj"), (r"map_head/norm", "attn_pool.norm"),
    (r"map_head/mlp/(?P<fc>fc[12])", "attn_pool.mlp.{fc}"), (r"fc_norm", "fc_norm"),
    (r"encoder/block(?P<i>\d+)/ls(?P<n>[12])", "blocks.{i}.ls{n}"),  # LayerScale: .gamma
]
_WHOLE = {"cls": "cls_token", "registers": "reg_token", "pos_embedding": "pos_embed",
          "map_head/probe": "attn_pool.latent"}


def native_key(key: str) -> str:
    """timm's name of the vistas parameter ``key`` (``key`` itself when it has none)."""
    if key in _WHOLE:
        return _WHOLE[key]
    module, _, leaf = key.rpartition("/")
    for pattern, name in _MODULES:
        if m := re.fullmatch(pattern, module):
            groups = {k: str(int(v)) if k == "i" else v for k, v in m.groupdict().items()}
            name = name.format(**groups)
            leaf = "bias" if leaf == "bias" else "gamma" if re.search(r"\.ls[12]$", name) else "weight"
            return f"{name}.{leaf}"
    return key


def write(path: pathlib.Path, params: Mapping, cfg: vit.ViTConfig) -> None:
    """Writes ``params`` as a timm state dict, with timm's constructor arguments and vistas'
    config in the metadata."""
    from safetensors.numpy import save_file

    sd, args = to_timm(params, cfg)
    meta = {"format": "pt", "timm_model_args": json.dumps(args), base.VISTAS_META: base.config_json(cfg)}
    # safetensors writes the memory of each array as it is: make it C-ordered.
    from safetensors import SafetensorError

    try:
        save_file({k: np.ascontiguousarray(v) for k, v in sd.items()}, str(path), metadata=meta)
    except SafetensorError as e:  # "... I/O error: No space left on device (os error 28) ..."
        m = re.search(r"os error (\d+)", str(e))
        code = int(m.group(1)) if m else errno.EIO
        raise OSError(code, os.strerror(code) if m else str(e), str(path)) from None


def from_timm(sd: Mapping[str, np.ndarray], num_heads: int, path: Any = "checkpoint", *,
              no_embed_class: bool | None = None, global_pool: str | None = None,
              grid: tuple[int, int] | None = None) -> dict:
    """A timm ``VisionTransformer`` state dict (standard block) -> vistas' nested parameters.

    ``no_embed_class``: whether ``pos_embed`` lacks the slots of the class and register
    tokens (timm's option of that name); when not given it is told from the token count
    (``grid``'s, or a square grid with or without them). Their embeddings are folded into
    the tokens. ``global_pool`` (timm's; default :func:`default_pool`): a class token that
    is not pooled (``avg``, ``map``) becomes the first register token, which computes the
    same function (timm pools neither).
    """
    sd = dict(sd)
    out: dict[str, np.ndarray] = {}

    def take(key: str) -> np.ndarray:
        if key not in sd:
            raise ConfigError(base.incomplete(path, [key]))
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
    global_pool = global_pool or default_pool(sd)
    pe = take("pos_embed") if "pos_embed" in sd else None
    cls = take("cls_token") if "cls_token" in sd else None
    reg = take("reg_token") if "reg_token" in sd else None
    num_prefix = (cls is not None) + (0 if reg is None else reg.shape[1])
    if pe is not None and num_prefix:
        if no_embed_class is None:
            no_embed_class = _no_embed_class(pe.shape[1], num_prefix, grid, path)
        if not no_embed_class:  # timm adds the prefix tokens' own embeddings: fold them in
            own, pe = pe[:, :num_prefix], pe[:, num_prefix:]
            if cls is not None:
                cls, own = cls + own[:, :1], own[:, 1:]
            if reg is not None:
                reg = reg + own
    if cls is not None and global_pool != "token":  # a class token timm does not pool: a register
        reg, cls = (cls if reg is None else np.concatenate([cls, reg], axis=1)), None
    if cls is not None:
        out["cls"] = cls
    elif global_pool == "token":
        raise ConfigError(f"{path}: timm model pools its class token (global_pool='token') but holds "
                          "no 'cls_token'; it is damaged or not a whole ViT checkpoint")
    if reg is not None:
        out["registers"] = reg
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
        for n in ("1", "2"):  # LayerScale
            if f"{b}.ls{n}.gamma" in sd:
                out[f"{dst}/ls{n}/scale"] = take(f"{b}.ls{n}.gamma")
    if "norm.weight" in sd:
        norm("norm", "encoder/norm")
    if "fc_norm.weight" in sd:  # the final LayerNorm after pooling
        norm("fc_norm", "fc_norm")
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
        why = {"norm_pre": " (a LayerNorm before the blocks)", "dist_token": " (a distillation token)",
               "gamma_": " (BEiT-style LayerScale)"}
        hint = next((v for k, v in why.items() if k in key), "")
        raise ConfigError(f"{path}: timm key {key!r}{hint} has no counterpart in vistas' ViT"
                          + (f" (and {len(sd) - 1} more)" if len(sd) > 1 else ""))
    return base.nest(out)


def _no_embed_class(n: int, num_prefix: int, grid: tuple[int, int] | None, path: Any) -> bool:
    """Whether a ``pos_embed`` of ``n`` tokens lacks the ``num_prefix`` prefix tokens' slots."""
    if grid is not None:
        if n == grid[0] * grid[1]:
            return True
        if n == grid[0] * grid[1] + num_prefix:
            return False

    def square(k: int) -> bool:
        return k > 0 and int(round(np.sqrt(k))) ** 2 == k

    if square(n) != square(n - num_prefix):
        return square(n)
    raise ConfigError(f"{path}: cannot tell whether 'pos_embed' ({n} tokens) holds the embeddings of "
                      f"the {num_prefix} class and register tokens; give the image size it was trained "
                      "at (--image-size HxW)")


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
    no_embed_class = bool(cfg.reg_tokens)  # as timm's register models; else timm's default
    if cfg.pool == "tok":
        sd["cls_token"] = base.f32(flat["cls"])
        if not no_embed_class:  # the class token's own embedding is folded into it: zero
            pe = np.concatenate([np.zeros((1, 1, d), np.float32), pe], axis=1)
    if cfg.reg_tokens:
        sd["reg_token"] = base.f32(flat["registers"])
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
        if cfg.init_values is not None:
            sd[f"{dst}.ls1.gamma"] = base.f32(flat[f"{src}/ls1/scale"])
            sd[f"{dst}.ls2.gamma"] = base.f32(flat[f"{src}/ls2/scale"])
    if cfg.fc_norm:
        norm("fc_norm", "fc_norm")
    else:
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
        class_token=cfg.pool == "tok", reg_tokens=cfg.reg_tokens, no_embed_class=no_embed_class,
        fc_norm=cfg.fc_norm, init_values=cfg.init_values,
        global_pool={v: k for k, v in POOLS.items()}[cfg.pool],
        act_layer="gelu_tanh" if cfg.gelu == "tanh" else "gelu",
    )
    return sd, args

