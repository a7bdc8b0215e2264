"""One ensemble from its members' ``fit`` arguments: check everything, claim every folder, then train.

:func:`prepare_pack` does everything that can fail on bad input before anything is written — parse each
member through the fit CLI, check they form one ensemble, build the stacked net and its data, check the
Trainer arguments and the checkpoint to resume — and then claims the ensemble's folder and every member's
run folder under :class:`~lightning_mem.rundir.FolderLock` (the folder locks a single run takes), held
until :meth:`Pack.fit` returns. :meth:`Pack.fit` writes each member's ``config.yaml`` and ``hp.json``, gives
it the loggers its single run would have (``RunCSVLogger`` into its folder, continuing ``metrics.csv`` on
a resume; a ``RunWandbLogger`` per member, ``reinit="create_new"``, with the declared metrics and the
``hp`` block, finished at the end), its ``status.json`` (:class:`~lightning_mem.ensemble.train.MemberStatus`)
and its single-run-format ``checkpoints/last.ckpt``, and fits.

On a resume (``ckpt``: the ensemble's checkpoint), a member that had ended before — diverged before the
checkpoint, or recorded ``finished``/``diverged`` in its ``status.json`` — rides along untouched: its
folder gets no logger and no status; every other member continues exactly where the checkpoint left it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import lightning as L
import torch
from jsonargparse import Namespace
from lightning.pytorch.utilities.exceptions import MisconfigurationException, SIGTERMException

from lightning_mem import rundir
from lightning_mem.cli import argchecks
from lightning_mem.ensemble.data import EnsembleData
from lightning_mem.ensemble.members import Member, PackError, PackSettings, pack_settings, parse_member
from lightning_mem.ensemble.module import EnsembleModule
from lightning_mem.ensemble.monitor import EnsembleAlignmentMonitor
from lightning_mem.ensemble.plan import write_pack
from lightning_mem.ensemble.stacked import MemberSpec
from lightning_mem.ensemble.train import MemberStatus, build_ensemble, fit_ensemble
from lightning_mem.errors import EXIT_DIVERGED, EXIT_SIGTERM
from lightning_mem.training.checkpoints import load_checkpoint
from lightning_mem.training.loggers import setup_wandb_run
from lightning_mem.training.precision import tf32_policy

log = logging.getLogger(__name__)



def _instantiate(class_path: str, **kwargs: Any) -> Any:
    import importlib

    module, name = class_path.rsplit(".", 1)
    return getattr(importlib.import_module(module), name)(**kwargs)


def member_loggers(member: Member, resume: tuple[int, int] | None) -> list[Any]:
    """The loggers of the member's config (as the fit CLI configured them into its run folder), the CSV
    logger continuing ``metrics.csv`` from ``resume`` (global_step, epoch), each W&B logger its own run."""
    out = []
    for item in member.config.trainer.logger or []:  # False: no logger at all
        entry = item.as_dict() if isinstance(item, Namespace) else dict(item)
        kwargs = dict(entry.get("init_args") or {})
        if entry["class_path"].endswith("RunCSVLogger") and resume is not None:
            kwargs["resume_step"], kwargs["resume_epoch"] = resume
        if entry["class_path"].endswith("RunWandbLogger"):
            kwargs["reinit"] = "create_new"  # K runs open at once in this process
        out.append(_instantiate(entry["class_path"], **kwargs))
    return out


def _refuse_if_taken(member: Member, resume: bool) -> None:
    taken = rundir.holds_run(member.run_dir)
    if taken and not resume:
        raise PackError(f"run.id={member.run_id!r}: {member.run_dir} already holds a run "
                        f"({', '.join(taken)}); resume its ensemble with `--ckpt_path last`, or leave "
                        "--run.id unset for new runs")


def _claim(pack_dir: Path, members: Sequence[Member], resume: bool, stack: contextlib.ExitStack) -> None:
    """Lock the ensemble's folder and every member's run folder for the ensemble's life. All are checked
    (read-only) before any is created or locked; a member's folder again under its lock."""
    folders = [(pack_dir, f"ensemble folder {pack_dir}")]
    folders += [(m.run_dir, f"run folder {m.run_dir} (run.id={m.run_id!r})") for m in members]
    for folder, what in folders:
        holder = rundir.lock_holder(folder)
        if holder is not None:
            raise rundir.LockedError(rundir.in_use_message(what, holder))
    for member in members:
        _refuse_if_taken(member, resume)
    for folder, what in folders:
        stack.enter_context(rundir.FolderLock(folder, what))
    for member in members:
        _refuse_if_taken(member, resume)  # again under the locks: another process may have come first


