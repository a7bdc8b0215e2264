"""Argument checks shared by the config classes (nets, data, module) and the tools' command lines: one message
format for a bad choice; one refusal of an empty path."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path


def check_choice(name: str, value: object, allowed: Sequence[object]) -> None:
    """Raise ``ValueError`` naming the argument, the bad value and the allowed ones."""
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not supported; allowed: {', '.join(map(str, allowed))}")


def path_arg(text: str) -> Path:
    """An argparse ``type`` for file and folder arguments: an empty or blank path (an unset shell variable,
    ``--out "$OUT"``) is refused instead of meaning the current folder."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is an empty path; give a file or folder name ('.' for "
                                         "the current folder)")
    return Path(text)
