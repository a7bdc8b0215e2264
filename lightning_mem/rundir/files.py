"""Atomic writes (temporary file, fsync, rename), their file mode, and JSON read back with a message that
names the file."""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lightning_mem.errors import RunDirError
from lightning_mem.rundir.layout import read_run_file


def atomic_write_text(path: Path, text: str) -> None:
    """``text`` to a temporary file in the same folder, fsync, then ``os.replace``: a reader sees the old
    file or the new one, never half of one, whatever kills the writer."""
    atomic_write_bytes(path, text.encode())


def file_mode() -> int:
    """The permissions ``open`` gives a new file here: 0o666 less the process umask."""
    return 0o666 & ~_umask()


def fsync_dir(folder: Path) -> None:
    """Make the renames into ``folder`` durable (best effort: not every filesystem allows it)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _umask() -> int:
    """The process umask, read from /proc where it can be (os.umask sets it too: racy with threads)."""
    with contextlib.suppress(OSError, ValueError, StopIteration):
        status = Path("/proc/self/status").read_text().splitlines()
        return int(next(line for line in status if line.startswith("Umask:")).split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """:func:`atomic_write_text` for bytes. The file gets the permissions a plain ``open`` would give
    (0666 less the umask; ``mkstemp`` alone would make it 0600, unreadable to a shared group)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fchmod(fh.fileno(), file_mode())
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, data: Any) -> None:
    """JSON (non-finite floats as null) written with :func:`atomic_write_text`."""
    atomic_write_text(path, json.dumps(_finite(data), indent=1, default=str, allow_nan=False) + "\n")


def _finite(data: Any) -> Any:
    if isinstance(data, float) and not math.isfinite(data):
        return None
    if isinstance(data, Mapping):
        return {k: _finite(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [_finite(v) for v in data]
    return data


def read_json(path: Path, what: str, fix: str) -> Any:
    """The JSON in ``path``; :class:`RunDirError` naming the file, ``what`` it should be and ``fix``."""
    try:
        return json.loads(read_run_file(path).decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise RunDirError(f"{path}: not a valid {what} ({err}); {fix}") from err


# ---------------------------------------------------------------------------- status.json


def _overwrite_in_place(path: Path, text: str) -> None:
    """``text`` over the existing file ``path`` in place: on a full disk (or at the file-size limit) there
    is no room for the temporary file of an atomic write, but a small file's own block takes a few bytes
    again. Not atomic: for the final record of a fit that stops because of the disk."""
    data = text.encode()
    with path.open("r+b") as fh:
        if len(data) > max(os.fstat(fh.fileno()).st_size, 4096):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        fh.write(data)
        fh.truncate()
        fh.flush()
        os.fsync(fh.fileno())
