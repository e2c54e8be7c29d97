"""Config files: a run's config written down in a TOML, Python or JSON file.

``vistas train --config FILE`` (also ``distill`` and ``optim-memory``, and a sweep spec's
``config`` key) reads one of:

- ``FILE.toml``: one table per config section holding its keys, the nested keys of
  ``config.json``; ``vistas presets show NAME --format toml`` writes a whole preset so::

      [data]
      image_size = 28
      eval_splits = ["test[:1000]"]

      [optim]
      lr = 0.003
      wd_mults = [[".*/kernel", 1.0]]     # a list of (regex, multiplier) pairs
      grad_clip_norm = "None"             # TOML has no null: "None" stands for None

  TOML has no null, so the string ``"None"`` means None wherever the key (or an item of
  it) may be None, as ``--set key=None`` does; where only a string is allowed it stays the
  string ``"None"``.
- ``FILE.py``: Python code defining ``config()``, which returns a
  :class:`~vistas.config.Config` (a preset's, changed, say) or a dict of the same nested
  keys (``{"optim": {"lr": 3e-3}}``; dotted keys ``{"optim.lr": 3e-3}`` too), as big_vision
  configs are written. The file runs as code: run only files you trust.
- ``FILE.json``: the same nested keys (a run's ``config.json``, for instance).

Keys the file leaves out keep the value of its base: the ``--preset`` given with it, else
``Config()``'s defaults (``vistas/config.py``), never a command's default preset. A
Python file whose ``config()`` returns a whole ``Config`` has no base: with ``--preset``
it is refused. ``--set`` applies on top of the file. Every value of a file passes the
checks of ``--set`` (an unknown key names the closest valid one; a wrong type names the
expected type) and each error is one line naming the file, and in TOML the line of the key.

From Python: ``load_file(path)`` (optionally ``base=``) is a file's validated ``Config``;
``build(preset, config_file, overrides)`` is the config ``vistas train`` builds from its
options; ``to_toml(cfg)`` writes a config as TOML that ``load_file`` reads back equal.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import pathlib
import re
import tomllib
import traceback
import types
import typing
from collections.abc import Sequence
from typing import Any, Union

from vistas import config as config_lib
from vistas.config import Config
from vistas.errors import ConfigError, VistasError

NONE = "None"  # how TOML files spell None
SUFFIXES = (".toml", ".py", ".json")
SECTIONS = tuple(f.name for f in dataclasses.fields(Config))


# --- reading -------------------------------------------------------------------------------


@dataclasses.dataclass
class ConfigFile:
    """A config file read: its settings as ``{"section.key": value}`` (values as read, not
    yet checked), the line of each key where known, and whether it was a whole ``Config``."""

    path: str
    settings: dict[str, Any]
    lines: dict[str, int] = dataclasses.field(default_factory=dict)
    whole: bool = False

    def where(self, key: str | None = None) -> str:
        line = self.lines.get(key) if key else None
        return f"{self.path}:{line}" if line else self.path

    def error(self, message: str, key: str | None = None) -> ConfigError:
        return ConfigError(f"{self.where(key)}: {message}")

    def apply(self, cfg: Config) -> Config:
        """Sets the file's keys on ``cfg`` (checked as ``--set`` checks; not validated)."""
        for key, value in self.settings.items():
            try:
                config_lib.set_value(cfg, key, value)
            except ConfigError as e:
                raise self.error(str(e), key) from None
        return cfg

    def validate(self, cfg: Config, overridden: Sequence[str] = ()) -> None:
        """``config.validate``; a failure is blamed on the file unless its key is one of
        ``overridden`` (the ``--set`` keys applied after the file)."""
        try:
            config_lib.validate(cfg)
        except ConfigError as e:
            key = key_of(str(e))
            if key is not None and key in overridden:
                raise
            raise self.error(str(e), key) from None


def read(path: str | pathlib.Path) -> ConfigFile:
    """Reads a ``.toml``, ``.py`` or ``.json`` config file; every failure is one line."""
    p = pathlib.Path(path)
    if p.suffix not in SUFFIXES:
        raise ConfigError(f"config file {p}: unknown kind {p.suffix or '(no suffix)'!r}; "
                          "give a .toml, .py or .json file")
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist" if not p.exists()
                          else f"config file {p} is not a file")
    if p.suffix == ".py":
        return _read_python(str(p))
    try:
        text = p.read_bytes().decode("utf-8")
    except OSError as e:
        raise ConfigError(f"config file {p} cannot be read: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {p} is not UTF-8 text (byte {e.start})") from None
    if p.suffix == ".toml":
        return _read_toml(str(p), text)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{p}:{e.lineno}:{e.colno}: not valid JSON: {e.msg}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: holds {type(data).__name__}; a config file holds an "
                          "object of sections ({\"optim\": {\"lr\": 0.001}})")
    return ConfigFile(str(p), _flatten(data, str(p)))


