"""Function-matching distillation: the distillation task of the training loop.

"Knowledge distillation: a good teacher is patient and consistent" (Beyer et al., arXiv
2106.05237): the student is trained to match the predictive distribution of one or more
frozen teachers, ``T²·KL(p_teacher(x/T) ‖ p_student(x/T))``, on the views it sees. A run
with ``distill.mode`` other than ``"off"`` is an ordinary run of ``loop.train`` whose task
is a :class:`Task`: inside the same jitted step the task builds the views, evaluates the
teachers in inference mode and supplies the loss. ``distill.mode`` picks the views:

- ``consistent`` (function matching): one augmented view (crop + flip) and mixup of the
  whole batch, shared by teachers and student;
- ``independent``: teachers and student get independently drawn crops (and flips) of the
  same examples, mixed with the same weight;
- ``fixed``: the teachers' logits on central crops, computed once and cached on disk by
  example index; the student sees augmented views (mixed with the same weight as the cached
  teacher distributions);
- ``labels``: no teacher in the loss, the supervised baseline with the same views;
- ``annotated`` (offline, as for ViT-22B): before training, the teachers annotate
  ``distill.views_per_example`` views of every training image (the consistent mode's crop,
  flip and mixup) once; the views and their teacher logits are stored in ArrayRecord shards
  (``vistas.data.annotations``) and the student trains on the stored views, drawn by the
  ordinary pipeline from (seed, step), without running a teacher.

Teachers are runs (work directories) of any family, loaded with ``runs.final_params``;
an ensemble averages their probabilities. They are referenced by path and parameter
checksum in ``teachers.json`` of the run, never stored in its checkpoints; resuming refuses
when a teacher changed. The pipeline produces views of ``distill.view_size`` pixels (by
default the largest of the student's and teachers' sizes) and each model gets them resized
on the device to its own size.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import pathlib
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vistas import experiment, runs
from vistas.config import DISTILL_MODES, Config, augmentation
from vistas.data import annotations as store
from vistas.data import mixing, pipeline
from vistas.errors import ConfigError
from vistas.evaluate.evaluators import Evaluator
from vistas.files import atomic_path, atomic_write
from vistas.systems import mesh as mesh_lib
from vistas.train import losses

MODES = DISTILL_MODES
TEACHERS_FILE = "teachers.json"
CACHE_FILE = "teacher_logits.npz"
TEACHER_LOGITS = "teacher_logits"  # the per-example field of the cached logits (fixed mode)
TEACHER_IMAGE = "teacher_image"  # the teachers' own view (independent mode)
SOFT_LABEL = "soft_label"  # the stored view's mixed one-hot label (annotated mode)
TASK_STREAM = 0x7461736B  # the task's random stream (mixing weights), apart from the model's
ANNOTATE_STREAM = 0x616E6E6F  # the annotation's views and mixing, apart from the student's data


def active(cfg: Config) -> bool:
    return cfg.distill.mode != "off"


@dataclasses.dataclass
class Teacher:
    """A frozen teacher: how to rebuild it, what it expects, and its identity."""

    workdir: str
    step: int
    checksum: str
    graphdef: Any
    rest: Any
    image_size: int
    channels: int
    value_range: tuple[float, float]
    num_classes: int
    model: str

    def record(self) -> dict:
        return {"workdir": self.workdir, "step": self.step, "checksum": self.checksum,
                "model": self.model, "image_size": self.image_size}


def params_checksum(params: Any) -> str:
    """sha256 over the parameters' paths, dtypes, shapes and bytes."""
    h = hashlib.sha256()
    for path, leaf in sorted(jax.tree_util.tree_leaves_with_path(jax.device_get(params)),
                             key=lambda kv: jax.tree_util.keystr(kv[0])):
        a = np.asarray(leaf)
        h.update(f"{jax.tree_util.keystr(path)}|{a.dtype}|{a.shape}|".encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def load_teachers(paths: list[str]) -> tuple[list[Teacher], list[Any]]:
    """The teachers of ``paths`` (run directories; their latest checkpoints) and their
    parameters, replicated on the data mesh."""
    teachers, params = [], []
    for path in paths:
        exp, p, step = runs.final_params(path)
        d = exp.cfg.data
        teachers.append(Teacher(
            workdir=str(path), step=int(step), checksum=params_checksum(p), graphdef=exp.graphdef,
            rest=exp.rest, image_size=d.image_size, channels=d.channels,
            value_range=tuple(d.value_range), num_classes=exp.num_classes, model=exp.cfg.model.name))
        params.append(p)
    return teachers, params


def check_teachers(cfg: Config, teachers: list[Teacher], num_classes: int) -> None:
    for t in teachers:
        if t.num_classes != num_classes:
            raise ConfigError(f"distill.teachers: {t.workdir} predicts {t.num_classes} classes, "
                              f"the student {num_classes}; use a teacher of the same classes")
        if t.channels != cfg.data.channels:
            raise ConfigError(f"distill.teachers: {t.workdir} takes {t.channels}-channel images, "
                              f"the student data.channels={cfg.data.channels}")


def check_resume(workdir: pathlib.Path, teachers: list[Teacher]) -> None:
    """Refuses to resume a run whose teachers changed since it started."""
    path = workdir / TEACHERS_FILE
    if not path.exists():
        raise ConfigError(f"{workdir} holds a distillation checkpoint but no {TEACHERS_FILE}; "
                          "cannot check its teachers; use a new --workdir")
    saved = json.loads(path.read_text())
    for old, new in zip(saved, teachers, strict=False):
        if old["checksum"] != new.checksum or old["workdir"] != new.workdir:
            raise ConfigError(
                f"teacher {new.workdir} changed since this run started (checksum "
                f"{old['checksum'][:12]} at step {old['step']} -> {new.checksum[:12]} at step "
                f"{new.step}); resuming would distil a different function; use a new --workdir")


def write_teachers(workdir: pathlib.Path, teachers: list[Teacher]) -> None:
    atomic_write(workdir / TEACHERS_FILE, json.dumps([t.record() for t in teachers], indent=2))


def view_size(cfg: Config, teachers: list[Teacher]) -> int:
    return cfg.distill.view_size or max([cfg.data.image_size, *(t.image_size for t in teachers)])


def _resize(images: jax.Array, size: int) -> jax.Array:
    """[B, H, W, C] -> [B, size, size, C], bilinear (antialiased when shrinking)."""
    b, h, w, c = images.shape
    if (h, w) == (size, size):
        return images
    return jax.image.resize(images, (b, size, size, c), "bilinear")


def _to_range(images: jax.Array, src: tuple[float, float], dst: tuple[float, float]) -> jax.Array:
    if tuple(src) == tuple(dst):
        return images
    return (images - src[0]) * ((dst[1] - dst[0]) / (src[1] - src[0])) + dst[0]


def teacher_logits(teachers: list[Teacher], value_range: tuple[float, float]) -> Callable:
    """``fn(params_list, images) -> [n_teachers, B, K]`` float32 logits, each teacher in
    inference mode on ``images`` (a view in ``value_range``) resized to its own size."""

    def fn(params_list: list, images: jax.Array) -> jax.Array:
        out = []
        for t, p in zip(teachers, params_list, strict=True):
            x = _to_range(_resize(images, t.image_size), value_range, t.value_range)
            logits, _ = nnx.merge(t.graphdef, p, t.rest)(x)
            out.append(jax.lax.stop_gradient(logits).astype(jnp.float32))
        return jnp.stack(out)

    return fn


def ensemble_probs(logits: jax.Array, temperature: float) -> jax.Array:
    """[n, B, K] teacher logits -> [B, K] mean of their softmax at ``temperature``."""
    return jnp.mean(jax.nn.softmax(logits / temperature, axis=-1), axis=0)


def kl_loss(student_logits: jax.Array, teacher_probs: jax.Array, temperature: float) -> jax.Array:
    """Per-example ``T²·KL(teacher_probs ‖ softmax(student_logits / T))``, [B]."""
    log_q = jax.nn.log_softmax(student_logits.astype(jnp.float32) / temperature, axis=-1)
    p = teacher_probs.astype(jnp.float32)
    kl = jnp.sum(jax.scipy.special.xlogy(p, p) - p * log_q, axis=-1)
    return temperature**2 * kl


@dataclasses.dataclass
class Task:
    """The distillation task (``vistas.train.task.Task``).

    ``prepare(frozen, batch, key) -> batch`` runs inside the jitted step before the student:
    it mixes the views, evaluates the teachers (``frozen`` is the list of their parameters)
    and returns the student's ``image``, the dominant ``label``, the mixed one-hot
    ``soft_label`` and, unless ``mode == "labels"``, the ``teacher_probs``.
    ``loss(logits, batch) -> [B]`` is the per-example objective.
    """

    mode: str
    temperature: float
    label_weight: float
    mixup_alpha: float
    num_classes: int
    student_size: int
    teachers: list[Teacher]
    frozen: list[Any]
    value_range: tuple[float, float]
    label_loss: Callable = losses.softmax_xent
    source: Any = None  # the training source (with the cached logits in fixed mode)
    transform: Callable | None = None  # the host-side views
    evaluator: Callable[[Any], dict[str, float]] | None = None
    extra_keys: tuple[str, ...] = ()

    def __post_init__(self):
        self._teacher_fn = teacher_logits(self.teachers, self.value_range)

    def data(self) -> tuple[Any, Callable]:
        return self.source, self.transform

    def evaluators(self, every: int) -> list[Evaluator]:
        if self.evaluator is None:
            return []
        evaluate = self.evaluator
        return [Evaluator("distillation", every, lambda state: (evaluate(state["params"]), None))]

    def prepare(self, frozen: list, batch: dict, key: jax.Array) -> dict:
        key = jax.random.fold_in(key, TASK_STREAM)
        images = batch["image"]
        onehot = mixing.one_hot_targets(batch["label"], self.num_classes)
        out: dict[str, jax.Array] = {}
        if self.mode == "annotated":  # stored views, already mixed, with their teacher logits
            images, onehot = dequantize(images, self.value_range), batch[SOFT_LABEL]
            out["teacher_probs"] = ensemble_probs(jnp.moveaxis(batch[TEACHER_LOGITS], 1, 0), self.temperature)
        elif self.mode == "fixed":
            probs = ensemble_probs(jnp.moveaxis(batch[TEACHER_LOGITS], 1, 0), self.temperature)
            k = self.num_classes
            images, both = mixing.mixup(key, images, jnp.concatenate([onehot, probs], -1),
                                        self.mixup_alpha)
            onehot, out["teacher_probs"] = both[:, :k], both[:, k:]
        else:
            student_images, mixed = mixing.mixup(key, images, onehot, self.mixup_alpha)
            if self.mode == "independent":  # the same key: the same mixing weight
                teacher_images, _ = mixing.mixup(key, batch[TEACHER_IMAGE], onehot, self.mixup_alpha)
            else:
                teacher_images = student_images
            images, onehot = student_images, mixed
            if self.mode != "labels":
                logits = self._teacher_fn(frozen, teacher_images)
                out["teacher_probs"] = ensemble_probs(logits, self.temperature)
                out["teacher_image"] = teacher_images
        out["view"] = images
        out["image"] = _resize(images, self.student_size)
        out["soft_label"] = onehot
        out["label"] = jnp.argmax(onehot, axis=-1)
        return out

    def loss(self, logits: jax.Array, batch: dict) -> jax.Array:
        label_loss = self.label_loss(logits, batch["soft_label"])
        if self.mode == "labels":
            return label_loss
        loss = kl_loss(logits, batch["teacher_probs"], self.temperature)
        if self.label_weight:
            loss = loss + self.label_weight * label_loss
        return loss

    def metrics(self, logits: jax.Array, batch: dict) -> dict:
        if "teacher_probs" not in batch:
            return {}
        agree = jnp.argmax(logits, -1) == jnp.argmax(batch["teacher_probs"], -1)
        return {"train/agreement": jnp.mean(agree.astype(jnp.float32)),
                "train/kl": jnp.mean(kl_loss(logits, batch["teacher_probs"], 1.0))}


def make_task(cfg: Config, teachers: list[Teacher], frozen: list, num_classes: int) -> Task:
    return Task(mode=cfg.distill.mode, temperature=cfg.distill.temperature,
                label_weight=cfg.distill.label_weight, mixup_alpha=cfg.distill.mixup_alpha,
                num_classes=num_classes, student_size=cfg.data.image_size, teachers=teachers,
                frozen=frozen, value_range=tuple(cfg.data.value_range))


# ----------------------------------------------------------------------------- views


@dataclasses.dataclass(frozen=True)
class TwoViews:
    """Two independently drawn augmentations of one image (independent mode): the student's
    view (the first draw, the same as the single view of the other modes) and the teachers'."""

    transform: Callable

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> dict:
        student = self.transform(image, rng)
        return {"image": student, TEACHER_IMAGE: self.transform(image, rng)}


class WithTeacherLogits:
    """A training source whose examples carry the cached teacher logits (fixed mode)."""

    def __init__(self, source, logits: np.ndarray):
        self.source = source
        self.logits = logits  # [N, n_teachers, K]
        self.num_classes = source.num_classes
        self.image_shape = getattr(source, "image_shape", None)
        self.multi_label = getattr(source, "multi_label", False)

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> dict:
        return {**self.source[i], TEACHER_LOGITS: self.logits[i]}


def train_transform(cfg: Config, size: int) -> Callable:
    """The run's training augmentation (crop, flip, RandAugment / AutoAugment) at the view
    size: one view shared by teachers and student, or two independent draws."""
    t = experiment.train_transform(cfg, size)
    return TwoViews(t) if cfg.distill.mode == "independent" else t


def eval_transform(cfg: Config, size: int) -> Callable:
    return experiment.eval_transform(cfg, size)


# ----------------------------------------------------------------------------- fixed teacher


def _all_logits(source, teachers: list[Teacher], frozen: list, cfg: Config, size: int, mesh) -> np.ndarray:
    """[len(source), n_teachers, K] teacher logits on central crops of every example, on
    every process: each process reads its part of each global batch, and the logits of the
    whole batch are gathered."""
    fn = jax.jit(teacher_logits(teachers, tuple(cfg.data.value_range)))
    out = []
    for batch in pipeline.eval_batches(source, global_batch_size=cfg.data.eval_batch_size,
                                       transform=eval_transform(cfg, size),
                                       process_index=jax.process_index(),
                                       process_count=jax.process_count()):
        batch = mesh_lib.put_batch({"image": batch["image"], "mask": batch["mask"]}, mesh)
        logits, mask = fn(frozen, batch["image"]), batch["mask"]  # [n, B, K], [B]
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            logits, mask = multihost_utils.process_allgather((logits, mask), tiled=True)
        logits, mask = np.asarray(jax.device_get(logits)), np.asarray(jax.device_get(mask))
        out.append(np.moveaxis(logits, 0, 1)[mask])
    return np.concatenate(out).astype(np.float32)


def cache_key(cfg: Config, teachers: list[Teacher], size: int, num_examples: int) -> dict:
    """What the cached logits depend on: teachers, view, and which training examples."""
    d = cfg.data
    return {"teachers": [t.record() for t in teachers], "view_size": size,
            "eval_crop_fraction": d.eval_crop_fraction, "value_range": list(d.value_range),
            "dataset": d.dataset, "path": d.path, "train_split": d.train_split,
            "num_train_examples": d.num_train_examples,
            "subset_seed": cfg.train.seed if d.num_train_examples else None,
            "num_examples": num_examples}


def fixed_logits(source, teachers: list[Teacher], frozen: list, cfg: Config, size: int, mesh,
                 cache_dir: pathlib.Path) -> tuple[np.ndarray, bool]:
    """The cached teacher logits of every training example, ``([N, n_teachers, K], reused)``:
    read from ``cache_dir/teacher_logits.npz`` when its key matches, computed and written
    otherwise (a changed teacher, resolution or training set invalidates the cache)."""
    key = json.dumps(cache_key(cfg, teachers, size, len(source)), sort_keys=True)
    path = cache_dir / CACHE_FILE
    if path.exists():
        with np.load(path, allow_pickle=False) as f:
            if str(f["key"]) == key:
                return f["logits"], True
    logits = _all_logits(source, teachers, frozen, cfg, size, mesh)
    if jax.process_index() == 0:
        cache_dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(path, suffix=".npz") as tmp:
            np.savez(tmp, key=np.asarray(key), logits=logits)
    return logits, False


# ----------------------------------------------------------------------------- annotated views


def quantize(images: jax.Array, value_range: tuple[float, float]) -> jax.Array:
    """Views in ``value_range`` -> uint8 (what the annotation stores)."""
    lo, hi = value_range
    return jnp.round(jnp.clip((images - lo) / (hi - lo), 0.0, 1.0) * 255.0).astype(jnp.uint8)


def dequantize(images: jax.Array, value_range: tuple[float, float]) -> jax.Array:
    """uint8 views -> float32 in ``value_range``: the pixels the teachers annotated."""
    lo, hi = value_range
    return images.astype(jnp.float32) * ((hi - lo) / 255.0) + lo


def stored_view(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The host-side transform of annotated mode: the stored view as it is (uint8)."""
    return image


class _Indexed:
    """A source whose examples carry their index (the annotation records which image each
    view shows)."""

    def __init__(self, source):
        self.source = source

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> dict:
        return {**self.source[i], "index": np.int32(i)}


def annotation_seed(seed: int) -> int:
    """The seed of the annotation's views and mixing: derived from ``train.seed``, apart
    from the student's own data order."""
    return int(np.random.SeedSequence([int(seed), ANNOTATE_STREAM]).generate_state(1, np.uint64)[0] >> 1)


def annotations_dir(cfg: Config, workdir: pathlib.Path) -> pathlib.Path:
    return pathlib.Path(cfg.distill.cache_dir or workdir) / store.DIRNAME


def annotation_key(cfg: Config, teachers: list[Teacher], size: int, num_examples: int) -> dict:
    """What an annotation set depends on: the teachers (by parameter checksum, not path),
    K, the seed, the views (augmentation, mixup, view size, value range, batch: mixup pairs
    views within a batch) and which training examples."""
    d, aug = cfg.data, augmentation(cfg.data)
    key = {"format": store.FORMAT,
           "teachers": [{"checksum": t.checksum, "model": t.model, "image_size": t.image_size, "step": t.step}
                        for t in teachers],
           "views_per_example": cfg.distill.views_per_example, "seed": cfg.train.seed,
           "batch_size": d.batch_size, "view_size": size, "mixup_alpha": cfg.distill.mixup_alpha,
           "value_range": list(d.value_range), "channels": d.channels,
           "augmentation": {"crop": d.crop, "inception_area": list(d.inception_area), "pad": d.pad,
                            "flip": d.flip, "randaug_ops": aug["randaug_ops"],
                            "randaug_magnitude": aug["randaug_magnitude"], "autoaugment": aug["autoaugment"]},
           "data": {"dataset": d.dataset, "path": d.path, "train_split": d.train_split,
                    "num_train_examples": d.num_train_examples, "mixture": d.mixture,
                    "decode_size": d.decode_size},
           "num_examples": num_examples}
    return json.loads(json.dumps(key))  # as it reads back from JSON (tuples are lists)


def _annotate_fn(teachers: list[Teacher], cfg: Config, num_classes: int) -> Callable:
    """``fn(frozen, images, labels, key) -> (uint8 views, [B, n, K] logits, [B, K] soft labels)``:
    the batch mixed as the consistent mode mixes it (one λ, each view with the batch's
    reverse), quantised to uint8, and the teachers' logits on exactly those pixels."""
    value_range = tuple(cfg.data.value_range)
    teacher_fn = teacher_logits(teachers, value_range)
    alpha = cfg.distill.mixup_alpha

    def fn(frozen, images, labels, key):
        mixed, soft = mixing.mixup(key, images, mixing.one_hot_targets(labels, num_classes), alpha)
        views = quantize(mixed, value_range)
        logits = teacher_fn(frozen, dequantize(views, value_range))
        return views, jnp.moveaxis(logits, 0, 1), soft

    return jax.jit(fn)


def _gather(tree: Any) -> Any:
    """The whole global batch of ``tree`` on every process, as NumPy."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        tree = multihost_utils.process_allgather(tree, tiled=True)
    return jax.tree.map(lambda x: np.asarray(jax.device_get(x)), tree)


def _from_main(mask: np.ndarray) -> np.ndarray:
    """Process 0's ``mask`` (what it found on disk), on every process."""
    if jax.process_count() == 1:
        return mask
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.broadcast_one_to_all(mask))


def annotate(source, teachers: list[Teacher], frozen: list, cfg: Config, size: int, mesh,
             root: pathlib.Path, say: Callable[[str], None] = print) -> tuple[store.AnnotatedSource, bool]:
    """The annotation set of ``cfg`` in ``root`` and whether it was there already: read when
    finished, otherwise written (or finished, shard by shard: a killed annotation resumes).
    View j (j < N·K) is global position j of the training pipeline with the annotation's
    seed (epoch e = j // N is a permutation of the N examples: every example gets K views),
    mixed within its batch of ``data.batch_size``; a set of another key is refused."""
    n, k = len(source), cfg.distill.views_per_example
    key = annotation_key(cfg, teachers, size, n)
    main = jax.process_index() == 0
    store.check_key(root, key)  # on every process: all refuse a set of another key together
    if _from_main(np.array([main and (root / store.MANIFEST).exists()]))[0]:
        return store.AnnotatedSource(root, key), True
    shards = store.plan(n * k, cfg.data.batch_size)
    with store.locked(root) if main else contextlib.nullcontext():
        finished = main and (root / store.MANIFEST).exists()  # by another run, meanwhile
        mask = np.zeros(len(shards), bool)
        mask[store.start(root, key, shards) if main and not finished else []] = True
        todo = [int(i) for i in np.flatnonzero(_from_main(mask))]
        if todo:
            say(f"annotating {n * k:,} views ({k} per example) of {n:,} examples with "
                f"{len(teachers)} teacher{'s' * (len(teachers) != 1)} into {root}: "
                f"{len(todo)} of {len(shards)} shards to write")
        _write_shards(source, teachers, frozen, cfg, size, mesh, root, key, shards, todo, say)
        if main and not finished:
            layout = store.Layout((size, size, cfg.data.channels), len(teachers), int(source.num_classes))
            store.finish(root, key, layout, shards, n)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("vistas annotations written")
    return store.AnnotatedSource(root, key), bool(finished)


def _write_shards(source, teachers, frozen, cfg, size, mesh, root, key, shards, todo, say) -> None:
    b, main = cfg.data.batch_size, jax.process_index() == 0
    seed = annotation_seed(cfg.train.seed)
    fn = _annotate_fn(teachers, cfg, int(source.num_classes))
    base = jax.random.fold_in(jax.random.PRNGKey(seed & 0x7FFFFFFF), ANNOTATE_STREAM)
    it = pipeline.train_iterator(_Indexed(source), global_batch_size=b, seed=seed,
                                 transform=experiment.train_transform(cfg, size),
                                 process_index=jax.process_index(), process_count=jax.process_count(),
                                 extra_keys=("index",), workers=cfg.data.workers, prefetch=cfg.data.prefetch,
                                 on_bad_image=cfg.data.on_bad_image)
    try:
        for done, i in enumerate(todo, 1):
            name, first, count = shards[i]
            it.set_state({**it.get_state(), "step": first // b})
            writer = store.ShardWriter(root, name, first, count, key) if main else None
            try:
                for batch_index in range(first // b, -(-(first + count) // b)):
                    put = mesh_lib.put_batch(next(it), mesh)
                    views, logits, soft = _gather(fn(frozen, put["image"], put["label"],
                                                     jax.random.fold_in(base, batch_index)))
                    index, labels = _gather((put["index"], put["label"]))
                    rows = min(b, first + count - batch_index * b)  # the last batch: up to view N·K
                    if writer is not None:
                        for r in range(rows):
                            writer.write(store.encode(index[r], index[b - 1 - r], labels[r], views[r],
                                                      logits[r], soft[r]))
            except BaseException:
                if writer is not None:
                    writer.abort()
                raise
            if writer is not None:
                writer.commit()
            say(f"annotated shard {done}/{len(todo)}: {name} ({count:,} views)")
    finally:
        it.close()


# ----------------------------------------------------------------------------- evaluation


class AgreementEvaluator:
    """Per eval split: teacher top-1, student-teacher top-1 agreement and
    ``KL(teacher ‖ student)`` at temperature 1, summed on the device over unmasked examples
    (so it works with a batch sharded over processes). The teachers' probabilities are
    computed at the first evaluation and kept (on the device) for the next ones."""

    def __init__(self, cfg: Config, exp: Any, teachers: list[Teacher], frozen: list, size: int, mesh):
        self.cfg, self.exp, self.frozen, self.size, self.mesh = cfg, exp, frozen, size, mesh
        teacher_fn = teacher_logits(teachers, tuple(cfg.data.value_range))
        student_size = cfg.data.image_size

        def sums(params, batch, probs):
            x = _resize(batch["image"], student_size)
            student = nnx.merge(exp.graphdef, params, exp.rest)(x)[0].astype(jnp.float32)
            mask = batch["mask"].astype(jnp.float32)
            t_pred = jnp.argmax(probs, -1)
            return {"agree": jnp.sum((jnp.argmax(student, -1) == t_pred) * mask),
                    "kl": jnp.sum(kl_loss(student, probs, 1.0) * mask),
                    "teacher_correct": jnp.sum((t_pred == batch["label"]) * mask),
                    "count": jnp.sum(mask)}

        self._teacher_fn = jax.jit(lambda frozen, images: ensemble_probs(teacher_fn(frozen, images), 1.0))
        self._sums = jax.jit(sums)
        self._teacher_probs: dict[str, list[jax.Array]] = {}

    def __call__(self, params: Any) -> dict[str, float]:
        results: dict[str, float] = {}
        for split, source in self.exp.eval_sources.items():
            first = split not in self._teacher_probs
            cached = self._teacher_probs.setdefault(split, [])
            totals: dict[str, float] = {}
            for i, batch in enumerate(pipeline.eval_batches(
                    source, global_batch_size=self.cfg.data.eval_batch_size,
                    transform=eval_transform(self.cfg, self.size),
                    process_index=jax.process_index(), process_count=jax.process_count())):
                batch = mesh_lib.put_batch(batch, self.mesh)
                if first:
                    cached.append(self._teacher_fn(self.frozen, batch["image"]))
                for k, v in self._sums(params, batch, cached[i]).items():
                    totals[k] = totals.get(k, 0.0) + float(v)
            count = totals["count"]
            results[f"eval/{split}/teacher_top1"] = totals["teacher_correct"] / count
            results[f"eval/{split}/agreement"] = totals["agree"] / count
            results[f"eval/{split}/kl"] = totals["kl"] / count
        return results


# ----------------------------------------------------------------------------- setup


def setup(cfg: Config, exp: Any, workdir: pathlib.Path, mesh: Any, *, resuming: bool,
          say: Callable[[str], None] = print) -> Task:
    """Loads and checks the teachers, records them in ``workdir`` (or, when resuming, checks
    that they did not change), and builds the task, views and evaluator of ``cfg.distill``."""
    if getattr(exp.train_source, "multi_label", False):
        raise ConfigError("distill.mode needs a single-label dataset; "
                          f"{cfg.data.dataset} is multi-label")
    teachers, frozen = load_teachers(cfg.distill.teachers)
    check_teachers(cfg, teachers, exp.num_classes)
    if resuming:
        check_resume(workdir, teachers)
    elif jax.process_index() == 0:
        workdir.mkdir(parents=True, exist_ok=True)
        write_teachers(workdir, teachers)
    size = view_size(cfg, teachers)
    source, extra = exp.train_source, ()
    if cfg.distill.mode == "fixed":
        cache_dir = pathlib.Path(cfg.distill.cache_dir or workdir)
        logits, reused = fixed_logits(exp.train_source, teachers, frozen, cfg, size, mesh, cache_dir)
        say(f"teacher logits of {len(logits):,} examples {'read from' if reused else 'written to'} "
            f"{cache_dir / CACHE_FILE}")
        source, extra = WithTeacherLogits(exp.train_source, logits), (TEACHER_LOGITS,)
    transform = train_transform(cfg, size)
    if cfg.distill.mode == "annotated":
        root = annotations_dir(cfg, workdir)
        source, reused = annotate(exp.train_source, teachers, frozen, cfg, size, mesh, root, say)
        say(f"{len(source):,} annotated views {'read from' if reused else 'written to'} {root}")
        extra, transform = (TEACHER_LOGITS, SOFT_LABEL), stored_view
    task = make_task(cfg, teachers, frozen, exp.num_classes)
    task.source, task.transform, task.extra_keys = source, transform, extra
    if cfg.distill.mode == "annotated":
        task.frozen = []  # the step runs no teacher: the stored logits are its targets
    task.evaluator = AgreementEvaluator(cfg, exp, teachers, frozen, size, mesh) if teachers else None
    return task


def check_active(cfg: Config) -> None:
    """Refuses a config that names no distillation mode (``vistas distill`` needs one); the
    run itself is ``loop.train(cfg, workdir)``, like every other."""
    if not active(cfg):
        raise ConfigError("distill.mode='off'; set it to one of " + ", ".join(MODES[1:]))


__all__ = ["MODES", "Task", "check_active", "ensemble_probs", "fixed_logits", "kl_loss", "params_checksum",
           "setup"]
