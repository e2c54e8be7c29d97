"""The grain input pipeline: shuffle, shard per process, augment, batch; eval padding.

Training data is one infinite, deterministic stream of examples: epoch e is a permutation of
the source drawn from (seed, e), and the example at global position i is augmented with an
RNG drawn from (seed, i). Global batch k holds positions [k * B, (k + 1) * B); process p reads
the p-th contiguous slice of it. So batch k is a pure function of (seed, k, B): resuming only
needs k, and neither the data nor the augmentation depends on the number of processes.

An image that cannot be decoded (`vistas.data.decode.BadImage`) stops the run by default
(``on_bad_image="stop"``). With ``"skip"`` the example at global position i is replaced by
another one drawn at random from the source with an RNG drawn from (seed, i), drawing again
while the draw is bad too: a pure function of (seed, i) and the files, so batch k stays a
pure function of (seed, k, B). Each bad image met counts as one skip; the iterator keeps the
cumulative count in its state (``skipped_images``), so it survives a resume.
"""

from __future__ import annotations

import math
import sys
import threading
from collections.abc import Callable, Iterator

import grain
import numpy as np

from vistas.data.decode import BadImage
from vistas.errors import DataError

STATE_VERSION = 1
BAD_IMAGE_POLICIES = ("stop", "skip")
# bad draws in a row for one example after which the source is taken to be unreadable
MAX_REDRAWS = 16
# batch entries that carry the skips of a batch from the workers to the iterator (never to the device)
_SKIPPED, _BAD = "_skipped_images", "_bad_image"
# what to do about a bad image met by an evaluation pass, or by training under on_bad_image=stop
EVAL_HINT = ("a pass over a whole split (evaluation) needs every image, whatever data.on_bad_image "
             "says: replace or remove it; `vistas data verify PATH` lists every bad image")
STOP_HINT = ("`vistas data verify PATH` lists every bad image; --set data.on_bad_image=skip replaces "
             "bad images in training batches (docs/reliability.md)")


def _local_batch_size(global_batch_size: int, process_index: int, process_count: int) -> int:
    bad = isinstance(global_batch_size, bool) or not isinstance(global_batch_size, (int, np.integer))
    if bad or global_batch_size <= 0:
        raise DataError(f"global_batch_size must be a positive integer, got {global_batch_size!r}")
    if process_count <= 0 or not 0 <= process_index < process_count:
        raise DataError(
            f"process_index must lie in [0, {process_count}) with process_count >= 1, "
            f"got process_index={process_index}, process_count={process_count}"
        )
    if global_batch_size % process_count:
        raise DataError(
            f"global_batch_size {global_batch_size} is not divisible by the process count "
            f"{process_count}; use a multiple of {process_count}"
        )
    return global_batch_size // process_count


def _derive_key(seed: int, purpose: int) -> int:
    """A 128-bit Philox key for one use of `seed` (shuffle, augmentation)."""
    words = np.random.SeedSequence([int(seed) % 2**64, purpose]).generate_state(2, np.uint64)
    return int(words[0]) | int(words[1]) << 64


