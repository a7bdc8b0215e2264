"""Resuming an ensemble with other trainer options, as a single run resumes (``--trainer.max_epochs 10``
after a fit of 5 epochs continues to 10).

An ensemble's ``pack.json`` records each member's fit arguments. A resume whose members have the same ids
may differ from them in :data:`EXTENDABLE` options only (the trainer's: how long and how it runs, not what
is trained); the new arguments are then recorded. Any other option that differs is named with both values
("--model.net.width: 16 there, 32 here"), instead of two equal member lists.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

EXTENDABLE = ("--trainer.",)  # option prefixes a resumed ensemble may change


def options(argv: Sequence[str]) -> dict[str, list[str]]:
    """``{"--trainer.max_epochs": ["5"], "--config": ["a.yaml", "b.yaml"], ...}`` of a fit's arguments;
    a flag without a value maps to ``[""]``."""
    out: dict[str, list[str]] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--"):
            key, eq, value = arg.partition("=")
            if not eq and i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                value, i = argv[i + 1], i + 1
            out.setdefault(key, []).append(value)
        i += 1
    return out


def _effective(key: str, given: dict[str, list[str]]) -> str:
    """What the option amounts to: every --config in order; the last value of any other option."""
    if key not in given:
        return "(not given)"
    return " ".join(given[key]) if key == "--config" else given[key][-1]


def differences(recorded: Sequence[dict[str, Any]], members: Sequence[dict[str, Any]]
                ) -> tuple[list[str], list[str]]:
    """(options that differ and may not, options that differ and may) between the members recorded in
    ``pack.json`` and those of this command, each as "OPTION: X there, Y here"; members matched in order
    (their ids are compared by the caller)."""
    refused: list[str] = []
    allowed: list[str] = []
    for old, new in zip(recorded, members, strict=True):
        theirs, ours = options(old.get("argv", [])), options(new.get("argv", []))
        for key in sorted(set(theirs) | set(ours)):
            if _effective(key, theirs) == _effective(key, ours):
                continue
            text = f"{key}: {_effective(key, theirs)} there, {_effective(key, ours)} here"
            target = allowed if key.startswith(EXTENDABLE) else refused
            if text not in target:
                target.append(text)
    return refused, allowed
