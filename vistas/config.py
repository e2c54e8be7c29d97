"""Typed run configuration, ``--set`` overrides and validation.

A run is a function of its :class:`Config` (and the seed in it). Overrides are written
``section.key=value``; the value is parsed as a Python literal (``ast.literal_eval``,
never ``eval``) and checked against the field's type. Bare words are taken as strings.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import json
import math
import types
import typing
from typing import Any, Union

from vistas.errors import ConfigError

Duration = int | str  # steps (int), or "3ep", "50000ex", "10%"


@dataclasses.dataclass
class DataConfig:
    """Where the images come from and how they are augmented."""

    dataset: str = "fashion_mnist"  # catalog name, "npz" or "folder"
    path: str | None = None  # file/folder for "npz" and "folder"
    data_dir: str | None = None  # extra place to look for catalog datasets
    train_split: str = "train"  # TFDS-like slices allowed: "train[:50000]"
    eval_splits: list[str] = dataclasses.field(default_factory=lambda: ["test"])
    num_train_examples: int | None = None  # seeded random subset of the train split
    image_size: int = 224
    channels: int = 3
    batch_size: int = 128  # global, over all devices and processes
    eval_batch_size: int = 500
    crop: str = "inception"  # "inception", "random_pad" or "none"
    inception_area: tuple[float, float] = (0.05, 1.0)
    pad: int = 4
    flip: bool = True
    value_range: tuple[float, float] = (-1.0, 1.0)
    eval_crop_fraction: float = 1.0
    # held-out split on which evaluation fits a softmax temperature (ECE after scaling)
    calibration_split: str | None = None
    # augmentation beyond crop and flip (docs/recipes.md): RandAugment or AutoAugment on each
    # image in the pipeline, mixup / CutMix on the device batch (one of them per batch if both)
    randaug_ops: int = 0  # N ops per image; 0: off
    randaug_magnitude: float = 10.0  # M, on RandAugment's 0..10 scale (up to 30)
    autoaugment: bool = False  # AutoAugment's ImageNet policy instead
    mixup_alpha: float = 0.0  # λ ~ Beta(α, α) per batch; 0: off
    cutmix_alpha: float = 0.0
    # big_vision's ViT levels by name ("light1".."strong2"): RandAugment(2, M) and mixup α
    aug_level: str | None = None
    # input pipeline at scale: worker processes (0: threads of the training process), batches
    # prepared ahead, JPEG resize-on-decode for shards / Parquet (None: decode in full)
    workers: int = 0
    prefetch: int = 2
    decode_size: int | None = None
    # a training image that cannot be decoded: "stop" the run (one line naming the file), or
    # "skip" it (replaced by a draw seeded by (seed, position), counted in data/skipped_images)
    # until the skips exceed max_bad_fraction of the examples drawn (at least one epoch's worth)
    on_bad_image: str = "stop"
    max_bad_fraction: float = 0.01
    # a weighted training mixture instead of dataset:train_split, e.g.
    # [("fashion_mnist", "train", 3.0), ("array_record:data/extra", "train", 1.0)]
    mixture: list[tuple[str, str, float]] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class ModelConfig:
    """A registry name plus options; size fields left ``None`` come from the variant.

    Only options changed from the defaults below reach the model (``model_options``), so
    each family keeps its own defaults and rejects, with a clear error, options it lacks.
    A new option is a field here with a default that means "the family's default".
    """

    name: str = "vit-Ti/16"
    pool: str = "gap"
    posemb: str = "learn"
    head_zeroinit: bool = True
    head_bias_init: float = 0.0
    dropout: float | None = None  # before the head (ViT: also in blocks); NFNet: as published
    width: int | None = None
    depth: int | None = None
    mlp_dim: int | None = None
    num_heads: int | None = None
    # ConvNets (nfnet-*, bit-*): per-stage sizes, stochastic depth, activation
    depths: list[int] | None = None  # blocks per stage
    widths: list[int] | None = None  # NFNet: stage output channels; BiT: bottleneck channels
    group_width: int | None = None  # NFNet: channels per group of the grouped 3x3 convs
    drop_path: float | None = None  # stochastic depth rate of the last block
    activation: str | None = None  # NFNet: gamma-scaled activation, "gelu" by default
    stem_widths: list[int] | None = None  # NFNet: channels of the stem convs before the last
    # ViT block (vit-*; docs/models.md): None keeps the variant's choice (22B/14: ViT-22B block)
    parallel: bool | None = None  # x + Attn(LN(x)) + MLP(LN(x)) from one LayerNorm
    fused: bool = False  # parallel block as one input and one output matmul
    qk_norm: bool | None = None  # LayerNorm of queries and keys per head
    qkv_bias: bool | None = None  # False: bias-free QKV projections
    norm_bias: bool | None = None  # False: scale-only LayerNorms
    gelu: str = "tanh"  # "tanh" approximation (big_vision) or "exact" (timm)
    representation_size: int | None = None  # tanh pre-logits layer before the head
    # timm's ViT options (docs/models.md), off by default: the final LayerNorm after pooling,
    # LayerScale initialised to init_values (ls1, ls2 per block), learned register tokens
    fc_norm: bool = False
    init_values: float | None = None
    reg_tokens: int = 0
    # ViT numerics and memory: compute dtype of matmuls, parameter dtype, remat, scan
    dtype: str = "auto"  # bfloat16 on GPUs/TPUs, float32 on CPU; or "float32", "bfloat16", "float16"
    param_dtype: str = "float32"
    attention: str = "auto"  # cuDNN fused attention where it can run; "recompute", "xla", "cudnn"
    remat: str = "none"  # "full", "dots" or "dots_no_batch" (what each block keeps)
    scan: bool = False  # one lax.scan over stacked blocks (encoder/blocks)


@dataclasses.dataclass
class OptimConfig:
    """Optimizer; weight decay is decoupled: Δθ = -sched(t)·(lr·u(g) + wd·mult(θ)·θ)."""

    name: str = "adam"
    lr: float = 1e-3
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    mu_dtype: str | None = None  # "bfloat16": the paper's half-precision first moment
    momentum: float = 0.9
    wd: float = 1e-4
    wd_mults: list[tuple[str, float]] = dataclasses.field(
        default_factory=lambda: [(".*/kernel", 1.0)]
    )
    lr_mults: list[tuple[str, float]] = dataclasses.field(default_factory=list)
    frozen: list[str] = dataclasses.field(default_factory=list)
    grad_clip_norm: float | None = 1.0
    # adaptive gradient clipping (vistas.optim.agc): λ, or None for off; head not clipped
    agc_clip: float | None = None
    agc_eps: float = 1e-3
    agc_exclude: list[str] = dataclasses.field(default_factory=lambda: ["head/.*"])
    sgd_nesterov: bool = False  # name="sgd": Nesterov momentum
    # name="adafactor_bv" (vistas.optim.adafactor); its momentum is b1, bf16 unless mu_dtype
    adafactor_decay: float = 0.8  # beta2(t) = min(cap, 1 - (t+1)^-decay)
    adafactor_beta2_cap: float = 0.999
    adafactor_eps: float = 1e-30
    adafactor_min_dim: int = 32  # factor the two largest dims when both are >= this
    adafactor_clip: float | None = None  # update RMS clipping threshold; None: off
    # name="shampoo" (vistas.optim.shampoo); uses b1 (momentum), b2, eps (graft), mu_dtype
    shampoo_block_size: int = 128
    shampoo_every: int = 10  # recompute the inverse roots every this many steps
    shampoo_start: int = 10  # use the graft before this step
    shampoo_root: int = 4  # p of the inverse p-th roots L^(-1/p), R^(-1/p)
    shampoo_eps: float = 1e-6  # eigenvalue damping, relative to the largest eigenvalue
    shampoo_graft: str = "adam"  # "adam" or "sgd": the per-block update magnitude
    sam_rho: float = 0.0  # sharpness-aware minimisation radius (vistas.optim.sam); 0: off


@dataclasses.dataclass
class ScheduleConfig:
    """Multiplier of ``optim.lr``: warmup, decay, optional linear cooldown."""

    warmup: Duration = "5%"
    decay: str = "cosine"  # "rsqrt", "cosine", "linear" or "constant"
    timescale: Duration = 10_000
    cooldown: Duration = 0
    min_value: float = 0.0


@dataclasses.dataclass
class TrainConfig:
    """Length of training, loss, and the cadence of logs, evals and checkpoints."""

    seed: int = 0
    duration: Duration = "10ep"
    loss: str = "softmax_xent"  # or "sigmoid_xent"
    label_smoothing: float = 0.0  # training targets (1-ε)·y + ε/K
    ema_decay: float = 0.0  # > 0: keep, checkpoint and evaluate ("ema/" metrics) a Polyak average
    grad_accum_steps: int = 1  # k: the batch is k micro-batches of batch_size/k, one update
    log_every: Duration = 50
    eval_every: Duration = "1ep"
    ckpt_every: Duration = 500
    keep: int = 2  # last checkpoints kept
    keep_every: int | None = None  # also save and keep every step that is a multiple (branch points)
    progress: bool = True
    init_from: str | None = None  # upstream run (workdir) whose parameters start this one (transfer)
    # how init_from's position embedding changes grid (vistas.models.adapt.RESAMPLES):
    # "vistas" (bilinear, pixel centres), "big_vision" (corners aligned), "timm" (bicubic, antialiased)
    init_resample: str = "vistas"
    branched_from: str | None = None  # "SRC_WORKDIR@STEP": a cooldown branch (vistas cooldown)
    # a step with a NaN/inf loss, gradient or parameter: "stop" the run (the last checkpoint is
    # kept), or "skip" it (parameters and optimizer state unchanged) up to max_skipped times
    nonfinite: str = "stop"
    max_skipped: int = 10
    # where metrics go besides metrics.jsonl: "tensorboard", "wandb", "mlflow" (the last two
    # optional extras: pip install 'vistas[wandb]'; vistas.train.trackers, docs/trackers.md)
    loggers: list[str] = dataclasses.field(default_factory=lambda: ["tensorboard"])


@dataclasses.dataclass
class FewShotConfig:
    """Few-shot linear evaluation of frozen ``pre_logits`` (``vistas.evaluate.fewshot``).

    During training it runs every ``every`` when ``datasets`` is not empty; ``vistas fewshot``
    uses these values as its defaults.
    """

    datasets: list[str] = dataclasses.field(default_factory=list)
    shots: list[int] = dataclasses.field(default_factory=lambda: [1, 5, 10, 25])
    seeds: int = 3
    l2: float = 1024.0  # the paper's fixed strength, 2^10
    l2_grid: list[float] = dataclasses.field(default_factory=list)  # non-empty: chosen on validation
    max_test_examples: int | None = None  # a fixed random subset of each test split
    every: Duration = "1ep"


DISTILL_MODES = ("off", "consistent", "independent", "fixed", "labels", "annotated")


@dataclasses.dataclass
class DistillConfig:
    """Function-matching distillation (``vistas.train.distill``, docs/distillation.md).

    ``mode``: "off" (supervised training), "consistent" (teachers and student see the same
    augmented, mixed view), "independent" (independent crops), "fixed" (teacher logits on
    central crops, cached on disk), "labels" (no teacher in the loss: the baseline) or
    "annotated" (the teacher annotates ``views_per_example`` augmented, mixed views of every
    training image once, stored in ArrayRecord shards under ``cache_dir/annotations``; the
    student trains on the stored views without running the teacher).
    """

    mode: str = "off"
    teachers: list[str] = dataclasses.field(default_factory=list)  # run directories; ensemble
    temperature: float = 1.0  # T of T²·KL(softmax(t/T) ‖ softmax(s/T))
    label_weight: float = 0.0  # weight of the label loss added to the KL (0: pure matching)
    mixup_alpha: float = 1.0  # mixup λ ~ Beta(α, α) of the whole batch; 0: off
    view_size: int | None = None  # pixels of the shared view; None: largest model size
    # fixed / annotated modes: where teacher_logits.npz / annotations/ are kept (default: the
    # workdir); several students may share one
    cache_dir: str | None = None
    views_per_example: int = 4  # annotated mode: K stored views of every training image


@dataclasses.dataclass
class MeshConfig:
    """The device mesh of training and where parameters live (``vistas.systems.sharding``).

    ``data`` x ``fsdp`` x ``model`` devices (one may be -1: the devices left over); batches
    are split over ``data`` and ``fsdp``. ``rules``: ``(regex on the parameter path,
    placement)``, first match wins; a placement is ``'replicate'``, ``'fsdp'`` or a tuple of
    axis names / None for the trailing dimensions; None: the default ViT tensor-parallel
    layout and FSDP for the rest (which, with fsdp=model=1, is plain data parallelism).
    """

    data: int = -1
    fsdp: int = 1
    model: int = 1
    rules: list[tuple[str, Any]] | None = None


@dataclasses.dataclass
class Config:
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    schedule: ScheduleConfig = dataclasses.field(default_factory=ScheduleConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    fewshot: FewShotConfig = dataclasses.field(default_factory=FewShotConfig)
    distill: DistillConfig = dataclasses.field(default_factory=DistillConfig)
    mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)

    def to_dict(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> Config:
        cfg = cls()
        for section, values in d.items():
            for key, value in values.items():
                set_value(cfg, f"{section}.{key}", value)
        validate(cfg)
        return cfg


# Keys that may change between a run and its resumption without changing the run.
NON_IDENTITY_KEYS = {
    "train.log_every", "train.eval_every", "train.ckpt_every", "train.keep",
    "data.workers", "data.prefetch",
    # the batches a run trained on had no bad image, or the same replacements: a run stopped
    # by a bad image resumes with data.on_bad_image=skip
    "data.on_bad_image", "data.max_bad_fraction",
    "train.keep_every", "train.progress", "train.max_skipped", "data.eval_batch_size", "data.eval_splits",
    "data.data_dir", "data.calibration_split", "distill.cache_dir",
    "model.attention",  # how attention is computed, not what: the same function, resumable
    "train.loggers",  # where the metrics go, not what they are
    *(f"fewshot.{f.name}" for f in dataclasses.fields(FewShotConfig)),
    # a run may resume on another mesh or placement: the same computation, laid out differently
    *(f"mesh.{f.name}" for f in dataclasses.fields(MeshConfig)),
}


def model_options(m: ModelConfig) -> dict[str, Any]:
    """The model options changed from their defaults (``name`` excluded)."""
    defaults = ModelConfig()
    return {
        f.name: getattr(m, f.name)
        for f in dataclasses.fields(m)
        if f.name != "name" and getattr(m, f.name) != getattr(defaults, f.name)
    }


def all_keys(cfg: Config | None = None) -> list[str]:
    cfg = cfg or Config()
    return [
        f"{s.name}.{f.name}"
        for s in dataclasses.fields(cfg)
        for f in dataclasses.fields(getattr(cfg, s.name))
    ]


def _field_type(section_obj: Any, key: str) -> Any:
    return typing.get_type_hints(type(section_obj))[key]


def _type_name(tp: Any) -> str:
    if tp is Duration:
        return "a duration (steps as int, or '3ep', '50000ex', '10%')"
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def coerce(value: Any, tp: Any, key: str) -> Any:
    """Checks ``value`` against type ``tp``; converts lists to tuples and ints to floats."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    bad = ConfigError(f"{key}={value!r} has the wrong type; expected {_type_name(tp)}")
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(value, arg, key)
            except ConfigError:
                continue
        raise bad
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise bad
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise bad
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and value.strip().lower().lstrip("+-") in ("nan", "inf", "infinity"):
            return float(value)  # a float, not a finite one: the checks of its value say so
        raise bad
    if tp is str:
        if isinstance(value, str):
            return value
        raise bad
    if origin in (list, tuple):
        if origin is list and args == (str,) and isinstance(value, str) \
                and value.startswith("[") and value.endswith("]"):  # [a, b/c] from the shell
            value = [v.strip().strip("'\"") for v in value[1:-1].split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise bad
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise bad
            return tuple(coerce(v, a, key) for v, a in zip(value, args, strict=True))
        item = args[0] if args else Any
        items = [coerce(v, item, key) for v in value]
        return tuple(items) if origin is tuple else items
    raise ConfigError(f"{key}: unsupported field type {tp}")


# Names other frameworks use for settings that vistas spells differently; an unknown key
# that is one of these is answered with the vistas name rather than a spelling neighbour.
_ALIASES = {
    "weight_decay": "wd",
    "learning_rate": "lr",
    "beta1": "b1",
    "beta2": "b2",
    "epsilon": "eps",
    "optimizer": "name",
    "clip_grad_norm": "grad_clip_norm",
    "steps": "duration",
    "epochs": "duration",
    "arch": "name",
}


def _suggest(key: str, valid: list[str]) -> list[str]:
    section, _, name = key.rpartition(".")
    alias = _ALIASES.get(name)
    if alias is None:  # a misspelt alias: "lerning_rate" is "learning_rate", vistas' "lr"
        near = difflib.get_close_matches(name, list(_ALIASES), n=1, cutoff=0.8)
        alias = _ALIASES[near[0]] if near else None
    if alias:
        same = [k for k in valid if k.endswith("." + alias) and (not section or k.startswith(section + "."))]
        if same:
            return same[:1]
    return difflib.get_close_matches(key, valid, n=1, cutoff=0.5)


def _resolve(cfg: Config, key: str) -> tuple[Any, str]:
    section, dot, name = key.partition(".")
    valid = all_keys(cfg)
    if not dot or key not in valid:
        close = _suggest(key, valid)
        hint = f"; did you mean {close[0]!r}?" if close else f"; valid keys: {', '.join(valid)}"
        raise ConfigError(f"unknown config key {key!r}{hint}")
    return getattr(cfg, section), name


def set_value(cfg: Config, key: str, value: Any) -> None:
    obj, name = _resolve(cfg, key)
    setattr(obj, name, coerce(value, _field_type(obj, name), key))


def get_value(cfg: Config, key: str) -> Any:
    obj, name = _resolve(cfg, key)
    return getattr(obj, name)


def parse_literal(text: str) -> Any:
    """A Python literal, or the text itself when it is not one (bare words are strings)."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text  # TypeError: e.g. "{[]: 1}" (unhashable); the rest: malformed or too deep


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    """Applies ``key.path=value`` strings in order; the result is validated."""
    for item in overrides:
        key, eq, text = item.partition("=")
        if not eq:
            raise ConfigError(f"override {item!r} is not key=value, e.g. optim.lr=0.001")
        set_value(cfg, key.strip(), parse_literal(text.strip()))
    validate(cfg)
    return cfg


def _check(ok: bool, msg: str) -> None:
    if not ok:
        raise ConfigError(msg)


# big_vision's augmentation levels for ViT (Steiner et al., arXiv 2106.10270):
# name -> (RandAugment ops, magnitude, mixup α); see vistas.data.randaugment
AUG_LEVELS: dict[str, tuple[int, float, float]] = {
    "none": (0, 0.0, 0.0),
    "light1": (2, 0.0, 0.0),
    "light2": (2, 10.0, 0.2),
    "medium1": (2, 15.0, 0.2),
    "medium2": (2, 15.0, 0.5),
    "strong1": (2, 20.0, 0.5),
    "strong2": (2, 20.0, 0.8),
}


def augmentation(d: DataConfig) -> dict[str, Any]:
    """The augmentation a data config asks for, with ``aug_level`` resolved:
    ``randaug_ops``, ``randaug_magnitude``, ``autoaugment``, ``mixup_alpha``, ``cutmix_alpha``."""
    ops, magnitude, mixup_alpha = d.randaug_ops, d.randaug_magnitude, d.mixup_alpha
    if d.aug_level is not None:
        ops, magnitude, mixup_alpha = AUG_LEVELS[d.aug_level]
    return {"randaug_ops": ops, "randaug_magnitude": magnitude, "autoaugment": d.autoaugment,
            "mixup_alpha": mixup_alpha, "cutmix_alpha": d.cutmix_alpha}


EVERY_KEYS = ("train.log_every", "train.eval_every", "train.ckpt_every", "fewshot.every")


def _check_durations(cfg: Config) -> None:
    """Durations are well formed, a run is at least one step long, and cadences are not
    empty (units are checked here; their size in steps needs the dataset)."""
    from vistas.optim import schedules

    for key in ("train.duration", *EVERY_KEYS, "schedule.warmup", "schedule.timescale", "schedule.cooldown"):
        total = None if key == "train.duration" else 10**9  # a percent of any run: 0 only at 0%
        value = get_value(cfg, key)
        steps = schedules.parse_duration(value, name=key, steps_per_epoch=1e9,
                                         batch_size=1, total_steps=total)
        _check(key != "train.duration" or steps > 0,
               f"train.duration={cfg.train.duration!r} is empty; a run needs at least one step")
        _check(key not in EVERY_KEYS or steps > 0,
               f"{key}={value!r} is empty; give a cadence of at least one step (e.g. 100, '1ep', '10%')")


def validate(cfg: Config) -> None:
    """Checks values that a type alone cannot; each failure is one line."""
    d, m, o, s, t = cfg.data, cfg.model, cfg.optim, cfg.schedule, cfg.train
    _check(d.image_size > 0, f"data.image_size={d.image_size} must be positive")
    _check(d.channels in (1, 3), f"data.channels={d.channels} must be 1 or 3")
    _check(d.batch_size > 0, f"data.batch_size={d.batch_size} must be positive")
    _check(d.eval_batch_size > 0, f"data.eval_batch_size={d.eval_batch_size} must be positive")
    from vistas.data import transforms  # the modules that know the values check them
    from vistas.evaluate import fewshot_options
    from vistas.optim import builder
    from vistas.train import losses

    transforms.check_crop(d.crop, d.inception_area, names=("data.crop", "data.inception_area"),
                          error=ConfigError)
    _check(d.value_range[0] < d.value_range[1], f"data.value_range={d.value_range} must be (lo, hi) with lo < hi")
    transforms.check_crop_fraction(d.eval_crop_fraction, name="data.eval_crop_fraction", error=ConfigError)
    _check(d.num_train_examples is None or d.num_train_examples > 0,
           f"data.num_train_examples={d.num_train_examples} must be positive")
    _check(d.randaug_ops >= 0, f"data.randaug_ops={d.randaug_ops} must be >= 0 (0: off)")
    _check(0 <= d.randaug_magnitude <= 30, f"data.randaug_magnitude={d.randaug_magnitude} must be in [0, 30]")
    _check(not (d.autoaugment and d.randaug_ops),
           "data.autoaugment=True and data.randaug_ops > 0: choose one of them")
    _check(d.mixup_alpha >= 0 and d.cutmix_alpha >= 0,
           f"data.mixup_alpha={d.mixup_alpha} and data.cutmix_alpha={d.cutmix_alpha} must be >= 0 (0: off)")
    _check(d.aug_level is None or d.aug_level in AUG_LEVELS,
           f"data.aug_level={d.aug_level!r} is not known; use one of {', '.join(AUG_LEVELS)}")
    _check(d.aug_level is None or (d.randaug_ops == 0 and d.mixup_alpha == 0 and not d.autoaugment),
           f"data.aug_level={d.aug_level!r} sets RandAugment and mixup itself; leave "
           "data.randaug_ops, data.mixup_alpha and data.autoaugment at their defaults")
    _check(d.workers >= 0 and d.prefetch >= 0,
           f"data.workers={d.workers} and data.prefetch={d.prefetch} must be >= 0")
    _check(d.decode_size is None or d.decode_size > 0, f"data.decode_size={d.decode_size} must be positive")
    _check(d.on_bad_image in ("stop", "skip"),
           f"data.on_bad_image={d.on_bad_image!r} is not known; use stop or skip")
    _check(0 <= d.max_bad_fraction <= 1,
           f"data.max_bad_fraction={d.max_bad_fraction} must be in [0, 1]")
    _check(0 <= t.ema_decay < 1, f"train.ema_decay={t.ema_decay} must be in [0, 1) (0: no EMA)")
    _check(t.grad_accum_steps >= 1 and d.batch_size % t.grad_accum_steps == 0,
           f"train.grad_accum_steps={t.grad_accum_steps} must be >= 1 and divide "
           f"data.batch_size={d.batch_size}")
    _check(m.dropout is None or 0 <= m.dropout < 1, f"model.dropout={m.dropout} must be in [0, 1)")
    _check(m.drop_path is None or 0 <= m.drop_path < 1,
           f"model.drop_path={m.drop_path} must be in [0, 1)")
    losses.check(t.loss, t.label_smoothing)
    _check(t.keep >= 1, f"train.keep={t.keep} must be at least 1")
    _check(t.nonfinite in ("stop", "skip"), f"train.nonfinite={t.nonfinite!r} is not known; use stop or skip")
    _check(t.init_resample in ("vistas", "big_vision", "timm"), f"train.init_resample={t.init_resample!r} "
           "is not known; use vistas, big_vision or timm")
    _check(t.max_skipped >= 0, f"train.max_skipped={t.max_skipped} must be >= 0")
    from vistas.train import trackers

    trackers.check(t.loggers)
    _check_durations(cfg)
    _check(t.keep_every is None or t.keep_every > 0, f"train.keep_every={t.keep_every} must be positive")
    _check(math.isfinite(o.lr) and o.lr > 0, f"optim.lr={o.lr} must be a positive, finite number")
    _check(0 <= t.seed < 2**63, f"train.seed={t.seed} must be an integer in [0, 2**63)")
    f = cfg.fewshot
    fewshot_options.check_options(datasets=None, shots=f.shots, seeds=f.seeds, l2=f.l2, l2_grid=f.l2_grid,
                          max_test_examples=f.max_test_examples, prefix="fewshot.")
    x = cfg.distill
    _check(x.mode in DISTILL_MODES,
           f"distill.mode={x.mode!r} is not known; use one of {', '.join(DISTILL_MODES)}")
    _check(x.mode in ("off", "labels") or bool(x.teachers),
           f"distill.mode={x.mode!r} needs teachers: --set distill.teachers=[RUN_DIR, ...]")
    _check(x.temperature > 0, f"distill.temperature={x.temperature} must be positive")
    _check(x.label_weight >= 0, f"distill.label_weight={x.label_weight} must be >= 0")
    _check(x.mixup_alpha >= 0, f"distill.mixup_alpha={x.mixup_alpha} must be >= 0 (0: no mixup)")
    _check(x.view_size is None or x.view_size > 0, f"distill.view_size={x.view_size} must be positive")
    _check(x.views_per_example >= 1, f"distill.views_per_example={x.views_per_example} must be at least 1 "
           "(the views of each training image the teacher annotates once: distill.mode=annotated)")
    _check(x.mode == "off" or t.loss == "softmax_xent",
           f"train.loss={t.loss!r}: distillation matches softmax distributions; use softmax_xent")
    _check(x.mode == "off" or not (d.mixup_alpha or d.cutmix_alpha),
           f"data.mixup_alpha={d.mixup_alpha}, data.cutmix_alpha={d.cutmix_alpha}: a distillation "
           "run mixes the view its teachers see itself; set distill.mixup_alpha instead")
    _check(o.sam_rho >= 0, f"optim.sam_rho={o.sam_rho} must be >= 0 (0 turns SAM off)")
    builder.check_mu_dtype(o.mu_dtype)
    del s
