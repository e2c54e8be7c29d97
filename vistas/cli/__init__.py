"""The ``vistas`` command.

    vistas train --preset NAME --workdir DIR [--set key.path=value ...]
    vistas train --config FILE.toml|FILE.py [--preset NAME] --workdir DIR [--set ...]
    vistas distill --preset NAME --workdir DIR --set distill.teachers=[RUN, ...] [distill.mode=...]
    vistas evaluate --workdir DIR [--splits test ...] [--step N]
    vistas predict --workdir DIR IMAGE_OR_FOLDER ... [--top-k 5] [--json]
    vistas models [--json] [--image-size 224] [--num-classes 1000]
    vistas presets [--json] | vistas presets show NAME [--format toml|json]
    vistas data list [--json] | vistas data fetch NAME
    vistas fewshot --workdir DIR [--datasets NAME ...] [--shots 1,5,10,25] [--seeds 3]
    vistas finetune --from DIR --dataset NAME [--resolution R] [--steps N] [--workdir OUT]
    vistas optim-memory --model VARIANT [...] | --preset NAME [--optimizer NAME[,KEY=VALUE] ...]
    vistas shapefind --model VARIANT [--device h100|...|--budget-bytes N] [--mesh data=..,fsdp=..,model=..]
    vistas cooldown --workdir SRC --from-step S [S ...] --steps N --workdir-out DST
    vistas convert SRC DST [--model VARIANT] [--to FORMAT] [--image-size N|HxW] [--scan|--no-scan]
    vistas export RUN DST [--format stablehlo|safetensors] [--platforms cpu,cuda] [--no-ema]
    vistas sweep run SPEC --out DIR [--parallel N] | commands SPEC --out DIR | status DIR | presets
    vistas fit RESULTS [--x compute|examples|params] [--y METRIC] [--plot out.png]
    vistas ckpt verify RUN

Errors caused by input (config, data, files) print one line and exit with status 2.

Each subcommand is a module of this package holding its parser (``register(sub)``) next to
its handler (``run(args)``); the handler imports what it needs when it runs, so that
building the parser (``vistas --help``) stays fast.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys

from vistas.cli import (
    ckpt,
    convert,
    cooldown,
    data,
    evaluate,
    export,
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
            finetune, convert, export, sweep, fit, ckpt)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vistas", description="Train and study vision models with JAX.")
    sub = p.add_subparsers(dest="cmd", required=True)
    for command in COMMANDS:
        command.register(sub)
    return p


# Loggers of libraries whose background threads report what vistas reports itself (orbax's
# asynchronous writes, absl's notices): their records go to a log file, not the terminal.
LIBRARY_LOGGERS = ("absl", "orbax", "asyncio", "py.warnings")
KEEP_LOGS = 50


def log_dir() -> pathlib.Path:
    """Where the commands' library logs go: $VISTAS_LOG_DIR, or ~/.cache/vistas/logs."""
    base = os.environ.get("VISTAS_LOG_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "vistas", "logs")
    return pathlib.Path(base)


def route_library_logs() -> pathlib.Path | None:
    """Sends the records of ``LIBRARY_LOGGERS`` (and Python warnings) to a log file of this
    process, created only when something is logged; None when no log folder can be made."""
    import logging
    import time

    try:
        directory = log_dir()
        directory.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    for old in sorted(directory.glob("vistas-*.log"))[:-KEEP_LOGS]:  # the newest are kept
        old.unlink(missing_ok=True)
    path = directory / f"vistas-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    handler = logging.FileHandler(path, delay=True)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.captureWarnings(True)
    for name in LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers = [handler]
        logger.propagate = False
    return path


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    route_library_logs()
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
    sys.stderr = _ThreadRoutedStderr(sys.stderr)
    status = main()
    _quiet_exit()
    sys.exit(status)


def _library_log_path() -> str | None:
    import logging

    handlers = logging.getLogger("absl").handlers
    return getattr(handlers[0], "baseFilename", None) if handlers else None


class _ThreadRoutedStderr:
    """The command's ``sys.stderr``: what the main thread writes (vistas' own lines, and the
    traceback of an unexpected error) reaches the terminal; what other threads write
    (TensorStore's callbacks printing "Event loop is closed" tracebacks after a failed
    read, at any moment) goes to the library log file."""

    def __init__(self, terminal):
        self._terminal = terminal
        self._log = None

    def write(self, text: str) -> int:
        import threading

        if threading.current_thread() is threading.main_thread():
            return self._terminal.write(text)
        if self._log is None:
            path = _library_log_path()
            try:
                self._log = _LogFile(open(path, "a")) if path else self._terminal  # noqa: SIM115
            except OSError:
                self._log = self._terminal
        return self._log.write(text)

    def flush(self) -> None:
        self._terminal.flush()
        if self._log is not None and self._log is not self._terminal:
            self._log.flush()

    def __getattr__(self, name: str):  # fileno, isatty, encoding, ... of the terminal
        return getattr(self._terminal, name)


class _LogFile:
    """The library log as a stream that never fails its writer: on a full disk (or past a
    file-size limit) what library threads print is dropped, and the interpreter's final flush
    of ``sys.stderr`` cannot turn the command's exit status into 120."""

    def __init__(self, file):
        self._file = file

    def write(self, text: str) -> int:
        try:
            return self._file.write(text)
        except (OSError, ValueError):
            return len(text)

    def flush(self) -> None:
        try:
            self._file.flush()
        except (OSError, ValueError):
            pass

    def __getattr__(self, name: str):
        return getattr(self._file, name)


def _quiet_exit() -> None:
    """What library threads print while the interpreter shuts down (TensorStore callbacks
    finding asyncio's loop closed after a failed read) goes to the log, not after the
    command's last line."""
    path = _library_log_path()
    sys.stdout.flush()
    sys.stderr.flush()
    if path is not None:
        try:
            log = open(path, "a")  # noqa: SIM115  (open until the process ends)
        except OSError:
            return
        sys.stderr = _LogFile(log)
        # The interpreter's shutdown puts sys.__stderr__ back as sys.stderr, and C++ threads
        # write to the descriptor itself: from here on descriptor 2 is the log too.
        try:
            os.dup2(log.fileno(), 2)
        except OSError:
            pass


__all__ = ["COMMANDS", "LIBRARY_LOGGERS", "build_parser", "console", "log_dir", "main", "route_library_logs"]
