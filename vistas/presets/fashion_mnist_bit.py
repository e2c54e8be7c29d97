"""A BiT ResNet-50x1-shaped network (ResNet-v2, GroupNorm + weight standardisation) trained
from scratch on Fashion-MNIST.

Model: ``bit-R50x1`` (stage depths 3, 4, 6, 3; 7x7/2 root convolution and 3x3/2 max pool;
zero-initialised head) with bottleneck widths 16, 32, 64, 128 (R50x1 / 4) for 28x28
grayscale images: 1,482,618 parameters.
Optimizer: SGD, momentum 0.9, lr 0.1 (batch 128), global-norm clipping at 1, decoupled wd
1e-5 on kernels, 5% warmup then cosine; 2 epochs (938 steps), horizontal flips only.

Command: ``vistas train --preset fashion_mnist_bit --workdir runs/bit``.
Runtime: 8 min 19 s of wall time on a 2-core CPU shared with other jobs (compilation
included), 250-530 img/s while training.
Result: 87.03% test top-1 on the 10,000 Fashion-MNIST test images (83.40% after epoch
1); the run is deterministic given its seed.
"""

from vistas.config import Config


def config() -> Config:
    cfg = Config()
    d = cfg.data
    d.dataset, d.image_size, d.channels = "fashion_mnist", 28, 1
    d.batch_size, d.eval_batch_size = 128, 1000
    d.eval_splits = ["test"]
    d.crop, d.flip = "none", True
    m = cfg.model
    m.name, m.widths = "bit-R50x1", [16, 32, 64, 128]
    o = cfg.optim
    o.name, o.momentum = "sgd", 0.9
    o.lr, o.wd = 0.1, 1e-5
    cfg.schedule.warmup, cfg.schedule.decay = "5%", "cosine"
    t = cfg.train
    t.duration, t.log_every, t.eval_every, t.ckpt_every = "2ep", 50, "1ep", 500
    return cfg
