"""A seconds-long run of a tiny ViT on 2,048 Fashion-MNIST images: checks an install.

Command: ``vistas train --preset smoke --workdir runs/smoke``.
Runtime: about 15 s on a 2-core CPU (compilation included).
Result: learns well above chance (10%); not a benchmark.
"""

from vistas.config import Config


def config() -> Config:
    cfg = Config()
    d = cfg.data
    d.dataset, d.image_size, d.channels = "fashion_mnist", 28, 1
    d.num_train_examples, d.batch_size, d.eval_batch_size = 2048, 64, 1000  # both divisible by 8 devices
    d.eval_splits = ["test[:1000]"]
    d.crop, d.flip = "none", False
    m = cfg.model
    m.name, m.width, m.depth, m.mlp_dim, m.num_heads = "vit-mu/7", 64, 2, 128, 2
    cfg.optim.lr, cfg.optim.wd = 3e-3, 1e-4
    cfg.schedule.warmup, cfg.schedule.decay = 10, "cosine"
    t = cfg.train
    t.duration, t.log_every, t.eval_every, t.ckpt_every = 64, 16, 64, 32
    return cfg
