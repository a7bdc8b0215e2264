"""Nested configs as dotted keys: the one flattening that every reader of a config uses (torch-free).

``{"model": {"net": {"init_args": {"width": 16}}}, "trainer": {"logger": [{"class_path": ...}]}}`` ->
``model.net.init_args.width``, ``trainer.logger.0.class_path`` (``lists="index"``) or ``trainer.logger``
holding the whole list (``lists="leaf"``). An empty mapping or list is a leaf of its own.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, Literal

Lists = Literal["index", "leaf"]


def flat_items(tree: Any, prefix: str = "", lists: Lists = "index") -> Iterator[tuple[str, Any]]:
    """(dotted key, leaf) pairs of ``tree`` in order; ``prefix`` starts every key."""
    if isinstance(tree, Mapping) and tree:
        for key, value in tree.items():
            yield from flat_items(value, f"{prefix}.{key}" if prefix else str(key), lists)
    elif isinstance(tree, (list, tuple)) and tree and lists == "index":
        for i, value in enumerate(tree):
            yield from flat_items(value, f"{prefix}.{i}" if prefix else str(i), lists)
    else:
        yield prefix, tree


def flatten(tree: Any, prefix: str = "", lists: Lists = "index") -> dict[str, Any]:
    """``{dotted key: leaf}`` of ``tree`` (see :func:`flat_items`)."""
    return dict(flat_items(tree, prefix, lists))
