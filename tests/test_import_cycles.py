"""The house's layers: no import cycle between any two of vistas' modules, counting every
import in the source (those inside functions too), so that each module can be read, tested
and imported on its own; the layers below the training loop (models, data, optimizers,
systems, evaluation) never import it; and the loop's ``train`` stays one screen that
names no task."""

import ast
import pathlib

import pytest

import vistas

ROOT = pathlib.Path(vistas.__file__).parent


def _modules(package: str) -> dict[str, pathlib.Path]:
    """{dotted name: file} of a package and its submodules."""
    base = ROOT.joinpath(*package.split(".")[1:])
    out = {}
    for path in base.rglob("*.py"):
        parts = [*package.split("."), *path.relative_to(base).with_suffix("").parts]
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _graph(package: str) -> dict[str, set[str]]:
    """Who imports whom among the modules of ``package`` (``from P import m`` imports P.m)."""
    mods = _modules(package)

    def resolve(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        here = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str | None] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets |= {resolve(a.name) for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    pkg = here
                    for _ in range(node.level - 1):
                        pkg = pkg.rpartition(".")[0]
                    base = f"{pkg}.{base}".rstrip(".")
                targets |= {resolve(f"{base}.{a.name}") if f"{base}.{a.name}" in mods else resolve(base)
                            for a in node.names}
        graph[name] = {t for t in targets if t and t != name}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph``, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                return path[path.index(t):] + [t]
            if t not in state and (found := visit(t)):
                return found
        state[m] = 2
        path.pop()
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_the_graph_counts_imports_inside_functions():
    graph = _graph("vistas.scaling")
    assert "vistas.scaling.results" in graph["vistas.scaling.fit"]  # fit_study reads the table
    assert "vistas.scaling.fit" in graph["vistas.scaling.plots"]


@pytest.mark.parametrize("package", ["vistas.scaling", "vistas.cli", "vistas.data", "vistas"])
def test_no_import_cycles(package):
    cycle = _cycle(_graph(package))
    assert cycle is None, " -> ".join(cycle)


LOWER = ("vistas.models", "vistas.data", "vistas.optim", "vistas.systems", "vistas.evaluate")


def test_lower_layers_never_import_the_training_loop():
    graph = _graph("vistas")
    inversions = sorted(m for m, targets in graph.items()
                        if m.startswith(LOWER) and "vistas.train.loop" in targets)
    assert not inversions, f"these import vistas.train.loop: {inversions}"


@pytest.mark.parametrize("name", ["train", "_session", "_steps"])
def test_the_loop_is_one_screen_that_names_no_task(name):
    tree = ast.parse((ROOT / "train" / "loop.py").read_text())
    fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name)
    assert fn.end_lineno - fn.lineno + 1 < 60
    names = {n.id for n in ast.walk(fn) if isinstance(n, ast.Name)}
    names |= {n.attr for n in ast.walk(fn) if isinstance(n, ast.Attribute)}
    words = " ".join(sorted(names)).lower()
    for task in ("distill", "finetune", "fewshot", "init_from", "mix"):
        assert task not in words, f"{name}() names {task}"
