"""Running an ensemble: build it from members, fit it on a Lightning Trainer, return per-member results.

This is the entry point for the CLI and the sweep runner: a group of grid points that differ only in
the packable keys (:data:`~lightning_mem.ensemble.plan.PACKABLE_PARAMS`) becomes a list of
:class:`~lightning_mem.ensemble.stacked.MemberSpec`;
:func:`build_ensemble` makes the system and the data, :func:`fit_ensemble` trains them and returns one
plain :class:`MemberResult` per member (status, divergence record, last value of every logged key,
checkpoint path), which is what each member's ``status.json`` and the sweep manifest need.
"""

from __future__ import annotations

import io
import os
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities.exceptions import SIGTERMException

from lightning_mem import rundir
from lightning_mem.ensemble.data import EnsembleData
from lightning_mem.ensemble.module import EnsembleModule
from lightning_mem.ensemble.monitor import EnsembleAlignmentMonitor
from lightning_mem.ensemble.optim import MemberOptimizerName
from lightning_mem.ensemble.progress import EnsembleProgressBar, EnsembleProgressLog
from lightning_mem.ensemble.stacked import MemberSpec, StackedMLP
from lightning_mem.nets import Activation
from lightning_mem.nets.paper import InitRule
from lightning_mem.rundir import write_status
from lightning_mem.training.checkpoint_io import install_checkpoint_io
from lightning_mem.training.progress import row_figures

# Dotted config keys of a single run that may differ between the members of one ensemble.


@dataclass
class MemberResult:
    """How one member ended, as plain data.

    Attributes:
        member: Its seed, σ, lr, loss scale, label seed.
        status: ``finished`` or ``diverged``.
        metrics: The last logged value of every key (``train/acc``, ``val/acc``, ``align/...``, ``epoch``).
        divergence: None, or ``{"step", "epoch", "reason", "message"}`` (as ``DivergedError``'s).
        checkpoint: Its last single-run-format checkpoint, if :class:`MemberCheckpoint` wrote one.
    """

    member: MemberSpec
    status: str
    metrics: dict[str, float] = field(default_factory=dict)
    divergence: dict[str, Any] | None = None
    checkpoint: str | None = None

    def status_record(self) -> dict[str, Any]:
        """The fields of its ``status.json`` (``RunStatus``'s form: status, then step/reason if diverged)."""
        record: dict[str, Any] = {"status": self.status}
        if self.divergence is not None:
            record |= {k: self.divergence[k] for k in ("step", "reason", "message")}
        return record


def member_checkpoint(module: EnsembleModule, k: int, epoch: int, global_step: int) -> dict[str, Any]:
    """Member k as a single run's Lightning checkpoint: a ``MemorizationModule`` state dict and hparams.

    ``Trainer.validate(MemorizationModule(ScaledMLP(...)), ckpt_path=...)`` and ``test`` load it; it has
    no loop or optimizer state, so it cannot resume a single-run fit (resume the ensemble instead).
    """
    ckpt = {
        "epoch": epoch, "global_step": global_step, "pytorch-lightning_version": L.__version__,
        "state_dict": module.member_state_dict(k), "hyper_parameters": module.member_hparams(k),
        "hparams_name": "kwargs", "member": module.hparams["members"][k],
    }
    if module.member_records is not None:  # the CLI's record: `validate --ckpt_path` alone rebuilds it
        ckpt |= {"datamodule_hparams_name": "kwargs",
                 "datamodule_hyper_parameters": module.member_records[k][1]}
    return ckpt


class MemberCheckpoint(L.Callback):
    """At every training epoch end, writes each alive member's weights to ``<dirpaths[k]>/<filename>``.

    The format of :func:`member_checkpoint`, written atomically (temp file + rename). A diverged
    member's file is never overwritten, so it keeps its last good epoch, as a single run's ``last.ckpt``.
    """

    def __init__(self, dirpaths: Sequence[str | Path], filename: str = "last.ckpt") -> None:
        super().__init__()
        self.dirpaths = [Path(d) for d in dirpaths]
        self.filename = filename

    def path(self, k: int) -> Path:
        return self.dirpaths[k] / self.filename

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        assert isinstance(pl_module, EnsembleModule)
        if len(self.dirpaths) != pl_module.num_members:
            raise ValueError(f"MemberCheckpoint has {len(self.dirpaths)} folders for "
                             f"{pl_module.num_members} members")
        for k, alive in enumerate(pl_module.alive.tolist()):
            if alive:
                path = self.path(k)
                buffer = io.BytesIO()  # one member's weights: small
                state = member_checkpoint(pl_module, k, trainer.current_epoch, trainer.global_step)
                torch.save(state, buffer)
                rundir.atomic_write_bytes(path, buffer.getvalue())  # fsynced, renamed over the old one


