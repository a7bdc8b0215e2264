"""The run folder of a ``fit|validate|test`` command: which folder (``--run.root/--run.name/--run.id``, or the
folder of the checkpoint it resumes), whether ``--ckpt_path last`` finds a checkpoint or starts a stopped run
over, and claiming the folder with its lock for the run's whole length.

:class:`RunFolder` is a part of :class:`lightning_mem.cli.fit.MemCLI` (a mixin): its methods read and set the
CLI's ``subcommand``, ``checkpoint``, ``resume_ckpt``, ``start_over``, ``run_dir`` and ``run_lock``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import time
from pathlib import Path
from typing import Any

from jsonargparse import Namespace
from lightning.pytorch.utilities import rank_zero_only

from lightning_mem import rundir
from lightning_mem.cli import argchecks
from lightning_mem.training.checkpoints import (
    CheckpointError,
    config_differences,
    load_checkpoint,
    newest_loadable_checkpoint,
)

log = logging.getLogger(__name__)

RUN_ID_ENV = "LIGHTNING_MEM_RUN_ID"


def new_run_id() -> str:
    """A run id unique across processes: start time, pid and a random suffix."""
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{secrets.token_hex(2)}"


def global_rank() -> int:
    """This process's global rank as Lightning reads it from the environment (0 without DDP)."""
    return int(getattr(rank_zero_only, "rank", 0))


class RunFolder:
    """The run-folder steps of :class:`~lightning_mem.cli.fit.MemCLI` (see the module docstring)."""

    subcommand: str | None
    run_dir: Path | None
    checkpoint: dict[str, Any] | None
    resume_ckpt: Path | None
    start_over: bool
    run_lock: rundir.FolderLock | None
    config: Any
    parser: Any
    _argv: list[str]
    _held: contextlib.ExitStack

    def _resolve_run_dir(self, config: Namespace) -> Path:
        run = config.run
        if not run.name:
            configs = config.get("config") or []
            run.name = Path(str(configs[-1])).stem if configs else "default"
        ckpt = config.get("ckpt_path")
        if self.subcommand == "fit" and ckpt and not run.id:
            if ckpt == "last":
                rundir.check_name("run.name", run.name)
                found = rundir.newest_run_with_checkpoint(run.root, run.name)
                if found is None:
                    raise ValueError(
                        f"--ckpt_path last: no last.ckpt under {Path(run.root, run.name).resolve()}"
                        "/*/checkpoints; give --run.id of the run to resume or a checkpoint path"
                    )
                run.id = found.name
            elif Path(ckpt).parent.name == rundir.CHECKPOINTS:
                run_dir = Path(ckpt).parent.parent
                run.root, run.name, run.id = str(run_dir.parent.parent), run_dir.parent.name, run_dir.name
        if not run.id:
            # DDP re-launches this command once per rank: the first process chooses the id.
            run.id = os.environ.get("WANDB_RUN_ID") or os.environ.get(RUN_ID_ENV) or new_run_id()
        run_dir = rundir.run_path(run.root, run.name, run.id)  # one folder name each, or RunDirError
        os.environ[RUN_ID_ENV] = run.id
        if self.subcommand == "fit" and ckpt:
            path = rundir.last_checkpoint(run_dir) if ckpt == "last" else Path(ckpt)
            if ckpt == "last" and not path.exists() and self._can_start_over(run_dir, config):
                return run_dir
            if self.checkpoint is None:  # "last": found only now
                allowed = argchecks.class_paths(self._argv)
                self.checkpoint = (self._load_last(path, allowed) if ckpt == "last"
                                   else load_checkpoint(path, allowed=allowed))
                self._check_model_config(config, str(path))
            if path.resolve().parent == (run_dir / rundir.CHECKPOINTS).resolve():
                self.resume_ckpt = path
        return run_dir

    def _can_start_over(self, run_dir: Path, config: Namespace) -> bool:
        """``--ckpt_path last`` for a run that was stopped before its first checkpoint: start it over in its
        own folder (True). A finished run, or a folder without a run, is refused by the caller's load."""
        record = rundir.read_status(run_dir)
        status = rundir.effective_status(run_dir, record) if record else None
        if not run_dir.is_dir() or status in rundir.DONE:
            return False
        log.info("run.id=%r has no checkpoint yet (%s before its first epoch ended): starting it over in %s",
                 config.run.id, status or "stopped", run_dir)
        config.ckpt_path = None
        self.start_over = True
        return True

    @staticmethod
    def _load_last(path: Path, allowed: set[str] | None = None) -> dict[str, Any]:
        """``last.ckpt``; if it does not load (torn by a writer of another version), the message names the
        newest epoch checkpoint of the run that does."""
        try:
            return load_checkpoint(path, allowed=allowed or ())
        except CheckpointError as err:
            fallback = newest_loadable_checkpoint(path.parent)
            if fallback is None:
                raise
            raise CheckpointError(f"{err}; the newest epoch checkpoint of this run that loads is {fallback}: "
                                  f"resume from it with --ckpt_path {fallback}") from err

    def _claim_run_dir(self) -> None:
        """Take the run folder's lock for the rest of this run, then check it holds no other run.

        The lock (``rundir.FolderLock``: flock, released by the kernel when the process dies) makes
        claiming atomic: of two fits started at once with one ``--run.id``, the second stops here naming
        the first's pid. A folder that already holds a run is not touched unless resumed. Rank 0 only: the
        other DDP ranks join rank 0's run.
        """
        assert self.run_dir is not None
        if global_rank() != 0:
            return
        config = self.config[self.subcommand] if self.subcommand else self.config
        what = f"run folder {self.run_dir} (run.id={config.run.id!r})"

        def refuse_if_taken() -> None:
            taken = rundir.holds_run(self.run_dir)  # type: ignore[arg-type]
            if taken and self.resume_ckpt is None and not self.start_over:
                self.parser.error(
                    f"run.id={config.run.id!r}: {self.run_dir} already holds a run ({', '.join(taken)}); "
                    "resume it with `fit --ckpt_path last` (or a checkpoint path under its checkpoints/), or "
                    "leave --run.id unset for a new run"
                )

        # Read-only first: a folder in use or holding a finished run is not touched at all.
        holder = rundir.lock_holder(self.run_dir)
        if holder is not None:
            self.parser.error(rundir.in_use_message(what, holder))
        refuse_if_taken()
        try:
            self.run_lock = self._held.enter_context(rundir.FolderLock(self.run_dir, what))
        except rundir.LockedError as err:
            self.parser.error(str(err))
        refuse_if_taken()  # again under the lock: another process may have claimed it meanwhile
        if self.start_over:  # rows of an earlier attempt set aside by a killed resume: not this run's now
            (self.run_dir / rundir.METRICS_RESUME).unlink(missing_ok=True)

    def _check_model_config(self, config: Namespace, ckpt: str) -> None:
        assert self.checkpoint is not None
        differences = config_differences(self.checkpoint, config.model.as_dict())
        if differences:
            fix = ("resume with the model options of that run, or leave --ckpt_path out for a new run"
                   if self.config.get("subcommand") == "fit" else
                   "drop those options (validate and test take the checkpoint's), or give a checkpoint "
                   "of this model")
            self.parser.error(f"--ckpt_path {ckpt} does not fit the config: {'; '.join(differences)}; {fix}")
