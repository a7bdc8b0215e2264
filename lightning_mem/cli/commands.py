"""The ``lightning-mem`` command: one table of subcommands and a dispatcher that starts fast.

``fit``, ``validate`` and ``test`` go to the LightningCLI of :mod:`lightning_mem.cli.fit` (torch and
Lightning are imported only then); every other subcommand is a tool module with ``main(argv)``, imported
only when it is asked for, so ``lightning-mem sweep ...`` or ``lightning-mem report --help`` start
without torch. A new tool is one row in :data:`TOOLS`.
"""

from __future__ import annotations

import importlib
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from lightning_mem import _compat
from lightning_mem.errors import EXIT_BAD_INPUT, EXIT_BROKEN_PIPE

# LightningCLI's subcommands (lightning_mem.cli.fit), with their one-line help.
LIGHTNING = {
    "fit": "train a model; results in runs/<run.name>/<run.id>/ (--help: the main options, --help-all: all)",
    "validate": "evaluate a checkpoint on the held-out split (--ckpt_path FILE)",
    "test": "evaluate a checkpoint on the held-out split, logged as test/* (--ckpt_path FILE)",
}
# Tools: name -> (module with main(argv), one-line help). Add a row for a new tool.
TOOLS = {
    "sweep": ("lightning_mem.sweeps.command", "run a W&B sweep file locally, or W&B agents one per GPU"),
    "report": ("lightning_mem.results.report", "figures and tables from finished runs or a sweep manifest"),
    "theorem1": ("lightning_mem.analysis.theorem1",
                 "check the paper's Theorem 1 by Monte Carlo on MNIST pairs"),
    "dashboard": ("lightning_mem.results.dashboard", "interactive HTML dashboard or W&B workspace of runs"),
    "configs": ("lightning_mem.cli.packaged", "list, show or copy the configs and sweeps the package ships"),
    "ensemble": ("lightning_mem.ensemble.command",
                 "train a σ × seed grid as one ensemble in one process (fit)"),
}
# Other programs of this environment run by name: ``lightning-mem wandb agent SWEEP_ID`` is ``wandb agent
# SWEEP_ID`` (so ``docker run lightning-mem wandb agent ...`` works with the image's entrypoint).
PASSTHROUGH = {"wandb": "W&B's own command line, e.g. `lightning-mem wandb agent SWEEP_ID` (for Docker)"}


def usage() -> str:
    """The top-level help: every subcommand with one line."""
    width = max(map(len, [*LIGHTNING, *TOOLS, *PASSTHROUGH]))
    rows = [*LIGHTNING.items(), *((name, text) for name, (_, text) in TOOLS.items()), *PASSTHROUGH.items()]
    lines = [
        f"usage: lightning-mem {{{','.join([*LIGHTNING, *TOOLS, *PASSTHROUGH])}}} ...",
        "",
        "Memorization vs generalization under the scale of initialization (Mehta et al., ICLR 2021).",
        "",
        "subcommands:",
        *(f"  {name:<{width}}  {text}" for name, text in rows),
        "",
        "`lightning-mem <subcommand> --help` lists its options; `python -m lightning_mem` is the same.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``lightning-mem`` console script and ``python -m lightning_mem``.

    A reader that closes the pipe early (``lightning-mem sweep status DIR | head``) ends the command
    quietly with the shell's SIGPIPE status, 141, not a traceback."""
    try:
        _main(argv)
        sys.stdout.flush()
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # the interpreter's own flush at exit writes nowhere
        raise SystemExit(EXIT_BROKEN_PIPE) from None


def _main(argv: Sequence[str] | None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    first = args[0] if args else None
    if first in ("-h", "--help"):
        sys.stdout.write(usage())
        return
    if first == "--version":
        from lightning_mem import __version__

        sys.stdout.write(f"lightning-mem {__version__}\n")
        return
    if first in TOOLS:
        if first == "ensemble":  # torch and Lightning follow
            _compat.torchmetrics_without_torchvision()
        importlib.import_module(TOOLS[first][0]).main(args[1:])
        return
    if first in PASSTHROUGH:
        run_program(first, args[1:])
    if first is None or (first not in LIGHTNING and not first.startswith("-")):
        what = "a subcommand is required" if first is None else f"unknown subcommand {first!r}"
        names = ", ".join([*LIGHTNING, *TOOLS, *PASSTHROUGH])
        sys.stderr.write(usage().splitlines()[0] + f"\nlightning-mem: error: {what}; choose from "
                         f"{names} (`lightning-mem --help` says what each does)\n")
        raise SystemExit(EXIT_BAD_INPUT)
    from lightning_mem.cli import fit_help  # torch-free: `fit --help` the short table, `--help-all` the full

    if fit_help.wants_short_help(args):
        sys.stdout.write(fit_help.short_help())
        return
    if fit_help.HELP_ALL in args:
        args = fit_help.full_help_args(args)
        if argv is None:
            sys.argv[1:] = args
    _compat.torchmetrics_without_torchvision()  # no torchvision unless a dataset or a net asks for it
    from lightning_mem.cli.run import run  # torch and Lightning: only for fit/validate/test

    run(args if argv is not None else None)  # None: LightningCLI reads sys.argv itself


def run_program(name: str, args: Sequence[str]) -> None:
    """Replace this process with ``name args...``: the program installed next to this Python (the same
    environment), else the first on ``PATH``. Signals and the exit code are then the program's own."""
    local = Path(sys.executable).with_name(name)
    path = str(local) if local.is_file() and os.access(local, os.X_OK) else shutil.which(name)
    if path is None:
        sys.stderr.write(f"lightning-mem: error: {name!r} is not installed in this environment "
                         f"(looked next to {sys.executable} and on PATH); `pip install -e .` installs it\n")
        raise SystemExit(EXIT_BAD_INPUT)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(path, [path, *args])
