"""Named sweeps: one module per study, each exposing ``spec() -> dict`` (the same keys as a
TOML spec, ``vistas.scaling.spec``) and a docstring giving its command, runtime and result.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import pkgutil

from vistas.errors import ConfigError


def names() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def _module(name: str):
    if name not in names():
        close = difflib.get_close_matches(name, names(), n=1, cutoff=0.5)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"unknown sweep {name!r}{hint}: give a .toml/.json spec file or one of "
                          f"the sweep presets {', '.join(names())}")
    return importlib.import_module(f"{__name__}.{name}")


def get(name: str) -> dict:
    return _module(name).spec()


def describe(name: str) -> str:
    return inspect.cleandoc(_module(name).__doc__ or "")
