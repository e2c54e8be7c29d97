"""The ``vistas`` command.

    vistas train --preset NAME --workdir DIR [--set key.path=value ...]
    vistas distill --preset NAME --workdir DIR --set distill.teachers=[RUN, ...] [distill.mode=...]
    vistas evaluate --workdir DIR [--splits test ...] [--step N]
    vistas predict --workdir DIR IMAGE_OR_FOLDER ... [--top-k 5] [--json]
    vistas models [--json] [--image-size 224] [--num-classes 1000]
    vistas presets [--json]
    vistas data list [--json] | vistas data fetch NAME
    vistas fewshot --workdir DIR [--datasets NAME ...] [--shots 1,5,10,25] [--seeds 3]
    vistas finetune --from DIR --dataset NAME [--resolution R] [--steps N] [--workdir OUT]
    vistas optim-memory --model VARIANT [...] | --preset NAME [--optimizer NAME[,KEY=VALUE] ...]
    vistas shapefind --model VARIANT [--device h100|...|--budget-bytes N] [--mesh data=..,fsdp=..,model=..]
    vistas cooldown --workdir SRC --from-step S [S ...] --steps N --workdir-out DST
    vistas convert SRC DST [--model VARIANT] [--to FORMAT] [--image-size N|HxW] [--scan|--no-scan]
    vistas sweep run SPEC --out DIR [--parallel N] | commands SPEC --out DIR | status DIR | presets
    vistas fit RESULTS [--x compute|examples|params] [--y METRIC] [--plot out.png]

Errors caused by input (config, data, files) print one line and exit with status 2.

Each subcommand is a module of this package holding its parser (``register(sub)``) next to
its handler (``run(args)``); the handler imports what it needs when it runs, so that
building the parser (``vistas --help``) stays fast.
"""

from __future__ import annotations

import argparse
import sys

from vistas.cli import (
    convert,
    cooldown,
    data,
    evaluate,
    fewshot,
    finetune,
    fit,
    models,
    optim_memory,
    predict,
    presets,
    shapefind,
    sweep,
    train,
)
from vistas.errors import VistasError

# in the order of `vistas --help`
COMMANDS = (train, evaluate, predict, models, presets, data, optim_memory, shapefind, cooldown, fewshot,
            finetune, convert, sweep, fit)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vistas", description="Train and study vision models with JAX.")
    sub = p.add_subparsers(dest="cmd", required=True)
    for command in COMMANDS:
        command.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        from vistas.systems import distributed

        distributed.initialize()  # multi-host jobs (VISTAS_COORDINATOR, SLURM): before any device use
        return args.fn(args)
    except VistasError as e:
        print(f"vistas: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `vistas presets | head`
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("vistas: interrupted", file=sys.stderr)
        return 130


def console() -> None:
    """The ``vistas`` console script: restart with huge pages when that helps, then run."""
    from vistas.systems import xla_cpu

    xla_cpu.restart_with_huge_pages()  # replaces the process (same arguments) or returns
    sys.exit(main())


__all__ = ["COMMANDS", "build_parser", "console", "main"]
