"""The default demo: a small ViT trained from scratch on Fashion-MNIST.

Model: ViT with patch 7 (16 tokens of a 28x28 image), width 128, depth 4, MLP 512,
4 heads, GAP head: 803,082 parameters. Adam (lr 2e-3, decoupled wd 1e-4 on kernels),
3% warmup then cosine, batch 128, 5 epochs (2,344 steps), horizontal flips only.

Command: ``make demo``, i.e. ``vistas train --preset fashion_mnist_vit --workdir runs/demo``.
Runtime: 4 min 44 s of wall time for ``vistas train --preset fashion_mnist_vit`` on an idle 2-core
CPU (data check and compilation included), about 1,150 img/s while training (9 min 03 s and
610 img/s before the XLA:CPU speed-ups of docs/performance.md).
Result: 87.90% test top-1 on the 10,000 Fashion-MNIST test images (per epoch: 80.5,
84.0, 85.3, 87.6, 87.9); the run is deterministic given its seed.
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
