"""The ViT-22B block at demo scale: the ``fashion_mnist_vit`` model and recipe with the
parallel block, QK-normalisation and bias-free QKV projections and LayerNorms.

Model: ViT with patch 7, width 128, depth 4, MLP 512, 4 heads, GAP head, each block
``x + Attn(LN(x)) + MLP(LN(x))`` from one scale-only LayerNorm, queries and keys
LayerNorm-ed per head, MLP biases kept: 800,138 parameters (the standard block: 803,082).
Adam (lr 2e-3, decoupled wd 1e-4 on kernels), 3% warmup then cosine, batch 128,
horizontal flips only, 2 epochs (938 steps) so that the comparison stays short.

Command: ``vistas train --preset fashion_mnist_vit22b --workdir runs/vit22b``.
The standard block under the same settings:
``vistas train --preset fashion_mnist_vit --set train.duration=2ep --workdir runs/vit_std``.
Runtime: 22 min 02 s of wall time on a 2-core CPU heavily shared with other jobs (about
100 img/s; compilation included); the standard block: 22 min 25 s. (The demo preset,
same model, measured about 610 img/s on a quiet machine.)
Result: 86.86% test top-1 on the 10,000 Fashion-MNIST test images (83.40% after epoch 1);
the standard block: 85.53% (82.46%). One run each, seed 0 (see docs/models.md).
"""

from vistas import presets


def config():
    cfg = presets.get("fashion_mnist_vit")
    m = cfg.model
    m.parallel, m.qk_norm, m.qkv_bias, m.norm_bias = True, True, False, False
    cfg.train.duration = "2ep"
    return cfg
