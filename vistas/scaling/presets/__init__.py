"""Named sweeps: one module per study, each exposing ``spec() -> dict`` (the same keys as a
TOML spec, ``vistas.scaling.spec``) and a docstring giving its command, runtime and result.
"""

from __future__ import annotations

from vistas.named import NamedModules

_MODULES = NamedModules(__name__, __path__, "unknown sweep {name}{hint}: give a .toml/.json spec file "
                        "or one of the sweep presets {names}")
names = _MODULES.names
describe = _MODULES.describe


def get(name: str) -> dict:
    return _MODULES.module(name).spec()
