"""``status.json``: how a run stands (the one home of the status names), written atomically, read back,
and the effective status (a running record whose process is gone reads as killed)."""

from __future__ import annotations

import errno
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lightning_mem.errors import RunDirError
from lightning_mem.rundir.files import _finite, _overwrite_in_place, atomic_write_json, read_json
from lightning_mem.rundir.layout import STATUS, _now
from lightning_mem.rundir.locks import lock_holder

log = logging.getLogger(__name__)


# How a run stands: the one home of these names (status.json, the sweep manifest, reports, dashboards).
RUNNING, FINISHED, DIVERGED, INTERRUPTED, FAILED = "running", "finished", "diverged", "interrupted", "failed"


STATUSES = (RUNNING, FINISHED, DIVERGED, INTERRUPTED, FAILED)  # what status.json holds


KILLED = "killed"  # a "running" record whose process is gone (SIGKILL, OOM killer): see effective_status


EFFECTIVE_STATUSES = (*STATUSES, KILLED)


PENDING = "pending"  # a sweep's run that has not started (the manifest only)


DONE = (FINISHED, DIVERGED)  # ended with a result: a rerun skips it, a report counts it


def write_status(run_dir: Path, status: str, **fields: Any) -> None:
    """``{"status": status, **fields, "time": now}`` to ``<run_dir>/status.json``, atomically."""
    if status not in STATUSES:
        raise ValueError(f"status={status!r}; allowed: {', '.join(STATUSES)}")
    if not run_dir.is_dir():  # removed under the fit: not created again for a lone status.json
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(run_dir))
    record = {"status": status, **fields, "time": _now()}
    try:
        atomic_write_json(run_dir / STATUS, record)
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG) or not (run_dir / STATUS).is_file():
            raise
        _overwrite_in_place(run_dir / STATUS, json.dumps(_finite(record), default=str) + "\n")


def read_status(run_dir: Path) -> dict[str, Any] | None:
    """The record of :func:`write_status`; None when missing, unreadable or not such a record (logged)."""
    path = run_dir / STATUS
    if not path.is_file():
        return None
    try:
        record = read_json(path, "status record", "it is rewritten by the next fit of this run")
    except (OSError, RunDirError) as err:
        log.warning("%s", err)
        return None
    if not isinstance(record, dict) or record.get("status") not in STATUSES:
        log.warning("%s: not a status record (expected {\"status\": one of %s})", path, ", ".join(STATUSES))
        return None
    return record


def effective_status(run_dir: Path, record: Mapping[str, Any] | None = None) -> str | None:
    """How a run stands now: its ``status.json`` status, except that ``running`` holds only while a process
    holds the run folder's lock; a ``running`` record whose folder is free is :data:`KILLED` (the process
    died without writing its end: SIGKILL, the OOM killer, a lost node). None without a record.

    ``record`` is the already read ``status.json`` (read here when None). The lock is read-only checked
    (:func:`lock_holder`); the kernel drops an flock when its holder dies, so no pid is guessed.
    """
    record = read_status(run_dir) if record is None else record
    if record is None:
        return None
    status = str(record.get("status"))
    if status == RUNNING and lock_holder(run_dir) is None:
        return KILLED
    return status


# ---------------------------------------------------------------------------- metrics.csv
