"""Commands run in the test's own process, and their exit codes as a shell would see them."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from lightning_mem.cli import commands


def exit_code(entry: Callable[[list[str]], Any], argv: Sequence[str]) -> int:
    """The exit code of ``entry(argv)``: 0 when it returns, else its ``SystemExit``'s code as Python's own
    exit turns it into one (None: 0, an int as it is, a message: 1)."""
    try:
        entry(list(argv))
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0


def run_cli(*args: str) -> int:
    """``lightning_mem.cli.commands.main(args)`` (``fit|validate|test ...``) in this process; its exit
    code."""
    return exit_code(commands.main, args)
