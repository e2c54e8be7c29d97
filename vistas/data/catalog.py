"""Catalog of known datasets: where their files live and how to get them.

A known dataset is one `DatasetInfo` entry in `CATALOG`. Datasets stored as IDX files
(the MNIST family) need nothing else: `files` names them per split, `md5` and `url`
let `fetch` download them, `debian_package` lets it install them with apt.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import http.client
import os
import pathlib
import shutil
import subprocess
import tempfile
import urllib.error
import urllib.request
from collections.abc import Mapping

from vistas.errors import DataError


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

    def file_names(self) -> list[str]:
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
}


def get_info(name: str) -> DatasetInfo:
    """The catalog entry for `name`; DataError naming the known ones (and the closest) else."""
    if name in CATALOG:
        return CATALOG[name]
    known = sorted(CATALOG)
    close = difflib.get_close_matches(name, known + ["npz", "folder"], n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise DataError(
        f"unknown dataset {name!r}; known datasets: {', '.join(known)} "
        f"(or 'npz' / 'folder' with a path).{hint}"
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
    dirs.append(user_cache_dir(name))
    return dirs


def idx_file(directory: pathlib.Path, base: str) -> pathlib.Path | None:
    """`directory/base` or `directory/base.gz`, whichever exists (plain first)."""
    for candidate in (directory / base, directory / f"{base}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _has_all_files(directory: pathlib.Path, info: DatasetInfo) -> bool:
    return all(idx_file(directory, f) is not None for f in info.file_names())


def find(name: str, data_dir: str | os.PathLike | None = None) -> pathlib.Path | None:
    """The first directory holding all files of dataset `name`, or None."""
    info = get_info(name)
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
    found = find(name, data_dir)
    if found is not None:
        return found
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
