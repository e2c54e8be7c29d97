"""Named presets: one module per recipe, each exposing ``config() -> Config``.

A preset's module docstring is its documentation: the command, the runtime measured on
a 2-core CPU and the result it gave. ``vistas presets`` prints them.
"""

from __future__ import annotations

from vistas.config import Config
from vistas.named import NamedModules

DEFAULT = "fashion_mnist_vit"
_MODULES = NamedModules(__name__, __path__, "unknown preset {name}{hint}; known presets: {names}")
names = _MODULES.names
describe = _MODULES.describe


def get(name: str) -> Config:
    return _MODULES.module(name).config()
