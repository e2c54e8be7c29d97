"""Per-parameter choices as rules: `(regex, value)` pairs matched against parameter paths.

This is the one mechanism for every per-parameter choice (weight-decay and learning-rate
multipliers, freezing, sharding...). A parameter's path is its pytree keys joined by "/",
e.g. `encoder/block00/mlp/fc1/kernel`. A rule matches when its regex matches the WHOLE
path (`re.fullmatch`), and the FIRST matching rule wins; unmatched parameters get the
default. The paper's head/body weight-decay split is then

    match_rules(params, [(".*head/kernel", 100.0), (".*/kernel", 1.0)], default=0.0)

which gives 100 to `head/kernel`, 1 to every other kernel and 0 to biases and norms.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import jax

from vistas.errors import ConfigError

Rules = Sequence[tuple[str, Any]]


def _key_str(entry: Any) -> str:
    if isinstance(entry, jax.tree_util.DictKey):
        return str(entry.key)
    if isinstance(entry, jax.tree_util.GetAttrKey):
        return str(entry.name)
    if isinstance(entry, jax.tree_util.SequenceKey):
        return str(entry.idx)
    if isinstance(entry, jax.tree_util.FlattenedIndexKey):
        return str(entry.key)
    return str(entry)


def path_str(path: Sequence[Any]) -> str:
    """The "/"-joined string of a jax key path, e.g. `encoder/block00/attn/qkv/kernel`."""
    return "/".join(_key_str(entry) for entry in path)


def compile_rules(rules: Rules, what: str = "rules") -> list[tuple[re.Pattern, Any]]:
    """Validate and compile `rules` once (ConfigError naming a bad entry or regex).

    A mapping `{regex: value}` is accepted too, in its insertion order.
    """
    if isinstance(rules, Mapping):
        rules = list(rules.items())
    if isinstance(rules, (str, bytes)) or not isinstance(rules, Sequence):
        raise ConfigError(
            f"{what}={rules!r} is not a list of rules; use a list of (regex, value) pairs, "
            "e.g. [('.*head/kernel', 100.0), ('.*/kernel', 1.0)]"
        )
    compiled = []
    for rule in rules:
        if isinstance(rule, (str, bytes)) or not isinstance(rule, Sequence) or len(rule) != 2:
            raise ConfigError(
                f"{what} entry {rule!r} is not a (regex, value) pair, e.g. ('.*/kernel', 1.0)"
            )
        pattern, value = rule
        compiled.append((compile_regex(pattern, what), value))
    return compiled


def compile_regex(pattern: Any, what: str = "rules") -> re.Pattern:
    """Compile one rule regex, raising a one-line ConfigError naming it if it is invalid."""
    if not isinstance(pattern, str):
        raise ConfigError(
            f"{what} regex {pattern!r} is not a string; use a regex such as '.*/kernel'"
        )
    try:
        return re.compile(pattern)
    except re.error as err:
        raise ConfigError(
            f"{what} regex {pattern!r} is invalid ({err}); use a Python regex such as '.*/kernel'"
        ) from None


def first_match(path: str, compiled: list[tuple[re.Pattern, Any]], default: Any) -> Any:
    """The value of the first compiled rule fully matching `path`, else `default`."""
    for regex, value in compiled:
        if regex.fullmatch(path):
            return value
    return default


def match_rules(params: Any, rules: Rules, default: Any, *, name: str = "rules") -> Any:
    """A pytree like `params`; each leaf is the value of the first rule matching its path.

    Matching is `re.fullmatch` on the "/"-joined path; unmatched parameters get `default`.
    Values must be pytree leaves (numbers, strings...), not None or containers. `name` is the
    config field the rules came from (e.g. `optim.wd_mults`), used in error messages.
    """
    compiled = compile_rules(rules, name)
    return jax.tree_util.tree_map_with_path(
        lambda path, _: first_match(path_str(path), compiled, default), params
    )


def describe(
    params: Any, rules: Rules, default: Any, *, name: str = "rules"
) -> list[tuple[str, Any]]:
    """`[(path, value), ...]` for every parameter, in tree order: for logging who got what."""
    compiled = compile_rules(rules, name)
    leaves, _ = jax.tree_util.tree_flatten_with_path(params)
    return [(path_str(path), first_match(path_str(path), compiled, default)) for path, _ in leaves]


def unused_rules(params: Any, rules: Rules, *, name: str = "rules") -> list[str]:
    """Regexes of `rules` that fully match no parameter path (likely typos): for warnings."""
    compiled = compile_rules(rules, name)
    paths = [path_str(path) for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    return [regex.pattern for regex, _ in compiled if not any(regex.fullmatch(p) for p in paths)]