def load_file(path: str | pathlib.Path, base: Config | None = None) -> Config:
    """The validated config of a config file: its keys set on a copy of ``base`` (default:
    ``Config()``; a file whose ``config()`` returns a whole Config takes no base)."""
    source = read(path)
    if source.whole and base is not None:
        raise source.error("config() returns a whole Config, which leaves nothing of a base "
                           "(--preset); drop the base, or return a dict of the keys to change")
    cfg = source.apply(copy.deepcopy(base) if base is not None else Config())
    source.validate(cfg)
    return cfg


def build(preset: str | None, config_file: str | pathlib.Path | None,
          overrides: Sequence[str] = (), *, default: str | None = None) -> Config:
    """The config of a command's ``--preset``, ``--config`` and ``--set`` options.

    Without a file: the preset (``default`` when none is given) with the overrides. With
    one: its keys on top of ``preset`` when given (else ``Config()``), then the overrides.
    """
    from vistas import presets

    if config_file is None:
        name = preset or default
        if name is None:
            raise ConfigError("give --preset NAME or --config FILE")
        return config_lib.apply_overrides(presets.get(name), list(overrides))
    source = read(config_file)
    if source.whole and preset:
        raise source.error(f"config() returns a whole Config, which leaves nothing of --preset "
                           f"{preset}; drop --preset, or return a dict of the keys to change")
    cfg = source.apply(presets.get(preset) if preset else Config())
    keys = []
    for item in overrides:  # as apply_overrides does, then one validation of the whole
        key, eq, text = item.partition("=")
        if not eq:
            raise ConfigError(f"override {item!r} is not key=value, e.g. optim.lr=0.001")
        config_lib.set_value(cfg, key.strip(), config_lib.parse_literal(text.strip()))
        keys.append(key.strip())
    source.validate(cfg, overridden=keys)
    return cfg


def run_name(preset: str | None, config_file: str | pathlib.Path | None, default: str) -> str:
    """The name a run gets for its default workdir (``runs/NAME``): the file's stem, else
    the preset's name."""
    if config_file is not None:
        return pathlib.Path(config_file).stem
    return preset or default


_KEY_AT_START = re.compile(r"([a-z_]+\.[a-z0-9_]+)\b")


def key_of(message: str) -> str | None:
    """The ``section.key`` an error message starts with (``data.channels=2 must be ...``)."""
    m = _KEY_AT_START.match(message)
    return m.group(1) if m and m.group(1) in config_lib.all_keys() else None


def _flatten(data: dict, where: str) -> dict[str, Any]:
    """``{"section": {"key": v}}`` (or ``{"section.key": v}``) as ``{"section.key": v}``."""
    out: dict[str, Any] = {}
    for name, value in data.items():
        if not isinstance(name, str):
            raise ConfigError(f"{where}: key {name!r} is not a string")
        if isinstance(value, dict) and "." not in name:
            for key, v in value.items():
                out[f"{name}.{key}"] = v
        elif name in SECTIONS:
            raise ConfigError(f"{where}: {name}={value!r} must be a table of {name} keys "
                              f"({{{name!r}: {{...}}}}, or [{name}] in TOML)")
        else:
            out[name] = value  # "optim.lr", or a misplaced key: set_value names the closest one
    return out


# --- TOML ------------------------------------------------------------------------------------


_TOML_POSITION = re.compile(r"\s*\(at (?:line (\d+), column (\d+)|end of document)\)\s*$")


def _read_toml(path: str, text: str) -> ConfigFile:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        message = str(e)
        m = _TOML_POSITION.search(message)
        if m is None:
            where = path
        elif m.group(1):
            where = f"{path}:{m.group(1)}:{m.group(2)}"
        else:  # at the end of the document: its last line
            where = f"{path}:{max(1, len(text.splitlines()))}"
        detail = _TOML_POSITION.sub("", message)
        raise ConfigError(f"{where}: not valid TOML: {detail}") from None
    lines = toml_key_lines(text)
    if not isinstance(data, dict):  # pragma: no cover - tomllib always returns a table
        raise ConfigError(f"{path}: not a TOML table")
    source = ConfigFile(path, {}, lines)
    for name, value in data.items():
        if name in SECTIONS and not isinstance(value, dict):
            raise source.error(f"{name} = {value!r} must be a table of {name} "
                               f"keys ([{name}])", name)
    flat = _flatten(data, path)
    valid = set(config_lib.all_keys())
    cfg = Config()
    for key, value in flat.items():
        if key in valid:
            section, _, name = key.partition(".")
            value = _decode(value, _type_of(getattr(cfg, section), name))
        source.settings[key] = value
    return source


