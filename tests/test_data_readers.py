"""The layout of vistas.data: one reader module per format behind the `Source` protocol, a
dispatch table in `load_source`, facades (`sources`, `shards`, `parquet`) that keep the old
names, and no import cycles or private names across modules."""

import ast
import json
import pathlib

import numpy as np
import pytest
from PIL import Image

import vistas.data
from vistas.data import parquet, shards, sources, splits
from vistas.data.readers import base, factory

DATA = pathlib.Path(vistas.data.__file__).parent

# Every public name each module had before the readers split, still there.
OLD_NAMES = {
    sources: ["ArraySource", "ChannelSource", "FILE_FORMATS", "IMAGE_EXTENSIONS", "ImageFolderSource",
              "MAX_IMAGE_PIXELS", "MixtureSource", "PairSource", "READERS", "SPLIT_FORMS", "Subset",
              "class_split_indices", "decode_image", "load_derived", "load_folder",
              "load_idx_dataset", "load_mixture", "load_npz", "load_package_dataset", "load_source",
              "parse_dataset_spec", "parse_split", "read_idx", "split_indices"],
    shards: ["ArrayRecordSource", "FORMAT", "MAGIC", "MANIFEST", "decode_bytes", "decode_record",
             "encode_record", "pack", "read_manifest", "verify"],
    parquet: ["ParquetSource", "split_files"],
}


def module_of(path: pathlib.Path) -> str:
    parts = path.relative_to(DATA.parent.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_of(p): p for p in sorted(DATA.rglob("*.py"))}


def imported(path: pathlib.Path) -> list[tuple[str, list[str], int]]:
    """(module, names, line) of every import in the file, at any depth (inside functions too);
    `from pkg import mod` counts as an import of `pkg.mod`."""
    name = module_of(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(a.name, [], node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                base_pkg = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = f"{base_pkg}.{module}" if module else base_pkg
            names = [a.name for a in node.names]
            subs = [f"{module}.{n}" for n in names if f"{module}.{n}" in MODULES]
            found += [(s, [], node.lineno) for s in subs] or [(module, names, node.lineno)]
            if subs and len(subs) != len(names):
                found.append((module, [n for n in names if f"{module}.{n}" not in MODULES], node.lineno))
    return found


def test_no_import_cycles_among_data_modules():
    graph = {m: sorted({i for i, _, _ in imported(p) if i in MODULES and i != m})
             for m, p in MODULES.items()}
    state: dict[str, int] = {}  # 1: on the path, 2: done

    def visit(m, path):
        state[m] = 1
        for n in graph[m]:
            if state.get(n) == 1:
                pytest.fail("import cycle: " + " -> ".join([*path[path.index(n):], n]))
            if n not in state:
                visit(n, [*path, n])
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m, [m])


def test_no_private_names_cross_modules():
    for m, path in MODULES.items():
        tree = ast.parse(path.read_text())
        bound = set()
        for module, names, line in imported(path):
            if module.startswith("vistas."):
                private = [n for n in names if n.startswith("_")]
                assert not private, f"{m}:{line} imports private {private} from {module}"
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for a in node.names:
                    if (getattr(node, "module", None) or a.name).startswith("vistas"):
                        bound.add((a.asname or a.name).split(".")[0])
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in bound and node.attr.startswith("_")
                    and not node.attr.startswith("__")):
                pytest.fail(f"{m}:{node.lineno} uses private {node.value.id}.{node.attr}")


def test_package_inits_import_nothing():
    for m, path in MODULES.items():
        if path.name == "__init__.py":
            assert not imported(path), f"{m} imports {imported(path)}"


@pytest.mark.parametrize("module", list(OLD_NAMES), ids=lambda m: m.__name__)
def test_facades_keep_every_old_name(module):
    missing = [n for n in OLD_NAMES[module] if not hasattr(module, n)]
    assert not missing, f"{module.__name__} lost {missing}"
    assert set(OLD_NAMES[module]) <= set(module.__all__)


@pytest.mark.parametrize("module", [sources, parquet], ids=lambda m: m.__name__)
def test_facades_only_reexport(module):
    """No logic left in the facades: a docstring, imports and ``__all__``."""
    tree = ast.parse(pathlib.Path(module.__file__).read_text())
    for node in tree.body[1:]:
        assert isinstance(node, (ast.Import, ast.ImportFrom)) or (
            isinstance(node, ast.Assign) and [t.id for t in node.targets] == ["__all__"]), ast.dump(node)[:80]
    defined_here = [n for n in module.__all__ if getattr(getattr(module, n), "__module__", None) == module.__name__]
    assert not defined_here


def test_every_file_format_has_a_reader():
    assert tuple(factory.FILE_READERS) == splits.FILE_FORMATS
    assert set(factory.CATALOG_READERS) == {"derived", "package", "idx"}


def test_every_reader_gives_sources(tmp_path):
    """Each format's source follows the `Source` protocol and gives uint8 [H, W, C] images."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 8, 8), dtype=np.uint8)
    labels = np.array([0, 1, 0, 1, 0, 1])
    for c in range(2):
        (tmp_path / "folder" / f"c{c}").mkdir(parents=True)
    for i, (a, y) in enumerate(zip(images, labels, strict=True)):
        Image.fromarray(a).save(tmp_path / "folder" / f"c{y}" / f"{i}.png")
    np.savez(tmp_path / "a.npz", x_train=images, y_train=labels)
    shards.pack(tmp_path / "folder", tmp_path / "packed", workers=1)
    folder = sources.load_source("folder", "train", path=tmp_path / "folder")
    table = pa.table({"image": [pathlib.Path(p).read_bytes() for p in folder.paths],
                      "label": folder.labels.astype(np.int64)})
    pq.write_table(table, tmp_path / "train.parquet")
    made = {
        "npz": sources.load_source("npz", "train[:4]", path=tmp_path / "a.npz", channels=3),
        "folder": folder,
        "array_record": sources.load_source("array_record", "train[2:]", path=tmp_path / "packed"),
        "parquet": sources.load_source("parquet", "train", path=tmp_path / "train.parquet", channels=1),
        "pairs": base.PairSource(sources.ArraySource(images, labels)),
        "mixture": sources.load_mixture([("npz:" + str(tmp_path / "a.npz"), "train", 1.0),
                                         ("folder:" + str(tmp_path / "folder"), "train", 1.0)], seed=0),
    }
    for name, source in made.items():
        assert isinstance(source, base.Source), name
        example = source[len(source) - 1]
        assert example["image"].dtype == np.uint8 and example["image"].ndim == 3, name
    assert type(made["npz"]).__name__ == "ChannelSource" and made["npz"][0]["image"].shape == (8, 8, 3)
    assert made["parquet"][0]["image"].shape == (8, 8, 1)
    assert len(made["array_record"]) == 4
    assert json.loads((tmp_path / "packed" / "manifest.json").read_text())["num_classes"] == 2
