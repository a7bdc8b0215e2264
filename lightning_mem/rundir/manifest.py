"""A sweep's ``manifest.json``: written atomically, read back with its shape checked."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lightning_mem.errors import RunDirError
from lightning_mem.rundir.files import atomic_write_json, read_json
from lightning_mem.rundir.status import EFFECTIVE_STATUSES, PENDING


def write_manifest(path: Path, data: Mapping[str, Any]) -> None:
    atomic_write_json(path, data)


def read_manifest(path: Path) -> dict[str, Any]:
    """A local sweep's manifest ``{"runs": {run_id: {"status": ..., ...}}, ...}``, checked.

    :class:`RunDirError` naming the file when it is not JSON, not that shape, or an entry has no
    valid ``status``.
    """
    fix = "move it away to start the sweep afresh"
    data = read_json(path, "sweep manifest", fix)
    runs = data.get("runs") if isinstance(data, dict) else None
    if not isinstance(runs, dict):
        raise RunDirError(f"{path}: not a sweep manifest (expected an object with a 'runs' object); {fix}")
    for run_id, entry in runs.items():
        if not isinstance(entry, dict) or entry.get("status") not in (*EFFECTIVE_STATUSES, PENDING):
            raise RunDirError(f"{path}: run {run_id!r} has no valid status (allowed: pending, "
                              f"{', '.join(EFFECTIVE_STATUSES)}); {fix}")
    return data


# ---------------------------------------------------------------------------- locks
