"""Named model outputs (``logits``, ``pre_logits``...) over a whole data source, and the
predictions of a trained run on image files (``predict``, ``vistas predict``).

``outputs(graphdef, rest, params, source, ...)`` runs the model over every example once
(padding masked out, each example counted once across processes) and returns the chosen
output with the labels, as NumPy arrays gathered on every process. The jitted function is
shared by every call with the same model structure, so periodic evaluations compile once.
"""

from __future__ import annotations

import functools
import os
import pathlib
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vistas import runs
from vistas.data import catalog, pipeline
from vistas.errors import ConfigError, DataError, VistasError
from vistas.systems import mesh as mesh_lib


@functools.partial(jax.jit, static_argnames=("graphdef", "key", "sharding"))
def _predict(params: Any, rest: Any, batch: dict, *, graphdef: Any, key: str, sharding: Any):
    logits, out = nnx.merge(graphdef, params, rest)(batch["image"])
    value = logits if key == "logits" else out[key]
    result = (value.astype(jnp.float32), batch["label"], batch["mask"])
    return jax.lax.with_sharding_constraint(result, sharding)


def outputs(graphdef: Any, rest: Any, params: Any, source: Any, *, key: str, transform: Callable,
            batch_size: int, mesh: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """``out[key]`` [N, ...] float32 and labels [N] (or [N, K]) for every example of ``source``."""
    mesh = mesh if mesh is not None else mesh_lib.data_mesh()
    sharding = mesh_lib.replicated(mesh)
    values, labels = [], []
    for batch in pipeline.eval_batches(
        source, global_batch_size=batch_size, transform=transform,
        process_index=jax.process_index(), process_count=jax.process_count(),
    ):
        v, y, m = _predict(params, rest, mesh_lib.put_batch(batch, mesh), graphdef=graphdef,
                           key=key, sharding=sharding)
        m = np.asarray(m)
        values.append(np.asarray(v)[m])
        labels.append(np.asarray(y)[m])
    return np.concatenate(values), np.concatenate(labels)


# ----------------------------------------------------------------------------- predict files


def image_files(paths: Sequence[str | os.PathLike]) -> list[pathlib.Path]:
    """The images named by ``paths``: files as given, folders searched recursively for
    image files (sorted). A missing path or a folder without images is one line."""
    from vistas.data.readers.folder import IMAGE_EXTENSIONS

    files: list[pathlib.Path] = []
    for p in map(pathlib.Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS
                           and not any(part.startswith(".") for part in f.relative_to(p).parts))
            if not found:
                raise DataError(f"{p} holds no images (allowed extensions: {' '.join(IMAGE_EXTENSIONS)})")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise DataError(f"{p} does not exist; give image files or folders of images")
    if not files:
        raise DataError("no images given; name image files or folders")
    return files


def _class_list(workdir: pathlib.Path, cfg: Any, num_classes: int) -> list[str]:
    """The run's class names: recorded with the run, else its catalog dataset's, else indices."""
    names = runs.class_names(workdir)
    if names is None:
        try:
            names = list(catalog.get_info(cfg.data.dataset).class_names)
        except VistasError:
            names = None
    if names is None or len(names) != num_classes:
        names = [str(i) for i in range(num_classes)]
    return names


def predict(workdir: str | os.PathLike, paths: Sequence[str | os.PathLike], *, top_k: int = 5,
            step: int | None = None, batch_size: int = 64, ema: bool | None = None) -> dict[str, Any]:
    """The ``top_k`` classes of each image under ``paths`` (files or folders) by the run in
    ``workdir``: ``{"step", "weights", "predictions": [{"file", "top": [{"class", "index",
    "probability"}, ...]}, ...]}``. Images of any size are preprocessed as the run's
    evaluation transform does; the EMA parameters are used when the run keeps them (unless
    ``ema=False``). Probabilities are the softmax, or per-class sigmoids for a run trained
    with ``sigmoid_xent`` (multi-label)."""
    from vistas import experiment
    from vistas.data.decode import decode_image

    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ConfigError(f"top_k={top_k!r} must be a positive integer")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size={batch_size!r} must be a positive integer")
    workdir = pathlib.Path(workdir)
    files = image_files(paths)
    cfg = runs.load_config(workdir)
    use_ema = bool(cfg.train.ema_decay) if ema is None else ema
    if use_ema and not cfg.train.ema_decay:
        raise ConfigError(f"{workdir} keeps no EMA parameters (train.ema_decay=0); predict without ema")
    cfg, graphdef, rest, params, found = runs.model_params(
        workdir, step, key="ema_params" if use_ema else "params")
    transform = experiment.eval_transform(cfg)
    multi_label = cfg.train.loss == "sigmoid_xent"
    probs_fn = _probabilities(graphdef, multi_label)
    b = min(batch_size, len(files))
    out, names = [], None
    for start in range(0, len(files), b):
        chunk = files[start:start + b]
        images = np.stack([transform(decode_image(f, cfg.data.channels)) for f in chunk])
        if len(chunk) < b:  # one compiled shape for every batch
            images = np.concatenate([images, np.zeros((b - len(chunk), *images.shape[1:]), images.dtype)])
        probs = np.asarray(jax.device_get(probs_fn(params, rest, images)))[: len(chunk)]
        if names is None:  # read once, with the first batch's number of classes
            names = _class_list(workdir, cfg, probs.shape[-1])
        k = min(top_k, len(names))
        for f, p in zip(chunk, probs, strict=True):
            order = np.argsort(-p, kind="stable")[:k]
            out.append({"file": str(f), "top": [{"class": names[i], "index": int(i),
                                                 "probability": float(p[i])} for i in order]})
    return {"workdir": str(workdir), "step": found, "weights": "ema" if use_ema else "params",
            "predictions": out}


@functools.lru_cache(maxsize=8)
def _probabilities(graphdef: Any, multi_label: bool) -> Callable:
    @jax.jit
    def fn(params: Any, rest: Any, images: jax.Array) -> jax.Array:
        logits, _ = nnx.merge(graphdef, params, rest)(images)
        logits = logits.astype(jnp.float32)
        return jax.nn.sigmoid(logits) if multi_label else jax.nn.softmax(logits, axis=-1)

    return fn
