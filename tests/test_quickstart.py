"""docs/quickstart.md runs as written: every code block of the page, in order, in one
empty folder, so that the page cannot go out of date.

What the test does with each fenced block of the page:

- ```` ```bash ````: run with ``bash -euo pipefail`` (a failing command fails the test),
  ``vistas`` being the ``vistas`` of this interpreter's environment;
- ```` ```python ````: run with this interpreter (``python -c``);
- a block right after ``<!-- file: NAME -->``: written to ``NAME`` (a config file);
- a block right after ``<!-- not run: REASON -->``: skipped; only installation commands
  may be skipped (``make``, ``pip``, ``source``, ...: ``NOT_RUN_COMMANDS``);
- ```` ```text ````: shown output, not run.

Any other block fails the test, so that a new block is never silently left out.

The page's runs are shortened by a shell function ``vistas`` defined before each bash
block (``SHRINK``): it runs the real command with these arguments appended, so that the
commands on the page keep the numbers a user runs:

- ``vistas train`` / ``distill``: ``--set train.duration=4 "data.eval_splits=['test[:1000]']"``
  (4 steps instead of epochs, evaluated on at most 1,000 test images; a later ``--set``
  wins over the page's);
- ``vistas finetune``: ``--steps 4``;
- ``vistas fewshot``: ``--shots 5 --seeds 1 --max-test-examples 200``.

Everything else (the data, the models, the recipes) is as on the page. The commands
share JAX's persistent compilation cache (the ``compilation_cache`` fixture, passed on in
the environment), so that the runs of one model compile it once.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

from vistas.data import catalog

PAGE = pathlib.Path(__file__).resolve().parents[1] / "docs" / "quickstart.md"
DATASETS = ("fashion_mnist", "mnist_5k", "animal_silhouettes")
NOT_RUN_COMMANDS = ("make ", "pip ", "source ", "python3 -m venv", "git clone ", "cd ")

SHRINK = """
vistas() {
  case "$1" in
    train|distill) command vistas "$@" --set train.duration=4 "data.eval_splits=['test[:1000]']" ;;
    finetune) command vistas "$@" --steps 4 ;;
    fewshot) command vistas "$@" --shots 5 --seeds 1 --max-test-examples 200 ;;
    *) command vistas "$@" ;;
  esac
}
"""

_FENCE = re.compile(r"^```(\S*)\s*$")
_MARKER = re.compile(r"^<!--\s*(not run|file)\s*:\s*(.*?)\s*-->$")


def blocks(text: str) -> list[dict]:
    """The fenced blocks of a markdown page, in order: ``lang``, ``code``, ``line`` (of the
    opening fence, 1-based) and ``marker`` (``(kind, value)`` of an HTML comment on the
    last non-blank line before the fence, else None)."""
    lines = text.splitlines()
    found, i = [], 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        start = i
        j = i - 1
        while j >= 0 and not lines[j].strip():
            j -= 1
        marker = _MARKER.match(lines[j].strip()) if j >= 0 else None
        i += 1
        body = []
        while i < len(lines) and lines[i].rstrip() != "```":
            body.append(lines[i])
            i += 1
        if i == len(lines):
            raise AssertionError(f"{PAGE.name}:{start + 1}: a code block is never closed")
        found.append({"lang": m.group(1), "code": "\n".join(body) + "\n", "line": start + 1,
                      "marker": (marker.group(1), marker.group(2)) if marker else None})
        i += 1
    return found


def test_blocks_parser():
    page = ("a\n\n```bash\necho 1\n```\n<!-- not run: installs -->\n\n```bash\nmake x\n```\n"
            "<!-- file: a.toml -->\n```toml\n[data]\n```\n```text\nout\n```\n")
    got = [(b["lang"], b["code"], b["marker"]) for b in blocks(page)]
    assert got == [("bash", "echo 1\n", None), ("bash", "make x\n", ("not run", "installs")),
                   ("toml", "[data]\n", ("file", "a.toml")), ("text", "out\n", None)]


def test_a_failing_command_fails_the_test(tmp_path):
    env = {**os.environ, "PATH": f"{pathlib.Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    assert _run({"lang": "bash", "code": "type vistas\n", "line": 1}, tmp_path, env).startswith("vistas is a function")
    for lang, code in [("bash", "false\necho not reached\n"), ("bash", "false | cat\n"),
                       ("python", "raise SystemExit(3)\n")]:
        with pytest.raises(AssertionError, match="block failed"):
            _run({"lang": lang, "code": code, "line": 1}, tmp_path, env)


def _run(block: dict, cwd: pathlib.Path, env: dict) -> str:
    if block["lang"] == "bash":
        cmd = ["bash", "-euo", "pipefail", "-c", SHRINK + block["code"]]
    else:
        cmd = [sys.executable, "-c", block["code"]]
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    where = f"{PAGE.name}:{block['line']}"
    assert proc.returncode == 0, (f"{where}: the {block['lang']} block failed (exit {proc.returncode})"
                                  f":\n{block['code']}\nstdout:\n{proc.stdout[-3000:]}\n"
                                  f"stderr:\n{proc.stderr[-3000:]}")
    return proc.stdout


@pytest.mark.slow
@pytest.mark.usefixtures("compilation_cache")  # in the environment: the runs share compiled programs
@pytest.mark.skipif(not all(catalog.is_present(n) for n in DATASETS),
                    reason=f"needs the datasets {', '.join(DATASETS)}")
def test_quickstart_page_runs(tmp_path):
    env = {**os.environ, "PATH": f"{pathlib.Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    outputs: list[tuple[str, str]] = []  # (code, stdout) of every block run
    for block in blocks(PAGE.read_text()):
        where = f"{PAGE.name}:{block['line']}"
        kind, value = block["marker"] or (None, None)
        if kind == "not run":
            assert value, f"{where}: say why the block is not run"
            commands = [c.strip() for c in block["code"].splitlines() if c.strip() and not c.startswith("#")]
            assert all(c.startswith(NOT_RUN_COMMANDS) for c in commands), (
                f"{where}: only installation commands may be left out of the test: {commands}")
        elif kind == "file":
            assert value and "/" not in value, f"{where}: a file name in the folder of the page's commands"
            (tmp_path / value).write_text(block["code"])
        elif block["lang"] in ("bash", "python"):
            outputs.append((block["code"], _run(block, tmp_path, env)))
        else:
            assert block["lang"] == "text", (f"{where}: a ```{block['lang']} block is neither run (bash, "
                                             "python) nor marked <!-- file: NAME --> or <!-- not run: WHY -->")

    def output_of(command: str) -> str:
        hits = [out for code, out in outputs if command in code]
        assert hits, f"no block of {PAGE.name} runs {command!r}"
        return hits[0]

    # 1-2: the demo run and what it writes
    demo = tmp_path / "runs" / "demo"
    for name in ("config.json", "classes.json", "metrics.jsonl", "summary.json", "curves.png"):
        assert (demo / name).is_file(), name
    assert (demo / "checkpoints" / "4").is_dir()
    assert json.loads((demo / "summary.json").read_text())["finished"]
    assert "fashion_mnist_vit (default)" in output_of("vistas presets")
    assert "'eval/test[:1000]/top1'" in output_of("runs/demo/metrics.jsonl")
    # 3: the folder of shapes
    assert "train 900 images" in output_of("vistas data verify shapes")
    assert json.loads((tmp_path / "runs" / "shapes" / "classes.json").read_text()) == [
        "circle", "square", "triangle"]
    # 4: the config file, with --set on top
    run = json.loads((tmp_path / "runs" / "shapes-lr1e-3" / "config.json").read_text())
    assert (run["data"]["dataset"], run["data"]["path"], run["optim"]["lr"]) == ("folder", "shapes", 1e-3)
    assert "vit-S/7 folder shapes 10ep 0.001" in output_of("config_files.build")
    # 5: predictions name the classes
    predicted = output_of("vistas predict")
    for image in ("shapes/test/circle/0007.png", "shapes/test/triangle/0012.png"):
        assert re.search(rf"^{re.escape(image)}: (circle|square|triangle) \d\.\d{{3}}  "
                         r"(circle|square|triangle) \d\.\d{3}$", predicted, re.M), predicted
    assert re.search(r"^\d+ of 50 squares recognised$", output_of("from vistas.evaluate.predict"), re.M)
    # 6: few-shot table
    fewshot = output_of("vistas fewshot")
    assert re.search(r"^mnist_5k\s+\d", fewshot, re.M) and re.search(r"^animal_silhouettes\s+\d", fewshot, re.M)
    assert list(demo.glob("fewshot_*.json"))
    # 7: the fine-tuning run
    summary = json.loads((tmp_path / "runs" / "demo-ft-mnist_5k" / "summary.json").read_text())
    assert summary["finished"] and "eval/test/top1" in summary
    assert "fine-tuning finished: step 4/4" in output_of("vistas finetune")
