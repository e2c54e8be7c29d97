"""The default demo: a small ViT trained from scratch on Fashion-MNIST.

Command: ``vistas train --preset fashion_mnist_vit --workdir runs/demo`` (or ``make demo``).
Runtime: measured below on a 2-core CPU.
Result: measured below.
"""

from vistas.config import Config


def config() -> Config:
    cfg = Config()
    d = cfg.data
    d.dataset, d.image_size, d.channels = "fashion_mnist", 28, 1
    d.batch_size, d.eval_batch_size = 128, 1000
    d.eval_splits = ["test"]
    d.crop, d.flip = "none", True  # crops slow learning down in a 5-epoch run
    m = cfg.model
    m.name, m.width, m.depth, m.mlp_dim, m.num_heads = "vit-S/7", 128, 4, 512, 4
    o = cfg.optim
    o.lr, o.wd = 2e-3, 1e-4
    cfg.schedule.warmup, cfg.schedule.decay = "3%", "cosine"
    t = cfg.train
    t.duration, t.log_every, t.eval_every, t.ckpt_every = "5ep", 50, "1ep", 500
    return cfg
