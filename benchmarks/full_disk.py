"""A real full disk (ENOSPC) under a training run: a tiny tmpfs (needs root) holds the run.

    sudo python benchmarks/full_disk.py

Trains a tiny ViT for 16 steps in a tmpfs (a checkpoint every 4 steps, the last two kept),
removes checkpoint 16 (as if the run had been stopped after step 12), shrinks the
filesystem to what is used plus 48 KiB, resumes, and prints the error line, the exit status
and the checkpoint that still loads; then grows the filesystem back and resumes again.
tests/reliability/test_full_disk.py checks the same with a file-size limit, which needs no
privileges. Results: docs/reliability.md.
"""

import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

SETS = ["model.depth=1", "model.width=32", "model.mlp_dim=64", "model.num_heads=2",
        "data.num_train_examples=512", "data.batch_size=32", "schedule.warmup=2",
        "data.eval_splits=['test[:200]']", "data.eval_batch_size=200", "train.progress=False",
        "train.duration=16", "train.ckpt_every=4", "train.log_every=1", "train.eval_every=16"]


def train(workdir, *extra):
    cmd = [sys.executable, "-m", "vistas.cli", "train", "--preset", "smoke", "--workdir", str(workdir),
           "--quiet", "--set", *SETS, *extra]
    return subprocess.run(cmd, capture_output=True, text=True)


def main() -> int:
    from vistas import checkpoint as ckpt_lib

    mnt = pathlib.Path(tempfile.mkdtemp(prefix="vistas-full-disk-"))
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mnt)], check=True)
    try:
        run = mnt / "run"
        first = train(run)
        assert first.returncode == 0, first.stderr[-2000:]
        shutil.rmtree(run / "checkpoints" / "16")  # as if the run had been stopped after step 12
        used = int(subprocess.run(["du", "-sk", str(mnt)], capture_output=True, text=True).stdout.split()[0])
        subprocess.run(["mount", "-o", f"remount,size={used + 48}k", str(mnt)], check=True)
        full = train(run)
        line = next((x for x in full.stderr.splitlines() if x.startswith("vistas: error:")), "")
        c = ckpt_lib.Checkpointer(run / "checkpoints", read_only=True)
        latest = c.latest_step()
        c.close()
        subprocess.run(["mount", "-o", "remount,size=64m", str(mnt)], check=True)
        again = train(run)
        summary = json.loads((run / "summary.json").read_text())
        print(json.dumps({"exit_status": full.returncode, "error": line, "latest_checkpoint_after": latest,
                          "resumed_exit_status": again.returncode, "resumed_to_step": summary["step"]}, indent=2))
        return 0
    finally:
        subprocess.run(["umount", str(mnt)], check=False)
        os.rmdir(mnt)


if __name__ == "__main__":
    sys.exit(main())
