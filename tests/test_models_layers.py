"""Tests for what the model families share: dropout and drop-path (``vistas.models.layers``),
used the same way by the ViT, NFNet and BiT, and the import structure of ``vistas.models``."""

import ast
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vistas.errors import ConfigError
from vistas.models import bit, checks, layers, nfnet

MODELS = pathlib.Path(__file__).resolve().parents[1] / "vistas" / "models"


def normal(*shape, seed=0):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape, np.float32))


# ---------------------------------------------------------------------------- drop-path


def test_drop_path_is_the_identity_without_a_key_or_at_rate_zero():
    x = normal(8, 3, 4)
    key = jax.random.PRNGKey(0)
    for rate in (0.0, 0, np.float32(0.0), None):
        np.testing.assert_array_equal(layers.drop_path(x, rate, key), x)
    for rate in (0.0, 0.3, 0.9):  # evaluation: no key
        np.testing.assert_array_equal(layers.drop_path(x, rate, None), x)
    traced = jax.jit(lambda r: layers.drop_path(x, r, key))(jnp.float32(0.0))  # a scanned block's rate
    np.testing.assert_array_equal(traced, x)


@pytest.mark.parametrize("shape", [(1000, 3, 2), (512, 2, 2, 3)])  # ViT tokens, ConvNet maps
def test_drop_path_drops_whole_examples_and_scales_the_kept_ones(shape):
    x = jnp.ones(shape)
    y = np.asarray(layers.drop_path(x, 0.3, jax.random.PRNGKey(0))).reshape(shape[0], -1)
    dropped = (y == 0).all(1)
    assert np.all(dropped | np.isclose(y, 1 / 0.7, rtol=1e-6).all(1))  # all of an example, or none
    assert 0.25 < dropped.mean() < 0.35
    traced = jax.jit(lambda r: layers.drop_path(x, r, jax.random.PRNGKey(0)))(jnp.float32(0.3))
    np.testing.assert_allclose(np.asarray(traced).reshape(shape[0], -1), y)


def test_drop_path_keeps_the_expectation_over_keys():
    x = normal(4, 3, 5)
    keys = jax.random.split(jax.random.PRNGKey(1), 4000)
    mean = jnp.mean(jax.vmap(lambda k: layers.drop_path(x, 0.3, k))(keys), axis=0)
    # standard error per element: |x|·sqrt(rate/keep/4000) ≈ 0.01|x|
    np.testing.assert_allclose(mean, x, rtol=0.06, atol=1e-6)


def test_the_same_key_gives_the_same_mask():
    x = normal(256, 4)
    key = jax.random.PRNGKey(3)
    a = layers.drop_path(x, 0.5, key)
    np.testing.assert_array_equal(a, layers.drop_path(x, 0.5, key))
    np.testing.assert_array_equal(layers.drop_path(2 * x, 0.5, key), 2 * a)  # mask independent of x
    assert not np.array_equal(a, layers.drop_path(x, 0.5, jax.random.PRNGKey(4)))
    d = layers.dropout(x, 0.5, key)
    np.testing.assert_array_equal(d, layers.dropout(x, 0.5, key))


# ---------------------------------------------------------------------------- dropout


def test_dropout_is_per_element_inverted_and_off_without_a_key():
    x = jnp.ones((200, 50))
    np.testing.assert_array_equal(layers.dropout(x, 0.3, None), x)
    np.testing.assert_array_equal(layers.dropout(x, 0.0, jax.random.PRNGKey(0)), x)
    y = np.asarray(layers.dropout(x, 0.3, jax.random.PRNGKey(0)))
    assert np.all((y == 0) | np.isclose(y, 1 / 0.7, rtol=1e-6))
    assert 0.28 < (y == 0).mean() < 0.32
    assert 0 < (y == 0).sum(1).min() < 50  # elements, not whole examples
    assert abs(y.mean() - 1.0) < 0.02  # the expectation is kept


# ---------------------------------------------------------------------------- every family


def _residual_branches(block, x, rate, scale):
    """The branch a block adds to ``x`` in evaluation and, per example, in training."""
    branch = np.asarray(block(x)) - np.asarray(x)
    trained = np.asarray(block(x, jax.random.PRNGKey(0))) - np.asarray(x)
    assert np.abs(branch).max(axis=(1, 2, 3)).min() > 1e-3  # no example's branch is zero
    kept = np.isclose(trained, branch * scale, rtol=1e-4, atol=1e-5).all(axis=(1, 2, 3))
    dropped = (np.abs(trained) < 1e-6).all(axis=(1, 2, 3))
    return kept, dropped


def test_nfnet_and_bit_blocks_drop_whole_branches():
    """Both ConvNets drop whole examples' branches; BiT divides the kept ones by the keep
    probability, NFNet keeps its reference's convention (no rescaling)."""
    x = normal(32, 4, 4, 8)
    cfg = nfnet.NFNetConfig(num_classes=2, depths=(1,), widths=(8,), group_width=4)
    block = nfnet.NFBlock(8, 8, stride=1, beta=1.0, drop_path=0.5, cfg=cfg, rngs=nnx.Rngs(0))
    block.skip_gain[...] = jnp.ones(())  # SkipInit starts at 0: give the branch weight
    unit = bit.Unit(8, 2, stride=1, drop_path=0.5, groups=2, rngs=nnx.Rngs(0))
    for b, scale in ((block, 1.0), (unit, 1 / 0.5)):
        kept, dropped = _residual_branches(b, x, 0.5, scale)
        assert np.all(kept ^ dropped) and 4 < dropped.sum() < 28, type(b).__name__


# ---------------------------------------------------------------------------- option checks


def test_unknown_options_name_the_option_and_the_allowed_ones():
    checks.known_options("NFNet", {"dropout": 0.1}, ("dropout", "drop_path"))
    with pytest.raises(ConfigError) as e:
        checks.known_options("NFNet", {"zeta": 1, "pool": "map"}, ("dropout", "drop_path"))
    assert str(e.value) == "model.pool is not an option of NFNet models; their options: drop_path, dropout"
    with pytest.raises(ConfigError, match="^model.x is not an option of ViT models; their options: a$"):
        checks.known_options("ViT", {"x": 1}, {"a", "patch"}, listed={"a"})
    checks.known_options("ViT", {"patch": 8}, {"a", "patch"}, listed={"a"})  # accepted, not listed


# ---------------------------------------------------------------------------- imports


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(MODELS.parents[1]).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: pathlib.Path, modules: set[str]) -> set[str]:
    """The ``vistas.models`` modules that ``path`` imports anywhere (functions included)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                       for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # ``import a.b.c`` names a.b.c
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def test_no_import_cycles_among_the_model_modules():
    paths = sorted(MODELS.rglob("*.py"))
    modules = {_module_name(p) for p in paths}
    graph = {_module_name(p): _imports(p, modules) for p in paths}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module, path):
        state[module] = 1
        for dep in sorted(graph[module]):
            if state.get(dep) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(dep):] + [dep]))
            if dep not in state:
                visit(dep, path + [dep])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert "vistas.models.interop.core" in graph and "vistas.models.layers" in graph
    # the families share their layers instead of importing one another
    for family in ("nfnet", "bit"):
        assert "vistas.models.vit" not in graph[f"vistas.models.{family}"]
        assert "vistas.models.layers" in graph[f"vistas.models.{family}"]