class MemberStatus(L.Callback):
    """Writes each member's ``<run folder>/status.json`` as
    :class:`~lightning_mem.training.guard.RunStatus` writes a
    single run's: ``running`` (``pid``, ``host``) at the fit's start, ``diverged`` (``diverged_step``,
    ``reason``, ``message``) at the end of the epoch in which the member diverged — the others go on —,
    ``finished`` at the fit's end, ``interrupted`` (SIGTERM, Ctrl-C) or ``failed`` on an exception. Every
    record has ``global_step`` and ``epoch`` (the trainer's then; a diverged record: the epoch of the
    divergence). ``dirpaths[k]`` None: member k is not written (a member that ended before a resume).
    While it trains, each alive member's ``running`` record is rewritten after an epoch with the epochs
    done, the step and ``metrics`` (the member's last ``train/loss``, ``train/acc``, ``val/acc`` and main
    alignment), at most every ``progress_every`` seconds (K files a time, and a small net's epochs take
    milliseconds), so ``sweep local`` shows how far a pack is.
    On an exception it also flushes every member's loggers, as Lightning flushes a single run's.
    """

    def __init__(self, dirpaths: Sequence[str | Path | None], progress_every: float = 2.0) -> None:
        super().__init__()
        self.dirpaths = [None if d is None else Path(d) for d in dirpaths]
        self.progress_every = progress_every
        self._ended: set[int] = set()
        self._first_epoch = 0
        self._progress_at = -float("inf")

    def _write(
        self, trainer: L.Trainer, k: int, status: str, epoch: int | None = None, **fields: Any
    ) -> None:
        path = self.dirpaths[k]
        if path is not None and k not in self._ended:
            epoch = trainer.current_epoch if epoch is None else epoch
            write_status(path, status, global_step=trainer.global_step, epoch=epoch, **fields)
            if status != rundir.RUNNING:
                self._ended.add(k)

    def _diverged(self, trainer: L.Trainer, module: L.LightningModule) -> list[bool]:
        """Record the members that diverged since the last call; returns who is still alive."""
        assert isinstance(module, EnsembleModule)
        records = module.divergence()  # one host read
        for k, d in enumerate(records):
            if d is not None:
                self._write(trainer, k, rundir.DIVERGED, epoch=d["epoch"], diverged_step=d["step"],
                            reason=d["reason"], message=d["message"])
        return [d is None for d in records]

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._first_epoch = trainer.current_epoch
        for k, alive in enumerate(self._diverged(trainer, pl_module)):
            if alive:
                self._write(trainer, k, rundir.RUNNING, pid=os.getpid(), host=socket.gethostname())

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._diverged(trainer, pl_module)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # The end of an epoch this process trained: each running member's record with its figures.
        now = time.monotonic()
        if trainer.current_epoch > self._first_epoch and now - self._progress_at >= self.progress_every:
            self._progress_at = now
            for k, row in enumerate(getattr(pl_module, "last_metrics", [])):
                self._write(trainer, k, rundir.RUNNING, pid=os.getpid(), host=socket.gethostname(),
                            metrics=row_figures(row))

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for k, alive in enumerate(self._diverged(trainer, pl_module)):
            if alive:
                self._write(trainer, k, rundir.FINISHED)

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        if trainer.state.fn != "fit":
            return
        assert isinstance(pl_module, EnsembleModule)
        pl_module.save_member_logs()  # the rows logged so far reach the files (Lightning flushes its own)
        if isinstance(exception, (SIGTERMException, KeyboardInterrupt)):
            status = rundir.INTERRUPTED
            reason = "SIGTERM" if isinstance(exception, SIGTERMException) else "KeyboardInterrupt"
        else:
            status, reason = rundir.FAILED, f"{type(exception).__name__}: {exception}"
        for k, alive in enumerate(self._diverged(trainer, pl_module)):
            if alive:
                self._write(trainer, k, status, reason=reason)


