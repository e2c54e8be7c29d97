"""Bad images met while training (``data.on_bad_image``): ``stop`` ends the run with one line
naming the file; ``skip`` replaces the example by a draw seeded by (seed, position), counts it
in ``data/skipped_images`` (checkpointed, so a resumed run sees exactly the batches and counts
of an uninterrupted one) and stops with one line past ``data.max_bad_fraction``. Evaluation
always stops at a bad image."""

import io
import json
import re

import numpy as np
import pytest
from conftest import smoke
from PIL import Image
from reliability_helpers import assert_same_tree

from vistas import cli
from vistas.data import pipeline, sources
from vistas.data.decode import BadImage
from vistas.errors import DataError
from vistas.train import loop
from vistas.train.metrics import read_metrics

pytestmark = pytest.mark.usefixtures("compilation_cache")  # the runs below compile one step

BAD = ("a/2_empty.jpg", "b/3_cut.png")  # a zero-byte JPEG and a truncated PNG, in train/


def make_folder(root, *, bad_in_test: bool = False):
    """train/ and test/ with classes a and b of 12x12 RGB PNGs: 7 + 7 training images, the
    two of ``BAD`` among them; 3 + 3 test images (one of them zero bytes with ``bad_in_test``)."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 7), ("test", 3)):
        for cls in ("a", "b"):
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(
                    root / split / cls / f"{i}.png")
    (root / "train" / BAD[0]).write_bytes(b"")
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(buf, "PNG")
    (root / "train" / BAD[1]).write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    if bad_in_test:
        (root / "test" / "b" / "0.png").write_bytes(b"")
    return root


def folder_sets(root, *extra):
    return ["data.dataset=folder", f"data.path={root}", "data.num_train_examples=None",
            "data.batch_size=8", "data.eval_batch_size=8", "data.eval_splits=['test']",
            "schedule.warmup=1", "train.log_every=2", "train.eval_every=1000", "train.progress=False",
            *extra]


def cli_train(capsys, workdir, sets):
    code = cli.main(["train", "--preset", "smoke", "--workdir", str(workdir), "--quiet", "--set", *sets])
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(code, out, err) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("vistas: error: "), (code, err)
    assert "Traceback" not in out + err
    return lines[0]


def train_rows(workdir):
    return [r for r in read_metrics(workdir / "metrics.jsonl") if "train/loss" in r]


def identity(image, rng):
    return image.astype(np.float32)


# --- the pipeline ---------------------------------------------------------------------------


def test_skip_replaces_bad_images_deterministically_and_counts_them(tmp_path):
    root = make_folder(tmp_path / "d")
    source = sources.load_source("folder", "train", path=str(root))
    bad = {i for i, p in enumerate(source.paths) if p.endswith(BAD)}
    assert len(bad) == 2 and len(source) == 16

    def iterator(**kw):
        return pipeline.train_iterator(source, global_batch_size=8, seed=3, transform=identity,
                                       num_threads=0, on_bad_image="skip", **kw)

    it = iterator()
    batches = [next(it) for _ in range(8)]  # 4 epochs: each bad image drawn 4 times
    assert all(set(b) == {"image", "label"} for b in batches)  # the counts never reach the device
    # each bad image drawn counts, and so does a redraw that is bad too
    assert it.skipped_images >= 8 and it.get_state()["skipped_images"] == it.skipped_images
    assert re.fullmatch(r"cannot decode image .*(a/2_empty\.jpg|b/3_cut\.png): .+", it.last_bad_image)
    # a resumed iterator yields the same batches, replacements included, and keeps counting
    halfway = iterator()
    for _ in range(4):
        next(halfway)
    resumed = iterator()
    resumed.set_state(halfway.get_state())
    assert resumed.skipped_images == halfway.skipped_images >= 4
    for k in range(4, 8):
        b = next(resumed)
        np.testing.assert_array_equal(b["image"], batches[k]["image"])
        np.testing.assert_array_equal(b["label"], batches[k]["label"])
    assert resumed.skipped_images == it.skipped_images
    # worker processes make the same batches and counts
    workers = iterator(workers=1)
    try:
        for k in range(3):
            np.testing.assert_array_equal(next(workers)["image"], batches[k]["image"])
    finally:
        workers.close()
    threads = iterator()
    for _ in range(3):
        next(threads)
    assert workers.skipped_images == threads.skipped_images > 0
    # an older state without the count resumes from zero; a broken count is refused
    state = {k: v for k, v in it.get_state().items() if k != "skipped_images"}
    fresh = iterator()
    fresh.set_state(state)
    assert fresh.skipped_images == 0
    with pytest.raises(DataError, match="not a data iterator state"):
        fresh.set_state({**state, "skipped_images": -1})


def test_stop_names_the_file_and_what_to_do(tmp_path):
    source = sources.load_source("folder", "train", path=str(make_folder(tmp_path / "d")))
    it = pipeline.train_iterator(source, global_batch_size=16, seed=0, transform=identity, num_threads=0)
    with pytest.raises(BadImage, match=r"cannot decode image .*(2_empty\.jpg|3_cut\.png): .*"
                                       r"vistas data verify PATH.*data\.on_bad_image=skip") as e:
        next(it)
    assert "\n" not in str(e.value)
    with pytest.raises(DataError, match="on_bad_image='drop' is not known; use one of stop, skip"):
        pipeline.train_iterator(source, global_batch_size=16, seed=0, transform=identity, on_bad_image="drop")


def test_a_source_of_bad_images_stops_skip_too(tmp_path):
    """Redrawing gives up after MAX_REDRAWS bad draws in a row: unreadable data (a mount
    gone) stops the run instead of looping."""
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        (tmp_path / cls / "x.png").write_bytes(b"")
    source = sources.ImageFolderSource(tmp_path)
    it = pipeline.train_iterator(source, global_batch_size=2, seed=0, transform=identity,
                                 num_threads=0, on_bad_image="skip")
    with pytest.raises(DataError, match=rf"{pipeline.MAX_REDRAWS + 1} images in a row cannot be decoded "
                                        r"\(the last: cannot decode image .*x\.png"):
        next(it)


def test_evaluation_always_stops_at_a_bad_image(tmp_path):
    root = make_folder(tmp_path / "d", bad_in_test=True)
    source = sources.load_source("folder", "test", path=str(root))
    with pytest.raises(BadImage, match=r"cannot decode image .*test/b/0\.png: .*needs every image, "
                                       "whatever data.on_bad_image says"):
        list(pipeline.eval_batches(source, global_batch_size=6, transform=lambda x: x.astype(np.float32)))


# --- training runs ----------------------------------------------------------------------------


@pytest.mark.slow
def test_stop_is_one_line_and_the_same_run_resumes_with_skip(capsys, tmp_path):
    root = make_folder(tmp_path / "d")
    workdir = tmp_path / "run"
    line = one_line_error(*cli_train(capsys, workdir, folder_sets(root, "train.duration=6")))
    assert "cannot decode image" in line and ("2_empty.jpg" in line or "3_cut.png" in line)
    assert "data.on_bad_image=skip" in line
    # the same run, told to skip: the batches before the bad image were the same
    code, _, err = cli_train(capsys, workdir, folder_sets(root, "train.duration=6", "data.on_bad_image=skip",
                                                          "data.max_bad_fraction=0.5"))
    assert code == 0, err
    rows = train_rows(workdir)
    assert [r["step"] for r in rows] == [2, 4, 6]
    counts = [r["data/skipped_images"] for r in rows]
    assert 0 < counts[0] <= counts[1] <= counts[2] and counts[2] >= 6  # 3 epochs of 16, 2 bad in each
    assert json.loads((workdir / "config.json").read_text())["data"]["on_bad_image"] == "skip"


@pytest.mark.slow
def test_skip_resumes_exactly(tmp_path):
    root = make_folder(tmp_path / "d")
    cfg = smoke(*folder_sets(root, "train.duration=12", "train.ckpt_every=4", "data.on_bad_image=skip",
                             "data.max_bad_fraction=0.5"))
    whole = loop.train(cfg, tmp_path / "whole", quiet=True)
    first = loop.train(cfg, tmp_path / "split", stop_after=5, quiet=True)  # 40 examples: mid-epoch
    assert first["step"] == 5 and first["interrupted"]
    second = loop.train(cfg, tmp_path / "split", quiet=True)
    assert whole["finished"] and second["finished"] and second["step"] == 12
    assert_same_tree(loop.final_params(tmp_path / "split")[1], loop.final_params(tmp_path / "whole")[1])
    ref, rows = train_rows(tmp_path / "whole"), train_rows(tmp_path / "split")
    assert [r["step"] for r in rows] == [r["step"] for r in ref] == [2, 4, 6, 8, 10, 12]
    for key in ("train/loss", "data/skipped_images"):
        assert [r[key] for r in rows] == [r[key] for r in ref], key
    assert ref[-1]["data/skipped_images"] >= 12  # 96 examples: 6 epochs, 2 bad images in each


@pytest.mark.slow
def test_more_skips_than_the_cap_is_one_line(capsys, tmp_path):
    root = make_folder(tmp_path / "d")
    line = one_line_error(*cli_train(capsys, tmp_path / "run", folder_sets(
        root, "train.duration=6", "data.on_bad_image=skip", "data.max_bad_fraction=0.1")))
    # 2 bad images in 16 are more than 10%: the first check (step 2, one epoch) stops the run
    assert re.search(r"vistas: error: \d+ bad images skipped by step 2, more than "
                     r"data.max_bad_fraction=0.1 of the 16 examples drawn; ", line), line
    assert "the latest: cannot decode image" in line and "vistas data verify PATH" in line
    assert not (tmp_path / "run" / "metrics.jsonl").exists() or not train_rows(tmp_path / "run")
