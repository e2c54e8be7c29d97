"""ViT-g/14 scaling run as in *Scaling Vision Transformers* (Zhai, Kolesnikov, Houlsby, Beyer;
arXiv 2106.04560): the paper's Adafactor, an rsqrt schedule with a linear cooldown, and a
head weight decay 100 times the body's. Full scale: not run here.

Data: the paper trains on JFT-3B, which is not public; this preset points at a packed
multi-class image dataset (``vistas data pack SRC data/upstream``) of the user's.
224 px inception crop and flip, no other augmentation.
Model: ViT-g/14 (1.01B parameters), GAP head, head bias -10, sigmoid cross-entropy.
Optimizer: ``adafactor_bv`` (factored second moment, bf16 momentum, β2 capped at 0.999,
no parameter scaling), lr 8e-4, grad clip 1.0; weight decay 3.0 on the head kernel and
0.03 on the other kernels as the paper writes them, i.e. multiplied by the learning rate
(vistas' decoupled decay is not, so ``optim.wd`` = 0.03 x lr with a x100 head rule);
10k warmup steps, rsqrt decay (timescale 10k), 50k-step linear cooldown; batch 32,768.
The length (500,000 steps) is a placeholder for the user's budget: the rsqrt schedule
runs "forever", and ``vistas cooldown`` branches other lengths from kept checkpoints.
These values are our reading of the paper; check them against it before a large run.

Command: ``vistas train --preset jft_vit_g14 --set data.path=PATH/TO/SHARDS``.
Published: the paper reports ViT-g/14 and ViT-G/14 (90.45% ImageNet top-1 after
fine-tuning for G/14) trained on TPUv3 pods. Not run here. Its optimizer state, checked
without running it (``vistas optim-memory --model vit-g/14 --optimizer adam adafactor_bv``):
1,012,608,616 parameters; Adam 8.1 GB of state, this Adafactor 2.0 GB.
Reduced variant here: ``fashion_mnist_vit_g14_recipe``.
"""

from vistas.config import Config


def config() -> Config:
    cfg = Config()
    d = cfg.data
    d.dataset, d.path, d.image_size, d.channels = "array_record", "data/upstream", 224, 3
    d.train_split, d.eval_splits = "train[50000:]", ["train[:50000]"]
    d.batch_size, d.eval_batch_size = 32_768, 4096
    d.crop, d.flip = "inception", True
    d.workers = 8
    m = cfg.model
    m.name, m.pool, m.head_bias_init = "vit-g/14", "gap", -10.0
    m.dtype = "bfloat16"  # bfloat16 compute, float32 parameters (the accelerators' default)
    o = cfg.optim
    o.name, o.lr, o.b1, o.grad_clip_norm = "adafactor_bv", 8e-4, 0.9, 1.0
    o.wd, o.wd_mults = 0.03 * o.lr, [(".*head/kernel", 100.0), (".*/kernel", 1.0)]
    s = cfg.schedule
    s.warmup, s.decay, s.timescale, s.cooldown = 10_000, "rsqrt", 10_000, 50_000
    t = cfg.train
    t.duration, t.loss = 500_000, "sigmoid_xent"
    t.log_every, t.eval_every, t.ckpt_every, t.keep_every = 100, 5000, 1000, 50_000
    return cfg
