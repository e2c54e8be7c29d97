"""The ViT-S/16 "better baseline" recipe (``imagenet_vit_s16``) reduced to Fashion-MNIST.

Kept from the recipe: Adam with a bf16 first moment, lr 1e-3, decoupled wd 1e-4, grad
clip 1.0, warmup over 9% of training (10k of 112,590 steps) then cosine, GAP head with a
tanh representation layer, 2-D sin-cos position embedding, RandAugment(2, 10) and mixup
α = 0.2 ("light2"). Changed: the data (28x28 gray, no crop), the model (the demo's ViT:
patch 7, width 128, depth 4), batch 128, 3 epochs (1,407 steps).

Command: ``vistas train --preset fashion_mnist_vit_s16_recipe --workdir runs/vit_s16_recipe``.
Runtime and result: see docs/recipes.md (measured on a 2-core CPU shared with other jobs).
"""

from vistas.presets import _reduced, imagenet_vit_s16


def config():
    return _reduced.fashion_mnist(
        imagenet_vit_s16.config(), warmup="9%", duration="3ep",
        model=dict(name="vit-S/7", width=128, depth=4, mlp_dim=512, num_heads=4, pool="gap",
                   posemb="sincos2d", representation_size=128))
