"""Faults of the machine during a fit: a full disk, a file-size limit, a run folder removed under the fit.

A fit that meets one ends with exit 2 and one message (:func:`message`) naming the file (or the run folder
when the writer did not say which file), the errno's name and number and what to do, instead of an
``OSError`` traceback. What it leaves: the checkpoints are written to a temporary file and renamed
(:class:`lightning_mem.training.checkpoints.RunCheckpointIO`), so the last whole one stays; ``metrics.csv``
keeps its whole rows (a torn last row is left out by every reader); ``status.json`` says ``failed`` with
the reason (:func:`lightning_mem.rundir.write_status` overwrites it in place when the disk has no room for
a new file). Once there is room again, ``fit <same args> --ckpt_path last`` resumes it. A removed run
folder is not created again: nothing of the run is left to resume."""

from __future__ import annotations

import errno
import os
from pathlib import Path

# errno -> what it means for a fit (the machine, not the config).
FAULTS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is used up",
    errno.EFBIG: "a file reached the size limit of this process (ulimit -f)",
    errno.EROFS: "the filesystem is read-only",
    errno.EIO: "the disk reported an I/O error",
    errno.ENOENT: "the run folder was removed while the fit ran",
}
NO_ROOM = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)  # faults that go away when room is made


def is_fault(err: BaseException, run_dir: Path | None) -> bool:
    """Whether ``err`` is a fault of the machine under a fit in ``run_dir``: an ``OSError`` of
    :data:`FAULTS`; a missing file (``ENOENT``) only when the run folder itself is gone."""
    if not isinstance(err, OSError) or err.errno not in FAULTS:
        return False
    if err.errno == errno.ENOENT:
        return run_dir is not None and not run_dir.is_dir()
    return True


def _free(path: Path) -> str:
    for folder in (path, *path.parents):
        try:
            stat = os.statvfs(folder)
        except OSError:
            continue
        return f"{stat.f_bavail * stat.f_frsize / 1e6:.1f} MB free on that filesystem"
    return "free space unknown"


def message(err: OSError, run_dir: Path | None, resume: str = "lightning-mem fit <same args> --ckpt_path last"
            ) -> str:
    """One message for the user: the file, the errno, what is left and how to resume."""
    code = err.errno if err.errno is not None else 0
    name = errno.errorcode.get(code, str(code))
    where = err.filename or (str(run_dir) if run_dir is not None else "a file of the run")
    what = f"{where}: {err.strerror or err} ({name}, errno {code}): {FAULTS.get(code, 'the write failed')}"
    if code == errno.ENOENT:
        return (f"{what}; the fit stopped. The run folder {run_dir} is gone with its checkpoints and rows, "
                "so nothing is left to resume: start the run again")
    left = ""
    if run_dir is not None:
        from lightning_mem import rundir

        last = rundir.last_checkpoint(run_dir)
        left = (f"; the run is marked failed in {run_dir / rundir.STATUS}, its last whole checkpoint "
                f"{'is ' + str(last) if last.is_file() else 'does not exist yet (none was written)'} and "
                f"{rundir.METRICS} keeps the rows up to it")
    room = f"; make room ({_free(Path(where))})" if code in NO_ROOM else "; fix the filesystem"
    if code == errno.EFBIG:
        room = "; raise the limit (ulimit -f unlimited)"
    return f"{what}; the fit stopped{left}{room} and resume with `{resume}`"
