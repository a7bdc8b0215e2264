"""Grokking metrics: when a run fits its training set, when it generalizes, and its weight norm.

:class:`GrokkingMonitor` is a small callback for single runs (``lightning-mem fit``). Each train epoch
it logs ``weight_norm`` (‖θ‖₂ over every parameter of the net, Omnigrok's x-axis quantity), and it keeps
the global step at which ``train/acc`` first reaches ``train_threshold`` and at which ``val/acc`` first
reaches ``val_threshold`` (or, with none given, its plateau: the first step within ``plateau_tol`` of
the best held-out accuracy of the run). Once known, ``grok/fit_step`` and ``grok/val_step`` are logged
every epoch; at the end of the fit the summary (:meth:`GrokkingMonitor.summary`) is written to
``grokking.json`` in the trainer's log folder.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import lightning as L
import torch

from lightning_mem import metric_keys, rundir


def weight_norm(module: torch.nn.Module) -> float:
    """‖θ‖₂: the L2 norm of all parameters of ``module`` taken together."""
    with torch.no_grad():
        return math.sqrt(sum(float(p.detach().double().pow(2).sum()) for p in module.parameters()))


def first_step(points: list[tuple[int, float]], threshold: float) -> int | None:
    """The first step whose value is >= ``threshold``, or None."""
    return next((step for step, value in points if value >= threshold), None)


GROKKING_JSON = "grokking.json"  # the run's summary, in its run folder


class GrokkingMonitor(L.Callback):
    """Logs ``weight_norm``, ``grok/fit_step`` and ``grok/val_step``; writes ``grokking.json`` at fit end.

    Args:
        train_threshold: Train accuracy that counts as fitted (0.99).
        val_threshold: Held-out accuracy that counts as generalized; None uses the plateau.
        plateau_tol: With no ``val_threshold``: the plateau starts at the first step within this of the
            run's best held-out accuracy.
    """

    def __init__(self, train_threshold: float = 0.99, val_threshold: float | None = None,
                 plateau_tol: float = 0.01) -> None:
        for name, value in (("train_threshold", train_threshold), ("plateau_tol", plateau_tol),
                            ("val_threshold", val_threshold)):
            if value is not None and not (0.0 <= value <= 1.0):
                raise ValueError(f"{name}={value!r} must be a number in [0, 1]")
        self.train_threshold, self.val_threshold = train_threshold, val_threshold
        self.plateau_tol = plateau_tol
        self.train_acc: list[tuple[int, float]] = []
        self.val_acc: list[tuple[int, float]] = []
        self.norms: list[tuple[int, float]] = []
        self._pending: int | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"train_acc": self.train_acc, "val_acc": self.val_acc, "norms": self.norms}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.train_acc = [(int(s), float(v)) for s, v in state_dict["train_acc"]]
        self.val_acc = [(int(s), float(v)) for s, v in state_dict["val_acc"]]
        self.norms = [(int(s), float(v)) for s, v in state_dict["norms"]]

    def fit_step(self) -> int | None:
        return first_step(self.train_acc, self.train_threshold)

    def val_step(self) -> int | None:
        if self.val_threshold is not None:
            return first_step(self.val_acc, self.val_threshold)
        if not self.val_acc:
            return None
        best = max(value for _, value in self.val_acc)
        return first_step(self.val_acc, best - self.plateau_tol)

    def summary(self) -> dict[str, Any]:
        fit, val = self.fit_step(), self.val_step()
        return {
            "fit_step": fit, "val_step": val,
            "delay_steps": val - fit if fit is not None and val is not None else None,
            "train_threshold": self.train_threshold, "val_threshold": self.val_threshold,
            "best_val_acc": max((v for _, v in self.val_acc), default=None),
            "weight_norm_first": self.norms[0][1] if self.norms else None,
            "weight_norm_last": self.norms[-1][1] if self.norms else None,
        }

    def _log_known(self, pl_module: L.LightningModule) -> None:
        fit = self.fit_step()
        if fit is not None:
            pl_module.log(metric_keys.GROK_FIT_STEP, float(fit))
        if self.val_threshold is not None and self.val_step() is not None:
            pl_module.log(metric_keys.GROK_VAL_STEP, float(self.val_step()))  # type: ignore[arg-type]

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        step = trainer.global_step
        net = getattr(pl_module, "net", pl_module)
        norm = weight_norm(net)
        self.norms.append((step, norm))
        pl_module.log(metric_keys.WEIGHT_NORM, norm)
        self._log_known(pl_module)
        self._pending = step  # the module logs this epoch's train/acc after the callbacks' hook

    def _flush(self, trainer: L.Trainer) -> None:
        acc = trainer.callback_metrics.get(metric_keys.TRAIN_ACC)
        if self._pending is not None and acc is not None:
            self.train_acc.append((self._pending, float(acc)))
        self._pending = None

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._flush(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._flush(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # After the module's on_validation_epoch_end, which logs this epoch's val/acc.
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        acc = trainer.callback_metrics.get(metric_keys.VAL_ACC)
        if acc is not None:
            self.val_acc.append((trainer.global_step, float(acc)))

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        folder = trainer.log_dir or trainer.default_root_dir
        if trainer.is_global_zero and folder:
            rundir.atomic_write_json(Path(folder) / GROKKING_JSON, self.summary())  # whole or absent
