"""The teacher of the distillation experiment (docs/distillation.md): the default ViT of
``fashion_mnist_vit`` (width 128, depth 4, 803,082 parameters) trained for 3 epochs.

Command: ``vistas train --preset fashion_mnist_distill_teacher --workdir runs/distill/teacher``.
Runtime: 17 min of wall time on a 2-core CPU shared with several other jobs (140-470 img/s
while training).
Result: 86.41% test top-1 on the 10,000 Fashion-MNIST test images (81.79% and 84.64% after
epochs 1 and 2); deterministic given its seed.
"""

from vistas.presets import fashion_mnist_vit


def config():
    cfg = fashion_mnist_vit.config()
    cfg.train.duration = "3ep"
    return cfg
