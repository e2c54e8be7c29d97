"""Packages of named modules (presets, sweep presets): one module per name, looked up with
the closest known name suggested, documented by its docstring."""

from __future__ import annotations

import difflib
import importlib
import inspect
import pkgutil
from collections.abc import Sequence
from types import ModuleType

from vistas.errors import ConfigError


class NamedModules:
    """The public modules of package ``package`` (at ``path``); ``unknown`` is the error for
    a name that is not one of them, formatted with ``name``, ``hint`` and ``names``."""

    def __init__(self, package: str, path: Sequence[str], unknown: str):
        self.package, self.path, self.unknown = package, list(path), unknown

    def names(self) -> list[str]:
        return sorted(m.name for m in pkgutil.iter_modules(self.path) if not m.name.startswith("_"))

    def module(self, name: str) -> ModuleType:
        known = self.names()
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1, cutoff=0.5)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(self.unknown.format(name=repr(name), hint=hint, names=", ".join(known)))
        return importlib.import_module(f"{self.package}.{name}")

    def describe(self, name: str) -> str:
        return inspect.cleandoc(self.module(name).__doc__ or "")
