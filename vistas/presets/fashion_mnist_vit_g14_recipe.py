"""The ViT-g/14 scaling recipe (``jft_vit_g14``) reduced to Fashion-MNIST.

Kept: the paper's Adafactor (``adafactor_bv``), warmup then rsqrt decay with a linear
cooldown over the last 20%, weight decay 0.03 x lr on the body and 100 times that on the
head, sigmoid cross-entropy with head bias -10, GAP head. Changed: the data, the model (the
demo's ViT), batch 128, lr 1e-3, 3 epochs (rsqrt timescale 10% of training).

Command: ``vistas train --preset fashion_mnist_vit_g14_recipe --workdir runs/vit_g14_recipe``.
Runtime and result: not measured yet (see docs/recipes.md for the measured variants).
"""

from vistas.presets import _reduced, jft_vit_g14


def config():
    cfg = _reduced.fashion_mnist(
        jft_vit_g14.config(), warmup="5%", duration="3ep",
        model=dict(name="vit-S/7", width=128, depth=4, mlp_dim=512, num_heads=4, pool="gap",
                   head_bias_init=-10.0))
    cfg.optim.lr = 1e-3
    cfg.optim.wd = 0.03 * cfg.optim.lr
    cfg.schedule.timescale, cfg.schedule.cooldown = "10%", "20%"
    cfg.train.keep_every = None
    return cfg
