"""Reading a raw command line before any parser runs: the one scanner of ``lightning-mem`` command lines
(torch-free: the sweep runner and the ensemble planner use it too).

- :func:`cli_args`: what a command passes to ``lightning-mem`` (the console script or ``python -m
  lightning_mem``), subcommand first; :func:`fit_args`: what it passes to ``fit``.
- :func:`option_values`: the values of some options, for ``--key value`` and ``--key=value``;
  :func:`options`: every ``(--key, value)`` pair.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path


def cli_args(command: Sequence[str]) -> list[str] | None:
    """The arguments a command gives ``lightning-mem`` (``.../lightning-mem fit ...``, ``python -m
    lightning_mem fit ...``), subcommand first; None when it runs another program."""
    for i, token in enumerate(command):
        if Path(token).name == "lightning-mem":
            return list(command[i + 1:])
        if token == "-m" and i + 1 < len(command) and command[i + 1] == "lightning_mem":
            return list(command[i + 2:])
    return None


def fit_args(command: Sequence[str]) -> list[str] | None:
    """The arguments after ``fit`` when ``command`` runs ``lightning-mem fit``, else None."""
    args = cli_args(command)
    return args[1:] if args and args[0] == "fit" else None


def option_values(argv: Sequence[str], names: Sequence[str]) -> Iterator[tuple[str, str]]:
    """(option, value) of every option of ``names`` in ``argv``, in order (``--key value`` and
    ``--key=value``)."""
    for i, arg in enumerate(argv):
        for name in names:
            if arg == name and i + 1 < len(argv):
                yield name, argv[i + 1]
            elif arg.startswith(name + "="):
                yield name, arg.split("=", 1)[1]


def options(argv: Sequence[str]) -> list[tuple[str, str]]:
    """Every (``--key``, value) pair of ``argv``: ``--key=value``, and ``--key value`` where the value is not
    itself an option."""
    pairs = []
    for i, arg in enumerate(argv):
        if arg.startswith("--") and "=" in arg:
            key, value = arg.split("=", 1)
            pairs.append((key, value))
        elif arg.startswith("--") and i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            pairs.append((arg, argv[i + 1]))
    return pairs