def _type_of(section: Any, name: str) -> Any:
    """The declared type of field ``name`` of a config section."""
    return typing.get_type_hints(type(section))[name]


def _decode(value: Any, tp: Any) -> Any:
    """TOML's ``"None"`` as None where type ``tp`` (or an item of it) may be None."""
    if tp is Any:
        return _decode_any(value)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        if value == NONE and type(None) in args:
            return None
        if isinstance(value, list):
            for arg in args:
                if typing.get_origin(arg) in (list, tuple):
                    return _decode(value, arg)
        return value
    if origin in (list, tuple) and isinstance(value, list):
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                return value  # coerce reports the wrong length
            return [_decode(v, a) for v, a in zip(value, args, strict=True)]
        item = args[0] if args else Any
        return [_decode(v, item) for v in value]
    return value


def _decode_any(value: Any) -> Any:
    """A value of an ``Any`` field (a ``mesh.rules`` placement): "None" is None and arrays
    are tuples, as written in Python."""
    if value == NONE:
        return None
    if isinstance(value, list):
        return tuple(_decode_any(v) for v in value)
    return value


_BARE_KEY = r"[A-Za-z0-9_-]+"
_KEY_PART = rf"(?:{_BARE_KEY}|\"[^\"\n]*\"|'[^'\n]*')"
_DOTTED = rf"{_KEY_PART}(?:\s*\.\s*{_KEY_PART})*"
_TABLE_LINE = re.compile(rf"\s*\[\[?\s*({_DOTTED})\s*\]\]?")
_KEY_LINE = re.compile(rf"\s*({_DOTTED})\s*=")


def _key_name(dotted: str) -> str:
    parts = re.findall(_KEY_PART, dotted)
    return ".".join(p[1:-1] if p[0] in "\"'" else p for p in parts)


def toml_key_lines(text: str) -> dict[str, int]:
    """``{"section.key": line}`` of a TOML document's keys and table headers (1-based; the
    first line wins); lines inside multi-line strings and arrays are skipped."""
    lines: dict[str, int] = {}
    table = ""
    depth = 0  # open [ and { of values spanning lines
    multiline: str | None = None  # the quotes of a multi-line string being read
    for number, line in enumerate(text.splitlines(), 1):
        start = 0
        if multiline is None and depth == 0:
            if m := _TABLE_LINE.match(line):
                table = _key_name(m.group(1))
                lines.setdefault(table, number)
                continue
            if m := _KEY_LINE.match(line):
                key = _key_name(m.group(1))
                lines.setdefault(f"{table}.{key}" if table else key, number)
                start = m.end()
        depth, multiline = _scan(line, start, depth, multiline)
    return lines


def _scan(line: str, i: int, depth: int, multiline: str | None) -> tuple[int, str | None]:
    """The bracket depth and open multi-line string after reading ``line[i:]`` of a value."""
    while i < len(line):
        if multiline is not None:
            end = line.find(multiline, i)
            while end > 0 and multiline == '"""' and _escaped(line, end):
                end = line.find(multiline, end + 1)
            if end < 0:
                return depth, multiline
            i, multiline = end + 3, None
            continue
        c = line[i]
        if c == "#":
            break
        if line.startswith(('"""', "'''"), i):
            multiline, i = line[i:i + 3], i + 3
            continue
        if c in "\"'":
            end = line.find(c, i + 1)
            while end > 0 and c == '"' and _escaped(line, end):
                end = line.find(c, end + 1)
            i = len(line) if end < 0 else end + 1
            continue
        if c in "[{":
            depth += 1
        elif c in "]}":
            depth = max(0, depth - 1)
        i += 1
    return depth, multiline


def _escaped(line: str, i: int) -> bool:
    n = 0
    while i - n - 1 >= 0 and line[i - n - 1] == "\\":
        n += 1
    return n % 2 == 1


# --- writing TOML ----------------------------------------------------------------------------


_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def _toml_string(s: str) -> str:
    out = []
    for c in s:
        if c in _ESCAPES:
            out.append(_ESCAPES[c])
        elif ord(c) < 0x20 or ord(c) == 0x7F:
            out.append(f"\\u{ord(c):04X}")
        else:
            out.append(c)
    return '"' + "".join(out) + '"'


