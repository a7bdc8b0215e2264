"""The run folder: its layout, atomic writes, ``status.json``, ``metrics.csv``, ``hp.json``, the sweep
manifest, and the locks that give a run folder or a sweep one owner at a time.

This is the only package that reads or writes those files (Lightning's CSV logger
writes the rows of ``metrics.csv`` itself). It imports neither torch nor Lightning, so ``sweep``,
``report`` and ``dashboard`` start without them. Layout::

    <root>/<name>/<id>/            one run (--run.root, --run.name, --run.id)
        metrics.csv                every logged row: step, epoch and the metric keys (CSV logger)
        metrics.resume.csv         only while a resume carries the rows over (see restore_metrics)
        config.yaml                the full nested config (LightningCLI)
        hp.json                    the canonical hyperparameters (:data:`HP_KEYS`), flat
        hparams.yaml               the module's hyperparameters (CSV logger)
        status.json                running | finished | diverged | interrupted | failed (as written;
                                   readers use effective_status: a dead running run is killed)
        checkpoints/               epoch<k>.ckpt and last.ckpt
        .lock                      held (flock) by the process that owns the run
        output.log, args.json      written by the local sweep runner
        wandb/                     the W&B run, when that logger is configured
    <root>/<sweep>/manifest.json   a local sweep's state, and its .lock

Errors a user can cause (a corrupt file, a bad name, a folder in use) raise :class:`RunDirError`, a
``ValueError`` whose message names the file or value and the fix.

Modules: :mod:`~lightning_mem.rundir.layout` (names, paths, finding runs, reading without following links),
:mod:`~lightning_mem.rundir.files` (atomic writes), :mod:`~lightning_mem.rundir.status`,
:mod:`~lightning_mem.rundir.metrics`, :mod:`~lightning_mem.rundir.hp`, :mod:`~lightning_mem.rundir.manifest`,
:mod:`~lightning_mem.rundir.locks`. Their public names are re-exported here: callers write
``rundir.write_status(...)``.
"""

from lightning_mem.errors import LockedError, RunDirError
from lightning_mem.rundir.files import (
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    file_mode,
    fsync_dir,
    read_json,
)
from lightning_mem.rundir.hp import (
    HP_KEYS,
    canonical_hp,
    read_hp,
    write_hp,
)
from lightning_mem.rundir.layout import (
    ARGS_JSON,
    CHECKPOINTS,
    CONFIG,
    HP,
    LAST_CKPT,
    LOCK,
    MANIFEST,
    METRICS,
    METRICS_RESUME,
    OUTPUT_LOG,
    STATUS,
    check_inside,
    check_name,
    check_writable,
    find_run_dirs,
    holds_run,
    last_checkpoint,
    newest_run_with_checkpoint,
    read_run_file,
    run_path,
)
from lightning_mem.rundir.locks import (
    FolderLock,
    in_use_message,
    lock_holder,
    locked,
)
from lightning_mem.rundir.manifest import (
    read_manifest,
    write_manifest,
)
from lightning_mem.rundir.metrics import (
    MetricsTable,
    final_metrics,
    read_metrics,
    read_metrics_rows,
    restore_metrics,
    set_metrics_aside,
    summary_line,
    write_metrics_rows,
)
from lightning_mem.rundir.status import (
    DIVERGED,
    DONE,
    EFFECTIVE_STATUSES,
    FAILED,
    FINISHED,
    INTERRUPTED,
    KILLED,
    PENDING,
    RUNNING,
    STATUSES,
    effective_status,
    read_status,
    write_status,
)

__all__ = [
    "ARGS_JSON",
    "CHECKPOINTS",
    "CONFIG",
    "DIVERGED",
    "DONE",
    "EFFECTIVE_STATUSES",
    "FAILED",
    "FINISHED",
    "HP",
    "HP_KEYS",
    "INTERRUPTED",
    "KILLED",
    "LAST_CKPT",
    "LOCK",
    "MANIFEST",
    "METRICS",
    "METRICS_RESUME",
    "OUTPUT_LOG",
    "PENDING",
    "RUNNING",
    "STATUS",
    "STATUSES",
    "FolderLock",
    "LockedError",
    "MetricsTable",
    "RunDirError",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "canonical_hp",
    "check_inside",
    "check_name",
    "check_writable",
    "effective_status",
    "file_mode",
    "final_metrics",
    "find_run_dirs",
    "fsync_dir",
    "holds_run",
    "in_use_message",
    "last_checkpoint",
    "lock_holder",
    "locked",
    "newest_run_with_checkpoint",
    "read_hp",
    "read_json",
    "read_manifest",
    "read_metrics",
    "read_metrics_rows",
    "read_run_file",
    "read_status",
    "restore_metrics",
    "run_path",
    "set_metrics_aside",
    "summary_line",
    "write_hp",
    "write_manifest",
    "write_metrics_rows",
    "write_status",
]
