"""Progress of a running fit, for people and for the tools that watch run folders.

- :func:`progress_figures`: the figures of the last finished epoch — ``train/loss``, ``train/acc``,
  ``val/acc`` and the main alignment (the first ``align/grad/<param>`` of an
  :class:`~lightning_mem.callbacks.AlignmentMonitor`, W1 for the paper's MLP; ``val/align/rep/...``
  for a net measured on representations only) — which
  :class:`~lightning_mem.training.guard.RunStatus` writes into ``status.json`` at every epoch end.
- :class:`ProgressBar`: Lightning's TQDM bar showing those figures (instead of ``v_num`` only).
- :class:`ProgressLog`: where the bar is off (paper configs, sweeps, logs to a file), one line on stderr
  every ``every_s`` seconds at an epoch end, and at the first and the last epoch:
  ``epoch 12/2000 step 192 train/loss 0.31 train/acc 0.912 val/acc 0.88 align/grad/hidden.weight 0.0123
  (41 s, ~2 h 10 min left)``.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import TQDMProgressBar

from lightning_mem import metric_keys

log = logging.getLogger(__name__)

SHOWN = (metric_keys.TRAIN_LOSS, metric_keys.TRAIN_ACC, metric_keys.VAL_ACC)  # in this order


def _main_key(row: dict[str, float]) -> dict[str, float]:
    """The main alignment of one logged row: its first parameter's gradient alignment (W1 of the paper's
    MLP), else its first held-out or training representation alignment; empty if it has none."""
    for prefix in (metric_keys.ALIGN_GRAD, metric_keys.VAL_ALIGN_REP, metric_keys.ALIGN_REP):
        keys = [k for k in row
                if k.startswith(prefix) and k != metric_keys.GRAD_LOGITS and "/class_" not in k]
        if keys:
            return {keys[0]: float(row[keys[0]])}
    return {}


def main_alignment(trainer: L.Trainer) -> dict[str, float]:
    """The main alignment measured last: what a :class:`ProgressLog` kept of the last training row, else
    :func:`_main_key` of the first callback's latest row (``AlignmentMonitor.last_metrics``)."""
    callbacks = trainer.callbacks  # type: ignore[attr-defined]
    for callback in callbacks:
        if isinstance(callback, ProgressLog) and callback.alignment:
            return dict(callback.alignment)
    for callback in callbacks:
        last = getattr(callback, "last_metrics", None)
        found = _main_key(last) if isinstance(last, dict) else {}
        if found:
            return found
    return {}


def row_figures(row: dict[str, float]) -> dict[str, float]:
    """The finite values of :data:`SHOWN` and the main alignment in one member's last logged values (an
    ensemble's ``last_metrics[k]``)."""
    out = {key: float(row[key]) for key in SHOWN if key in row} | _main_key(row)
    return {k: v for k, v in out.items() if math.isfinite(v)}


def progress_figures(trainer: L.Trainer) -> dict[str, float]:
    """The finite values of :data:`SHOWN` in ``trainer.callback_metrics`` and :func:`main_alignment`."""
    metrics = trainer.callback_metrics
    out = {key: float(metrics[key]) for key in SHOWN if key in metrics}
    out |= main_alignment(trainer)
    return {k: v for k, v in out.items() if math.isfinite(v)}


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    minutes = seconds / 60
    return f"{minutes:.0f} min" if minutes < 120 else f"{int(minutes // 60)} h {minutes % 60:.0f} min"


def progress_line(epoch: int, max_epochs: int | None, step: int, figures: dict[str, float],
                  elapsed: float, done: int | None = None) -> str:
    """One progress line; ``epoch``: the epochs completed; ``done``: those of them trained in ``elapsed``
    seconds (default ``epoch``; fewer for a resumed fit), whose mean pace gives the time left."""
    done = epoch if done is None else done
    known = max_epochs is not None and max_epochs > 0
    total = f"/{max_epochs}" if known else ""
    shown = "".join(f" {k} {v:.4g}" for k, v in figures.items())
    left = ""
    if known and done > 0 and max_epochs is not None and max_epochs > epoch:
        left = f", ~{_duration(elapsed / done * (max_epochs - epoch))} left"
    return f"epoch {epoch}{total} step {step}{shown} ({_duration(elapsed)}{left})"


class ProgressBar(TQDMProgressBar):
    """Lightning's TQDM progress bar with the figures of :func:`progress_figures` in place of ``v_num``."""

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        shown = {k: v for k, v in super().get_metrics(trainer, pl_module).items() if k != "v_num"}
        grad = metric_keys.ALIGN_GRAD
        return {**shown, **{f"align/{k[len(grad):]}" if k.startswith(grad) else k: f"{v:.4g}"
                            for k, v in progress_figures(trainer).items()}}


class ProgressLog(L.Callback):
    """One progress line (:func:`progress_line`, INFO on this module's logger) at the end of the first and
    the last epoch and of any epoch ``every_s`` seconds or more after the previous line, while the trainer
    has no progress bar. Global rank 0 only.

    Args:
        every_s: Seconds between lines (0: every epoch).
    """

    def __init__(self, every_s: float = 30.0) -> None:
        super().__init__()
        if not isinstance(every_s, (int, float)) or not math.isfinite(every_s) or every_s < 0:
            raise ValueError(f"every_s={every_s!r}: give seconds >= 0 (0: a line every epoch)")
        self.every_s = float(every_s)
        self._start = time.monotonic()
        self._last: float | None = None
        self._epochs_before = 0  # epochs done before this process (a resumed fit's pace counts its own)
        self.alignment: dict[str, float] = {}  # the main alignment of the last training row logged

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start, self._last, self._epochs_before = time.monotonic(), None, trainer.current_epoch

    def _keep_alignment(self, trainer: L.Trainer) -> None:
        # The monitors flush their training rows in their own hook, before this one (added after them);
        # the held-out row that follows would hide them.
        for callback in trainer.callbacks:  # type: ignore[attr-defined]
            last = getattr(callback, "last_metrics", None)
            found = _main_key(last) if isinstance(last, dict) else {}
            if found and next(iter(found)).startswith(metric_keys.ALIGN_GRAD):
                self.alignment = found
                return

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._keep_alignment(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._keep_alignment(trainer)

    # The module logs train/* in its own on_train_epoch_end, which Lightning calls after the callbacks'
    # one: the next epoch's start (and the training's end) sees them.
    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch > self._epochs_before:
            self._line(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._line(trainer)

    def _line(self, trainer: L.Trainer) -> None:
        if not trainer.is_global_zero or trainer.progress_bar_callback is not None:
            return
        now, epoch = time.monotonic(), trainer.current_epoch
        last = trainer.max_epochs is not None and epoch >= trainer.max_epochs
        if self._last is None or last or now - self._last >= self.every_s:
            self._last = now
            log.info("%s", progress_line(epoch, trainer.max_epochs, trainer.global_step,
                                         progress_figures(trainer), now - self._start,
                                         done=epoch - self._epochs_before))
