"""Few-shot linear transfer on frozen features ("Scaling Vision Transformers", Sec. 3).

For each target dataset the model's ``pre_logits`` are computed once, for the test split and
for the train examples that any few-shot sample (or validation part) uses. Then, for every
(shots, seed): ``shots`` examples per class are drawn from the train split with a generator
seeded by (seed, shots); the features are whitened with that set's mean and standard
deviation, a constant bias feature is appended, and a ridge regression onto targets in
{-1, +1} is solved in closed form. One eigendecomposition, of XᵀX or XXᵀ whichever is
smaller, serves every L2 strength:

    N >= D:  XᵀX = Q diag(e) Qᵀ      W = Q (diag(e) + λ)⁻¹ Qᵀ Xᵀ Y
    N <  D:  XXᵀ = Q diag(e) Qᵀ      W = Xᵀ Q (diag(e) + λ)⁻¹ Qᵀ Y

Accuracy is the argmax on the test split. The L2 strength is the paper's 2^10 by default;
with a grid, each (shots, seed) picks the strength that does best on a validation part of
the train split disjoint from its few-shot sample, and reports test accuracy at that strength.

Python: ``FewShotEvaluator(...)(params)`` inside a run, ``evaluate_workdir`` on a checkpoint,
and the solver itself (``ridge_cache``, ``ridge_weights``) on any features.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import pathlib
import time
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx
from threadpoolctl import ThreadpoolController

from vistas.data import catalog, sources, transforms
from vistas.errors import ConfigError, DataError
from vistas.evaluate import predict
from vistas.evaluate.fewshot_options import check_options
from vistas.files import atomic_write
from vistas.systems import mesh as mesh_lib

DEFAULT_SHOTS = (1, 5, 10, 25)
DEFAULT_L2 = 2.0**10
BIAS_FEATURE = 100.0  # large, so that its weight is barely regularised
VAL_PER_CLASS = 20  # validation examples per class when choosing L2 from a grid


# --- the closed-form solver -----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RidgeCache:
    """Everything a ridge solve needs for any L2 strength; float64."""

    mean: np.ndarray  # [1, D]
    std: np.ndarray  # [1, D]
    eigvals: np.ndarray  # [M], M = min(N, D + 1)
    lhs: np.ndarray  # [D + 1, M]
    rhs: np.ndarray  # [M, K]


def design_matrix(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """Whitened features with the bias feature appended, [N, D + 1] float64."""
    x = (np.asarray(x, np.float64) - mean) / std
    return np.concatenate([x, np.full((len(x), 1), BIAS_FEATURE)], axis=1)


def targets(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Class indices [N] -> regression targets in {-1, +1}, [N, K] float64."""
    return 2.0 * np.eye(num_classes)[np.asarray(labels)] - 1.0


@functools.cache
def _blas_controller() -> ThreadpoolController:
    return ThreadpoolController()  # finding the BLAS libraries once costs milliseconds


def _blas_threads(n: int, d: int):
    """One BLAS thread for small problems: on a busy CPU, threads make a 129x129 eigh ~50x slower."""
    if min(n, d) > 2048:
        return contextlib.nullcontext()
    return _blas_controller().limit(limits=1, user_api="blas")


def ridge_cache(x: np.ndarray, labels: np.ndarray, num_classes: int) -> RidgeCache:
    """Whitening statistics and one eigendecomposition of the smaller Gram matrix."""
    with _blas_threads(*np.shape(x)):
        return _ridge_cache(np.asarray(x, np.float64), labels, num_classes)


def _ridge_cache(x: np.ndarray, labels: np.ndarray, num_classes: int) -> RidgeCache:
    mean = x.mean(axis=0, keepdims=True)
    std = x.std(axis=0, keepdims=True) + 1e-5
    a = design_matrix(x, mean, std)  # [N, D + 1]
    y = targets(labels, num_classes)
    n, d = a.shape
    if n >= d:
        eigvals, q = np.linalg.eigh(a.T @ a)
        lhs, rhs = q, q.T @ (a.T @ y)
    else:
        eigvals, q = np.linalg.eigh(a @ a.T)
        lhs, rhs = a.T @ q, q.T @ y
    return RidgeCache(mean, std, eigvals, lhs, rhs)


