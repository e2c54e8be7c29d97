"""Checkpoints with orbax: atomic, async, keep-last-K plus every M-th.

A checkpoint holds two items: ``state`` (parameters, optimizer state, step, RNG; any
pytree of arrays) and ``data`` (the input iterator's JSON state), so a resumed run sees
exactly the batches the interrupted one would have seen. Orbax writes each checkpoint in
a temporary directory and renames it when complete, so a kill or a full disk mid-write
never leaves something that is taken for a checkpoint; the previous one stays loadable.

Orbax's array chunks carry no checksums, so a third item, ``digests``, records a digest of
every array of ``state`` (and of the ``data`` JSON) in ``<step>/digests/metadata``, written
and committed with the rest of the checkpoint. Every restore checks what it read against
it, and ``verify`` (``vistas ckpt verify``) checks every kept checkpoint of a run.

The digest of an array is computed where the array lives, by a jitted function: its
elements' bits, as 32-bit words, each mixed with its position (murmur3's finalizer, two
seeds) and summed modulo 2^32 (two 32-bit lanes). An integer sum does not depend on the
order of its terms, so the digest is the same whatever the array's sharding, on one device
or many hosts (each process sums its shards, XLA adds the partial sums across devices):
a checkpoint saved on 8 devices verifies on 1, and no host ever needs a whole array. Any
change of one word changes both sums (the mixing is a bijection); several changed words
go unnoticed with a probability of about 2^-64. It is a checksum against bit rot and torn
writes, not against someone forging a checkpoint.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import logging
import os
import pathlib
import re
import shutil
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from vistas.errors import VistasError
from vistas.files import advice

# What a failed write raises: OSError from Python, ValueError/RuntimeError carrying the
# operating system's error code from TensorStore (e.g. 28: no space left, 27: file too large).
WRITE_ERRORS = (OSError, ValueError, RuntimeError)


def write_failure(e: BaseException) -> str:
    """The short reason of a failed write: the OS error's text when there is one."""
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    m = re.search(r"os_error_code='?(\d+)", str(e))
    if m:
        return os.strerror(int(m.group(1)))
    return str(e).splitlines()[0][:200] if str(e) else type(e).__name__


@contextlib.contextmanager
def _library_stderr() -> Iterator[None]:
    """What TensorStore's callbacks print on ``sys.stderr`` while a read fails (dozens of
    "Event loop is closed" tracebacks) goes to the ``orbax`` logger instead: the reason of
    the failure is reported as one line."""
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):
            yield
    finally:
        if captured.getvalue():
            logging.getLogger("orbax").warning("output of a checkpoint read:\n%s", captured.getvalue())


# --- digests --------------------------------------------------------------------------------

DIGESTS = "digests"  # the checkpoint's item holding them: <step>/digests/metadata
DIGEST_FORMAT = 1
_GOLDEN, _M1, _M2 = 0x9E3779B1, 0x85EBCA6B, 0xC2B2AE35
_ORBAX_METADATA = "_CHECKPOINT_METADATA"  # orbax's record of a step: which items it holds


def _key_name(k: Any) -> str:
    return str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))))


def named_leaves(tree: Any) -> dict[str, Any]:
    """``{"params/head/kernel": leaf}`` (named tuples are saved as dicts: their fields are
    named as dict keys would be)."""
    return {"/".join(_key_name(k) for k in path): x
            for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _fmix(h: jax.Array) -> jax.Array:
    """murmur3's 32-bit finalizer: a bijection of uint32 that spreads every bit."""
    h = h ^ (h >> 16)
    h = h * jnp.uint32(_M1)
    h = h ^ (h >> 13)
    h = h * jnp.uint32(_M2)
    return h ^ (h >> 16)


def _words(x: jax.Array) -> jax.Array:
    """The bits of ``x`` as uint32 words (one per element; two for 64-bit elements)."""
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    if x.dtype == jnp.bool_:
        return x.astype(jnp.uint32)
    if jnp.iscomplexobj(x):
        x = jnp.stack([x.real, x.imag], axis=-1)
    unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint32}[x.dtype.itemsize]
    return jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)


