"""NFNet-F0 on ImageNet-1k (Brock, De, Smith, Simonyan; arXiv 2102.06171). Full scale: not
run here.

Data: an ImageNet-1k image folder packed into shards (``vistas data pack IMAGENET_DIR
data/imagenet2012``). Inception crop to 192 px (F0's training resolution), flip,
RandAugment, then on the device mixup (α = 0.2) or CutMix (α = 1.0), one of them per batch
(the reference applies mixup to one half of each batch and CutMix to the other); label
smoothing 0.1. RandAugment(4, 5) is our reading of the reference code's F0 setting
("405"); the paper states that the magnitude grows with the model size.
Model: ``nfnet-F0`` (dropout 0.2, stochastic depth 0.25). SGD with Nesterov momentum 0.9,
lr 0.1 per 256 examples (1.6 at batch 4096), decoupled wd 2e-5, adaptive gradient
clipping λ = 0.01 (classifier excluded) and no other clipping, 5 warmup epochs then
cosine, 360 epochs; an EMA of the weights (decay 0.99999) is kept and evaluated
(``ema/eval/...`` metrics).

Command: ``vistas train --preset imagenet_nfnet_f0 --set data.path=PATH/TO/SHARDS``.
Published: 83.6% ImageNet top-1 (evaluated at 256 px; this preset evaluates at its
training size 192: run ``vistas evaluate`` with ``data.image_size=256`` for the paper's
setting), trained on TPUv3. Not run here.
Reduced variant here: ``fashion_mnist_nfnet_f0_recipe``.
"""

from vistas.config import Config


def config() -> Config:
    cfg = Config()
    d = cfg.data
    d.dataset, d.path, d.image_size, d.channels = "array_record", "data/imagenet2012", 192, 3
    d.train_split, d.eval_splits = "train", ["val"]
    d.batch_size, d.eval_batch_size = 4096, 1000
    d.crop, d.flip, d.eval_crop_fraction = "inception", True, 0.875
    d.randaug_ops, d.randaug_magnitude = 4, 5.0
    d.mixup_alpha, d.cutmix_alpha = 0.2, 1.0
    d.workers = 8
    m = cfg.model
    m.name, m.dropout, m.drop_path = "nfnet-F0", 0.2, 0.25
    o = cfg.optim
    o.name, o.momentum, o.sgd_nesterov = "sgd", 0.9, True
    o.lr, o.wd = 1.6, 2e-5
    o.agc_clip, o.grad_clip_norm = 0.01, None
    cfg.schedule.warmup, cfg.schedule.decay = "5ep", "cosine"
    t = cfg.train
    t.duration, t.loss, t.label_smoothing, t.ema_decay = "360ep", "softmax_xent", 0.1, 0.99999
    t.log_every, t.eval_every, t.ckpt_every = 50, 2000, 1000
    return cfg
