"""One bounded YAML loader for every YAML text a user hands in: ``--config`` files (and YAML values on the
command line, through jsonargparse's loader), sweep files, run folders' ``config.yaml``.

A YAML text of a kilobyte can ask for billions of values through aliases (``&a [*b, *b, ...]``: the
"billion laughs"), and thousands of nested brackets end PyYAML's recursive composer in a
``RecursionError``. So the text is first read as a stream of parser events, which neither expands
aliases nor recurses, and refused (:class:`YAMLLimitError`, naming where the text came from and the
bound) when it is longer than :data:`MAX_BYTES`, nests deeper than :data:`MAX_DEPTH`, or expands to
more than :data:`MAX_VALUES` values counting every alias at its full size (an alias's size is known when
its anchor's collection ends, so the count costs one pass over the text, whatever the expansion). An
alias of a collection from inside itself (a recursive value) is refused too. Only then is it loaded by
PyYAML's safe loader. The project's configs are far inside these bounds (the largest, a sweep file, has
a few hundred values).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import yaml

MAX_BYTES = 1 << 20  # 1 MiB of text
MAX_DEPTH = 64  # nested mappings and lists
MAX_VALUES = 100_000  # scalars and collections after every alias is expanded

_SafeLoader: type = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml where installed: faster


class YAMLLimitError(yaml.YAMLError, ValueError):
    """A YAML text beyond a bound of this module; the message names the text's source and the bound."""


def check(text: str, where: str) -> None:
    """Raise :class:`YAMLLimitError` when ``text`` (from ``where``: a file or option) is beyond a bound;
    a syntax error is left to the loader (``yaml.YAMLError``)."""
    size = len(text.encode("utf-8", errors="surrogatepass"))
    if size > MAX_BYTES:
        raise YAMLLimitError(f"{where}: {size} bytes of YAML, more than the {MAX_BYTES} a config may have; "
                             "refused unread")
    sizes: dict[str, int] = {}  # anchor -> values it expands to
    stack: list[list[Any]] = [[None, 0]]  # [anchor, values so far] per open collection; [0]: the stream
    open_anchors: set[str] = set()
    try:
        for event in yaml.parse(text, Loader=_SafeLoader):
            _count(event, where, stack, sizes, open_anchors)
    except yaml.YAMLError as err:  # libyaml stops at 1000 flow levels itself: say it as the bound
        if isinstance(err, YAMLLimitError) or "nesting depth" not in str(err):
            raise
        raise YAMLLimitError(f"{where}: YAML nested more than {MAX_DEPTH} levels deep; a config nests a "
                             "few levels; refused unread") from err


def _count(event: Any, where: str, stack: list[list[Any]], sizes: dict[str, int],
           open_anchors: set[str]) -> None:
    """Add one parser event to the count of its open collection (``stack[-1]``)."""
    if isinstance(event, yaml.CollectionStartEvent):
        if len(stack) > MAX_DEPTH:
            line = event.start_mark.line + 1 if event.start_mark is not None else "?"
            raise YAMLLimitError(f"{where}: YAML nested more than {MAX_DEPTH} levels deep (line {line}); "
                                 "a config nests a few levels; refused unread")
        stack.append([event.anchor, 0])
        if event.anchor is not None:
            open_anchors.add(event.anchor)
        return
    if isinstance(event, yaml.CollectionEndEvent):
        anchor, count = stack.pop()
        n = count + 1
        if anchor is not None:
            sizes[anchor] = n
            open_anchors.discard(anchor)
    elif isinstance(event, yaml.ScalarEvent):
        n = 1
        if event.anchor is not None:
            sizes[event.anchor] = 1
    elif isinstance(event, yaml.AliasEvent):
        if event.anchor in open_anchors:
            raise YAMLLimitError(f"{where}: the YAML alias *{event.anchor} is used inside its own anchor "
                                 "(a value that contains itself); refused")
        n = sizes.get(str(event.anchor), 1)  # an unknown anchor: the loader names it
    else:
        return
    stack[-1][1] += n
    if stack[-1][1] > MAX_VALUES:
        raise YAMLLimitError(f"{where}: the YAML's aliases expand to more than {MAX_VALUES} values "
                             f"(anchors: {', '.join(sorted(sizes))[:120]}); a config holds far fewer; "
                             "refused before expanding them")


def load(text: str, where: str) -> Any:
    """``yaml.safe_load(text)`` once :func:`check` passes; :class:`YAMLLimitError` or ``yaml.YAMLError``."""
    check(text, where)
    return yaml.load(text, Loader=_SafeLoader)  # a safe loader


def bounded_loader(loader: Callable[[str], Any], where: str = "a YAML value") -> Callable[[str], Any]:
    """``loader`` (jsonargparse's, for a parser mode) with :func:`check` first, for text that jsonargparse
    parses itself: inline ``--config`` text and YAML values of options."""
    def load_bounded(value: str) -> Any:
        check(value, where)
        return loader(value)

    load_bounded.bounded = True  # type: ignore[attr-defined]
    return load_bounded


def install_jsonargparse_loader(mode: str = "omegaconf+") -> None:
    """Put :func:`check` in front of jsonargparse's loader of ``mode`` (once; idempotent)."""
    import jsonargparse

    try:
        current = jsonargparse.get_loader(mode)
    except KeyError:  # jsonargparse creates it when a parser of that mode first loads a value
        parser = jsonargparse.ArgumentParser(parser_mode=mode, exit_on_error=False)
        parser.add_argument("--value", type=list)
        parser.parse_args(["--value", "[1]"])
        current = jsonargparse.get_loader(mode)
    if getattr(current, "bounded", False):
        return
    jsonargparse.set_loader(mode, bounded_loader(current), exceptions=(yaml.YAMLError,))
