"""ViT-B/16 pre-trained on ImageNet-21k as big_vision's ``vit_i21k`` config (AugReg, Steiner
et al., arXiv 2106.10270). Full scale: not run here.

Data: the ImageNet-21k (fall 2011, 21,843 classes) image folder packed into shards
(``vistas data pack IMAGENET21K_DIR data/imagenet21k``; a folder without split folders
becomes the split ``train``). As in big_vision, the first 51,200 images are held out: the
first 25,600 are the evaluation split, the rest of the first 51,200 are left unused and
training uses ``train[51200:]``. Inception crop to 224 px, flip, RandAugment(2, 10) and
mixup α = 0.2 (the "light2" level big_vision uses for B/16); evaluation resizes to 256
and crops the central 224.
Model: ViT-B/16, GAP head, learned position embedding, head bias -10 with sigmoid
cross-entropy. Adam (bf16 first moment), lr 1e-3, decoupled wd 1e-4, grad clip 1.0, 10k
warmup steps then cosine, batch 4096, 300 epochs.

Command: ``vistas train --preset imagenet21k_vit_b16 --set data.path=PATH/TO/SHARDS``.
Published: the AugReg paper trains this setting on TPUv3 pods and releases its checkpoints
(their ImageNet-1k fine-tuning results are in its tables); vistas has not run it, and no
figure is claimed here. With fewer devices, ``train.grad_accum_steps=k`` keeps batch 4096.
Reduced variant here: ``fashion_mnist_vit_b16_i21k_recipe``.
"""

from vistas.config import Config


def config() -> Config:
    cfg = Config()
    d = cfg.data
    d.dataset, d.path, d.image_size, d.channels = "array_record", "data/imagenet21k", 224, 3
    d.train_split, d.eval_splits = "train[51200:]", ["train[:25600]"]
    d.batch_size, d.eval_batch_size = 4096, 1024
    d.crop, d.flip, d.eval_crop_fraction = "inception", True, 224 / 256
    d.aug_level = "light2"
    d.workers = 8
    m = cfg.model
    m.name, m.pool, m.posemb, m.head_bias_init = "vit-B/16", "gap", "learn", -10.0
    m.dtype = "bfloat16"  # bfloat16 compute, float32 parameters (the accelerators' default)
    o = cfg.optim
    o.name, o.mu_dtype, o.lr, o.wd, o.grad_clip_norm = "adam", "bfloat16", 1e-3, 1e-4, 1.0
    cfg.schedule.warmup, cfg.schedule.decay = 10_000, "cosine"
    t = cfg.train
    t.duration, t.loss = "300ep", "sigmoid_xent"
    t.log_every, t.eval_every, t.ckpt_every = 50, 1000, 1000
    return cfg