def _toml_value(value: Any, key: str) -> str:
    if value is None:
        return _toml_string(NONE)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        if not -(2**63) <= value < 2**63:
            raise ConfigError(f"{key}={value} does not fit TOML's 64-bit integers")
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)  # shortest text that reads back as the same float
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v, key) for v in value) + "]"
    raise ConfigError(f"{key}={value!r} cannot be written as TOML (a {type(value).__name__})")


def _may_be_none(tp: Any) -> bool:
    return typing.get_origin(tp) in (Union, types.UnionType) and type(None) in typing.get_args(tp)


def to_toml(cfg: Config, header: str = "") -> str:
    """``cfg`` as a TOML document (every key, one table per section) that ``load_file``
    reads back as an equal Config; ``header`` becomes its leading comment lines."""
    lines = [f"# {line}".rstrip() for line in header.splitlines()]
    for section in dataclasses.fields(cfg):
        obj = getattr(cfg, section.name)
        lines += ["", f"[{section.name}]"]
        for f in dataclasses.fields(obj):
            key, value = f"{section.name}.{f.name}", getattr(obj, f.name)
            if value == NONE and _may_be_none(_type_of(obj, f.name)):
                raise ConfigError(f"{key}='None' (a string) cannot be written as TOML, where "
                                  "\"None\" means None")
            lines.append(f"{f.name} = {_toml_value(value, key)}")
    return "\n".join(lines).lstrip("\n") + "\n"


TOML_HEADER = """\
vistas config: {what}
  vistas train --config FILE.toml [--set key.path=value ...]
Keys left out keep Config()'s defaults (or those of a --preset given with --config).
TOML has no null: "None" stands for None (as in --set key=None)."""


def preset_toml(name: str) -> str:
    """The preset ``name`` as a TOML config file to start from."""
    from vistas import presets

    cfg = presets.get(name)
    summary = presets.describe(name).split("\n\n")[0].replace("\n", " ")
    what = f"the preset {name} (vistas presets show {name} --format toml)"
    header = TOML_HEADER.format(what=what) + (f"\n\n{name}: {summary}" if summary else "")
    return to_toml(cfg, header)


# --- Python ----------------------------------------------------------------------------------


def _raised(path: str, filename: str, e: BaseException, what: str) -> ConfigError:
    """One line for an exception the file raised, at its last line in the file."""
    frames = [f for f in traceback.extract_tb(e.__traceback__) if os.path.abspath(f.filename) == filename]
    line = frames[-1].lineno if frames else None
    where = f"{path}:{line}" if line else path
    if isinstance(e, VistasError):
        return ConfigError(f"{where}: {e}")
    first = (str(e).strip().splitlines() or [""])[0]
    said = f"{what} raised {type(e).__name__}" if what else type(e).__name__
    return ConfigError(f"{where}: {said}" + (f": {first}" if first else ""))


def _read_python(path: str) -> ConfigFile:
    """Runs the file (as ``python FILE`` would, but not as ``__main__``) and calls its
    ``config()``: the one place vistas runs code, the file the user named."""
    import runpy

    where = os.path.abspath(path)  # the file's frames in a traceback, however runpy names them
    try:
        namespace = runpy.run_path(path, run_name="__vistas_config__")
    except SyntaxError as e:
        raise ConfigError(f"{path}:{e.lineno or 1}: not valid Python: {e.msg}") from None
    except (Exception, SystemExit) as e:  # noqa: BLE001 - any failure is one line
        raise _raised(path, where, e, "") from None
    fn = namespace.get("config")
    if not callable(fn):
        raise ConfigError(f"{path} defines no config() function; a Python config file "
                          "defines config() returning a vistas Config or a dict of sections")
    try:
        result = fn()
    except (Exception, SystemExit) as e:  # noqa: BLE001
        raise _raised(path, where, e, "config()") from None
    if isinstance(result, Config):
        settings = {f"{s}.{k}": v for s, d in dataclasses.asdict(result).items() for k, v in d.items()}
        return ConfigFile(path, settings, whole=True)
    if isinstance(result, dict):
        return ConfigFile(path, _flatten(result, path))
    raise ConfigError(f"{path}: config() returned {type(result).__name__}; return a vistas "
                      "Config or a dict of sections ({'optim': {'lr': 0.001}})")


__all__ = ["NONE", "ConfigFile", "build", "key_of", "load_file", "preset_toml", "read", "run_name",
           "to_toml", "toml_key_lines"]
