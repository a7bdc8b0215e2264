"""Run health: stop cleanly on divergence, and record how every run ended in ``status.json``.

Large init scales blow up (the squared loss at σ ≥ 1 overflows within a few steps). A diverged run
must stop with a message that names the step and the likely cause, must never overwrite its last
good checkpoint with NaN weights, and must tell a sweep what happened without parsing logs:

- :class:`DivergenceGuard` watches the training loss and the weights and raises
  :class:`DivergedError` at the first non-finite value, before any checkpoint of it is written.
- :class:`RunStatus` writes ``<run dir>/status.json`` when a fit starts, finishes, diverges, is
  interrupted (SIGTERM, Ctrl-C) or fails, and flushes the loggers at every epoch start, so a run
  killed with SIGKILL loses no row of a finished epoch.

The CLI registers both by default and turns :class:`DivergedError` into exit code 3.
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch import Tensor

from lightning_mem import rundir
from lightning_mem.errors import DivergedError
from lightning_mem.rundir import write_status
from lightning_mem.training.progress import progress_figures

log = logging.getLogger(__name__)


def divergence_message(step: int, epoch: int, reason: str, setting: str) -> str:
    """What a diverged run (or ensemble member) says: where, what was non-finite, the likely cause and
    the fix; ``setting`` names its σ, lr and loss (``"init_std=10.0, lr=0.03, loss=squared"``)."""
    return (f"Training diverged at step {step} (epoch {epoch}): {reason}. Likely cause: the scale of the "
            f"initialization times the learning rate is too large for this loss ({setting}); lower "
            "--model.lr or --model.net.init_std (or scale the loss with --model.loss_scale).")


def _hparam(pl_module: L.LightningModule, name: str) -> Any:
    hparams = getattr(pl_module, "hparams", {})
    return hparams.get(name) if hasattr(hparams, "get") else None


class DivergenceGuard(L.Callback):
    """Stops a fit at the first non-finite training loss or weight, keeping the last good checkpoint.

    Each step's loss is copied into a small buffer on its device (no host sync). The buffer is read
    when ``global_step`` is a multiple of ``check_every_n_steps`` and at each epoch's last batch;
    the weights are checked too (one ``isfinite`` per parameter, one host transfer for all) at
    every epoch end, before each validation and before every checkpoint is written. On a
    non-finite value the guard logs ``diverged = 1`` and ``diverged_step`` (with ``epoch``, like
    every row of a run) to every logger, then raises :class:`DivergedError` naming the first bad
    step and the likely cause: the scale of the initialization times the learning rate. Before
    that row it calls ``flush_metrics(trainer)`` of every callback that has one
    (:class:`~lightning_mem.callbacks.AlignmentMonitor` keeps its rows on the device), so rows
    reach the loggers in step order. Because the check runs inside ``on_save_checkpoint``, no
    checkpoint with NaN weights is ever written; ``last.ckpt`` stays that of the last good epoch.
    Under DDP the ranks agree on the decision at every read, so they stop together.

    Args:
        check_every_n_steps: Read the buffered losses every this many steps (≥ 1). The step named in
            the message is exact whatever the value; a larger value only stops a few steps later and
            syncs the host less often (one sync per read on GPU).
        check_weights: Also check every parameter for NaN/inf at epoch ends, validations and
            checkpoint saves (a NaN weight also makes the next step's loss NaN).
    """

    def __init__(self, check_every_n_steps: int = 20, check_weights: bool = True) -> None:
        super().__init__()
        if isinstance(check_every_n_steps, bool) or not isinstance(check_every_n_steps, int) \
                or check_every_n_steps < 1:
            raise ValueError(f"check_every_n_steps={check_every_n_steps!r} must be an integer >= 1")
        self.check_every_n_steps = check_every_n_steps
        self.check_weights = check_weights
        self._losses: Tensor | None = None  # (check_every_n_steps,) float32 losses since the last read
        self._steps: list[int] = []  # the step of each buffered loss

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._losses, self._steps = None, []

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        # A fused training step (MemorizationModule(steps_per_call > 1)) returns the mean loss of each of
        # its n SGD steps as "step_losses" (n,); they belong to steps global_step - n ... global_step - 1.
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        losses = outputs.get("step_losses") if isinstance(outputs, dict) else None
        if not isinstance(losses, Tensor):
            losses = loss.detach().reshape(1) if isinstance(loss, Tensor) else None
        n = 0 if losses is None else len(losses)
        if losses is not None and n:
            if self._losses is None or self._losses.device != losses.device or len(self._losses) < n:
                if self._steps:
                    self._check_losses(trainer, pl_module)
                self._losses = torch.zeros(max(self.check_every_n_steps, n), device=losses.device)
            if len(self._steps) + n > len(self._losses):  # gradient accumulation: more batches than steps
                self._check_losses(trainer, pl_module)
            m = len(self._steps)
            self._losses[m : m + n] = losses.detach()  # a device copy, no host sync
            step = trainer.global_step  # the optimizer already stepped on these losses
            self._steps.extend(range(step - n, step))
        last_batch = batch_idx + 1 == trainer.num_training_batches
        # A read when global_step reached a multiple of check_every_n_steps during this batch (for one step:
        # global_step % check_every_n_steps == 0).
        every = self.check_every_n_steps
        if trainer.global_step // every > (trainer.global_step - max(n, 1)) // every or last_batch:
            self._check_losses(trainer, pl_module)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == "fit":
            self.check(trainer, pl_module)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Runs before the module's own hook, so a NaN epoch's train/loss is never logged.
        self.check(trainer, pl_module)

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        # Called while the checkpoint is assembled, before the file is written: raising here keeps
        # the previous last.ckpt.
        if trainer.state.fn == "fit":
            self.check(trainer, pl_module)

    def check(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Raise :class:`DivergedError` on a non-finite buffered loss or (``check_weights``) weight."""
        self._check_losses(trainer, pl_module)
        if self.check_weights:
            bad = self._nonfinite_parameters(pl_module)
            if bad:
                names = f"{', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}"
                reason = f"weights are non-finite ({names})"
                raise self._diverged(trainer, pl_module, trainer.global_step, reason)

    @staticmethod
    def _nonfinite_parameters(pl_module: L.LightningModule) -> list[str]:
        """Names of the parameters holding a NaN or inf: one flag per parameter on its device, one
        host transfer for all of them."""
        named = list(pl_module.named_parameters())
        if not named:
            return []
        device = named[0][1].device
        flags = torch.stack([torch.isfinite(p).all().to(device) for _, p in named]).tolist()
        return [name for (name, _), finite in zip(named, flags, strict=True) if not finite]

    def _check_losses(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        n, steps = len(self._steps), self._steps
        self._steps = []
        if n == 0 or self._losses is None:
            return
        bad = ~torch.isfinite(self._losses[:n])
        here = bool(bad.any())  # the host sync: once per read
        # Under DDP every rank reads at the same steps and all stop together (no rank left waiting).
        if trainer.strategy.reduce_boolean_decision(here, all=False):
            if not here:
                raise self._diverged(trainer, pl_module, trainer.global_step - 1,
                                     "the training loss of another DDP rank is non-finite")
            i = int(bad.nonzero()[0, 0])
            value = float(self._losses[i])
            raise self._diverged(trainer, pl_module, steps[i], f"the training loss is {value:g}")

    def _diverged(
        self, trainer: L.Trainer, pl_module: L.LightningModule, step: int, reason: str
    ) -> DivergedError:
        epoch = trainer.current_epoch
        for callback in trainer.callbacks:  # type: ignore[attr-defined]
            flush = getattr(callback, "flush_metrics", None)  # rows still buffered (AlignmentMonitor)
            if callable(flush):
                flush(trainer)  # first, so that the rows reach the loggers in step order
        for logger in trainer.loggers:
            row = {"diverged": 1.0, "diverged_step": float(step), "epoch": epoch}
            logger.log_metrics(row, step=trainer.global_step)
            logger.save()
        lr = trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else _hparam(pl_module, "lr")
        net = getattr(pl_module, "net", pl_module)
        scale = getattr(net, "init_std", None)
        loss = _hparam(pl_module, "loss")
        setting = ", ".join(
            f"{k}={v}" for k, v in (("init_std", scale), ("lr", lr), ("loss", loss)) if v is not None
        )
        ckpt = getattr(trainer.checkpoint_callback, "last_model_path", "") or ""
        kept = f" The last good checkpoint is kept: {ckpt}." if ckpt and os.path.isfile(ckpt) else (
            " No checkpoint was written before it."
        )
        return DivergedError(divergence_message(step, epoch, reason, setting) + kept, step=step, epoch=epoch,
                             reason=reason)


class RunStatus(L.Callback):
    """Records how a fit ended in ``<dirpath>/status.json``, for sweep runners and dashboards.

    ``status`` is ``running`` (with ``pid`` and ``host``) from the fit's start, then ``finished``,
    ``diverged``, ``interrupted`` (SIGTERM or Ctrl-C, with ``reason``; resume with ``--ckpt_path last``)
    or ``failed`` (with ``reason``). A run killed with SIGKILL stays ``running`` with a dead ``pid``.
    Written on global rank 0 only, atomically. Every record has:

    - ``global_step``: optimizer steps completed when the record was written (``trainer.global_step``;
      for a finished run, its total number of steps);
    - ``epoch``: ``trainer.current_epoch`` then — the epoch in progress, or for a finished run the
      number of epochs trained;
    - ``time``.

    A ``diverged`` record adds ``diverged_step``: the first optimizer step (counted from 0, the
    ``step`` of ``metrics.csv``) whose loss or weights were non-finite — ``global_step`` is where the
    guard noticed, up to ``check_every_n_steps`` later — and ``reason`` and ``message``.

    At every epoch end (the next epoch's start, and the training's end) the ``running`` record is written
    again with ``metrics``: the last epoch's ``train/loss``, ``train/acc``, ``val/acc`` and main alignment
    (:func:`~lightning_mem.training.progress.progress_figures`), so sweeps, reports and dashboards see
    how far a run is.

    At every training epoch start the loggers are flushed (``logger.save()``), so the rows of every
    finished epoch are on disk before the next one starts: a run killed at any point loses at most
    the epoch in progress, which a resume from its epoch-end checkpoint logs again.

    Args:
        dirpath: Folder of ``status.json``; None uses ``trainer.log_dir``.
    """

    def __init__(self, dirpath: str | None = None) -> None:
        super().__init__()
        self.dirpath = dirpath
        self.batches_started = 0  # training batches begun by this process (0: the fit failed in its setup)
        self._first_epoch = 0

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.dirpath is None and trainer.log_dir is not None:
            self.dirpath = trainer.log_dir

    def _write(self, trainer: L.Trainer, status: str, **fields: Any) -> None:
        if trainer.is_global_zero and self.dirpath is not None:
            write_status(Path(self.dirpath), status, global_step=trainer.global_step,
                         epoch=trainer.current_epoch, **fields)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._first_epoch = trainer.current_epoch  # after a resume: the checkpoint's epoch
        self._write(trainer, rundir.RUNNING, pid=os.getpid(), host=socket.gethostname())

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for logger in trainer.loggers:
            logger.save()
        if trainer.current_epoch > self._first_epoch:  # the end of an epoch this process trained
            self._progress(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._progress(trainer)

    def _progress(self, trainer: L.Trainer) -> None:
        """The running record again, with the epoch, the step and the last epoch's figures."""
        self._write(trainer, rundir.RUNNING, pid=os.getpid(), host=socket.gethostname(),
                    metrics=progress_figures(trainer))

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        self.batches_started += 1

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._write(trainer, rundir.FINISHED)  # as an ensemble member's: the figures are in metrics.csv

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        if trainer.state.fn != "fit":
            return
        if isinstance(exception, DivergedError):
            self._write(trainer, rundir.DIVERGED, diverged_step=exception.step, reason=exception.reason,
                        message=str(exception))
        elif isinstance(exception, (SIGTERMException, KeyboardInterrupt)):
            kind = "SIGTERM" if isinstance(exception, SIGTERMException) else "KeyboardInterrupt"
            self._write(trainer, rundir.INTERRUPTED, reason=kind)
        else:
            try:
                self._write(trainer, rundir.FAILED, reason=f"{type(exception).__name__}: {exception}")
            except OSError as err:  # the disk that failed the fit (or a removed run folder): the fit's
                log.warning("could not record the run as failed: %s", err)  # own error is reported

