"""Tests for vistas.config: literal parsing, typed overrides, errors, round trips, validation."""

import dataclasses

import pytest

from vistas import config as config_lib
from vistas import presets
from vistas.config import Config, apply_overrides, parse_literal
from vistas.errors import ConfigError


def one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert msg and "\n" not in msg
    return msg


@pytest.mark.parametrize(
    "text, expected",
    [
        ("3", 3),
        ("-2", -2),
        ("1e-3", 1e-3),
        ("0.5", 0.5),
        ("'x'", "x"),
        ('"two words"', "two words"),
        ("True", True),
        ("False", False),
        ("None", None),
        ("[1, 2]", [1, 2]),
        ("(0.0, 1.0)", (0.0, 1.0)),
        ("['test', 'train[:10]']", ["test", "train[:10]"]),
        ("[('.*/kernel', 2.0)]", [(".*/kernel", 2.0)]),
        ("cosine", "cosine"),  # bare words are strings
        ("vit-B/16", "vit-B/16"),
        ("3ep", "3ep"),
        ("test[:1000]", "test[:1000]"),
        ("10%", "10%"),
        ("/some/where/data", "/some/where/data"),
        ("", ""),
    ],
)
def test_parse_literal(text, expected):
    value = parse_literal(text)
    assert value == expected
    assert type(value) is type(expected)


@pytest.mark.parametrize("text", ["__import__('os').getcwd()", "open('f', 'w')", "1 + len([])",
                                  "{[]: 1}", "{[1]}", "[" * 300, "lambda: 0"])
def test_parse_literal_never_evaluates(text, monkeypatch):
    calls = []
    monkeypatch.setattr("os.getcwd", lambda: calls.append(1))
    assert parse_literal(text) == text  # left as a string, whatever it is
    assert calls == []


def test_overrides_set_typed_values():
    cfg = apply_overrides(Config(), [
        "optim.lr=0.01", "train.seed=7", "data.flip=False", "data.path=None",
        "model.name=vit-S/16", "data.value_range=(0, 1)", "data.eval_splits=['test', 'train[:5]']",
        "train.duration=3ep", "train.keep_every=1000", "optim.grad_clip_norm=None",
        "optim.wd_mults=[('.*head/kernel', 100), ('.*/kernel', 1.0)]",
        " schedule.decay = rsqrt ", "data.num_train_examples=2e3",
    ])
    assert cfg.optim.lr == 0.01
    assert cfg.train.seed == 7
    assert cfg.data.flip is False
    assert cfg.data.path is None
    assert cfg.model.name == "vit-S/16"
    assert cfg.data.value_range == (0.0, 1.0) and all(type(v) is float for v in cfg.data.value_range)
    assert cfg.data.eval_splits == ["test", "train[:5]"]
    assert cfg.train.duration == "3ep"
    assert cfg.train.keep_every == 1000
    assert cfg.optim.grad_clip_norm is None
    assert cfg.optim.wd_mults == [(".*head/kernel", 100.0), (".*/kernel", 1.0)]
    assert cfg.schedule.decay == "rsqrt"
    assert cfg.data.num_train_examples == 2000 and type(cfg.data.num_train_examples) is int


def test_later_override_wins_and_int_duration():
    cfg = apply_overrides(Config(), ["train.duration=10", "optim.lr=1", "optim.lr=0.5"])
    assert cfg.train.duration == 10 and cfg.optim.lr == 0.5
    assert type(cfg.optim.lr) is float


def test_code_in_a_string_field_is_only_a_string():
    cfg = apply_overrides(Config(), ["data.dataset=__import__('os').system('exit 3')"])
    assert cfg.data.dataset == "__import__('os').system('exit 3')"


@pytest.mark.parametrize(
    "override, key, expected",
    [
        ("optim.lr='abc'", "optim.lr", "float"),
        ("optim.lr=abc", "optim.lr", "float"),
        ("optim.lr=__import__('os')", "optim.lr", "float"),
        ("optim.lr={[]: 1}", "optim.lr", "float"),
        ("train.seed=1.5", "train.seed", "int"),
        ("train.seed=True", "train.seed", "int"),
        ("data.flip=1", "data.flip", "bool"),
        ("data.flip=yes", "data.flip", "bool"),
        ("data.value_range=(0.0, 1.0, 2.0)", "data.value_range", "tuple"),
        ("data.value_range=0.5", "data.value_range", "tuple"),
        ("data.eval_splits=test", "data.eval_splits", "list"),
        ("train.duration=[3]", "train.duration", "duration"),
        ("model.name=None", "model.name", "str"),
    ],
)
def test_wrong_type_is_one_line_naming_key_and_type(override, key, expected):
    with pytest.raises(ConfigError) as e:
        apply_overrides(Config(), [override])
    msg = one_line(e)
    assert key in msg
    assert "expected" in msg and expected in msg


