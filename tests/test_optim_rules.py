"""Tests for vistas.optim.rules: first-match-wins regex rules on parameter paths."""

import jax
import jax.numpy as jnp
import pytest

from vistas.errors import ConfigError
from vistas.optim.rules import describe, match_rules, path_str, unused_rules


def _params():
    return {
        "embedding": {"kernel": jnp.ones((4, 8)), "bias": jnp.zeros(8)},
        "encoder": {
            "block00": {"mlp": {"fc1": {"kernel": jnp.ones((8, 16)), "bias": jnp.zeros(16)}}},
            "norm": {"scale": jnp.ones(8)},
        },
        "head": {"kernel": jnp.ones((8, 10)), "bias": jnp.zeros(10)},
    }


def test_path_str_handles_dict_attr_and_sequence_keys():
    path = (
        jax.tree_util.DictKey("encoder"),
        jax.tree_util.SequenceKey(3),
        jax.tree_util.GetAttrKey("kernel"),
    )
    assert path_str(path) == "encoder/3/kernel"
    leaves, _ = jax.tree_util.tree_flatten_with_path(_params())
    assert "encoder/block00/mlp/fc1/kernel" in [path_str(p) for p, _ in leaves]


def test_paper_head_body_split():
    mults = match_rules(_params(), [(".*head/kernel", 100.0), (".*/kernel", 1.0)], 0.0)
    assert mults["head"]["kernel"] == 100.0
    assert mults["embedding"]["kernel"] == 1.0
    assert mults["encoder"]["block00"]["mlp"]["fc1"]["kernel"] == 1.0
    assert mults["head"]["bias"] == 0.0
    assert mults["encoder"]["norm"]["scale"] == 0.0
    assert jax.tree_util.tree_structure(mults) == jax.tree_util.tree_structure(_params())


def test_first_match_wins():
    rules = [(".*/kernel", 1.0), (".*head/kernel", 100.0)]
    assert match_rules(_params(), rules, 0.0)["head"]["kernel"] == 1.0


def test_fullmatch_not_search():
    # "kernel" alone matches no full path; "head" does not match "head/kernel".
    mults = match_rules(_params(), [("kernel", 1.0), ("head", 2.0)], 0.0)
    assert all(v == 0.0 for v in jax.tree_util.tree_leaves(mults))
    assert match_rules(_params(), [("head/.*", 2.0)], 0.0)["head"]["bias"] == 2.0


def test_mapping_rules_in_order():
    mults = match_rules(_params(), {".*head/kernel": 100.0, ".*/kernel": 1.0}, 0.0)
    assert mults["head"]["kernel"] == 100.0


def test_describe_and_unused():
    table = dict(describe(_params(), [(".*head/kernel", 100.0)], 0.0))
    assert table["head/kernel"] == 100.0
    assert table["embedding/kernel"] == 0.0
    assert len(table) == len(jax.tree_util.tree_leaves(_params()))
    assert unused_rules(_params(), [(".*head/kernel", 1.0), ("decoder/.*", 1.0)]) == ["decoder/.*"]


def test_bad_regex_is_a_config_error_naming_it():
    with pytest.raises(ConfigError, match=r"\[unclosed") as info:
        match_rules(_params(), [("[unclosed", 1.0)], 0.0)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("rules", ["head/.*", [("head/.*",)], [(1, 2.0)]])
def test_malformed_rules_are_config_errors(rules):
    with pytest.raises(ConfigError):
        match_rules(_params(), rules, 0.0)
