"""Distilling BiT-R152x2 into a BiT-R50x1 on ImageNet-1k by function matching ("Knowledge
distillation: a good teacher is patient and consistent", Beyer et al., arXiv 2106.05237),
as big_vision's ``proj/distill/bit_i1k`` config. Full scale: not run here.

Data: an ImageNet-1k image folder packed into shards (``vistas data pack IMAGENET_DIR
data/imagenet2012``), trained on ``train[:98%]``, evaluated on ``val``. Teacher and student
see the same inception crop (224 px), flip and mixup (α = 1, every batch); the loss is the
KL divergence at temperature 1 (``distill.mode=consistent``).
Teacher: a BiT-M R152x2 run fine-tuned on ImageNet at 224 px (a vistas run directory, e.g.
from ``vistas finetune`` of an ImageNet-21k BiT run), given as ``distill.teachers``.
Student: ``bit-R50x1``. Adam (bf16 first moment), lr 0.03, decoupled wd 3e-4, grad clip
1.0, 5,000 warmup steps then cosine, batch 4096, 1200 epochs (big_vision's "good
middle-ground"; the paper reports that longer keeps improving).

Command: ``vistas distill --preset imagenet_distill_bit_r50 --set
data.path=PATH/TO/SHARDS distill.teachers=[PATH/TO/R152x2_RUN]``.
Published: 82.8% ImageNet top-1 at 224 px for the best function-matching ResNet-50 of
the paper; big_vision notes that 300 epochs take about 15 h on a TPUv3-32. Not run here.
Reduced variant here: ``fashion_mnist_distill_student`` with a ``fashion_mnist_distill_teacher``
run (docs/distillation.md).
"""

from vistas.config import Config


def config() -> Config:
    cfg = Config()
    d = cfg.data
    d.dataset, d.path, d.image_size, d.channels = "array_record", "data/imagenet2012", 224, 3
    d.train_split, d.eval_splits = "train[:98%]", ["val"]
    d.batch_size, d.eval_batch_size = 4096, 1000
    d.crop, d.flip, d.eval_crop_fraction = "inception", True, 224 / 256
    d.workers = 8
    cfg.model.name = "bit-R50x1"
    o = cfg.optim
    o.name, o.mu_dtype, o.lr, o.wd, o.grad_clip_norm = "adam", "bfloat16", 0.03, 3e-4, 1.0
    cfg.schedule.warmup, cfg.schedule.decay = 5000, "cosine"
    x = cfg.distill
    x.mode, x.temperature, x.mixup_alpha = "consistent", 1.0, 1.0
    x.teachers = ["runs/bit_r152x2_imagenet"]  # replace with the teacher run(s)
    t = cfg.train
    t.duration, t.log_every, t.eval_every, t.ckpt_every = "1200ep", 50, 2000, 1000
    return cfg