def ridge_weights(cache: RidgeCache, l2: float) -> np.ndarray:
    """W minimising ‖XW − Y‖² + l2‖W‖², [D + 1, K]."""
    return cache.lhs @ (cache.rhs / (cache.eigvals + l2)[:, None])


def linear_classifier(cache: RidgeCache, l2: float) -> tuple[np.ndarray, np.ndarray]:
    """The ridge solution as (w [D, K], b [K]) acting on raw features: whitening and the
    bias feature folded in, so scoring needs no copy of the features."""
    weights = ridge_weights(cache, l2)
    w = weights[:-1] / cache.std.T
    b = BIAS_FEATURE * weights[-1] - (cache.mean / cache.std) @ weights[:-1]
    return w, b[0]


def ridge_accuracy(cache: RidgeCache, l2s: Sequence[float], x: np.ndarray,
                   labels: np.ndarray) -> np.ndarray:
    """Argmax accuracy on (x, labels) for each strength in ``l2s``, [len(l2s)]."""
    x = np.asarray(x, np.float32)
    labels = np.asarray(labels)
    accs = []
    for l2 in l2s:
        w, b = linear_classifier(cache, l2)
        scores = x @ w.astype(np.float32) + b.astype(np.float32)
        accs.append(np.mean(np.argmax(scores, axis=1) == labels))
    return np.array(accs)


# --- sampling -------------------------------------------------------------------------------


def class_orders(labels: np.ndarray, num_classes: int, seed: int, shots: int) -> list[np.ndarray]:
    """Per class, its example indices in a random order drawn from (seed, shots)."""
    rng = np.random.default_rng([int(seed), int(shots)])
    labels = np.asarray(labels)
    return [rng.permutation(np.flatnonzero(labels == c)) for c in range(num_classes)]


