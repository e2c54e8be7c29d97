"""An NFNet-F0-shaped network trained from scratch on Fashion-MNIST, as NFNets are trained:
SGD with Nesterov momentum and adaptive gradient clipping, no normalisation layers.

Model: ``nfnet-F0`` (stage depths 1, 2, 6, 3; GELU; squeeze-excite; stochastic depth 0.1
and dropout 0.2 as published for F0) narrowed for 28x28 grayscale images: stage widths
32, 64, 192, 192 (F0 / 8), group width 16, stem 8, 16, 32 channels: 1,094,174 parameters.
Optimizer: SGD, Nesterov momentum 0.9, lr 0.2 (batch 128), AGC λ = 0.04 (the classifier
not clipped), no global-norm clipping, decoupled wd 1e-5 on kernels, 5% warmup then
cosine; 2 epochs (938 steps), horizontal flips only.

Command: ``vistas train --preset fashion_mnist_nfnet --workdir runs/nfnet``.
Runtime: 6 min 50 s of wall time on a 2-core CPU shared with other jobs (compilation
included), 300-550 img/s while training.
Result: 86.73% test top-1 on the 10,000 Fashion-MNIST test images (83.08% after epoch
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
    m.name = "nfnet-F0"
    m.widths, m.group_width, m.stem_widths = [32, 64, 192, 192], 16, [8, 16, 32]
    o = cfg.optim
    o.name, o.momentum, o.sgd_nesterov = "sgd", 0.9, True
    o.lr, o.wd = 0.2, 1e-5
    o.agc_clip, o.grad_clip_norm = 0.04, None
    cfg.schedule.warmup, cfg.schedule.decay = "5%", "cosine"
    t = cfg.train
    t.duration, t.log_every, t.eval_every, t.ckpt_every = "2ep", 50, "1ep", 500
    return cfg
