"""The teacher of the distillation experiment (docs/distillation.md): the default ViT of
``fashion_mnist_vit`` (width 128, depth 4, 803,082 parameters) trained for 3 epochs.

Command: ``vistas train --preset fashion_mnist_distill_teacher --workdir runs/distill/teacher``.
Runtime: measured in docs/distillation.md.
Result: measured in docs/distillation.md.
"""

from vistas.presets import fashion_mnist_vit


def config():
    cfg = fashion_mnist_vit.config()
    cfg.train.duration = "3ep"
    return cfg
