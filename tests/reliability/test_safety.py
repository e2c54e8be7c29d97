"""Nothing vistas loads can run code, and nothing it writes lands outside its directory.

The source scan below fails when code that unpickles or evaluates is added anywhere in the
package; the other tests feed real attacks to the loaders."""

import ast
import io
import os
import pathlib
import pickle
import zipfile

import numpy as np
import pytest

import vistas
from vistas import cli, paths
from vistas.data import catalog, safe_pickle, sources
from vistas.errors import DataError, VistasError
from vistas.models import interop

PACKAGE = pathlib.Path(vistas.__file__).parent
UNSAFE_MODULES = {"pickle", "cPickle", "dill", "cloudpickle", "joblib", "shelve", "marshal", "torch"}


def calls(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
            owner = getattr(f.value, "id", "") if isinstance(f, ast.Attribute) else ""
            yield node, owner, name


def test_no_module_unpickles_or_evaluates():
    """np.load always with allow_pickle=False; pickle only in the NumPy-only unpickler;
    no eval/exec/compile; no yaml.load or torch.load."""
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent)
        tree = ast.parse(path.read_text(), str(rel))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                bad = {n.split(".")[0] for n in names} & UNSAFE_MODULES
                if bad and not (bad == {"pickle"} and path.name == "safe_pickle.py"):
                    problems.append(f"{rel}:{node.lineno} imports {', '.join(sorted(bad))}")
        for node, owner, name in calls(tree):
            where = f"{rel}:{node.lineno}"
            kw = {k.arg: k.value for k in node.keywords}
            if owner in ("np", "numpy") and name == "load":
                flag = kw.get("allow_pickle")
                if not (isinstance(flag, ast.Constant) and flag.value is False):
                    problems.append(f"{where} np.load without allow_pickle=False")
            if isinstance(node.func, ast.Name) and name in ("eval", "exec", "compile", "__import__"):
                problems.append(f"{where} calls {name}")
            if (owner, name) in (("yaml", "load"), ("torch", "load"), ("pickle", "load"), ("pickle", "loads")):
                problems.append(f"{where} calls {owner}.{name}")
    assert problems == []


class Payload:
    """Unpickling this runs ``touch MARKER``: the classic pickle attack."""

    marker = ""

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def evil_npz(path: pathlib.Path, marker: pathlib.Path, arrays=("x_train", "y_train")):
    Payload.marker = str(marker)
    objects = np.empty(1, object)
    objects[0] = Payload()
    with zipfile.ZipFile(path, "w") as z:
        for name in arrays:
            buf = io.BytesIO()
            np.save(buf, objects, allow_pickle=True)  # the attacker's tool, not vistas'
            z.writestr(f"{name}.npy", buf.getvalue())
    return path


def test_a_malicious_pickle_inside_an_npz_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    data = evil_npz(tmp_path / "data.npz", marker)
    with pytest.raises(DataError, match="pickled.*refused for safety"):
        sources.load_source("npz", "train", path=data)
    weights = evil_npz(tmp_path / "weights.npz", marker, arrays=("params/head/kernel",))
    with pytest.raises(VistasError, match=r"weights.npz.*allow_pickle=False"):
        interop.read(weights)
    Payload.marker = str(marker)
    with pytest.raises(DataError, match="refused to unpickle posix.system"):
        safe_pickle.loads_array(pickle.dumps(Payload()))
    assert not marker.exists()


def test_set_values_are_literals_never_evaluated(tmp_path, capsys):
    marker = tmp_path / "pwned"
    payload = f"__import__('os').system('touch {marker}')"
    code = cli.main(["train", "--preset", "smoke", "--workdir", str(tmp_path / "run"),
                     "--set", f"optim.lr={payload}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("vistas: error: optim.lr=") and "expected float" in err
    assert not marker.exists() and not (tmp_path / "run").exists()


@pytest.mark.parametrize("name, culprit", [
    ("../escape.bin", "no '..'"), ("a/../../escape.bin", "no '..'"), ("/etc/passwd", "no '..', no absolute"),
    ("..\\escape.bin", "no '..'"), ("", "relative path"),
])
def test_names_that_climb_out_are_refused(tmp_path, name, culprit):
    with pytest.raises(VistasError, match=culprit):
        paths.inside(tmp_path, name)


def test_a_symlink_out_of_the_directory_is_refused(tmp_path):
    (tmp_path / "root").mkdir()
    (tmp_path / "outside").mkdir()
    os.symlink(tmp_path / "outside", tmp_path / "root" / "link")
    assert paths.inside(tmp_path / "root", "sub/file.bin") == tmp_path / "root" / "sub" / "file.bin"
    with pytest.raises(VistasError, match="leads out of .* through a symbolic link"):
        paths.inside(tmp_path / "root", "link/file.bin")


def test_fetch_refuses_a_file_name_that_climbs_out_of_the_cache(tmp_path, monkeypatch):
    """A catalog entry naming ``../x`` (e.g. a tampered catalog) writes nothing."""
    import dataclasses

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("VISTAS_DATA_DIR", raising=False)
    package = catalog.PackageFiles(requirement="fakepkg==1.0", module="vistas_no_such_pkg",
                                   subdir="data", sha256={"../../escape.bin": "0" * 64})
    monkeypatch.setitem(catalog.CATALOG, "fake", dataclasses.replace(
        catalog.CATALOG["mnist_5k"], name="fake", package=package))

    def pip_download(cmd, **kwargs):
        dest = cmd[cmd.index("--dest") + 1]
        with zipfile.ZipFile(os.path.join(dest, "fakepkg-1.0-py3-none-any.whl"), "w") as z:
            z.writestr("vistas_no_such_pkg/data/../../escape.bin", b"x")
        return type("Done", (), {"returncode": 0, "stderr": ""})()

    monkeypatch.setattr(catalog.subprocess, "run", pip_download)
    with pytest.raises(VistasError, match=r"file of fakepkg==1.0 '../../escape.bin' is refused"):
        catalog.fetch("fake")
    assert not list(tmp_path.rglob("escape.bin"))
