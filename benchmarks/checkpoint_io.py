"""Checkpoint save and restore time for a ViT-B/16 training state (parameters + AdamW moments).

    python benchmarks/checkpoint_io.py [--model vit-B/16] [--repeats 3] [--dir runs/ckpt_bench] [--json out.json]

The state (parameters, both Adam moments, step) is built abstractly and filled with random
values, then saved with ``vistas.checkpoint.Checkpointer`` (orbax, asynchronous) and
restored into the same shapes. Reported, as medians over repeats (min-max): the time the
training loop is blocked by ``save`` (the copy to host memory; the write continues in the
background), the time until the checkpoint is committed on disk (``wait``), and the restore
time; MiB/s relative to the state's size. The baseline in the same run writes the same
arrays with ``numpy.save`` into one file each and reads them back (the disk's plain
throughput with no checkpoint format), and the table gives vistas / baseline. The digests
a checkpoint records of its arrays (``vistas.checkpoint.array_digests``) are timed alone,
and the same save is timed once more per repeat without them: their cost.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shutil
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vistas import checkpoint
from vistas.models import registry


def make_state(model: str) -> dict:
    m = registry.create(model, num_classes=1000, image_size=224, channels=3)
    params = nnx.to_pure_dict(nnx.state(m, nnx.Param))
    rng = np.random.default_rng(0)
    rand = lambda x: jnp.asarray(rng.normal(size=x.shape).astype(np.float32))  # noqa: E731
    return {"params": params, "mu": jax.tree.map(rand, params), "nu": jax.tree.map(rand, params),
            "step": jnp.asarray(1000, jnp.int32)}


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="vit-B/16")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--dir", default="runs/ckpt_bench")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    state = make_state(args.model)
    leaves = jax.tree.leaves(state)
    mib = sum(x.nbytes for x in leaves) / 2**20
    print(f"{args.model}: state of {mib:.0f} MiB in {len(leaves)} arrays")
    root = pathlib.Path(args.dir)
    shutil.rmtree(root, ignore_errors=True)
    times: dict[str, list[float]] = {k: [] for k in ("blocked", "committed", "restore", "np_save", "np_load",
                                                     "digests", "blocked_plain", "committed_plain")}
    checkpoint.array_digests(state)  # compiled once, as in a run's first save
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)
    for r in range(args.repeats):
        ck = checkpoint.Checkpointer(root / f"orbax_{r}", keep=1)
        t0 = time.perf_counter()
        ck.save(1, state, {"epoch": 1})
        t1 = time.perf_counter()
        ck.wait()
        t2 = time.perf_counter()
        restored, _ = ck.restore(1, abstract)
        jax.block_until_ready(restored)
        t3 = time.perf_counter()
        ck.close()
        assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(restored), leaves, strict=True))
        times["blocked"].append(t1 - t0)
        times["committed"].append(t2 - t0)
        times["restore"].append(t3 - t2)
        npdir = root / f"numpy_{r}"
        npdir.mkdir(parents=True)
        t0 = time.perf_counter()
        for i, x in enumerate(leaves):
            with open(npdir / f"{i}.npy", "wb") as f:
                np.save(f, np.asarray(x))
                f.flush()
        t1 = time.perf_counter()
        back = [jnp.asarray(np.load(npdir / f"{i}.npy")) for i in range(len(leaves))]
        jax.block_until_ready(back)
        t2 = time.perf_counter()
        times["np_save"].append(t1 - t0)
        times["np_load"].append(t2 - t1)
        shutil.rmtree(root / f"orbax_{r}")
        shutil.rmtree(npdir)
        t0 = time.perf_counter()
        checkpoint.array_digests(state)
        times["digests"].append(time.perf_counter() - t0)
        digests, checkpoint.array_digests = checkpoint.array_digests, lambda tree: {}
        try:  # the same save without digests
            ck = checkpoint.Checkpointer(root / f"plain_{r}", keep=1)
            t0 = time.perf_counter()
            ck.save(1, state, {"epoch": 1})
            t1 = time.perf_counter()
            ck.wait()
            times["blocked_plain"].append(t1 - t0)
            times["committed_plain"].append(time.perf_counter() - t0)
            ck.close()
        finally:
            checkpoint.array_digests = digests
        shutil.rmtree(root / f"plain_{r}")
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"\n| {args.model} state, {mib:.0f} MiB | seconds, median (min-max) | MiB/s | vs numpy baseline |")
    print("| --- | ---: | ---: | ---: |")
    rows = [("save: loop blocked", "blocked", None), ("save: committed on disk", "committed", "np_save"),
            ("restore (digests checked)", "restore", "np_load"), ("baseline numpy.save", "np_save", None),
            ("baseline numpy.load", "np_load", None), ("digests of the state alone", "digests", None),
            ("save without digests: loop blocked", "blocked_plain", None),
            ("save without digests: committed", "committed_plain", None)]
    for label, key, base in rows:
        ratio = f"{med[base] / med[key]:.2f}x" if base else ""
        print(f"| {label} | {spread(times[key])} | {mib / med[key]:.0f} | {ratio} |")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps({"model": args.model, "mib": mib, "times": times}, indent=2))
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
