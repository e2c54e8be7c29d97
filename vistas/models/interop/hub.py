"""Checkpoints on the Hugging Face Hub by name: ``hf-hub:ORG/NAME[@REVISION][/FILE]``.

``resolve`` turns such an id into a local file through ``huggingface_hub`` (the optional
extra ``vistas[hub]``), with its cache (``HF_HUB_CACHE`` / ``HF_HOME``) and offline mode
(``HF_HUB_OFFLINE=1``: only what the cache holds, no network):

- ``hf-hub:timm/vit_base_patch16_224.augreg2_in21k_ft_in1k``: a timm repository, whose
  ``model.safetensors`` is read with the ``config.json`` beside it (timm's constructor
  arguments: pooling, GELU, registers...);
- ``hf-hub:ORG/NAME/PATH.npz`` (or ``.safetensors``): one file of a repository, e.g. a
  big_vision ``.npz``;
- ``@REVISION`` after the name pins a branch, tag or commit.

Every failure (no such repository or file, not in the cache while offline, the package not
installed) is a one-line :class:`~vistas.errors.VistasError` naming the id.
"""

from __future__ import annotations

import os
import pathlib
import re
from typing import Any

from vistas.errors import ConfigError, VistasError

PREFIX = "hf-hub:"
WEIGHTS = "model.safetensors"  # a timm repository's weights
CONFIG = "config.json"  # and timm's constructor arguments beside them
_ID = re.compile(r"(?P<repo>[\w.-]+/[\w.-]+)(?:@(?P<revision>[\w./-]+?))?(?:/(?P<file>[^@]+))?")


def is_hub_id(source: Any) -> bool:
    return isinstance(source, str) and source.startswith(PREFIX)


def parse(source: str) -> tuple[str, str | None, str | None]:
    """``(repo_id, revision, file)`` of a hub id; a malformed one is a one-line error."""
    rest = source[len(PREFIX):]
    m = _ID.fullmatch(rest)
    if not is_hub_id(source) or m is None or (m["file"] and not m["file"].endswith((".npz", ".safetensors"))):
        raise ConfigError(f"{source!r} is not a Hugging Face Hub id; use hf-hub:ORG/NAME (a timm "
                          "repository), hf-hub:ORG/NAME/FILE.npz|.safetensors, @REVISION after NAME")
    return m["repo"], m["revision"], m["file"]


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")


def _download(hf: Any, source: str, repo: str, file: str, revision: str | None) -> pathlib.Path:
    from huggingface_hub import errors

    cache = os.environ.get("HF_HUB_CACHE") or None  # read now: tests and users set it late
    try:
        return pathlib.Path(hf.hf_hub_download(repo, file, revision=revision, cache_dir=cache,
                                               local_files_only=offline()))
    except errors.LocalEntryNotFoundError:
        where = "is not in the Hugging Face cache" + (f" ({cache})" if cache else "")
        how = ("and HF_HUB_OFFLINE=1 forbids downloading it; fetch it where there is internet "
               f"(hf download {repo} {file}) into the same cache" if offline()
               else "and could not be downloaded (no connection?)")
        raise VistasError(f"{source}: {file} {where} {how}") from None
    except errors.RepositoryNotFoundError:
        raise VistasError(f"{source}: no repository {repo!r} on the Hugging Face Hub (or it is "
                          "private: log in with `hf auth login`)") from None
    except errors.RevisionNotFoundError:
        raise VistasError(f"{source}: the repository has no revision {revision!r}") from None
    except errors.EntryNotFoundError:
        raise VistasError(f"{source}: the repository has no file {file!r}") from None
    except errors.HfHubHTTPError as e:
        raise VistasError(f"{source}: the Hugging Face Hub answered {str(e).splitlines()[0]}") from None
    except OSError as e:
        raise VistasError(f"{source}: could not fetch {file} ({e})") from None


def resolve(source: str) -> pathlib.Path:
    """The local path of the weights ``source`` names (downloaded into, or found in, the
    Hugging Face cache); a timm repository's ``config.json`` is fetched beside them."""
    repo, revision, file = parse(source)
    try:
        import huggingface_hub as hf
    except ImportError:
        raise VistasError(f"{source}: Hugging Face Hub ids need the huggingface_hub package: "
                          "pip install 'vistas[hub]'") from None
    path = _download(hf, source, repo, file or WEIGHTS, revision)
    if file is None:
        try:  # timm's arguments: how the model pools, its GELU...; older repositories lack it
            _download(hf, source, repo, CONFIG, revision)
        except VistasError:
            pass
    return path


__all__ = ["CONFIG", "PREFIX", "WEIGHTS", "is_hub_id", "offline", "parse", "resolve"]
