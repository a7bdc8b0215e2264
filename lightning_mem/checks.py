"""Argument checks shared by the config classes (nets, data, module, callbacks) and the tools' command lines:
one message format for a bad choice and one for a bad integer; one refusal of an empty path."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path


def check_choice(name: str, value: object, allowed: Sequence[object]) -> None:
    """Raise ``ValueError`` naming the argument, the bad value and the allowed ones."""
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not supported; allowed: {', '.join(map(str, allowed))}")


def check_int(name: str, value: object, low: int, high: int | None = None, none: str | None = None) -> None:
    """Raise ``ValueError`` unless ``value`` is an integer in [low, high] (``high`` None: no bound), or None
    when ``none`` says what None means ("" to say nothing): ``every_n_steps=0 must be an integer >= 1``."""
    if value is None and none is not None:
        return
    if not isinstance(value, int) or value < low or (high is not None and value > high):
        allowed = f">= {low}" if high is None else f"in [{low}, {high}]"
        alternative = "" if none is None else f", or None{' ' + none if none else ''}"
        raise ValueError(f"{name}={value!r} must be an integer {allowed}{alternative}")


def path_arg(text: str) -> Path:
    """An argparse ``type`` for file and folder arguments: an empty or blank path (an unset shell variable,
    ``--out "$OUT"``) is refused instead of meaning the current folder."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is an empty path; give a file or folder name ('.' for "
                                         "the current folder)")
    return Path(text)
