"""Checksums of the saved state: bit rot inside a checkpoint's arrays (which orbax's chunks,
without checksums, load silently) is found on restore and by ``vistas ckpt verify``, named
by array, step and the checkpoint to fall back to; checkpoints written before the digests
existed still load."""

import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorstore as ts
from conftest import cli_env, requires_fashion_mnist, vistas_cmd
from reliability_helpers import tiny

from vistas import checkpoint as ckpt_lib
from vistas import cli
from vistas.errors import VistasError
from vistas.train import loop

ARRAY = "params/head/kernel"
SETS = ("train.duration=8", "train.ckpt_every=4", "train.eval_every=8")


def one_line(e) -> str:
    msg = str(e.value)
    assert "\n" not in msg and msg
    return msg


def _stored(state_dir, name: str):
    """(zarr metadata, chunk key, stored chunk bytes) of the array ``name`` ("a.b.c")."""
    kv = ts.KvStore.open({"driver": "ocdbt", "base": f"file://{state_dir}/"}).result()
    keys = [k for k in kv.list().result() if k.startswith(name.encode() + b"/")]
    (chunk,) = [k for k in keys if not k.endswith(b".zarray")]  # one chunk: a small array
    meta = kv.read(name.encode() + b"/.zarray").result().value
    return meta, chunk[len(name) + 1:], kv.read(chunk).result().value


def _decode(meta: bytes, chunk_key: bytes, blob: bytes) -> np.ndarray:
    """The values of one zarr chunk (zstd-compressed) as TensorStore decodes them."""
    ctx = ts.Context()
    memory = ts.KvStore.open("memory://", context=ctx).result()
    memory[b".zarray"] = meta
    memory[chunk_key] = blob
    return ts.open({"driver": "zarr", "kvstore": "memory://"}, context=ctx, open=True).result().read().result()


def read_array(state_dir, name: str) -> np.ndarray:
    """The array ``name`` as orbax's TensorStore reads it, with no digest involved."""
    spec = {"driver": "zarr", "kvstore": {"driver": "ocdbt", "base": f"file://{state_dir}/", "path": f"{name}/"}}
    return ts.open(spec, open=True).result().read().result()


def rot(state_dir, name: str) -> None:
    """Bit rot inside the array ``name``: one bit of its compressed chunk is flipped in place,
    in the data file that holds it (same size, nothing else touched). The chunks are zstd
    frames without checksums; the flip chosen is the first, from the frame's end, after
    which the frame still decompresses, to values that differ."""
    meta, chunk_key, blob = _stored(state_dir, name)
    before = _decode(meta, chunk_key, blob)
    holders = [p for p in state_dir.rglob("*") if p.is_file() and blob in p.read_bytes()]
    assert len(holders) == 1, holders
    for i in range(len(blob) - 1, 16, -1):
        changed = bytearray(blob)
        changed[i] ^= 0x10
        try:
            after = _decode(meta, chunk_key, bytes(changed))
        except ValueError:  # this flip breaks the frame: a decode error, which orbax reports
            continue
        if not np.array_equal(after, before):
            break
    else:
        raise AssertionError(f"no silent flip found in {name}")
    data = holders[0].read_bytes()
    at = data.index(blob)
    holders[0].write_bytes(data[:at] + bytes(changed) + data[at + len(blob):])


def as_written_before_digests(step_dir) -> None:
    """Makes ``step_dir`` what vistas wrote before it saved digests: no ``digests`` item,
    and orbax's step metadata listing only ``state`` and ``data``."""
    shutil.rmtree(step_dir / ckpt_lib.DIGESTS)
    meta_path = step_dir / "_CHECKPOINT_METADATA"
    meta = json.loads(meta_path.read_text())
    del meta["item_handlers"][ckpt_lib.DIGESTS]
    meta_path.write_text(json.dumps(meta))