def sample(labels: np.ndarray, num_classes: int, shots: int, seed: int,
           val_per_class: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(``shots`` examples per class, ``val_per_class`` other ones per class), sorted indices."""
    orders = class_orders(labels, num_classes, seed, shots)
    short = [c for c, o in enumerate(orders) if len(o) < shots + val_per_class]
    if short:
        c = short[0]
        raise DataError(
            f"class {c} has {len(orders[c])} training examples, fewer than the {shots} shots"
            + (f" + {val_per_class} validation examples" if val_per_class else "") + " asked for"
        )
    few = np.sort(np.concatenate([o[:shots] for o in orders]))
    val = np.sort(np.concatenate([o[shots:shots + val_per_class] for o in orders]))
    return few, val.astype(np.int64)


# --- the evaluator ------------------------------------------------------------------------------


@dataclasses.dataclass
class _Target:
    name: str
    num_classes: int
    train: Any  # source restricted to the train examples that samples use
    test: Any
    rows: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]]  # (shots, seed) -> (few, val)


class FewShotEvaluator:
    """Few-shot linear accuracy of a model's frozen ``pre_logits`` on target datasets.

    Construction loads the targets and draws every sample; calling it with parameters
    computes the features (once per dataset) and solves every (shots, seed, L2).
    Images are resized to ``image_size`` and converted to ``channels``.
    """

    def __init__(self, graphdef: Any, rest: Any, *, datasets: Sequence[str], image_size: int,
                 channels: int, value_range: tuple[float, float] = (-1.0, 1.0),
                 shots: Sequence[int] = DEFAULT_SHOTS, seeds: int = 3, l2: float = DEFAULT_L2,
                 l2_grid: Sequence[float] = (), max_test_examples: int | None = None,
                 batch_size: int = 256, data_dir: str | None = None, mesh: Any = None):
        check_options(datasets=datasets, shots=shots, seeds=seeds, l2=l2, l2_grid=l2_grid,
                      max_test_examples=max_test_examples)
        self.mesh = mesh if mesh is not None else mesh_lib.data_mesh()
        n_dev = self.mesh.devices.size
        self.batch_size = max(n_dev, batch_size // n_dev * n_dev)
        self.shots = sorted({int(s) for s in shots})
        self.seeds = int(seeds)
        self.l2 = float(l2)
        self.l2_grid = sorted(float(v) for v in l2_grid)
        self.transform = transforms.make_eval_transform(image_size=image_size,
                                                        value_range=value_range)
        self.graphdef, self.rest = graphdef, rest
        val = VAL_PER_CLASS if self.l2_grid else 0
        self.targets: list[_Target] = []
        for name in datasets:
            train = sources.load_source(name, "train", data_dir=data_dir, channels=channels)
            test = sources.load_source(name, "test", data_dir=data_dir, channels=channels)
            if getattr(train, "multi_label", False):
                raise ConfigError(f"few-shot dataset {name!r} is multi-label; few-shot "
                                  "classification needs one label per image")
            if max_test_examples is not None and len(test) > max_test_examples:
                keep = np.random.default_rng(0).choice(len(test), max_test_examples, replace=False)
                test = sources.Subset(test, np.sort(keep))
            labels = np.asarray(train.labels)
            k = int(train.num_classes)
            drawn = {(s, seed): sample(labels, k, s, seed, val)
                     for s in self.shots for seed in range(self.seeds)}
            used = np.unique(np.concatenate([np.concatenate(v) for v in drawn.values()]))
            rows = {key: (np.searchsorted(used, few), np.searchsorted(used, v))
                    for key, (few, v) in drawn.items()}
            self.targets.append(_Target(name, k, sources.Subset(train, used), test, rows))

    def __call__(self, params: Any) -> dict[str, Any]:
        """``{"results": {dataset: {"<shots>": {"accuracy": [per seed], "mean", "std", "l2":
        [per seed]}}}, "seconds": {"features": {dataset: s}, "features_total", "solve_total"}}``."""
        results: dict[str, Any] = {}
        feature_s: dict[str, float] = {}
        solve_s = 0.0
        for t in self.targets:
            tick = time.perf_counter()
            train_x, train_y = self.features(params, t.train)
            test_x, test_y = self.features(params, t.test)
            feature_s[t.name] = time.perf_counter() - tick
            tick = time.perf_counter()
            results[t.name] = self._solve(t, train_x, train_y, test_x, test_y)
            solve_s += time.perf_counter() - tick
        return {"results": results,
                "seconds": {"features": feature_s, "features_total": sum(feature_s.values()),
                            "solve_total": solve_s}}

    def features(self, params: Any, source: Any) -> tuple[np.ndarray, np.ndarray]:
        return predict.outputs(self.graphdef, self.rest, params, source, key="pre_logits",
                               transform=self.transform, batch_size=self.batch_size,
                               mesh=self.mesh)

    def _solve(self, t: _Target, train_x, train_y, test_x, test_y) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for s in self.shots:
            accs, chosen = [], []
            for seed in range(self.seeds):
                few, val = t.rows[(s, seed)]
                cache = ridge_cache(train_x[few], train_y[few], t.num_classes)
                if self.l2_grid:
                    val_acc = ridge_accuracy(cache, self.l2_grid, train_x[val], train_y[val])
                    l2 = self.l2_grid[int(np.argmax(val_acc))]  # first best: ties go to the smaller
                else:
                    l2 = self.l2
                accs.append(float(ridge_accuracy(cache, [l2], test_x, test_y)[0]))
                chosen.append(l2)
            out[str(s)] = {"accuracy": accs, "mean": float(np.mean(accs)),
                           "std": float(np.std(accs)), "l2": chosen}
        return out


def flat_metrics(report: dict[str, Any], prefix: str = "fewshot") -> dict[str, float]:
    """``{"fewshot/<dataset>/<k>shot": mean accuracy, ..._std: ...}`` for metrics.jsonl."""
    row: dict[str, float] = {}
    for name, per_shot in report["results"].items():
        for s, r in per_shot.items():
            row[f"{prefix}/{name}/{s}shot"] = r["mean"]
            row[f"{prefix}/{name}/{s}shot_std"] = r["std"]
    row[f"{prefix}/seconds"] = report["seconds"]["features_total"] + report["seconds"]["solve_total"]
    return row


def format_table(report: dict[str, Any]) -> str:
    """Rows: datasets; columns: shots; cells: mean ± std accuracy in percent."""
    results = report["results"]
    shots = sorted({int(s) for per in results.values() for s in per})
    head = f"{'dataset':<20}" + "".join(f"{f'{s}-shot':>16}" for s in shots)
    lines = [head, "-" * len(head)]
    for name, per in results.items():
        cells = []
        for s in shots:
            r = per.get(str(s))
            cells.append(f"{100 * r['mean']:7.2f} ± {100 * r['std']:5.2f}" if r else "-")
        lines.append(f"{name:<20}" + "".join(f"{c:>16}" for c in cells))
    return "\n".join(lines)


def from_config(cfg: Any, graphdef: Any, rest: Any, mesh: Any = None,
                datasets: Sequence[str] | None = None) -> FewShotEvaluator:
    """The evaluator a run's ``fewshot`` config section describes, for its model."""
    f, d = cfg.fewshot, cfg.data
    batch_size = min(256, d.eval_batch_size)
    return FewShotEvaluator(
        graphdef, rest, datasets=list(datasets if datasets is not None else f.datasets),
        image_size=d.image_size, channels=d.channels, value_range=d.value_range,
        shots=list(f.shots), seeds=f.seeds, l2=f.l2, l2_grid=list(f.l2_grid),
        max_test_examples=f.max_test_examples, batch_size=batch_size, data_dir=d.data_dir,
        mesh=mesh)


def random_params(cfg: Any) -> Any:
    """Freshly initialised parameters of ``cfg``'s model (seed ``train.seed``)."""
    from vistas import experiment

    model = experiment.build_model(cfg, int(experiment.num_classes_of(cfg)))
    return nnx.to_pure_dict(nnx.split(model, nnx.Param, ...)[1])


def evaluate_workdir(workdir: str | pathlib.Path, *, datasets: Sequence[str] | None = None,
                     shots: Sequence[int] | None = None, seeds: int | None = None,
                     l2: float | None = None, l2_grid: Sequence[float] | None = None,
                     max_test_examples: int | None = None, step: int | None = None,
                     data_dir: str | None = None, random_init: bool = False) -> dict[str, Any]:
    """Few-shot evaluation of a run's checkpoint; writes ``fewshot_<step>.json`` in ``workdir``.

    Unset options come from the run's ``fewshot`` config section, and datasets default to
    every transfer target that is present. ``random_init``: the same model with freshly
    initialised parameters instead (a baseline; written to ``fewshot_random_init.json``).
    """
    from vistas import runs

    workdir = pathlib.Path(workdir)
    tick = time.perf_counter()
    cfg, graphdef, rest, params, found = runs.restore_params(workdir, step)
    f = cfg.fewshot
    if datasets is None:
        datasets = list(f.datasets) or [n for n in catalog.TRANSFER_TARGETS
                                         if catalog.is_present(n, data_dir)]
    if shots is not None:
        f.shots = list(shots)
    f.seeds = f.seeds if seeds is None else seeds
    f.l2 = f.l2 if l2 is None else l2
    f.l2_grid = list(f.l2_grid if l2_grid is None else l2_grid)
    if max_test_examples is not None:
        f.max_test_examples = max_test_examples
    if data_dir is not None:
        cfg.data.data_dir = data_dir
    if random_init:
        params = jax.device_put(random_params(cfg), mesh_lib.replicated(mesh_lib.data_mesh()))
    evaluator = from_config(cfg, graphdef, rest, datasets=datasets)
    setup_s = time.perf_counter() - tick
    report = evaluator(params)
    report["seconds"]["setup"] = setup_s
    report = {"step": None if random_init else found, "model": cfg.model.name, "image_size": cfg.data.image_size,
              "shots": evaluator.shots, "seeds": evaluator.seeds,
              "l2": evaluator.l2_grid or evaluator.l2, **report}
    if jax.process_index() == 0:
        name = "fewshot_random_init.json" if random_init else f"fewshot_{found}.json"
        atomic_write(workdir / name, json.dumps(report, indent=2))
    report["written_to"] = str(workdir / name)
    return report