class _TrainBatches:
    """Global step k -> this process's slice of global batch k (thread-safe, pure in k)."""

    def __init__(self, source, transform, *, seed, global_batch_size, local_batch_size,
                 process_index, shuffle, extra_keys=(), on_bad_image="stop"):
        self.source = source
        self.transform = transform
        self.extra_keys = tuple(extra_keys)
        self.n = len(source)
        self.global_batch_size = global_batch_size
        self.b = local_batch_size
        self.offset = process_index * local_batch_size
        self.shuffle = shuffle
        self.shuffle_key = _derive_key(seed, 0)
        self.aug_key = _derive_key(seed, 1)
        self.replace_key = _derive_key(seed, 2)
        self.on_bad_image = on_bad_image
        self._perms: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()
        self._local = threading.local()

    def __getstate__(self):  # sent to worker processes without locks and caches
        state = dict(self.__dict__)
        state["_lock"], state["_local"], state["_perms"] = None, None, {}
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock, self._local = threading.Lock(), threading.local()

    def permutation(self, epoch: int) -> np.ndarray:
        """The example order of `epoch`, drawn from (seed, epoch)."""
        with self._lock:
            perm = self._perms.get(epoch)
        if perm is None:
            bitgen = np.random.Philox(key=self.shuffle_key, counter=[0, 0, epoch, 0])
            rng = np.random.Generator(bitgen)
            perm = rng.permutation(self.n)
            with self._lock:
                self._perms[epoch] = perm
                for old in [e for e in self._perms if e < epoch - 2 or e > epoch + 2]:
                    del self._perms[old]
        return perm

    def rng_at(self, position: int) -> np.random.Generator:
        """This thread's generator, reset to the stream of global example `position`."""
        local = self._local
        if not hasattr(local, "rng"):
            local.bitgen = np.random.Philox(key=self.aug_key)
            local.rng = np.random.Generator(local.bitgen)
            local.state = local.bitgen.state
        state = local.state
        state["state"]["counter"][:] = (0, 0, position, 0)
        state["buffer_pos"] = 4
        state["has_uint32"] = 0
        local.bitgen.state = state
        return local.rng

    def __call__(self, step: int) -> dict:
        start = step * self.global_batch_size + self.offset
        epochs, offsets = divmod(np.arange(start, start + self.b, dtype=np.int64), self.n)
        if self.shuffle:
            indices = np.empty_like(offsets)
            for e in np.unique(epochs):
                sel = epochs == e
                indices[sel] = self.permutation(int(e))[offsets[sel]]
        else:
            indices = offsets
        source, transform = self.source, self.transform
        images, labels, extras = [], [], []
        skipped, first_bad = 0, ""
        for position, i in zip(range(start, start + self.b), indices.tolist(), strict=True):
            try:
                example = source[i]
            except BadImage as e:
                if self.on_bad_image != "skip":
                    raise BadImage(f"{e}; {STOP_HINT}") from None
                example, bad = self.replacement(position)
                skipped += bad
                first_bad = first_bad or str(e)
            images.append(transform(example["image"], self.rng_at(position)))
            labels.append(example["label"])
            extras.append([example[k] for k in self.extra_keys])
        if isinstance(images[0], dict):  # several views of each example (e.g. distillation)
            batch = {k: np.stack([views[k] for views in images]) for k in images[0]}
        else:
            batch = {"image": np.stack(images)}
        batch["label"] = np.asarray(labels, np.int32)
        for j, k in enumerate(self.extra_keys):
            batch[k] = np.stack([e[j] for e in extras])
        if self.on_bad_image == "skip":
            batch[_SKIPPED] = np.asarray(skipped, np.int64)
            batch[_BAD] = np.asarray(first_bad)
        return batch

    def replacement(self, position: int) -> tuple[dict, int]:
        """The example that stands in for the bad one at global ``position``, drawn from
        (seed, position), and the number of bad images met (the one replaced included)."""
        rng = np.random.Generator(np.random.Philox(key=self.replace_key, counter=[0, 0, position, 0]))
        for bad in range(1, MAX_REDRAWS + 1):
            try:
                return self.source[int(rng.integers(self.n))], bad
            except BadImage as e:
                last = e
        raise DataError(f"{MAX_REDRAWS + 1} images in a row cannot be decoded (the last: {last}); the "
                        "data looks unreadable, so data.on_bad_image=skip stops here; `vistas data "
                        "verify PATH` lists every bad image")


