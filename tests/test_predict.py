"""``vistas predict``: class names and probabilities of a trained run for image files of any
size, batched, with the EMA parameters when the run keeps them."""

import json

import jax
import numpy as np
import pytest
from conftest import requires_fashion_mnist, smoke
from flax import nnx
from PIL import Image

from vistas import cli, experiment, runs
from vistas.data import sources
from vistas.evaluate import predict
from vistas.train import loop

pytestmark = [requires_fashion_mnist, pytest.mark.slow]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("predict") / "run"
    loop.train(smoke("train.duration=30", "schedule.warmup=2", "train.ema_decay=0.9", "model.depth=1",
                     "data.num_train_examples=1024"), workdir, quiet=True)
    return workdir


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Five Fashion-MNIST test images as files: gray 28x28 PNGs, one RGB 57x41 JPEG, in a
    folder with a sub-folder."""
    root = tmp_path_factory.mktemp("images")
    test = sources.load_source("fashion_mnist", "test[:5]")
    (root / "sub").mkdir()
    arrays = []
    for i in range(5):
        a = np.asarray(test[i]["image"])[..., 0]
        arrays.append(a)
        if i == 4:
            Image.fromarray(a).convert("RGB").resize((57, 41)).save(root / "sub" / "e.jpg", quality=95)
        else:
            Image.fromarray(a).save(root / f"{'abcd'[i]}.png")
    return root, arrays


def test_predictions_are_the_runs_outputs_with_its_class_names(run, images):
    root, arrays = images
    report = predict.predict(run, [root], top_k=3, batch_size=2)
    assert report["weights"] == "ema" and report["step"] == 30
    rows = report["predictions"]
    assert [pathlib_name(r["file"]) for r in rows] == ["a.png", "b.png", "c.png", "d.png", "e.jpg"]
    names = runs.class_names(run)
    # the reference: the EMA parameters on the run's evaluation transform, one image at a time
    cfg, graphdef, rest, ema, _ = runs.model_params(run, key="ema_params")
    transform = experiment.eval_transform(cfg)
    for row, a in list(zip(rows, arrays, strict=True))[:4]:
        logits, _ = nnx.merge(graphdef, ema, rest)(transform(a[..., None])[None])
        p = np.asarray(jax.nn.softmax(logits[0]))
        top = [t["index"] for t in row["top"]]
        assert top == list(np.argsort(-p)[:3])
        assert [t["class"] for t in row["top"]] == [names[i] for i in top]
        np.testing.assert_allclose([t["probability"] for t in row["top"]], p[top], rtol=1e-4, atol=1e-6)
    assert len(rows[4]["top"]) == 3 and sum(t["probability"] for t in rows[4]["top"]) <= 1 + 1e-6
    plain = predict.predict(run, [root / "a.png"], top_k=20, ema=False)
    assert plain["weights"] == "params" and len(plain["predictions"][0]["top"]) == 10
    assert plain["predictions"][0]["top"] != rows[0]["top"]  # other parameters, other numbers


def pathlib_name(path):
    return path.rsplit("/", 1)[-1]


def test_the_command(run, images, capsys, tmp_path):
    root, _ = images
    assert cli.main(["predict", "--workdir", str(run), str(root / "a.png"), "--top-k", "2", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert len(report["predictions"]) == 1 and len(report["predictions"][0]["top"]) == 2
    assert cli.main(["predict", "--workdir", str(run), str(root)]) == 0
    out = capsys.readouterr().out
    assert out.count(".png: ") == 4 and "e.jpg: " in out
    (tmp_path / "bad.png").write_bytes(b"not an image")
    for args, culprit in ((["predict", "--workdir", str(run), str(tmp_path / "bad.png")], "bad.png"),
                          (["predict", "--workdir", str(run), str(tmp_path / "missing")], "does not exist"),
                          (["predict", "--workdir", str(run), str(root), "--top-k", "0"], "top_k=0")):
        assert cli.main(args) == 2
        err = capsys.readouterr().err
        assert culprit in err and err.count("\n") == 1