@jax.jit
def _digest(x: jax.Array) -> jax.Array:
    """Two uint32 sums over the words w at flat positions i of ``x``: fmix(w ^ k) and
    fmix(w + (k ^ c)), with k = i * golden ratio (mod 2^32). Sharding-independent."""
    w = _words(x)
    pos, stride = jnp.zeros(w.shape, jnp.uint32), 1
    for d in reversed(range(w.ndim)):
        pos = pos + jax.lax.broadcasted_iota(jnp.uint32, w.shape, d) * jnp.uint32(stride % 2**32)
        stride *= w.shape[d]
    k = pos * jnp.uint32(_GOLDEN)
    return jnp.stack([jnp.sum(_fmix(w ^ k), dtype=jnp.uint32),
                      jnp.sum(_fmix(w + (k ^ jnp.uint32(_M1))), dtype=jnp.uint32)])


def _digestible(x: Any) -> bool:
    """Whether ``x`` is an array whose elements are whole bytes (1, 2, 4 or 8 of them)."""
    dtype = getattr(x, "dtype", None)
    if dtype is None or not hasattr(x, "shape"):
        return False
    if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key) or dtype == jnp.bool_:
        return True
    if jnp.issubdtype(dtype, jnp.complexfloating):
        return dtype.itemsize in (8, 16)
    if jnp.issubdtype(dtype, jnp.floating):
        bits = jnp.finfo(dtype).bits
    elif jnp.issubdtype(dtype, jnp.integer):
        bits = jnp.iinfo(dtype).bits
    else:
        return False
    return bits in (8, 16, 32, 64) and bits == dtype.itemsize * 8


def array_digests(tree: Any) -> dict[str, dict]:
    """``{path: {"shape", "dtype", "digest"}}`` of the arrays of ``tree`` (JAX or NumPy
    arrays), each digest a hex string of 16 digits; every process gets the same."""
    named = {name: x for name, x in named_leaves(tree).items() if _digestible(x)}
    # Arrays on one device are dispatched together; an array split over devices is summed
    # with a collective, and those run one at a time: XLA:CPU's collectives deadlock when
    # more of them are in flight than its thread pool can seat participants for.
    sums = {name: _digest(x) for name, x in named.items() if not _spread(x)}
    for name, x in named.items():
        if _spread(x):
            sums[name] = jax.block_until_ready(_digest(x))
    sums = jax.device_get(sums)
    return {name: {"shape": list(x.shape), "dtype": str(x.dtype),
                   "digest": "".join(f"{int(v):08x}" for v in sums[name])}
            for name, x in named.items()}


def _spread(x: Any) -> bool:
    sharding = getattr(x, "sharding", None)
    return sharding is not None and len(sharding.device_set) > 1


def _data_digest(data: Any) -> str | None:
    """sha256 of the data state as the JSON a checkpoint holds (keys sorted); None when it
    has no such form."""
    try:
        text = json.dumps(json.loads(json.dumps(data)), sort_keys=True)  # as read back, keys sorted
        return hashlib.sha256(text.encode()).hexdigest()
    except (TypeError, ValueError):
        return None


class _Damaged(Exception):
    """A checkpoint's contents differ from its digests (the reason)."""


@dataclasses.dataclass(frozen=True)
class StepCheck:
    """What ``verify`` found in one checkpoint: ``status`` is ``"ok"``, ``"damaged"`` or
    ``"no digests"`` (an older checkpoint, read whole but not checkable)."""

    step: int
    status: str
    detail: str

    def line(self) -> str:
        return f"step {self.step}: {self.status}" + (f": {self.detail}" if self.detail else "")


