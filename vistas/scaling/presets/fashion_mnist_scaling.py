"""Scaling study on Fashion-MNIST: 4 ViT sizes x 3 training-set sizes x 3 step budgets.

Models (patch 7, 16 tokens of a 28x28 image, GAP head): width/depth/MLP/heads
16/1/64/2, 32/1/128/2, 64/2/256/2 and 96/2/384/3.
Training sets: seeded subsets of 1,000 and 5,000 images and the full 60,000.
Budgets: 250, 500 and 1,000 steps of batch 64 (16k to 64k examples seen). Adam lr 2e-3,
50 warmup steps, rsqrt decay (timescale 100 steps); every budget is a linear cooldown
over its last 20% branched from one rsqrt run per (model, data size) pair (36 members
from 12 source runs). Held-out error: the 10,000 Fashion-MNIST test images; few-shot:
10-shot linear error on the MNIST subset (mnist_5k).

Command: ``vistas sweep run fashion_mnist_scaling --out runs/scaling [--parallel 2]``, then
``vistas fit runs/scaling/results.csv --plot docs/scaling_compute.png``.
Runtime: about 54 min of wall time on a 2-core CPU shared with four other jobs (1.28
device-hours summed over the members).
Result: 9 runs on the error-vs-compute frontier, from 43.0% test error (w16d1, 7.3e9
FLOPs) to 16.3% (w96d2 on the full set, 1.5e12 FLOPs); fitted E = 4.66e6·(C + 1.33e10)^-0.70
+ 0.149 (c in [0.113, 0.171]), whose extrapolation from the small models fails; details in
docs/scaling.md.
"""


def _vit(width: int, depth: int, mlp: int, heads: int) -> dict:
    return {"name": f"w{width}d{depth}",
            "set": [f"model.width={width}", f"model.depth={depth}", f"model.mlp_dim={mlp}",
                    f"model.num_heads={heads}"]}


def spec() -> dict:
    return {
        "name": "fashion_mnist_scaling",
        "preset": "fashion_mnist_vit",
        "set": [
            "model.name='vit-S/7'", "data.batch_size=64", "data.eval_batch_size=1000",
            "schedule.warmup=50", "schedule.timescale=100", "train.log_every=50",
            "train.eval_every=100000", "train.ckpt_every=200", "train.progress=False",
            "fewshot.datasets=['mnist_5k']", "fewshot.shots=[10]", "fewshot.seeds=2",
            "fewshot.every=100000",
        ],
        "models": [_vit(16, 1, 64, 2), _vit(32, 1, 128, 2), _vit(64, 2, 256, 2), _vit(96, 2, 384, 3)],
        "data_sizes": [1000, 5000, "full"],
        "budgets": [250, 500, 1000],
        "cooldown": 0.2,
    }
