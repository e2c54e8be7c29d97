"""Named presets: one module per recipe, each exposing ``config() -> Config``.

A preset's module docstring is its documentation: the command, the runtime measured on
a 2-core CPU and the result it gave. ``vistas presets`` prints them.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import pkgutil

from vistas.config import Config
from vistas.errors import ConfigError

DEFAULT = "fashion_mnist_vit"


def names() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def _module(name: str):
    if name not in names():
        close = difflib.get_close_matches(name, names(), n=1, cutoff=0.5)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"unknown preset {name!r}{hint}; known presets: {', '.join(names())}")
    return importlib.import_module(f"{__name__}.{name}")


def get(name: str) -> Config:
    return _module(name).config()


def describe(name: str) -> str:
    return inspect.cleandoc(_module(name).__doc__ or "")