class TrainIterator:
    """Infinite iterator of training batches `{"image": float32 [b, H, W, C], "label": int32 [b]}`
    (labels int32 [b, K] for multi-label sources).

    `get_state()` is a small JSON-serialisable dict; `set_state(s)` makes the next batches those
    that followed when `s` was taken (also with another process count, same global batch).

    `skipped_images` counts the bad images this process met in the batches it has yielded
    (``on_bad_image="skip"``; part of the state), `last_bad_image` names the latest one.
    """

    def __init__(self, batches: grain.MapDataset, *, fingerprint: dict,
                 read_options: grain.ReadOptions, steps_per_epoch: float, batch_size: int,
                 workers: int = 0):
        self._batches = batches
        self._workers = workers
        self._fingerprint = fingerprint
        self._read_options = read_options
        self._step = 0
        self._it = None
        self.skipped_images = 0
        self.last_bad_image = ""
        self.steps_per_epoch = steps_per_epoch  # len(source) / global_batch_size
        self.batch_size = batch_size  # per process
        self.global_batch_size = fingerprint["global_batch_size"]
        self.num_examples = fingerprint["num_examples"]  # of the source

    @property
    def step(self) -> int:
        """Index of the next global batch this iterator yields."""
        return self._step

    def __iter__(self) -> TrainIterator:
        return self

    def __next__(self) -> dict:
        if self._it is None and self._workers:
            # worker processes prepare batches step, step + 1, ... (grain keeps their order)
            from absl import flags  # grain's worker processes read absl flags

            if not flags.FLAGS.is_parsed():
                flags.FLAGS.mark_as_parsed()
            options = grain.MultiprocessingOptions(num_workers=self._workers)
            self._it = iter(self._batches[self._step:].to_iter_dataset(self._read_options)
                            .mp_prefetch(options))
        if self._it is None:
            self._it = iter(self._batches.to_iter_dataset(self._read_options))
            if self._step:
                self._it.set_state({"next_index": self._step})
        batch = next(self._it)
        self._step += 1
        if _SKIPPED in batch:  # data.on_bad_image=skip: host-side counts, not for the device
            batch = dict(batch)
            skipped, bad = int(batch.pop(_SKIPPED)), str(batch.pop(_BAD))
            if skipped:
                self.skipped_images += skipped
                self.last_bad_image = bad
        return batch

    def get_state(self) -> dict:
        return {"version": STATE_VERSION, "step": self._step, **self._fingerprint,
                "skipped_images": self.skipped_images}

    def set_state(self, state: dict) -> None:
        step = state.get("step") if isinstance(state, dict) else None
        if not isinstance(step, (int, np.integer)) or step < 0 \
                or state.get("version") != STATE_VERSION:
            raise DataError(f"not a data iterator state (version {STATE_VERSION}): {state!r}")
        for key, value in self._fingerprint.items():
            if state.get(key) != value:
                raise DataError(
                    f"data iterator state has {key}={state.get(key)!r} but this pipeline has "
                    f"{key}={value!r}; resume with the same data, seed and global batch size"
                )
        skipped = state.get("skipped_images", 0)  # absent from states of older versions
        if not isinstance(skipped, (int, np.integer)) or skipped < 0:
            raise DataError(f"not a data iterator state (version {STATE_VERSION}): {state!r}")
        self.close()
        self._step = int(step)
        self.skipped_images = int(skipped)

    def close(self) -> None:
        """Stops the prefetch threads; iterating again restarts them at the current step."""
        if self._it is not None:
            self._it.close()
            self._it = None


