"""ViT-S/16 "better baseline" on ImageNet-1k (Beyer, Zhai, Kolesnikov; arXiv 2205.01580),
as big_vision's ``vit_s16_i1k`` config. Full scale: not run here.

Data: an ImageNet-1k image folder packed into shards (``vistas data pack IMAGENET_DIR
data/imagenet2012``, with ``train/`` and ``val/`` class folders), trained on the first 99%
of ``train`` (the last 1% is "minival"), evaluated on minival and ``val``. Inception crop
to 224 px, flip, RandAugment(2, 10), mixup α = 0.2 (big_vision's "light2"); evaluation
resizes to 256 and crops the central 224.
Model: ViT-S/16, GAP head with a tanh representation layer (width 384), fixed 2-D
sin-cos position embedding. Adam (bf16 first moment), lr 1e-3, decoupled wd 1e-4, grad
clip 1.0, 10k warmup steps then cosine, batch 1024, 90 epochs (112,590 steps).

Command: ``vistas train --preset imagenet_vit_s16 --set data.path=PATH/TO/SHARDS``.
Hardware and result as published: 76.5% ImageNet top-1 in 6-7 hours on a TPUv3-8 (8
cores); 300 epochs reach about 80%. With fewer devices, ``train.grad_accum_steps=k``
gives the same updates with micro-batches of 1024/k.
Reduced variant here: ``fashion_mnist_vit_s16_recipe``.
"""

from vistas.config import Config


def config() -> Config:
    cfg = Config()
    d = cfg.data
    d.dataset, d.path, d.image_size, d.channels = "array_record", "data/imagenet2012", 224, 3
    d.train_split, d.eval_splits = "train[:99%]", ["train[99%:]", "val"]
    d.batch_size, d.eval_batch_size = 1024, 1000
    d.crop, d.inception_area, d.flip, d.eval_crop_fraction = "inception", (0.05, 1.0), True, 224 / 256
    d.aug_level = "light2"  # RandAugment(2, 10) and mixup 0.2, as the config spells out
    d.workers = 8  # decoding and RandAugment processes per host
    m = cfg.model
    m.name, m.pool, m.posemb, m.representation_size = "vit-S/16", "gap", "sincos2d", 384
    m.dtype = "bfloat16"  # bfloat16 compute, float32 parameters (the accelerators' default)
    o = cfg.optim
    o.name, o.mu_dtype, o.lr, o.wd, o.grad_clip_norm = "adam", "bfloat16", 1e-3, 1e-4, 1.0
    cfg.schedule.warmup, cfg.schedule.decay = 10_000, "cosine"
    t = cfg.train
    t.duration, t.loss = "90ep", "softmax_xent"
    t.log_every, t.eval_every, t.ckpt_every = 50, 1000, 1000
    return cfg