@pytest.fixture(scope="module")
def run8(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("ckpt") / "run"
    loop.train(tiny(*SETS), workdir, quiet=True)
    return workdir


@pytest.fixture
def run(run8, tmp_path):
    """A copy of ``run8`` (checkpoints 4 and 8) to damage."""
    shutil.copytree(run8, tmp_path / "run")
    return tmp_path / "run"


@pytest.fixture
def logs(tmp_path, monkeypatch):
    monkeypatch.setenv("VISTAS_LOG_DIR", str(tmp_path / "logs"))


# --- the digest ---------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "int32", "uint8", "bool", "float16"])
def test_every_flipped_bit_and_swapped_pair_changes_the_digest(dtype):
    x = np.random.default_rng(0).normal(size=(6, 5)).astype(np.float32) * 7
    x = jnp.asarray(x > 0 if dtype == "bool" else x.astype(jnp.dtype(dtype)))
    digest = lambda a: ckpt_lib.array_digests({"x": a})["x"]["digest"]  # noqa: E731
    ref = digest(x)
    assert ref == digest(np.asarray(x)) and len(ref) == 16
    flat = np.asarray(x).reshape(-1).copy()
    words = flat.view(np.uint8) if dtype == "bool" else flat.view(f"u{flat.dtype.itemsize}")
    bits = 1 if dtype == "bool" else 8 * flat.dtype.itemsize
    seen = {ref}
    for i in (0, 7, 29):
        for b in range(bits):
            changed = words.copy()
            changed[i] ^= type(changed[i])(1 << b)
            seen.add(digest(jnp.asarray(changed.view(flat.dtype).reshape(x.shape))))
    assert len(seen) == 1 + 3 * bits  # every single-bit change gives its own digest
    j, k = np.flatnonzero(flat != flat[0])[0], 0
    swapped = flat.copy()
    swapped[[j, k]] = swapped[[k, j]]
    assert digest(jnp.asarray(swapped.reshape(x.shape))) != ref  # positions count


SHARDED = """
import json, jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from vistas import checkpoint
x = np.random.default_rng(0).normal(size=(16, 24)).astype(np.float32)
mesh = Mesh(np.array(jax.devices()).reshape(4, 2), ("a", "b"))
out = {}
for name, spec in (("one", None), ("rows", P("a")), ("both", P("a", "b")), ("cols", P(None, "b"))):
    a = jnp.asarray(x) if spec is None else jax.device_put(x, NamedSharding(mesh, spec))
    out[name] = checkpoint.array_digests({"x": a})["x"]["digest"]
print(json.dumps(out))
"""


def test_the_digest_does_not_depend_on_the_sharding(tmp_path):
    """Each device sums its shard and XLA adds the sums: the digest of a checkpoint saved on
    8 devices (or several hosts) is the one verified on 1."""
    env = {**{k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    proc = subprocess.run([sys.executable, "-c", SHARDED], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    digests = json.loads(proc.stdout.strip().splitlines()[-1])
    x = np.random.default_rng(0).normal(size=(16, 24)).astype(np.float32)
    assert set(digests.values()) == {ckpt_lib.array_digests({"x": x})["x"]["digest"]}, digests


# --- damaged checkpoints ------------------------------------------------------------------------


@requires_fashion_mnist
def test_bit_rot_in_an_array_is_named_with_the_checkpoint_to_fall_back_to(run, tmp_path):
    state_dir = run / "checkpoints" / "8" / "state"
    name = ARRAY.replace("/", ".")
    before = read_array(state_dir, name)
    rot(state_dir, name)
    after = read_array(state_dir, name)  # what orbax alone reads: no error, other values
    assert after.shape == before.shape and np.sum(after != before) >= 1
    cfg = tiny(*SETS)
    expected = (f"checkpoint 8 in {run / 'checkpoints'} cannot be read, it is damaged or incomplete "
                f"(array {ARRAY} differs from its digest); "
                f"move {run / 'checkpoints' / '8'} away to use checkpoint 4")
    with pytest.raises(VistasError) as e:
        loop.train(cfg, run, quiet=True)  # resuming reads the whole state
    assert one_line(e) == expected
    with pytest.raises(VistasError) as e:
        loop.final_params(run)  # evaluation, prediction, transfer: the parameters only
    assert one_line(e) == expected
    loop.final_params(run, step=4)  # the checkpoint named is sound
    shutil.move(run / "checkpoints" / "8", tmp_path / "damaged8")  # as the message says
    summary = loop.train(cfg, run, quiet=True)
    assert summary["finished"] and summary["step"] == 8
    assert [c.status for c in ckpt_lib.verify(run)] == ["ok", "ok"]


@requires_fashion_mnist
def test_ckpt_verify_names_the_damaged_array_and_exits_2(run):
    rot(run / "checkpoints" / "8" / "state", "opt_state.inner_states.train.inner_state.direction.mu.head.kernel")
    proc = subprocess.run(vistas_cmd("ckpt", "verify", str(run)), capture_output=True, text=True,
                          env=cli_env(VISTAS_LOG_DIR=str(run.parent / "logs")), timeout=300)
    assert proc.returncode == 2
    assert proc.stdout.splitlines() == [
        "step 4: ok: 73 arrays match their digests",
        "step 8: damaged: array opt_state/inner_states/train/inner_state/direction/mu/head/kernel "
        "differs from its digest"], proc.stdout
    assert proc.stderr == (f"vistas: error: 1 of 2 checkpoints of {run} is damaged (step 8); "
                           "the latest undamaged one is 4\n")


@requires_fashion_mnist
def test_ckpt_verify_of_a_sound_run_is_ok(run8, capsys, logs):
    assert cli.main(["ckpt", "verify", str(run8)]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines() == ["step 4: ok: 73 arrays match their digests",
                                "step 8: ok: 73 arrays match their digests"] and not err
    assert [(c.step, c.status) for c in ckpt_lib.verify(run8)] == [(4, "ok"), (8, "ok")]


@requires_fashion_mnist
@pytest.mark.parametrize("damage, reason", [
    ("digests deleted", "its digest file digests/metadata is missing"),
    ("digests garbled", "its digest file digests/metadata is garbled"),
    ("data state edited", "the data iterator's state differs from its digest"),
    ("file truncated", "cannot be read ("),
])
def test_other_damage_is_reported_by_verify_and_on_restore(run, capsys, logs, damage, reason):
    """A checkpoint written with digests that lacks them is incomplete (orbax's step metadata
    lists the item); a data state edited into other valid JSON differs from its digest."""
    step_dir = run / "checkpoints" / "8"
    if damage == "digests deleted":
        shutil.rmtree(step_dir / ckpt_lib.DIGESTS)
    elif damage == "digests garbled":
        (step_dir / ckpt_lib.DIGESTS / "metadata").write_text('{"format": 1, "arrays": {"par')
    elif damage == "data state edited":
        data = json.loads((step_dir / "data" / "metadata").read_text())
        (step_dir / "data" / "metadata").write_text(json.dumps({**data, "step": data["step"] + 1}))
    else:
        f = max((p for p in (step_dir / "state").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    assert cli.main(["ckpt", "verify", str(run)]) == 2
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert lines[0] == "step 4: ok: 73 arrays match their digests"
    assert lines[1].startswith("step 8: damaged: ") and reason in lines[1], lines
    assert err.count("\n") == 1 and "the latest undamaged one is 4" in err, err
    with pytest.raises(VistasError) as e:
        loop.train(tiny(*SETS), run, quiet=True)
    msg = one_line(e)
    assert msg.startswith(f"checkpoint 8 in {run / 'checkpoints'} cannot be read, it is damaged or incomplete")
    assert msg.endswith(f"move {step_dir} away to use checkpoint 4")
    if damage != "file truncated":  # (orbax's reason: tests/reliability/test_bad_input.py)
        assert f"({reason})" in msg


# --- checkpoints written before the digests --------------------------------------------------------


@requires_fashion_mnist
def test_a_checkpoint_without_digests_still_loads(run, capsys, logs):
    """An older checkpoint (no ``digests`` item, none listed in orbax's step metadata) is
    restored unverified: the run resumes from it, and its next checkpoints have digests."""
    shutil.rmtree(run / "checkpoints" / "8")
    as_written_before_digests(run / "checkpoints" / "4")
    exp, params, step = loop.final_params(run)
    assert step == 4 and jax.tree.leaves(params)
    assert cli.main(["ckpt", "verify", str(run)]) == 0
    out, _ = capsys.readouterr()
    assert out.splitlines() == ["step 4: no digests: older checkpoint; it reads, but its arrays "
                                "cannot be checked"]
    summary = loop.train(tiny(*SETS), run, quiet=True)  # resumes from 4 (the whole state)
    assert summary["finished"] and summary["step"] == 8
    assert [(c.step, c.status) for c in ckpt_lib.verify(run)] == [(4, "no digests"), (8, "ok")]


def test_verify_of_a_folder_without_checkpoints_is_one_line(tmp_path, capsys, logs):
    assert cli.main(["ckpt", "verify", str(tmp_path / "nothing")]) == 2
    _, err = capsys.readouterr()
    assert err.count("\n") == 1 and "holds no checkpoints" in err, err
    (tmp_path / "empty" / "checkpoints").mkdir(parents=True)
    with pytest.raises(VistasError, match="no checkpoint in"):
        ckpt_lib.verify(tmp_path / "empty")