class Checkpointer:
    """Saves and restores ``(state, data_state)`` under ``directory/<step>``, with the
    digests of both."""

    def __init__(self, directory: str | pathlib.Path, *, keep: int = 2, keep_every: int | None = None,
                 async_save: bool = True, read_only: bool = False):
        self.directory = pathlib.Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            keep_period=keep_every,
            create=not read_only,
            read_only=read_only,
            cleanup_tmp_directories=not read_only,
            enable_async_checkpointing=async_save,
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options,
                                              item_names=("state", "data", DIGESTS))
        self._writing: int | None = None  # the step of an asynchronous write not yet confirmed

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def save(self, step: int, state: Any, data_state: dict | None = None) -> None:
        data_state = data_state or {}
        self.wait()  # the previous write's failure is reported as its own
        digests = {"format": DIGEST_FORMAT, "arrays": array_digests(state),
                   "data": _data_digest(data_state)}
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=ocp.args.JsonSave(data_state),
            **{DIGESTS: ocp.args.JsonSave(digests)},
        )
        try:
            self._manager.save(step, args=args, force=True)
        except WRITE_ERRORS as e:
            raise self._failed(step, e) from e
        self._writing = step

    def _failed(self, step: int | None, e: BaseException) -> VistasError:
        kept = self._manager.latest_step()
        kept_text = f"checkpoint {kept} is kept" if kept is not None and kept != step else "no checkpoint is kept"
        return VistasError(f"could not write checkpoint {step} in {self.directory}: "
                           f"{write_failure(e)}; {kept_text} ({advice(e)})")

    def restore(self, step: int | None, abstract_state: Any) -> tuple[Any, dict]:
        """Restores ``step`` (the latest if None) into the shapes/shardings of ``abstract_state``."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise VistasError(f"no checkpoint in {self.directory}")
        target = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
        args = ocp.args.Composite(state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore())
        restored = self._read(step, target, args)
        return restored.state, dict(restored.data or {})

    def restore_params(self, step: int | None, abstract_params: Any, key: str = "params") -> Any:
        """Restores only ``state[key]`` (the parameters) into the shapes/shardings of
        ``abstract_params``, whatever optimizer state the checkpoint also holds."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise VistasError(f"no checkpoint in {self.directory}")
        target = {key: jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_params)}
        restore = ocp.args.PyTreeRestore(
            item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
            partial_restore=True)
        restored = self._read(step, target, ocp.args.Composite(state=restore))
        if any(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(restored.state[key])):
            # a partial restore leaves what the checkpoint lacks unfilled
            raise VistasError(f"checkpoint {step} in {self.directory} is of another model or config: "
                              f"{self._mismatch(step, target)}")
        return restored.state[key]

    def _read(self, step: int, target: Any, args: Any) -> Any:
        """Restores ``args`` and checks what was read against the checkpoint's digests; a
        checkpoint of another model or a damaged one is one line."""
        with _library_stderr():
            restored = self._read_or_explain(step, target, args)
        try:
            self._check(step, restored.state, restored.get("data"))
        except _Damaged as e:
            raise self._damaged(step, str(e)) from None
        return restored

    def _damaged(self, step: int, reason: str) -> VistasError:
        """The one line of a checkpoint that cannot be read or differs from its digests,
        naming the checkpoint to fall back to."""
        earlier = [s for s in self.all_steps() if s < step]
        hint = (f"move {self.directory / str(step)} away to use checkpoint {earlier[-1]}"
                if earlier else "no earlier checkpoint exists")
        return VistasError(f"checkpoint {step} in {self.directory} cannot be read, it is damaged or "
                           f"incomplete ({reason}); {hint}")

    def _digests(self, step: int) -> dict | None:
        """The digests recorded with checkpoint ``step``; None for a checkpoint written
        before vistas recorded them. Raises ``_Damaged`` when the file is unreadable, or
        missing from a checkpoint whose orbax metadata lists it."""
        step_dir = self.directory / str(step)
        path = step_dir / DIGESTS / "metadata"
        try:
            text = path.read_text()
        except FileNotFoundError:
            try:
                orbax_meta = json.loads((step_dir / _ORBAX_METADATA).read_text())
                items = orbax_meta.get("item_handlers") or {}
            except (OSError, ValueError, AttributeError):
                items = {}
            if DIGESTS in items:
                raise _Damaged(f"its digest file {DIGESTS}/metadata is missing") from None
            return None
        except (OSError, UnicodeDecodeError) as e:
            raise _Damaged(f"its digest file cannot be read: {write_failure(e)}") from None
        try:
            record = json.loads(text)
            arrays = record.get("arrays")
            if not isinstance(arrays, dict) or not all(isinstance(v, dict) for v in arrays.values()):
                raise ValueError("no arrays")
        except (ValueError, AttributeError):
            raise _Damaged(f"its digest file {DIGESTS}/metadata is garbled") from None
        return record

    def _check(self, step: int, state: Any, data: Any) -> int:
        """Compares what was read of checkpoint ``step`` with its digests; returns how many
        arrays were checked (-1: the checkpoint has no digests)."""
        record = self._digests(step)
        if record is None:
            return -1
        saved = record["arrays"]
        # (a partial restore leaves what the checkpoint lacks as placeholders: not read)
        restored = {k: x for k, x in named_leaves(state).items()
                    if isinstance(x, (jax.Array, np.ndarray)) and _digestible(x)}
        lacking = sorted(restored.keys() - saved.keys())
        if lacking:
            raise _Damaged(f"its digest file lacks {lacking[0]}"
                           + (f" (+{len(lacking) - 1} more)" if len(lacking) > 1 else ""))
        # an array restored in another dtype or shape (a cast) cannot be compared
        comparable = {k: x for k, x in restored.items()
                      if [list(x.shape), str(x.dtype)] == [saved[k].get("shape"), saved[k].get("dtype")]}
        now = array_digests(comparable)
        differ = [k for k in sorted(now) if now[k]["digest"] != saved[k].get("digest")]
        if differ:
            raise _Damaged(f"array {differ[0]} differs from its digest"
                           + (f" (+{len(differ) - 1} more)" if len(differ) > 1 else ""))
        if data is not None and record.get("data") is not None \
                and _data_digest(data) != record["data"]:
            raise _Damaged("the data iterator's state differs from its digest")
        return len(now)

    def verify(self, step: int) -> StepCheck:
        """Reads checkpoint ``step`` whole (into host memory, on one CPU device, whatever
        devices wrote it) and checks it against its digests."""
        try:
            state_dir = self.directory / str(step) / "state"
            meta = ocp.StandardCheckpointer().metadata(state_dir).item_metadata.tree
            cpu = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
            target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=cpu)
                                  if hasattr(m, "shape") and hasattr(m, "dtype") else m, meta)
            args = ocp.args.Composite(state=ocp.args.StandardRestore(target),
                                      data=ocp.args.JsonRestore())
            with _library_stderr():
                restored = self._manager.restore(step, args=args)
        except Exception as e:  # noqa: BLE001  (orbax and TensorStore raise many kinds)
            reason = write_failure(e).split(" See full")[0][:160]
            return StepCheck(step, "damaged", f"cannot be read ({reason})")
        try:
            checked = self._check(step, restored.state, restored.data)
        except _Damaged as e:
            return StepCheck(step, "damaged", str(e))
        if checked < 0:
            return StepCheck(step, "no digests",
                             "older checkpoint; it reads, but its arrays cannot be checked")
        return StepCheck(step, "ok", f"{checked} arrays match their digests")

    def _read_or_explain(self, step: int, target: Any, args: Any) -> Any:
        try:
            return self._manager.restore(step, args=args)
        except Exception as e:  # orbax and TensorStore raise many kinds
            where = f"checkpoint {step} in {self.directory}"
            mismatch = self._mismatch(step, target)
            if mismatch:
                raise VistasError(f"{where} is of another model or config: {mismatch}") from None
            raise self._damaged(step, write_failure(e).split(" See full")[0][:160]) from None

    def _mismatch(self, step: int, target: Any) -> str:
        """Which arrays of ``target`` the checkpoint lacks, has in addition, or holds with
        another shape ('' when its layout matches or cannot be read)."""
        try:
            meta = ocp.StandardCheckpointer().metadata(self.directory / str(step) / "state")
            saved_tree = meta.item_metadata.tree
        except Exception:
            return ""
        def shapes(tree):  # "params/head/kernel" -> shape
            return {name: tuple(getattr(x, "shape", ())) for name, x in named_leaves(tree).items()}
        want, saved = shapes(target), shapes(saved_tree)
        saved = {k: v for k, v in saved.items() if k.split("/")[0] in target}  # the items restored
        parts = []
        for label, keys in (("missing from the checkpoint", sorted(want.keys() - saved.keys())),
                            ("not in this model", sorted(saved.keys() - want.keys()))):
            if keys:
                parts.append(f"{label}: {', '.join(keys[:3])}" + (f" (+{len(keys) - 3} more)" if len(keys) > 3 else ""))
        differ = [k for k in sorted(want.keys() & saved.keys()) if want[k] != saved[k]]
        if differ:
            parts.append("shapes differ: " + ", ".join(f"{k} {saved[k]} saved, {want[k]} wanted" for k in differ[:3])
                         + (f" (+{len(differ) - 3} more)" if len(differ) > 3 else ""))
        return "; ".join(parts)

    def wait(self) -> None:
        """Blocks until pending asynchronous writes are complete and committed."""
        step, self._writing = self._writing, None
        try:
            self._manager.wait_until_finished()
        except WRITE_ERRORS as e:
            raise self._failed(step, e) from e

    def close(self) -> None:
        self.wait()
        with _library_stderr():
            self._manager.close()