def _extended(record: dict[str, Any], trainer: dict[str, Any]) -> bool:
    """Whether a member that finished trains on: the resume asks for more epochs or steps than it ran (a
    larger ``--trainer.max_epochs``, as a single run extends); a diverged member never does."""
    if record.get("status") != rundir.FINISHED:
        return False
    max_epochs, max_steps = trainer.get("max_epochs"), trainer.get("max_steps", -1)
    if isinstance(max_steps, int) and max_steps > 0 and max_steps > int(record.get("global_step") or 0):
        return True
    if max_epochs is None:  # Lightning's default: 1000 epochs unless max_steps is set
        return not (isinstance(max_steps, int) and max_steps > 0) and int(record.get("epoch") or 0) < 1000
    return isinstance(max_epochs, int) and (max_epochs < 0 or max_epochs > int(record.get("epoch") or 0))


def _check_trainer(trainer: dict[str, Any]) -> None:
    """Build the Trainer once from the members' arguments: its own checks, before anything is written."""
    quiet = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    level = quiet.level
    quiet.setLevel(logging.WARNING)
    try:
        L.Trainer(**{**trainer, "logger": False, "enable_checkpointing": False, "enable_progress_bar": False})
    except (ValueError, TypeError, MisconfigurationException) as err:
        raise PackError(f"trainer: {err}") from err
    finally:
        quiet.setLevel(level)


class Pack:
    """A prepared ensemble: its members, settings, built module and data, and the folder locks it holds."""

    def __init__(self, pack_dir: Path, members: list[Member], settings: PackSettings, module: EnsembleModule,
                 data: EnsembleData, monitor: EnsembleAlignmentMonitor | None, ckpt: Path | None,
                 resume: tuple[int, int] | None, riders: list[bool], stack: contextlib.ExitStack) -> None:
        self.pack_dir, self.members, self.settings = pack_dir, members, settings
        self.module, self.data, self.monitor = module, data, monitor
        self.ckpt, self.resume, self.riders, self.stack = ckpt, resume, riders, stack

    def _kernel_monitor(self) -> list[L.Callback]:
        from lightning_mem.ensemble.kernel_monitor import EnsembleKernelMonitor

        configured = self.settings.kernel_monitor
        return [] if configured is None else [EnsembleKernelMonitor.from_monitor(configured)]

    def _grokking_monitor(self) -> list[L.Callback]:
        from lightning_mem.ensemble.grokking import EnsembleGrokkingMonitor

        configured = self.settings.grokking_monitor
        folders = [None if rider else m.run_dir for m, rider in zip(self.members, self.riders, strict=True)]
        return [] if configured is None else [EnsembleGrokkingMonitor.from_monitor(configured, folders)]

    def fit(self, callbacks: Sequence[L.Callback] = ()) -> int:
        """Train; 0 if every member finished, 3 if one diverged, 143 on SIGTERM (see ``ensemble_cli``)."""
        wandb_runs: list[Any] = []
        ok = False
        try:
            loggers: list[list[Any]] = []
            for member, rider in zip(self.members, self.riders, strict=True):
                if rider:
                    loggers.append([])
                    continue
                if self.ckpt is None:
                    member.write_files()
                member.loggers = member_loggers(member, self.resume)
                for logger in member.loggers:
                    if type(logger).__name__ == "RunWandbLogger":
                        setup_wandb_run(logger.experiment, *member.wandb_config())
                        wandb_runs.append(logger.experiment)
                loggers.append(member.loggers)
            self.module.member_records = [m.hparams() for m in self.members]
            pairs = list(zip(self.members, self.riders, strict=True))
            status = MemberStatus([None if rider else m.run_dir for m, rider in pairs])
            keep = self.settings.checkpoints
            member_ckpts = [m.run_dir / rundir.CHECKPOINTS for m in self.members] if keep else None
            with tf32_policy(self.settings.tf32):
                results = fit_ensemble(
                    self.module, self.data, member_loggers=loggers, monitor=self.monitor,
                    checkpoint_dir=self.pack_dir / rundir.CHECKPOINTS if keep else None,
                    member_checkpoint_dirs=member_ckpts,
                    ckpt_path=self.ckpt,
                    callbacks=[status, *self._kernel_monitor(), *self._grokking_monitor(), *callbacks],
                    default_root_dir=str(self.pack_dir),
                    **self.settings.trainer)
            ok = True
        except SIGTERMException:
            log.error("Stopped by SIGTERM; resume with `lightning-mem ensemble fit --pack %s --ckpt_path "
                      "last`", self.pack_dir)
            return EXIT_SIGTERM
        finally:
            for run in wandb_runs:
                run.finish(exit_code=0 if ok else 1)
            self.stack.close()  # every folder lock
            for member, rider in zip(self.members, self.riders, strict=True):
                if not rider:
                    log.info("member %s", rundir.summary_line(member.run_dir))
        ours = [r for r, rider in zip(results, self.riders, strict=True) if not rider]
        return EXIT_DIVERGED if any(r.status == rundir.DIVERGED for r in ours) else 0


