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
  resampled, non-square grids included, as the checkpoint's own framework does it unless
  ``resample`` names another: ``vistas``, ``big_vision`` or ``timm``), optionally a new head.
- ``save(path, params, cfg, fmt)`` writes ``big_vision``, ``timm`` or ``vistas`` files;
  ``convert`` (``vistas convert SRC DST``) chains the two.

Differences that would change the function are errors naming the key (and shape) or the
reason, never silently dropped: e.g. timm's max pooling or LayerNorm before the blocks, or
a ViT-22B parallel block written as big_vision or timm (which have none). timm's LayerScale,
register tokens and LayerNorm after pooling are read into the vistas ViT options
``init_values``, ``reg_tokens`` and ``fc_norm``.

Modules, each importing only those listed before it:

- ``base``: what every format shares (``Checkpoint``, the config inferred from parameter
  shapes or stored as JSON, helpers on flat keys);
- ``big_vision`` and ``timm``: one foreign format each (``from_*`` / ``to_*`` between its
  keys and vistas' parameters, and ``read`` / ``write`` of its files);
- ``core``: the entry points above, vistas' own format and run directories.

Every public name is importable from this package.
"""

from vistas.models.interop.base import Checkpoint, describe, infer_config
from vistas.models.interop.big_vision import from_big_vision, to_big_vision
from vistas.models.interop.core import (
    FORMATS,
    assign,
    convert,
    default_resample,
    detect_format,
    export,
    format_for,
    load_model,
    load_params,
    model_params,
    parse_image_size,
    read,
    save,
    to_vistas,
)
from vistas.models.interop.timm import from_timm, to_timm

__all__ = [
    "FORMATS", "Checkpoint", "assign", "convert", "default_resample", "describe", "detect_format", "export",
    "format_for", "from_big_vision", "from_timm", "infer_config", "load_model", "load_params",
    "model_params", "parse_image_size", "read", "save", "to_big_vision", "to_timm", "to_vistas",
]
