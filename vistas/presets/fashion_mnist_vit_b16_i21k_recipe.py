"""The ViT-B/16 ImageNet-21k recipe (``imagenet21k_vit_b16``) reduced to Fashion-MNIST.

Kept: sigmoid cross-entropy with head bias -10, Adam (bf16 first moment), lr 1e-3,
decoupled wd 1e-4, grad clip 1.0, cosine after a short warmup (3%), GAP head, learned
position embedding, RandAugment(2, 10) and mixup 0.2 ("light2"). Changed: the data, the
model (the demo's ViT), batch 128, 3 epochs.

Command: ``vistas train --preset fashion_mnist_vit_b16_i21k_recipe --workdir runs/vit_b16_recipe``.
Runtime and result: not measured yet (see docs/recipes.md for the measured variants).
"""

from vistas.presets import _reduced, imagenet21k_vit_b16


def config():
    return _reduced.fashion_mnist(
        imagenet21k_vit_b16.config(), warmup="3%", duration="3ep",
        model=dict(name="vit-S/7", width=128, depth=4, mlp_dim=512, num_heads=4, pool="gap",
                   head_bias_init=-10.0))
