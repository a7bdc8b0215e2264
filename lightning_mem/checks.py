"""Argument checks shared by the config classes (nets, data, module): one message format for a bad choice."""

from __future__ import annotations

from collections.abc import Sequence


def check_choice(name: str, value: object, allowed: Sequence[object]) -> None:
    """Raise ``ValueError`` naming the argument, the bad value and the allowed ones."""
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not supported; allowed: {', '.join(map(str, allowed))}")
