"""Sweep specifications: a grid of model variants x training-set sizes x step budgets.

A spec is a TOML file (or a named sweep preset, ``vistas.scaling.presets``) such as::

    name = "my_sweep"
    preset = "fashion_mnist_vit"          # the run preset every member starts from
    # config = "base.toml"                # or a config file (.toml/.json, vistas.config_files),
    #                                     # relative to the spec; on top of preset if both
    set = ["data.batch_size=64"]          # shared overrides (vistas train --set syntax)
    data_sizes = [1000, 5000, "full"]     # seeded subsets of the train split
    budgets = [250, 500, 1000]            # training steps of each member
    cooldown = 0.2                        # fraction of each budget spent in a linear cooldown

    [[models]]
    name = "w32d1"                        # a label; also the folder name
    set = ["model.width=32", "model.depth=1"]

With ``cooldown`` in (0, 1), each (model, data size) pair is ONE run with an rsqrt schedule
(the "source") and every budget B is a cooldown branch of it ("Scaling Vision Transformers",
Section 3.4): from the source's step S = round((1 - cooldown)·B) for N = B - S steps, which
is exactly the run of B steps with an N-step linear cooldown (``vistas.train.cooldown``). A
pair then costs max(S) + sum(N) steps instead of sum(B). ``cooldown = 0`` (or false) makes
every member a dedicated run of B steps with the preset's own schedule.

Every member is a plain vistas run in ``OUT/<model>/n<size>/b<budget>``; sources live in
``OUT/<model>/n<size>/source``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import re
import tomllib
from functools import reduce
from typing import Any

from vistas.errors import ConfigError

_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_KEYS = ("name", "preset", "config", "set", "models", "data_sizes", "budgets", "cooldown")


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    name: str
    set: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Member:
    """One run of the sweep; ``branch_step`` is set for a cooldown branch of its source."""

    id: str  # "<model>/n<size>/b<budget>", also its folder under the sweep's out dir
    group: str  # "<model>/n<size>"
    model: str
    data_size: int | None  # None: the whole train split
    budget: int
    branch_step: int | None
    cooldown_steps: int | None


@dataclasses.dataclass(frozen=True)
class Group:
    """Members sharing a model and a data size: in branch mode, the branches of one source."""

    id: str
    model: ModelSpec
    data_size: int | None
    members: tuple[Member, ...]
    source_steps: int | None  # length of the rsqrt source run (branch mode)
    keep_every: int | None  # the source keeps every such step: all branch points

    @property
    def source(self) -> str | None:
        return f"{self.id}/source" if self.source_steps else None


@dataclasses.dataclass(frozen=True)
class SweepSpec:
    name: str
    preset: str | None
    set: tuple[str, ...]
    models: tuple[ModelSpec, ...]
    data_sizes: tuple[int | None, ...]
    budgets: tuple[int, ...]
    cooldown: float  # 0: dedicated runs
    config: str | None = None  # a config file (absolute path) the members start from

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if self.config is None:  # the sweep.json of a spec without one stays as it was
            del d["config"]
        if self.preset is None:
            del d["preset"]
        d["models"] = [{"name": m.name, "set": list(m.set)} for m in self.models]
        d["data_sizes"] = ["full" if n is None else n for n in self.data_sizes]
        d["set"], d["budgets"] = list(self.set), list(self.budgets)
        return d

    def groups(self) -> list[Group]:
        out = []
        for m in self.models:
            for n in self.data_sizes:
                gid = f"{m.name}/n{'full' if n is None else n}"
                members = []
                for b in self.budgets:
                    s = round((1 - self.cooldown) * b) if self.cooldown else None
                    members.append(Member(f"{gid}/b{b}", gid, m.name, n, b, s,
                                          b - s if s is not None else None))
                steps = [x.branch_step for x in members if x.branch_step]
                out.append(Group(gid, m, n, tuple(members), max(steps) if steps else None,
                                 reduce(math.gcd, steps) if steps else None))
        return out

    def members(self) -> list[Member]:
        return [m for g in self.groups() for m in g.members]


def _fail(where: str, msg: str) -> ConfigError:
    return ConfigError(f"sweep spec {where}: {msg}")


def _str_list(value: Any, key: str, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _fail(where, f"{key}={value!r} must be a list of 'key.path=value' strings")
    for v in value:
        if "=" not in v:
            raise _fail(where, f"{key} entry {v!r} is not key=value, e.g. optim.lr=0.001")
    return tuple(value)


def _positive_ints(value: Any, key: str, where: str, *, full: bool = False) -> list:
    ok = isinstance(value, list) and bool(value) and all(
        (full and v == "full") or (isinstance(v, int) and not isinstance(v, bool) and v > 0)
        for v in value)
    if not ok:
        allowed = "positive integers or \"full\"" if full else "positive integers"
        raise _fail(where, f"{key}={value!r} must be a non-empty list of {allowed}")
    if len(set(value)) != len(value):
        raise _fail(where, f"{key}={value!r} repeats a value")
    return value


def _config_file(value: Any, where: str, root: pathlib.Path | None) -> str:
    """The absolute path of a spec's ``config`` file, relative to ``root`` (the spec's folder)."""
    if not isinstance(value, str) or pathlib.Path(value).suffix not in (".toml", ".json"):
        raise _fail(where, f"config={value!r} must name a .toml or .json config file "
                           "(a sweep runs no code from its spec)")
    path = pathlib.Path(value).expanduser()
    path = pathlib.Path(os.path.abspath(root / path if root is not None else path))  # no ".."
    if not path.is_file():
        raise _fail(where, f"config={value!r}: {path} does not exist")
    return str(path)


def from_dict(d: Any, where: str = "", root: str | pathlib.Path | None = None) -> SweepSpec:
    """Validates a parsed spec; every problem is one line naming the bad value. A relative
    ``config`` path is taken from ``root`` (the spec file's folder; default: here)."""
    where = where or "<dict>"
    if not isinstance(d, dict):
        raise _fail(where, "must be a table of name, preset, set, models, data_sizes, budgets, cooldown")
    unknown = sorted(set(d) - set(_KEYS))
    if unknown:
        raise _fail(where, f"unknown key(s) {', '.join(map(repr, unknown))}; allowed: {', '.join(_KEYS)}")
    for key in ("name", "models", "data_sizes", "budgets"):
        if key not in d:
            raise _fail(where, f"missing {key!r}")
    if "preset" not in d and "config" not in d:
        raise _fail(where, "missing 'preset' (or 'config', a config file)")
    name, preset = d["name"], d.get("preset")
    if not isinstance(name, str) or not _LABEL.fullmatch(name):
        raise _fail(where, f"name={name!r} must be a word of letters, digits, '_', '-', '.'")
    from vistas import presets

    if "preset" in d and (not isinstance(preset, str) or preset not in presets.names()):
        raise _fail(where, f"preset={preset!r} is not a run preset; known: {', '.join(presets.names())}")
    config = _config_file(d["config"], where, pathlib.Path(root) if root else None) if "config" in d else None
    models = d["models"]
    if not isinstance(models, list) or not models or not all(isinstance(m, dict) for m in models):
        raise _fail(where, "models must be a non-empty list of tables [[models]] with name and set")
    model_specs = []
    for m in models:
        extra = sorted(set(m) - {"name", "set"})
        if extra:
            raise _fail(where, f"model entry {m!r} has unknown key(s) {extra}; allowed: name, set")
        label = m.get("name")
        if not isinstance(label, str) or not _LABEL.fullmatch(label):
            raise _fail(where, f"model name {label!r} must be a word of letters, digits, '_', '-', '.'")
        model_specs.append(ModelSpec(label, _str_list(m.get("set", []), f"models[{label}].set", where)))
    labels = [m.name for m in model_specs]
    if len(set(labels)) != len(labels):
        raise _fail(where, f"model names {labels} repeat a name")
    sizes = _positive_ints(d["data_sizes"], "data_sizes", where, full=True)
    budgets = _positive_ints(d["budgets"], "budgets", where)
    cooldown = d.get("cooldown", 0.0)
    if cooldown is False:
        cooldown = 0.0
    if isinstance(cooldown, bool) or not isinstance(cooldown, (int, float)) or not 0 <= cooldown < 1:
        raise _fail(where, f"cooldown={cooldown!r} must be a fraction in [0, 1) (0: dedicated runs)")
    spec = SweepSpec(name, preset, _str_list(d.get("set", []), "set", where), tuple(model_specs),
                     tuple(None if n == "full" else n for n in sizes), tuple(sorted(budgets)),
                     float(cooldown), config)
    for m in spec.members():
        if m.branch_step is not None and not (m.branch_step >= 1 and m.cooldown_steps >= 1):
            raise _fail(where, f"budget {m.budget} with cooldown={cooldown} leaves no steps before "
                               "or in the cooldown; use larger budgets or another fraction")
    for g in spec.groups():  # every override must be a valid config key and value
        if g.data_size == spec.data_sizes[0]:
            member_config(spec, g.members[0])
    return spec


def load(spec: str | pathlib.Path) -> SweepSpec:
    """A spec from a ``.toml`` or ``.json`` file, or the name of a sweep preset."""
    path = pathlib.Path(spec)
    if path.suffix in (".toml", ".json"):
        if not path.is_file():
            raise ConfigError(f"sweep spec {path} does not exist")
        text = path.read_text()
        try:
            d = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
        except (tomllib.TOMLDecodeError, json.JSONDecodeError) as e:
            raise ConfigError(f"sweep spec {path} is not valid {path.suffix[1:].upper()}: {e}") from None
        return from_dict(d, str(path), root=path.parent)
    from vistas.scaling import presets

    return from_dict(presets.get(str(spec)), f"preset {spec}")


def _overrides(spec: SweepSpec, model: ModelSpec, data_size: int | None) -> list[str]:
    extra = [] if data_size is None else [f"data.num_train_examples={data_size}"]
    return [*spec.set, *model.set, *extra]


def _base(spec: SweepSpec, model: ModelSpec, data_size: int | None, extra: list[str]) -> Any:
    from vistas import config_files

    try:
        return config_files.build(spec.preset, spec.config, _overrides(spec, model, data_size) + extra)
    except ConfigError as e:
        raise ConfigError(f"sweep {spec.name}, model {model.name}: {e}") from None


def source_overrides(spec: SweepSpec, group: Group) -> list[str]:
    """What turns a member's config into its group's rsqrt source run."""
    return [f"train.duration={group.source_steps}", "schedule.decay='rsqrt'", "schedule.cooldown=0",
            f"train.keep_every={group.keep_every}"]


def source_config(spec: SweepSpec, group: Group) -> Any:
    return _base(spec, group.model, group.data_size, source_overrides(spec, group))


def member_config(spec: SweepSpec, member: Member) -> Any:
    """The config of a dedicated member run (branch members get theirs from the source)."""
    model = next(m for m in spec.models if m.name == member.model)
    if member.branch_step is not None:
        group = next(g for g in spec.groups() if g.id == member.group)
        return source_config(spec, group)
    return _base(spec, model, member.data_size, [f"train.duration={member.budget}"])


__all__ = ["Group", "Member", "ModelSpec", "SweepSpec", "from_dict", "load", "member_config",
           "source_config", "source_overrides"]