def build_ensemble(
    members: Sequence[MemberSpec], *, width: int = 1024, activation: Activation = "sin",
    loss: str = "cross_entropy", loss_scale_with_init: bool = False, depth: int = 1, bias: bool = False,
    init_rule: InitRule = "glorot", optimizer: MemberOptimizerName = "sgd", **data_kwargs: Any,
) -> tuple[EnsembleModule, EnsembleData]:
    """The system and data of an ensemble of ScaledMLP runs; ``data_kwargs`` are ``ImageClassificationData``'s
    (``dataset``, ``batch_size``, ``label_noise``, ``train_subset``, ...; no ``seed``/``label_seed``)."""
    data = EnsembleData(members, **data_kwargs)
    net = StackedMLP.from_members(members, data.input_shape, data.num_classes, width, activation, depth, bias,
                                  init_rule)
    return EnsembleModule(net, members, loss, loss_scale_with_init, optimizer), data  # type: ignore[arg-type]


def fit_ensemble(
    module: EnsembleModule,
    data: EnsembleData,
    *,
    member_loggers: Sequence[Sequence[Logger]] | None = None,
    monitor: EnsembleAlignmentMonitor | None = None,
    checkpoint_dir: str | Path | None = None,
    member_checkpoint_dirs: Sequence[str | Path] | None = None,
    ckpt_path: str | Path | None = None,
    callbacks: Sequence[L.Callback] = (),
    **trainer_kwargs: Any,
) -> list[MemberResult]:
    """Fit the ensemble on a Lightning ``Trainer`` and return one :class:`MemberResult` per member.

    Args:
        member_loggers: ``member_loggers[k]``: the Lightning loggers of member k (e.g. a ``CSVLogger``
            writing its run folder's ``metrics.csv``). The trainer itself has no logger.
        monitor: Per-member alignment (None: none).
        checkpoint_dir: Where the whole ensemble is checkpointed at every epoch end (``epoch<N>.ckpt``,
            newest kept, and ``last.ckpt`` a hard link to it, as the CLI's single runs); None: none.
        member_checkpoint_dirs: Folder per member for its single-run-format ``last.ckpt``.
        ckpt_path: An ensemble checkpoint to resume from (weights, divergence state, epoch and step).
        trainer_kwargs: ``lightning.Trainer`` arguments (``max_epochs``, ``accelerator``, ...).
    """
    if member_loggers is not None:
        if len(member_loggers) != module.num_members:
            raise ValueError(f"member_loggers has {len(member_loggers)} lists for "
                             f"{module.num_members} members")
        module.member_loggers = [list(x) for x in member_loggers]
    cbs: list[L.Callback] = list(callbacks)
    if monitor is not None:
        cbs.append(monitor)
    saver = MemberCheckpoint(member_checkpoint_dirs) if member_checkpoint_dirs is not None else None
    if saver is not None:
        cbs.append(saver)
    if checkpoint_dir is not None:
        cbs.append(ModelCheckpoint(dirpath=checkpoint_dir, filename="epoch{epoch}",
                                   auto_insert_metric_name=False, save_last=True, every_n_epochs=1))
    trainer_kwargs = {"enable_progress_bar": False, "enable_model_summary": False, **trainer_kwargs}
    # The members' summary: in the bar's postfix, or (bar off) a log line every 30 s.
    bar = trainer_kwargs["enable_progress_bar"] is not False  # None: Lightning's default, on
    cbs.append(EnsembleProgressBar() if bar else EnsembleProgressLog())
    checkpointing = any(isinstance(c, ModelCheckpoint) for c in cbs)
    trainer = L.Trainer(logger=False, callbacks=cbs, enable_checkpointing=checkpointing, **trainer_kwargs)
    if checkpointing:
        install_checkpoint_io(trainer)  # whole files; last.ckpt a hard link to the epoch's (no second copy)
    trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
    results = []
    for k, divergence in enumerate(module.divergence()):
        ckpt = saver.path(k) if saver is not None and saver.path(k).is_file() else None
        status = rundir.FINISHED if divergence is None else rundir.DIVERGED
        results.append(MemberResult(module.members[k], status, dict(module.last_metrics[k]), divergence,
                                    str(ckpt) if ckpt else None))
    return results
