"""Configs and sweep files shipped inside the package, addressable by name from any folder.

The repository's ``configs/`` and ``sweeps/`` folders are the one source: ``setup.py`` maps them into the
package as ``lightning_mem.configs`` and ``lightning_mem.sweep_files`` (package data, read through
:mod:`importlib.resources`), so a built wheel and an editable install both see them. A name is the file's
path under its folder without ``.yaml``: ``quickstart``, ``paper/base``, ``logger/wandb`` for configs,
``cpu_mnist5k``, ``repro/sin_sigma`` for sweeps. The repository-relative form ``configs/quickstart.yaml``
(what the shipped sweep files write) names the same file, so a shipped sweep runs from an empty folder.

A real path always wins: a value is resolved to a packaged file only when no such path exists.
:func:`resolve_config_args` is applied to every ``fit``/``ensemble fit`` command line (by
:func:`lightning_mem.cli.run.build_cli`), :func:`resolve_sweep` to ``sweep local|slurm SWEEP``.
``lightning-mem configs list|show NAME|copy NAME DIR`` is :func:`main`. Imports neither torch nor Lightning.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Sequence
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

from lightning_mem.errors import EXIT_BAD_INPUT

# kind -> (package of its files, the repository folder it is made from)
KINDS = {"config": ("lightning_mem.configs", "configs"), "sweep": ("lightning_mem.sweep_files", "sweeps")}
SUFFIX = ".yaml"
# Options whose value is a config file: lightning_mem.cli.argchecks.CONFIG_OPTIONS (imported there from here).
CONFIG_OPTIONS = ("--config", "--model", "--data", "--trainer")


def _root(kind: str) -> Traversable | None:
    package, folder = KINDS[kind]
    try:
        return resources.files(package)
    except ModuleNotFoundError:  # an editable install made before the folders were mapped: the clone's own
        repo = Path(__file__).resolve().parents[2] / folder
        return repo if repo.is_dir() else None


def _walk(folder: Traversable, prefix: str = "") -> list[str]:
    found: list[str] = []
    for entry in folder.iterdir():
        if entry.name.startswith(("_", ".")):
            continue
        if entry.is_dir():
            found += _walk(entry, f"{prefix}{entry.name}/")
        elif entry.name.endswith(SUFFIX):
            found.append(prefix + entry.name[: -len(SUFFIX)])
    return found


def names(kind: str) -> list[str]:
    """Every packaged file of ``kind`` (``"config"`` or ``"sweep"``) by name, sorted."""
    root = _root(kind)
    return sorted(_walk(root)) if root is not None else []


def _key(kind: str, name: str) -> str:
    """``name`` without ``.yaml`` and without a leading ``configs/`` (``sweeps/``) of its kind."""
    key = name[: -len(SUFFIX)] if name.endswith(SUFFIX) else name
    folder = KINDS[kind][1] + "/"
    return key[len(folder):] if key.startswith(folder) else key


def packaged_path(kind: str, name: str) -> Path | None:
    """The file-system path of the packaged file ``name`` of ``kind``, or None if there is none."""
    key, root = _key(kind, name), _root(kind)
    if root is None or key not in names(kind):
        return None
    *folders, stem = key.split("/")
    entry = root
    for part in folders:
        entry = entry / part
    entry = entry / (stem + SUFFIX)
    with resources.as_file(entry) as path:  # package data of a wheel or a clone: already a real file
        return Path(path)


FOLDED = 3  # a folder of more packaged files than this is listed as ``folder/* (N)`` in messages


def listing(kind: str) -> str:
    """``the packaged configs: quickstart, logger/wandb, paper/* (11), ...`` (for error messages; the
    full list: ``lightning-mem configs list``)."""
    folders: dict[str, list[str]] = {}
    for name in names(kind):
        folders.setdefault(name.rpartition("/")[0], []).append(name)
    shown = [n for folder, members in folders.items() if not folder or len(members) <= FOLDED
             for n in members]
    shown += [f"{folder}/* ({len(members)})" for folder, members in folders.items()
              if folder and len(members) > FOLDED]
    return f"the packaged {kind}s: {', '.join(sorted(shown)) or '(none installed)'}"


def _exists(value: str) -> bool:
    try:
        return Path(value).exists()
    except OSError:  # a name too long for a path: not a file
        return False


def _looks_inline(value: str) -> bool:
    """jsonargparse also takes a config as YAML text (``--config '{trainer: {max_epochs: 1}}'``)."""
    return "\n" in value or value.lstrip().startswith(("{", "[")) or ": " in value


def resolve_config(value: str) -> str:
    """A config-file option's value as the CLI reads it: the value itself when such a path exists or it is
    YAML text, else the packaged config of that name, else the value unchanged (its check reports it)."""
    if not value.strip() or _exists(value) or _looks_inline(value):
        return value
    found = packaged_path("config", value)
    return str(found) if found is not None else value


def resolve_config_args(argv: Sequence[str]) -> list[str]:
    """``argv`` with the value of every config-file option (``--config X``, ``--config=X``, and
    ``--model``/``--data``/``--trainer``) passed through :func:`resolve_config`."""
    out = list(argv)
    for i, arg in enumerate(out):
        for option in CONFIG_OPTIONS:
            if arg == option and i + 1 < len(out):
                out[i + 1] = resolve_config(out[i + 1])
            elif arg.startswith(option + "="):
                out[i] = f"{option}={resolve_config(arg.split('=', 1)[1])}"
    return out


def resolve_sweep(value: str | Path) -> Path:
    """A sweep file: ``value`` when such a path exists, else the packaged sweep of that name; ValueError
    listing the packaged sweeps for anything else."""
    value = str(value)
    if _exists(value):
        return Path(value)
    found = packaged_path("sweep", value)
    if found is None:
        raise ValueError(f"{value}: no such file and no packaged sweep of that name; give the path "
                         f"of a sweep YAML or one of {listing('sweep')} (`lightning-mem configs list`)")
    return found


# ---------------------------------------------------------------------- lightning-mem configs


def _find(name: str) -> tuple[str, Path]:
    """(kind, path) of the packaged config or sweep ``name`` (``sweeps/NAME`` or a name only a sweep has is
    the sweep); ValueError listing both kinds."""
    order = ("sweep", "config") if name.startswith(KINDS["sweep"][1] + "/") else ("config", "sweep")
    for kind in order:
        found = packaged_path(kind, name)
        if found is not None:
            return kind, found
    raise ValueError(f"{name!r}: no packaged config or sweep of that name; {listing('config')}; "
                     f"{listing('sweep')}")


def cmd_list(args: argparse.Namespace) -> int:
    kinds = ["config", "sweep"] if args.kind == "all" else [args.kind]
    for kind in kinds:
        for name in names(kind):
            sys.stdout.write(f"{KINDS[kind][1]}/{name}\n" if len(kinds) > 1 else f"{name}\n")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    _, path = _find(args.name)
    sys.stdout.write(path.read_text(encoding="utf-8"))
    return 0


def cmd_copy(args: argparse.Namespace) -> int:
    kind, source = _find(args.name)
    target = Path(args.dir) / KINDS[kind][1] / f"{_key(kind, args.name)}{SUFFIX}"
    if target.exists() and not args.force:
        raise ValueError(f"{target} already exists; nothing was copied (--force overwrites it)")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    except OSError as err:
        raise ValueError(f"DIR {args.dir}: cannot write {target} ({err.strerror or err})") from err
    sys.stdout.write(f"{target}\n")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lightning-mem configs", description="The configs and sweep files shipped in the package: "
        "`--config NAME` and `sweep local NAME` use them from any folder (a real path always wins).")
    sub = p.add_subparsers(dest="command", required=True)
    ls = sub.add_parser("list", help="every packaged config and sweep by name")
    ls.add_argument("kind", nargs="?", default="all", choices=["all", "config", "sweep"],
                    help="which to list (default: all, prefixed configs/ and sweeps/)")
    ls.set_defaults(func=cmd_list)
    show = sub.add_parser("show", help="print one packaged file")
    show.add_argument("name", help="e.g. quickstart, paper/base, cpu_mnist5k, sweeps/repro/sin_sigma")
    show.set_defaults(func=cmd_show)
    cp = sub.add_parser("copy", help="copy one packaged file to DIR/configs/NAME.yaml (DIR/sweeps/NAME.yaml)")
    cp.add_argument("name", help="e.g. quickstart, paper/base, cpu_mnist5k")
    cp.add_argument("dir", help="folder to copy into (created if missing)")
    cp.add_argument("--force", action="store_true", help="overwrite a file already there")
    cp.set_defaults(func=cmd_copy)
    return p


def main(argv: list[str] | None = None) -> None:
    """``lightning-mem configs ...``; a bad name exits 2 listing the packaged ones."""
    args = parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        code = args.func(args)
    except ValueError as err:
        sys.stderr.write(f"lightning-mem configs: error: {err}\n")
        raise SystemExit(EXIT_BAD_INPUT) from None
    if code:
        raise SystemExit(code)