def _resume_state(ckpt: Path, members: Sequence[Member]) -> tuple[tuple[int, int], list[bool]]:
    """(global_step, epoch) of the ensemble checkpoint and which members were alive in it."""
    state = load_checkpoint(ckpt)
    saved = (state.get("hyper_parameters") or {}).get("members")
    wanted = [asdict(m.spec) for m in members]
    with contextlib.suppress(TypeError, ValueError):  # written before the optimizer fields: their defaults
        saved = [asdict(MemberSpec(**m)) for m in saved or []] or saved
    if saved != wanted:
        raise PackError(f"--ckpt_path {ckpt}: the checkpoint's ensemble has the members {saved}, these are "
                        f"{wanted}; resume with the members that wrote it")
    alive = state["state_dict"].get("alive", torch.ones(len(members), dtype=torch.bool))
    return (int(state["global_step"]), int(state.get("epoch", 0))), [bool(a) for a in alive.tolist()]


def prepare_pack(pack_dir: Path, entries: Sequence[dict[str, Any]], ckpt: Path | None,
                 write_members: bool = False) -> Pack:
    """Parse, check and build the ensemble of ``entries`` (``{"run_id", "argv"}`` each), then claim its
    folders; ``ValueError`` (exit 2) on bad input, with nothing written. ``write_members``: write
    ``pack.json`` (the direct form; the sweep runner writes its own)."""
    members = [parse_member(e["run_id"], e["argv"]) for e in entries[:1]]
    if members:  # K stacked nets too large: refused before the K-1 others are parsed (each builds a net)
        too_big = argchecks.model_size_error(members[0].config.model.net.as_dict(), members=len(entries))
        if too_big:
            raise PackError(too_big)
    members += [parse_member(e["run_id"], e["argv"]) for e in entries[1:]]
    settings = pack_settings(members)
    specs = [m.spec for m in members]
    resume, alive = (None, [True] * len(members)) if ckpt is None else _resume_state(ckpt, members)
    module, data = build_ensemble(specs, **settings.net, **settings.loss, **settings.data)
    try:
        data.prepare_data()
        data.setup("fit")  # a missing dataset or a subset too large: now, not after the folders are claimed
    except (FileNotFoundError, RuntimeError) as err:
        raise PackError(str(err)) from err
    _check_trainer(settings.trainer)
    monitor = None if settings.monitor is None else EnsembleAlignmentMonitor.from_monitor(settings.monitor)
    stack = contextlib.ExitStack()
    try:
        _claim(pack_dir, members, ckpt is not None, stack)
        riders = []
        for member, was_alive in zip(members, alive, strict=True):
            record = rundir.read_status(member.run_dir) or {}
            ended = record.get("status") in rundir.DONE and not _extended(record, settings.trainer)
            riders.append(ckpt is not None and (ended or not was_alive))
        if write_members:
            write_pack(pack_dir, entries)
        pack = Pack(pack_dir, members, settings, module, data, monitor, ckpt, resume, riders, stack)
    except BaseException:
        stack.close()
        raise
    return pack
