"""Folder locks (flock): one owner at a time for a run folder or a sweep, the holder's pid in the message."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from lightning_mem.errors import LockedError
from lightning_mem.rundir.layout import LOCK, _now


class FolderLock:
    """An exclusive lock on a folder, held by this process until :meth:`release` (or its death).

    ``fcntl.flock`` on ``<folder>/.lock``: the kernel drops the lock when the holder dies, however it
    dies, so a stale lock of a killed process is taken over by the next process without any guess
    about pids. The file (never deleted: deleting would race with the next locker) records the holder's
    pid, host, start time and command line, which :class:`LockedError` quotes.

    Args:
        folder: The run or sweep folder (created if missing).
        what: How the message names the folder, e.g. ``"run folder runs/q/abc"``.
    """

    def __init__(self, folder: Path, what: str) -> None:
        self.path = folder / LOCK
        self.what = what
        self._fh: IO[str] | None = None

    def acquire(self) -> FolderLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = self.path.open("a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self._holder_record(fh)
            fh.close()
            raise LockedError(in_use_message(self.what, self._describe(holder))) from None
        fh.seek(0)
        fh.truncate()
        record = {"pid": os.getpid(), "host": socket.gethostname(), "since": _now(), "argv": sys.argv}
        fh.write(json.dumps(record) + "\n")
        fh.flush()
        self._fh = fh
        return self

    @staticmethod
    def _holder_record(fh: IO[str], wait: float = 2.0) -> str:
        """The holder's record; a holder that has just taken the lock writes it a moment later (a second
        process started at the same time would otherwise be told "holder unknown")."""
        deadline = time.monotonic() + wait
        while True:
            fh.seek(0)
            holder = fh.read().strip()
            if holder.endswith("}") or time.monotonic() > deadline:
                return holder
            time.sleep(0.02)

    @staticmethod
    def _describe(holder: str) -> str:
        with contextlib.suppress(ValueError, TypeError):
            rec = json.loads(holder)
            return f"pid {rec['pid']} on {rec['host']} since {rec['since']}: {' '.join(rec.get('argv', []))}"
        return "holder unknown"

    def release(self) -> None:
        if self._fh is not None:
            fcntl.flock(self._fh, fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None

    @property
    def held(self) -> bool:
        return self._fh is not None

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def in_use_message(what: str, holder: str) -> str:
    """The message of :class:`LockedError`: ``what`` is held by ``holder`` (see :func:`lock_holder`)."""
    return (f"the {what} is in use by another process ({holder}); wait for it to finish or stop it, "
            "then run this again")


def lock_holder(folder: Path) -> str | None:
    """Who holds the :class:`FolderLock` of ``folder`` ("pid ... on ... since ...: argv"), or None when it
    is free; reads only (no lock file is created, none is changed)."""
    path = folder / LOCK
    try:
        fh = path.open("r")
    except OSError:
        return None
    with fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return FolderLock._describe(fh.read().strip())
        fcntl.flock(fh, fcntl.LOCK_UN)
    return None


@contextlib.contextmanager
def locked(folder: Path, what: str) -> Iterator[FolderLock]:
    """``with locked(run_dir, "run folder ..."):`` hold :class:`FolderLock` for the block."""
    with FolderLock(folder, what) as lock:
        yield lock