@pytest.mark.parametrize(
    "override, suggestion",
    [
        ("optim.lrr=1", "optim.lr"),
        ("optim.weight_decay=0.1", "optim.wd"),
        ("trian.seed=1", "train.seed"),
        ("data.batchsize=8", "data.batch_size"),
        ("lr=0.1", None),
    ],
)
def test_unknown_key_suggests_closest(override, suggestion):
    with pytest.raises(ConfigError) as e:
        apply_overrides(Config(), [override])
    msg = one_line(e)
    assert repr(override.partition("=")[0]) in msg
    if suggestion:
        assert f"did you mean {suggestion!r}" in msg
    else:
        assert "optim.lr" in msg  # the valid keys are listed


def test_override_without_equals():
    with pytest.raises(ConfigError, match=r"'optim\.lr' is not key=value") as e:
        apply_overrides(Config(), ["optim.lr"])
    one_line(e)


@pytest.mark.parametrize(
    "override, key",
    [
        ("data.channels=2", "data.channels"),
        ("data.crop=x", "data.crop"),
        ("data.image_size=0", "data.image_size"),
        ("data.batch_size=-4", "data.batch_size"),
        ("data.inception_area=(0.5, 0.1)", "data.inception_area"),
        ("data.value_range=(1.0, 0.0)", "data.value_range"),
        ("data.eval_crop_fraction=1.5", "data.eval_crop_fraction"),
        ("data.num_train_examples=0", "data.num_train_examples"),
        ("model.dropout=1.0", "model.dropout"),
        ("train.loss=hinge", "train.loss"),
        ("train.keep=0", "train.keep"),
        ("train.keep_every=0", "train.keep_every"),
        ("optim.lr=0", "optim.lr"),
        ("optim.mu_dtype=float16", "optim.mu_dtype"),
    ],
)
def test_validate_errors(override, key):
    with pytest.raises(ConfigError) as e:
        apply_overrides(Config(), [override])
    assert key in one_line(e)


def test_validate_names_allowed_values():
    with pytest.raises(ConfigError, match="inception, random_pad, none"):
        apply_overrides(Config(), ["data.crop=x"])
    with pytest.raises(ConfigError, match="must be 1 or 3"):
        apply_overrides(Config(), ["data.channels=2"])


@pytest.mark.parametrize("name", presets.names() + ["<default>"])
def test_round_trip_through_dict_and_json(name):
    cfg = Config() if name == "<default>" else presets.get(name)
    cfg = apply_overrides(cfg, ["optim.wd_mults=[('.*head/kernel', 100.0)]", "data.value_range=(0, 1)"])
    d = cfg.to_dict()
    back = Config.from_dict(d)
    assert back == cfg
    assert back.to_json() == cfg.to_json()
    assert isinstance(back.data.value_range, tuple)
    assert isinstance(back.optim.wd_mults[0], tuple)


def test_from_dict_rejects_bad_entries():
    d = Config().to_dict()
    d["optim"]["lrr"] = 1.0
    with pytest.raises(ConfigError, match="did you mean 'optim.lr'"):
        Config.from_dict(d)
    d = Config().to_dict()
    d["data"]["channels"] = 2
    with pytest.raises(ConfigError, match="data.channels"):
        Config.from_dict(d)


def test_all_keys_cover_every_field():
    keys = config_lib.all_keys()
    assert len(keys) == len(set(keys))
    n = sum(len(dataclasses.fields(getattr(Config(), s.name))) for s in dataclasses.fields(Config))
    assert len(keys) == n
    assert config_lib.NON_IDENTITY_KEYS <= set(keys)
    cfg = Config()
    for key in keys:
        config_lib.set_value(cfg, key, config_lib.get_value(cfg, key))  # each default type-checks
    assert cfg == Config()


def test_presets_are_valid_and_documented():
    assert {"smoke", "fashion_mnist_vit"} <= set(presets.names())
    assert presets.DEFAULT in presets.names()
    for name in presets.names():
        config_lib.validate(presets.get(name))
        doc = presets.describe(name)
        assert "Command:" in doc and f"--preset {name}" in doc
    assert presets.get("smoke") is not presets.get("smoke")  # fresh copies, safe to mutate


def test_unknown_preset_suggests():
    with pytest.raises(ConfigError, match=r"unknown preset 'smok'.*did you mean 'smoke'") as e:
        presets.get("smok")
    one_line(e)