def train_iterator(
    source,
    *,
    global_batch_size: int,
    seed: int,
    transform: Callable[[np.ndarray, np.random.Generator], np.ndarray],
    process_index: int = 0,
    process_count: int = 1,
    shuffle: bool = True,
    num_threads: int = 1,
    prefetch: int = 2,
    workers: int = 0,
    extra_keys: tuple[str, ...] = (),
    on_bad_image: str = "stop",
) -> TrainIterator:
    """Infinite, deterministic, resumable training batches for this process.

    Each process yields `global_batch_size // process_count` examples per step; together the
    processes' batches form global batch k. `num_threads` threads prepare `prefetch` batches
    ahead (0: everything on the calling thread). One thread is fastest for in-memory arrays
    (more contend for the GIL); image folders gain from more (PIL decodes without the GIL).
    `workers` > 0 prepares batches in that many processes instead (grain multiprocessing), for
    decoding and augmentation that need more than one core; the batches are the same.

    A transform may return a dict of several views (each key becomes a batch entry, one of
    them "image"); `extra_keys` are example fields stacked into the batch as they are.

    `on_bad_image`: "stop" (a `BadImage` ends iteration with one line naming the file) or
    "skip" (the example is replaced, deterministically; see the module's docstring).
    """
    b = _local_batch_size(global_batch_size, process_index, process_count)
    n = len(source)
    if n == 0:
        raise DataError("the training source has no examples")
    if on_bad_image not in BAD_IMAGE_POLICIES:
        raise DataError(f"on_bad_image={on_bad_image!r} is not known; use one of {', '.join(BAD_IMAGE_POLICIES)}")
    if num_threads < 0 or prefetch < 0 or workers < 0:
        raise DataError(f"num_threads, prefetch and workers must be >= 0, got {num_threads}, "
                        f"{prefetch}, {workers}")

    make_batch = _TrainBatches(
        source, transform, seed=seed, global_batch_size=global_batch_size, local_batch_size=b,
        process_index=process_index, shuffle=shuffle, extra_keys=extra_keys, on_bad_image=on_bad_image)
    ds = grain.MapDataset.range(sys.maxsize).map(make_batch)  # element k = global step k
    read_options = _read_options(num_threads, prefetch)
    fingerprint = {"seed": int(seed), "global_batch_size": int(global_batch_size),
                   "num_examples": n, "shuffle": bool(shuffle)}
    return TrainIterator(ds, fingerprint=fingerprint, read_options=read_options,
                         steps_per_epoch=n / global_batch_size, batch_size=b, workers=workers)


def _read_options(num_threads: int, prefetch: int) -> grain.ReadOptions:
    if not num_threads or not prefetch:
        return grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)
    return grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch)


def num_eval_batches(n: int, global_batch_size: int) -> int:
    """Number of (padded) global batches that cover `n` examples."""
    return math.ceil(n / global_batch_size)


def eval_batches(
    source,
    *,
    global_batch_size: int,
    transform: Callable[[np.ndarray], np.ndarray],
    process_index: int = 0,
    process_count: int = 1,
    num_threads: int = 1,
    prefetch: int = 2,
) -> Iterator[dict]:
    """One pass over `source`: `{"image", "label", "mask"}` batches of `global_batch_size //
    process_count`; `mask` is False on padding. Every example is seen exactly once across
    processes, and every process yields `num_eval_batches(len(source), global_batch_size)` batches.

    An image that cannot be decoded stops the pass whatever ``data.on_bad_image`` says: a
    metric over part of a split is not that split's metric.
    """
    b = _local_batch_size(global_batch_size, process_index, process_count)
    n = len(source)
    if n == 0:
        raise DataError("the evaluation source has no examples")
    num_batches = num_eval_batches(n, global_batch_size)
    pad_image, pad_label = [None], [None]

    def make_batch(k: int) -> dict:
        start = k * global_batch_size + process_index * b
        idx = range(start, start + b)
        images, labels = [], []
        for i in idx:
            if i < n:
                try:
                    example = source[i]
                except BadImage as e:
                    raise BadImage(f"{e}; {EVAL_HINT}") from None
                images.append(transform(example["image"]))
                labels.append(example["label"])
            else:
                if pad_image[0] is None:
                    first = source[0]
                    pad_image[0] = np.zeros_like(transform(first["image"]))
                    pad_label[0] = np.zeros_like(np.asarray(first["label"]))  # multi-hot too
                images.append(pad_image[0])
                labels.append(pad_label[0])
        return {
            "image": np.stack(images),
            "label": np.asarray(labels, np.int32),
            "mask": np.asarray([i < n for i in idx], bool),
        }

    ds = grain.MapDataset.range(num_batches).map(make_batch)
    read_options = _read_options(num_threads, prefetch)
    return iter(ds.to_iter_dataset(read_options))
