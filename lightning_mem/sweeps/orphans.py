"""Runs of a sweep still trained by a process that an earlier, killed runner started.

``sweep local`` starts each fit in its own session (so that a terminal's Ctrl-C reaches the runner only),
so a runner killed with SIGKILL leaves its children training. Each child holds its run folder's lock
(:class:`lightning_mem.rundir.FolderLock`). A rerun of the sweep finds that lock held
(:func:`held_elsewhere`), does not start the run again nor mark it failed, and waits for the child: a
:class:`HeldRun` is polled like a process, and once the lock is free the run's ``status.json`` gives its
exit code (:data:`EXIT_OF_STATUS`), from which the runner records it as it records its own children.
A child still running when the rerun is stopped is left to finish (it is not the rerun's to stop).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from lightning_mem import rundir
from lightning_mem.errors import EXIT_DIVERGED, EXIT_OK, EXIT_SIGTERM

# The exit code a fit ends with for each final status.json (lightning_mem.errors).
EXIT_OF_STATUS = {rundir.FINISHED: EXIT_OK, rundir.DIVERGED: EXIT_DIVERGED, rundir.INTERRUPTED: EXIT_SIGTERM}


class HeldRun:
    """A run (or a pack of runs) whose folders another process holds; :meth:`poll` as ``Popen.poll``."""

    def __init__(self, folders: Sequence[Path], holder: str, status_dir: Path) -> None:
        self.folders, self.holder, self.status_dir = list(folders), holder, status_dir
        self.returncode: int | None = None

        self.killed = False  # the holder ended without recording its end (SIGKILL): the run starts again

    def poll(self) -> int | None:
        """None while a folder's lock is held; then the exit code its ``status.json`` implies (1 when it
        says failed; None with :attr:`killed` set when it still says ``running``)."""
        if self.returncode is None and not self.killed and all(rundir.lock_holder(f) is None
                                                                for f in self.folders):
            status = str((rundir.read_status(self.status_dir) or {}).get("status"))
            if status == rundir.RUNNING:
                self.killed = True
            else:
                self.returncode = EXIT_OF_STATUS.get(status, 1)
        return self.returncode


def held_elsewhere(folders: Sequence[Path], status_dir: Path) -> HeldRun | None:
    """A :class:`HeldRun` when a live process holds the lock of one of ``folders`` (existing ones only);
    ``status_dir``: the folder whose ``status.json`` tells how it ended (the run's, or a pack's first
    member's)."""
    for folder in folders:
        holder = rundir.lock_holder(folder) if folder.is_dir() else None
        if holder is not None:
            return HeldRun(folders, holder, status_dir)
    return None
