"""Argument types and helpers shared by the subcommands.

The types keep their historical names: argparse names a type in some of its error lines
("invalid _duration value: ...").
"""

from __future__ import annotations

import argparse


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None
    if not values:
        raise argparse.ArgumentTypeError("give at least one integer, e.g. 1,5,10,25")
    return values


def _float_list(text: str) -> list[float]:
    try:
        return [float(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers") from None


def _duration(text: str) -> int | str:
    return int(text) if text.isdigit() else text


def overrides(args: argparse.Namespace) -> list[str]:
    """The ``KEY=VALUE`` strings of every ``--set`` (an option given with ``action="append"``
    and ``nargs="+"``), in order."""
    return [s for group in args.set for s in group]


def add_config_file(p: argparse.ArgumentParser) -> None:
    """``--config FILE``: a run config in a file (``vistas.config_files``), on top of
    ``--preset`` when both are given."""
    p.add_argument("--config", metavar="FILE",
                   help="a config file: .toml (`vistas presets show NAME --format toml` writes one), "
                   ".py defining config() or .json; keys it leaves out keep the --preset's values "
                   "when --preset is given, else Config()'s defaults; --set applies on top")
