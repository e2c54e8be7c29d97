"""Config files (``vistas train --config FILE``, ``vistas presets show NAME --format toml``):
every preset round-trips through TOML, Python files give a Config or a dict, ``--set``
applies on top, and every mistake in a file is one line naming the file (and the line)."""

import dataclasses
import json
import math

import pytest
from conftest import requires_fashion_mnist

from vistas import cli, config_files, presets
from vistas import config as config_lib
from vistas.config import Config
from vistas.errors import ConfigError
from vistas.scaling import spec as spec_lib


def run(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(capsys, *argv):
    code, out, err = run(capsys, *argv)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, (out, err)
    assert len(lines) == 1, err
    assert lines[0].startswith("vistas: error: ") and "Traceback" not in err + out
    return lines[0]


@pytest.fixture
def trained(monkeypatch):
    """Replaces the training loop: records (config, workdir) of each ``vistas train``."""
    from vistas.train import loop

    calls = []

    def fake_train(cfg, workdir, quiet=False, **kw):
        calls.append((cfg, str(workdir)))
        return {"finished": True, "step": 1, "total_steps": 1, "workdir": str(workdir),
                "curves": None, "checkpoints": str(workdir)}

    monkeypatch.setattr(loop, "train", fake_train)
    return calls


def write(path, text):
    path.write_text(text)
    return str(path)


# --- round trips ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", presets.names())
def test_every_preset_shown_as_toml_loads_back_equal(capsys, tmp_path, name):
    code, out, err = run(capsys, "presets", "show", name, "--format", "toml")
    assert code == 0, err
    path = write(tmp_path / f"{name}.toml", out)
    assert config_files.load_file(path) == presets.get(name)
    assert config_files.build(None, path) == presets.get(name)  # what --config builds
    assert config_files.build(name, path) == presets.get(name)  # every key: the base is moot


def test_show_as_json_is_the_config_json(capsys, tmp_path):
    code, out, _ = run(capsys, "presets", "show", "smoke", "--format", "json")
    assert code == 0 and json.loads(out) == presets.get("smoke").to_dict()
    assert config_files.load_file(write(tmp_path / "smoke.json", out)) == presets.get("smoke")


def test_awkward_values_round_trip_through_toml(tmp_path):
    cfg = presets.get("smoke")
    cfg.data.path = 'a "quoted"\\back\tslash\nnew line, ünïcode, \x01 and \x7f'
    cfg.data.mixture = [("fashion_mnist", "train[:10%]", 3.0), ("array_record:x", "train", 0.5)]
    cfg.model.depths, cfg.model.widths = [1, 2], []  # a list, an empty list: neither is None
    cfg.optim.grad_clip_norm = None  # None where the default is not
    cfg.optim.lr_mults = [("head/.*", 10.0)]
    cfg.mesh.rules = [(".*/kernel", (None, "model")), ("head/.*", "replicate"), (".*", "fsdp")]
    cfg.train.seed = 2**63 - 1
    cfg.optim.eps = 1e-300
    cfg.data.eval_splits = ["None"]  # a list of strings: "None" stays a string there
    text = config_files.to_toml(cfg, header="a header\nof two lines")
    assert text.startswith("# a header\n# of two lines\n")
    assert config_files.load_file(write(tmp_path / "c.toml", text)) == cfg
    cfg.optim.b1, cfg.optim.b2 = math.inf, -math.inf  # unvalidated, but written and read exactly
    cfg.optim.momentum = math.nan
    back = config_files.read(write(tmp_path / "d.toml", config_files.to_toml(cfg))).apply(Config())
    assert (back.optim.b1, back.optim.b2) == (math.inf, -math.inf) and math.isnan(back.optim.momentum)


def test_what_toml_cannot_hold_is_refused_when_written():
    cfg = Config()
    cfg.data.path = "None"  # a string where "None" means None
    with pytest.raises(ConfigError, match="data.path='None'.*cannot be written"):
        config_files.to_toml(cfg)
    cfg = Config()
    cfg.mesh.rules = [(".*", {"a": 1})]
    with pytest.raises(ConfigError, match="mesh.rules=.*cannot be written as TOML"):
        config_files.to_toml(cfg)


# --- what a file means ---------------------------------------------------------------------


def test_a_partial_toml_file_sets_its_keys_on_the_defaults_or_the_preset(tmp_path):
    path = write(tmp_path / "mine.toml", """
        # my run
        [optim]
        lr = 0.01
        grad_clip_norm = "None"
        wd_mults = [[".*/kernel", 2.0]]

        [train]
        duration = "3ep"
    """.replace("\n        ", "\n"))
    expected = Config()
    expected.optim.lr, expected.optim.grad_clip_norm = 0.01, None
    expected.optim.wd_mults, expected.train.duration = [(".*/kernel", 2.0)], "3ep"
    assert config_files.load_file(path) == expected
    assert config_files.build(None, path) == expected
    on_smoke = presets.get("smoke")
    on_smoke.optim.lr, on_smoke.optim.grad_clip_norm = 0.01, None
    on_smoke.optim.wd_mults, on_smoke.train.duration = [(".*/kernel", 2.0)], "3ep"
    assert config_files.build("smoke", path) == on_smoke
    assert config_files.load_file(path, base=presets.get("smoke")) == on_smoke


def test_dotted_toml_keys_and_set_on_top(tmp_path):
    path = write(tmp_path / "dotted.toml", 'optim.lr = 0.01\ndata.eval_splits = ["test"]\n')
    cfg = config_files.build("smoke", path, ["optim.lr=0.5", "train.duration=8"])
    assert (cfg.optim.lr, cfg.data.eval_splits, cfg.train.duration) == (0.5, ["test"], 8)
    assert cfg.model == presets.get("smoke").model


def test_a_python_file_returning_a_config(tmp_path):
    path = write(tmp_path / "mine.py", """
from vistas import presets


def config():
    cfg = presets.get("smoke")
    cfg.optim.lr = 0.02
    cfg.data.inception_area = [0.1, 1]  # coerced as --set coerces: a tuple of floats
    return cfg
""")
    expected = presets.get("smoke")
    expected.optim.lr, expected.data.inception_area = 0.02, (0.1, 1.0)
    assert config_files.load_file(path) == expected
    assert config_files.build(None, path, ["train.seed=3"]) == dataclasses.replace(
        expected, train=dataclasses.replace(expected.train, seed=3))


def test_a_python_file_returning_a_dict(tmp_path):
    path = write(tmp_path / "bv_style.py", """
def config():
    return {"model": {"name": "vit-mu/7", "width": 32}, "optim.lr": 0.004}
""")
    cfg = config_files.build("smoke", path)
    assert (cfg.model.name, cfg.model.width, cfg.optim.lr) == ("vit-mu/7", 32, 0.004)
    assert cfg.data == presets.get("smoke").data
    assert config_files.load_file(path).data == Config().data


def test_train_reads_the_file_and_names_the_workdir_after_it(capsys, tmp_path, trained, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _, shown, _ = run(capsys, "presets", "show", "smoke")
    path = write(tmp_path / "my_smoke.toml", shown)
    code, out, err = run(capsys, "train", "--config", path, "--set", "train.duration=8", "--json")
    assert code == 0, err
    cfg, workdir = trained[-1]
    assert workdir == "runs/my_smoke"
    assert cfg == config_lib.apply_overrides(presets.get("smoke"), ["train.duration=8"])
    code, _, err = run(capsys, "train", "--preset", "fashion_mnist_vit", "--config", path,
                       "--workdir", str(tmp_path / "w"), "--json")
    assert code == 0, err
    assert trained[-1] == (presets.get("smoke"), str(tmp_path / "w"))


def _shown(name):
    return config_files.preset_toml(name)


def test_distill_takes_a_config_file(capsys, tmp_path, trained):
    teacher = tmp_path / "teacher"
    teacher.mkdir()
    path = write(tmp_path / "student.toml",
                 f'[distill]\nmode = "consistent"\nteachers = ["{teacher}"]\n')
    code, _, err = run(capsys, "distill", "--preset", "fashion_mnist_distill_student", "--config", path,
                       "--workdir", str(tmp_path / "s"), "--json")
    assert code == 0, err
    cfg, _ = trained[-1]
    assert cfg.distill.mode == "consistent" and cfg.distill.teachers == [str(teacher)]
    assert cfg.model == presets.get("fashion_mnist_distill_student").model


def test_a_sweep_spec_may_start_from_a_config_file(tmp_path):
    write(tmp_path / "base.toml", _shown("smoke").replace("lr = 0.003", "lr = 0.007"))
    d = {"name": "s", "config": "base.toml", "set": ["train.log_every=4"], "models": [{"name": "m"}],
         "data_sizes": [256], "budgets": [8]}
    spec = spec_lib.from_dict(d, "spec.toml", root=tmp_path)
    assert spec.config == str(tmp_path / "base.toml") and spec.preset is None
    cfg = spec_lib.member_config(spec, spec.members()[0])
    assert (cfg.optim.lr, cfg.train.log_every, cfg.train.duration) == (0.007, 4, 8)
    assert spec_lib.from_dict(spec.to_dict(), "sweep.json") == spec  # as sweep.json reads back
    with pytest.raises(ConfigError, match=r"config='base.py' must name a .toml or .json config file"):
        spec_lib.from_dict({**d, "config": "base.py"}, "spec.toml", root=tmp_path)
    with pytest.raises(ConfigError, match="does not exist"):
        spec_lib.from_dict({**d, "config": "gone.toml"}, "spec.toml", root=tmp_path)
    with pytest.raises(ConfigError, match=r"missing 'preset' \(or 'config'"):
        spec_lib.from_dict({k: v for k, v in d.items() if k != "config"}, "spec.toml")
    assert "config" not in spec_lib.from_dict({**{k: v for k, v in d.items() if k != "config"},
                                               "preset": "smoke"}, "x").to_dict()
    sub = tmp_path / "specs"
    sub.mkdir()
    spec_file = write(sub / "s.toml", 'name = "s"\nconfig = "../base.toml"\ndata_sizes = [256]\n'
                      'budgets = [8]\n[[models]]\nname = "m"\n')
    assert spec_lib.load(spec_file).config == str(tmp_path / "base.toml")


@requires_fashion_mnist
def test_optim_memory_takes_a_config_file(capsys, tmp_path):
    path = write(tmp_path / "smoke.toml", _shown("smoke"))
    code, by_file, err = run(capsys, "optim-memory", "--config", path, "--optimizer", "adam", "--json")
    assert code == 0, err
    code, by_preset, err = run(capsys, "optim-memory", "--preset", "smoke", "--optimizer", "adam", "--json")
    assert code == 0, err
    assert json.loads(by_file) == json.loads(by_preset)


# --- one-line errors -----------------------------------------------------------------------


BAD_TOML = """\
[data]
image_size = 28

[optim]
lerning_rate = 0.1
"""


@pytest.mark.parametrize("text, culprits", [
    (BAD_TOML, ["bad.toml:5: unknown config key 'optim.lerning_rate'", "did you mean 'optim.lr'"]),
    ('[optim]\nlr = "fast"\n', ["bad.toml:2: optim.lr='fast' has the wrong type; expected float"]),
    ("[train]\nseed = 1\n\n[model]\ndepth = 2.5\n", ["bad.toml:5: model.depth=2.5 has the wrong type"]),
    ('[optimizer]\nlr = 0.1\n', ["bad.toml:2: unknown config key 'optimizer.lr'", "'optim.lr'"]),
    ("lr = 0.1\n", ["bad.toml:1: unknown config key 'lr'"]),
    ("optim = 0.1\n", ["bad.toml:1: optim = 0.1 must be a table of optim keys ([optim])"]),
    ("[optim.wd]\nx = 1\n", ["bad.toml:1: optim.wd={'x': 1} has the wrong type"]),
    ("[data]\nchannels = 2\n", ["bad.toml:2: data.channels=2 must be 1 or 3"]),
    ("[optim]\nlr = [1,\n", ["bad.toml:2: not valid TOML: Invalid value"]),
    ("[optim]\nlr = 0.1\nlr = 0.2\n", ["bad.toml:3:", "not valid TOML"]),
    ('[data]\nmixture = [["a", "train"]]\n', ["bad.toml:2: data.mixture=", "wrong type"]),
])
def test_toml_mistakes_are_one_line_with_file_and_line(capsys, tmp_path, text, culprits):
    path = write(tmp_path / "bad.toml", text)
    line = one_line_error(capsys, "train", "--config", path, "--workdir", str(tmp_path / "run"))
    for culprit in culprits:
        assert culprit in line, line
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("text, culprits", [
    ("x = 1\n", ["bad.py defines no config() function"]),
    ("def config():\n    return 3\n", ["bad.py: config() returned int"]),
    ("import nope_not_a_module\n", ["bad.py:1: ModuleNotFoundError: No module named 'nope_not_a_module'"]),
    ("\n\ndef config():\n    raise ValueError('no\\nsecond line')\n", ["bad.py:4: config() raised ValueError: no"]),
    ("def config(:\n", ["bad.py:1: not valid Python"]),
    ("import sys\nsys.exit(3)\n", ["bad.py:2: SystemExit: 3"]),
    ("from vistas import presets\ndef config():\n    return presets.get('smok')\n",
     ["bad.py:3: unknown preset 'smok'", "did you mean 'smoke'"]),
    ("def config():\n    return {'optim': {'learning_rate': 0.1}}\n",
     ["bad.py: unknown config key 'optim.learning_rate'; did you mean 'optim.lr'?"]),
    ("from vistas.config import Config\ndef config():\n    c = Config()\n    c.data.image_size = '28'\n"
     "    return c\n", ["bad.py: data.image_size='28' has the wrong type; expected int"]),
])
def test_python_file_mistakes_are_one_line_naming_the_file(capsys, tmp_path, text, culprits):
    path = write(tmp_path / "bad.py", text)
    line = one_line_error(capsys, "train", "--config", path, "--workdir", str(tmp_path / "run"))
    assert "Traceback" not in line and "\n" not in line
    for culprit in culprits:
        assert culprit in line, line


def test_a_relative_path_is_named_as_given(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "rel.py", "\n\ndef config():\n    return 1 / 0\n")
    line = one_line_error(capsys, "train", "--config", "rel.py")
    assert line == "vistas: error: rel.py:4: config() raised ZeroDivisionError: division by zero"


def test_file_level_mistakes(capsys, tmp_path):
    assert "config file" in one_line_error(capsys, "train", "--config", str(tmp_path / "none.toml"))
    assert "does not exist" in one_line_error(capsys, "train", "--config", str(tmp_path / "none.toml"))
    line = one_line_error(capsys, "train", "--config", write(tmp_path / "c.yaml", "a: 1\n"))
    assert "unknown kind '.yaml'" in line and ".toml, .py or .json" in line
    (tmp_path / "latin.toml").write_bytes(b'[data]\npath = "\xe9"\n')
    assert "not UTF-8" in one_line_error(capsys, "train", "--config", str(tmp_path / "latin.toml"))
    line = one_line_error(capsys, "train", "--config", write(tmp_path / "c.json", '{"optim": {"lr": }}'))
    assert "c.json:1:" in line and "not valid JSON" in line
    whole = write(tmp_path / "whole.py", "from vistas.config import Config\ndef config():\n    return Config()\n")
    line = one_line_error(capsys, "train", "--preset", "smoke", "--config", whole)
    assert "whole.py: config() returns a whole Config" in line and "drop --preset" in line


def test_set_errors_stay_the_set_errors(capsys, tmp_path):
    path = write(tmp_path / "ok.toml", "[data]\nchannels = 1\n")
    line = one_line_error(capsys, "train", "--config", path, "--set", "data.channels=2")
    assert line == "vistas: error: data.channels=2 must be 1 or 3"  # --set's, not the file's
    line = one_line_error(capsys, "train", "--config", path, "--set", "optim.lerning_rate=1")
    assert "unknown config key 'optim.lerning_rate'" in line and "ok.toml" not in line
    # a value of the file that a --set makes invalid is still the file's key
    line = one_line_error(capsys, "train", "--config", write(tmp_path / "n.toml", "[data]\nbatch_size = 6\n"),
                          "--set", "train.grad_accum_steps=4")
    assert "train.grad_accum_steps=4" in line and "n.toml" not in line


def test_a_validation_error_names_the_files_line(tmp_path):
    path = write(tmp_path / "v.toml", "[train]\nseed = 0\nema_decay = 1.5\n")
    with pytest.raises(ConfigError, match=r"v.toml:3: train.ema_decay=1.5 must be in \[0, 1\)"):
        config_files.load_file(path)


def test_toml_values_are_data_never_code(tmp_path):
    payload = "__import__('os').system('touch pwned')"
    path = write(tmp_path / "c.toml", f'[optim]\nlr = "{payload}"\n')
    with pytest.raises(ConfigError, match="c.toml:2: optim.lr=.* has the wrong type"):
        config_files.load_file(path)
    cfg = config_files.load_file(write(tmp_path / "d.toml", f'[data]\npath = "{payload}"\n'))
    assert cfg.data.path == payload
    assert not (tmp_path / "pwned").exists()


def test_key_lines_skip_multiline_values():
    text = '''\
[data]
mixture = [
  ["a=b", "train", 1.0],
  ["[x]", "train", 2.0],
]
path = """
batch_size = 3
[optim]
"""
batch_size = 8  # the real one
'eval_splits' = ["x"]

[ "optim" ]
lr = 1
'''
    lines = config_files.toml_key_lines(text)
    assert lines["data.mixture"] == 2 and lines["data.path"] == 6 and lines["data.batch_size"] == 10
    assert lines["data.eval_splits"] == 11 and lines["optim"] == 13 and lines["optim.lr"] == 14
    assert "data.a" not in lines and "x" not in lines
