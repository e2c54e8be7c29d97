"""Calibration: expected calibration error (ECE) and temperature scaling.

ECE (Guo et al. 2017; used in the ViT-22B paper): predictions are put in ``NUM_BINS`` = 15
equal-width bins of confidence (the top softmax probability; bin b holds confidences in
(b/15, (b+1)/15], the first bin also 0), and

    ECE = Σ_b (n_b / N) · | accuracy_b − mean confidence_b |.

The per-bin sums (``bin_sums``) are additive over batches and devices, so the evaluation
step accumulates them like its other sums. Temperature scaling divides the logits by one
scalar T > 0 fitted to minimise the negative log-likelihood on held-out data
(``fit_temperature``); it changes confidences but never the argmax.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from scipy import optimize, special

from vistas.data import sources
from vistas.evaluate import predict

NUM_BINS = 15


def bin_index(confidence: Any, num_bins: int = NUM_BINS) -> Any:
    """Bin of each confidence in [0, 1]: (b/n, (b+1)/n] -> b, with 0 in bin 0."""
    xp = jnp if isinstance(confidence, jax.Array) else np
    return xp.clip(xp.ceil(confidence * num_bins).astype(xp.int32) - 1, 0, num_bins - 1)


def bin_sums(logits: jax.Array, labels: jax.Array, mask: jax.Array | None = None,
             temperature: jax.Array | float = 1.0, num_bins: int = NUM_BINS) -> dict[str, jax.Array]:
    """Per-bin ``count``, ``confidence`` and ``correct`` sums, each [num_bins] (jit-friendly)."""
    probs = jax.nn.softmax(logits.astype(jnp.float32) / temperature, axis=-1)
    confidence = jnp.max(probs, axis=-1)
    correct = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
    weight = jnp.ones_like(confidence) if mask is None else mask.astype(jnp.float32)
    onehot = jax.nn.one_hot(bin_index(confidence, num_bins), num_bins) * weight[:, None]
    return {"count": onehot.sum(0), "confidence": onehot.T @ confidence,
            "correct": onehot.T @ correct}


def ece_from_sums(sums: dict[str, Any]) -> float:
    """ECE from (accumulated) ``bin_sums``."""
    count = np.asarray(sums["count"], np.float64)
    total = count.sum()
    if total == 0:
        return float("nan")
    gap = np.abs(np.asarray(sums["correct"], np.float64) - np.asarray(sums["confidence"], np.float64))
    return float(gap.sum() / total)


def ece(logits: Any, labels: Any, temperature: float = 1.0, num_bins: int = NUM_BINS) -> float:
    """ECE of softmax(logits / temperature) against integer ``labels`` (NumPy, float64)."""
    logits = np.asarray(logits, np.float64)
    labels = np.asarray(labels)
    probs = special.softmax(logits / temperature, axis=-1)
    confidence = probs.max(-1)
    correct = (logits.argmax(-1) == labels).astype(np.float64)
    bins = bin_index(confidence, num_bins)
    total = 0.0
    for b in range(num_bins):
        sel = bins == b
        if sel.any():
            total += abs(correct[sel].sum() - confidence[sel].sum())
    return float(total / len(labels))


def nll(logits: Any, labels: Any, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of softmax(logits / temperature)."""
    z = np.asarray(logits, np.float64) / temperature
    logp = z - special.logsumexp(z, axis=-1, keepdims=True)
    return float(-np.mean(logp[np.arange(len(z)), np.asarray(labels)]))


def fit_temperature(logits: Any, labels: Any, bounds: tuple[float, float] = (0.02, 50.0)) -> float:
    """The T in ``bounds`` minimising the NLL of softmax(logits / T) (convex in 1/T)."""
    logits = np.asarray(logits, np.float64)
    labels = np.asarray(labels)
    lo, hi = np.log(bounds[0]), np.log(bounds[1])
    result = optimize.minimize_scalar(lambda log_t: nll(logits, labels, np.exp(log_t)),
                                      bounds=(lo, hi), method="bounded",
                                      options={"xatol": 1e-6})
    return float(np.exp(result.x))


# --- in classification evaluation (``vistas.evaluate.classification``) -----------------------------


def temperature_for(exp: Any, params: Any, mesh: Any, transform: Any,
                    results: dict[str, float]) -> float | None:
    """T fitted on ``data.calibration_split`` (recorded as ``eval/temperature`` in
    ``results``); None when no split is set or the data is multi-label."""
    d = exp.cfg.data
    if not d.calibration_split:
        return None
    source = sources.load_source(d.dataset, d.calibration_split, data_dir=d.data_dir,
                                 path=d.path, channels=d.channels)
    if getattr(source, "multi_label", False):
        return None
    logits, labels = predict.outputs(exp.graphdef, exp.rest, params, source, key="logits",
                                     transform=transform, batch_size=d.eval_batch_size, mesh=mesh)
    temperature = fit_temperature(logits, labels)
    results["eval/temperature"] = temperature
    return temperature


def split_results(totals: dict[str, Any], prefix: str, *, scaled: bool) -> dict[str, float]:
    """``prefix/ece`` (and ``prefix/ece_ts`` when ``scaled``) from accumulated eval sums."""
    if "ece/count" not in totals:
        return {}
    out = {f"{prefix}/ece": ece_from_sums({k: totals[f"ece/{k}"] for k in _SUMS})}
    if scaled:
        out[f"{prefix}/ece_ts"] = ece_from_sums({k: totals[f"ece_ts/{k}"] for k in _SUMS})
    return out


_SUMS = ("count", "confidence", "correct")
