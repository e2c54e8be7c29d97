"""The install story: pyproject.toml holds compatible ranges (so vistas installs beside a
CUDA or TPU JAX without replacing it), constraints.txt the exact set `make install` uses,
and the two agree."""

import pathlib
import re
import tomllib

from packaging.requirements import Requirement
from packaging.version import Version

ROOT = pathlib.Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
UPSTREAM = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint")


def _name(text: str) -> str:
    return re.sub(r"[-_.]+", "-", text).lower()


def _pins() -> dict[str, Version]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not an exact pin"
            pins[_name(name)] = Version(version)
    return pins


def _requirements() -> list[Requirement]:
    reqs = [Requirement(r) for r in PYPROJECT["project"]["dependencies"]]
    for group in PYPROJECT["project"]["optional-dependencies"].values():
        reqs += [Requirement(r) for r in group if not r.startswith("vistas[")]
    return reqs


def test_dependencies_are_ranges_with_a_floor_and_a_cap():
    for req in _requirements():
        ops = {s.operator for s in req.specifier}
        assert "==" not in ops, f"{req}: an exact pin belongs in constraints.txt"
        assert ">=" in ops and "<" in ops, f"{req}: needs a floor (>=) and a cap (<)"


def test_every_core_and_dev_dependency_is_pinned_inside_its_range():
    pins = _pins()
    extras = PYPROJECT["project"]["optional-dependencies"]
    installed = [*PYPROJECT["project"]["dependencies"], *extras["dev"]]
    for group in ("transfer", "parquet", "wandb", "mlflow"):
        if f"vistas[{group}]" in extras["dev"]:
            installed += extras[group]
    for text in installed:
        if text.startswith("vistas["):
            continue
        req = Requirement(text)
        assert _name(req.name) in pins, f"{req.name} is not in constraints.txt (run `make lock`)"
        assert pins[_name(req.name)] in req.specifier, \
            f"constraints.txt pins {req.name}=={pins[_name(req.name)]}, outside {req.specifier}"


def test_the_jax_range_admits_the_accelerator_release_and_the_extras_follow_it():
    reqs = {_name(r.name): r for r in map(Requirement, PYPROJECT["project"]["dependencies"])}
    for name in ("jax", "jaxlib"):
        assert Version("0.11.0") in reqs[name].specifier
        assert Version("0.10.2") in reqs[name].specifier
    extras = PYPROJECT["project"]["optional-dependencies"]
    for extra in ("cuda13", "cuda12", "tpu"):
        (text,) = extras[extra]
        req = Requirement(text)
        assert req.name == "jax" and req.specifier == reqs["jax"].specifier, extra
    assert extras["cuda"] == ["vistas[cuda13]"]


def test_make_installs_the_exact_set_and_ci_also_tests_the_newest_releases():
    makefile = (ROOT / "Makefile").read_text()
    assert "-c constraints.txt -e '.[dev]'" in makefile
    upstream = re.search(r"^UPSTREAM := (.+)$", makefile, re.M).group(1).split()
    assert tuple(upstream) == UPSTREAM
    latest = re.search(r"^LATEST_TESTS := ((?:.*\\\n)*.*)$", makefile, re.M).group(1)
    for path in re.findall(r"(tests/\S+?\.py)", latest):
        assert (ROOT / path).is_file(), f"make test-latest names {path}, which does not exist"
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test\n" in ci and "make test-latest" in ci
    readme = (ROOT / "README.md").read_text()
    for extra in ("'.[cuda]'", "'.[tpu]'", "'.[cuda12]'"):
        assert extra in readme
