"""The ``lightning-mem`` command: one table of subcommands and a dispatcher that starts fast.

``fit``, ``validate`` and ``test`` go to the LightningCLI of :mod:`lightning_mem.cli` (torch and
Lightning are imported only then); every other subcommand is a tool module with ``main(argv)``, imported
only when it is asked for, so ``lightning-mem sweep ...`` or ``lightning-mem report --help`` start
without torch. A new tool is one row in :data:`TOOLS`.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

# LightningCLI's subcommands (lightning_mem.cli), with their one-line help.
LIGHTNING = {
    "fit": "train a model; results in runs/<run.name>/<run.id>/ (--config FILE ..., --help for every option)",
    "validate": "evaluate a checkpoint on the held-out split (--ckpt_path FILE)",
    "test": "evaluate a checkpoint on the held-out split, logged as test/* (--ckpt_path FILE)",
}
# Tools: name -> (module with main(argv), one-line help). Add a row for a new tool.
TOOLS = {
    "sweep": ("lightning_mem.sweep", "run a W&B sweep file locally, or W&B agents one per GPU"),
    "report": ("lightning_mem.report", "figures and tables from finished runs or a sweep manifest"),
    "theorem1": ("lightning_mem.theory", "check the paper's Theorem 1 by Monte Carlo on MNIST pairs"),
    "dashboard": ("lightning_mem.dashboard", "interactive HTML dashboard or W&B workspace of runs"),
    "ensemble": ("lightning_mem.ensemble_cli", "train a σ × seed grid as one ensemble in one process (fit)"),
}


def usage() -> str:
    """The top-level help: every subcommand with one line."""
    width = max(map(len, [*LIGHTNING, *TOOLS]))
    rows = [*LIGHTNING.items(), *((name, text) for name, (_, text) in TOOLS.items())]
    lines = [
        f"usage: lightning-mem {{{','.join([*LIGHTNING, *TOOLS])}}} ...",
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
    """Entry point of the ``lightning-mem`` console script and ``python -m lightning_mem``."""
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
        importlib.import_module(TOOLS[first][0]).main(args[1:])
        return
    if first is None or (first not in LIGHTNING and not first.startswith("-")):
        what = "a subcommand is required" if first is None else f"unknown subcommand {first!r}"
        sys.stderr.write(usage().splitlines()[0] + f"\nlightning-mem: error: {what}; choose from "
                         f"{', '.join([*LIGHTNING, *TOOLS])} (`lightning-mem --help` says what each does)\n")
        raise SystemExit(2)
    from lightning_mem.cli import run  # torch and Lightning: only for fit/validate/test

    run(args if argv is not None else None)  # None: LightningCLI reads sys.argv itself