def verify(workdir: str | pathlib.Path) -> list[StepCheck]:
    """Checks every kept checkpoint of the run in ``workdir`` against its digests, oldest
    first: each is read whole (one at a time, into host memory) and its arrays digested."""
    directory = pathlib.Path(workdir).absolute() / "checkpoints"
    if not directory.is_dir():
        raise VistasError(f"{workdir} holds no checkpoints (no folder {directory}); "
                          "give a run's work directory")
    checkpointer = Checkpointer(directory, read_only=True)
    with contextlib.closing(checkpointer):
        steps = checkpointer.all_steps()
        if not steps:
            raise VistasError(f"no checkpoint in {directory}")
        return [checkpointer.verify(step) for step in sorted(steps)]


def copy_step(src_dir: str | pathlib.Path, step: int, dst_dir: str | pathlib.Path) -> pathlib.Path:
    """Copies the committed checkpoint ``step`` of ``src_dir`` into ``dst_dir`` (branching a run).

    The source is only read. The copy is written under a temporary name and renamed when
    complete, so ``dst_dir`` never holds a partial checkpoint. Returns ``dst_dir/<step>``.
    """
    src_dir, dst_dir = pathlib.Path(src_dir).absolute(), pathlib.Path(dst_dir).absolute()
    # orbax renames a checkpoint to its bare step number only once it is complete
    steps = [int(p.name) for p in src_dir.iterdir() if p.is_dir() and p.name.isdigit()] \
        if src_dir.is_dir() else []
    if step not in steps:
        have = ", ".join(map(str, sorted(steps))) or "none"
        raise VistasError(
            f"{src_dir} holds no checkpoint of step {step} (it has: {have}); train the source "
            "run with train.keep_every=M so that every M-th step is kept for branching"
        )
    target = dst_dir / str(step)
    if target.exists():
        raise VistasError(f"{target} already exists; branch into a new directory")
    dst_dir.mkdir(parents=True, exist_ok=True)
    partial = dst_dir / f".{step}.copying"
    if partial.exists():
        shutil.rmtree(partial)
    shutil.copytree(src_dir / str(step), partial)
    partial.rename(target)
    return target
