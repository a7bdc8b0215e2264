"""The run folder's layout: file names, run ids and folder names, finding runs, writability, and reading a
run folder's files without following a link out of it."""

from __future__ import annotations

import logging
import re
import tempfile
import time
from pathlib import Path

from lightning_mem.errors import RunDirError

log = logging.getLogger(__name__)


METRICS = "metrics.csv"


METRICS_RESUME = "metrics.resume.csv"  # metrics.csv set aside while a resume carries its rows over


CONFIG = "config.yaml"


HP = "hp.json"


STATUS = "status.json"


CHECKPOINTS = "checkpoints"


LAST_CKPT = "last.ckpt"


MANIFEST = "manifest.json"


LOCK = ".lock"


OUTPUT_LOG = "output.log"


ARGS_JSON = "args.json"


# One folder name: no separator, not "." or "..", no leading dot or dash (hidden files, options).
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._=+-]{0,127}")


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


# ---------------------------------------------------------------------------- layout


def check_name(key: str, value: str) -> str:
    """``value`` if it is one safe folder name, else :class:`RunDirError` naming ``key``."""
    if not isinstance(value, str) or not _NAME.fullmatch(value) or value in (".", ".."):
        raise RunDirError(
            f"{key}={value!r} must be one folder name: 1-128 letters, digits and . _ = + -, starting with a "
            "letter, digit or _ (no '/', not '.' or '..')"
        )
    return value


def run_path(root: str | Path, name: str, run_id: str) -> Path:
    """``<root>/<name>/<run_id>``, after checking that both parts are single safe folder names and that the
    root is not an empty string (an unset shell variable, which would put the runs in the current folder)."""
    if not str(root).strip():
        raise RunDirError(f"run.root={str(root)!r} is empty; give a folder for the runs (default: runs; "
                          "'.' for the current folder)")
    return Path(root) / check_name("run.name", name) / check_name("run.id", run_id)


def holds_run(run_dir: Path) -> list[str]:
    """The files that make ``run_dir`` an existing run (``metrics.csv``, ``checkpoints``), if any."""
    return [p for p in (METRICS, CHECKPOINTS) if (run_dir / p).exists()]


def last_checkpoint(run_dir: Path) -> Path:
    return run_dir / CHECKPOINTS / LAST_CKPT


def newest_run_with_checkpoint(root: str | Path, name: str) -> Path | None:
    """The run folder under ``<root>/<name>`` whose ``last.ckpt`` is newest (``--ckpt_path last``)."""
    found = sorted(Path(root, name).glob(f"*/{CHECKPOINTS}/{LAST_CKPT}"), key=lambda p: p.stat().st_mtime)
    return found[-1].parent.parent if found else None


def find_run_dirs(path: Path) -> list[Path]:
    """Run folders (with a ``metrics.csv``) at any depth under ``path``, sorted; W&B folders skipped."""
    return sorted(p.parent for p in path.rglob(METRICS) if "wandb" not in p.relative_to(path).parts[:-1])


def check_writable(run_dir: Path, where: str) -> None:
    """:class:`RunDirError` unless ``run_dir`` exists as a folder or can be created and written; nothing is
    created (a temporary file in the nearest existing ancestor is written and removed). ``where`` names
    the folder and the options that chose it in the message."""
    ancestor = run_dir
    while not ancestor.exists() and ancestor != ancestor.parent:  # file/x does not exist: walk up
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise RunDirError(f"{where} cannot be created: {ancestor} is a file, not a directory; "
                          "set --run.root to a writable directory")
    try:
        with tempfile.TemporaryFile(dir=ancestor):
            pass
    except OSError as err:
        raise RunDirError(f"{where} cannot be written: {ancestor}: {err.strerror or err}; "
                          "set --run.root to a writable directory") from err


# ---------------------------------------------------------------------------- atomic writes


def check_inside(path: Path, folder: Path | None = None) -> Path:
    """``path`` if it lies inside ``folder`` (default: its own folder) once every symbolic link is
    resolved, else :class:`RunDirError` naming the link and its target: a run folder's files are read
    only from inside it, so a ``metrics.csv`` linked to ``/etc/passwd`` leaks nothing into a report."""
    folder = path.parent if folder is None else folder
    real, base = path.resolve(), folder.resolve()
    if real != base and base not in real.parents:
        raise RunDirError(f"{path}: a symbolic link to {real}, outside its folder {folder}; files of a run "
                          "folder are read only from inside it: replace the link by the file itself")
    return path


def read_run_file(path: Path, folder: Path | None = None) -> bytes:
    """The bytes of a run folder's (or sweep folder's) file, after :func:`check_inside`."""
    return check_inside(path, folder).read_bytes()
