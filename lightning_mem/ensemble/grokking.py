"""Grokking metrics per member of an ensemble: :class:`~lightning_mem.callbacks.GrokkingMonitor`'s, K times.

:class:`EnsembleGrokkingMonitor` keeps one ``GrokkingMonitor`` per member as its record (the same
thresholds, the same ``fit_step`` / ``val_step`` / summary rules) and feeds it what the member's single run
would: ‖θ_k‖₂ over member k's slices of every parameter at each train epoch end, and the member's
``train/acc`` and ``val/acc`` as :class:`~lightning_mem.ensemble.module.EnsembleModule` logs them. It logs
``weight_norm`` (and ``grok/fit_step``, ``grok/val_step`` once known) in each member's train row, as the
single run does (``EnsembleModule.add_epoch_metrics``: the epoch end's one host transfer) and writes
each member's ``grokking.json`` into its run folder at the fit's end.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch

from lightning_mem import metric_keys, rundir
from lightning_mem.ensemble.module import EnsembleModule
from lightning_mem.training.grokking import GROKKING_JSON, GrokkingMonitor


def member_weight_norms(module: torch.nn.Module) -> torch.Tensor:
    """(K,) ‖θ_k‖₂ of every member: the parameters' slices along the member axis, in float64."""
    squares = [p.detach().double().pow(2).flatten(1).sum(1) for p in module.parameters()]
    return torch.stack(squares).sum(0).sqrt()


class EnsembleGrokkingMonitor(L.Callback):
    """``GrokkingMonitor`` for every member of an ``EnsembleModule``; see the module docstring.

    Args:
        train_threshold, val_threshold, plateau_tol: As ``GrokkingMonitor``'s.
        dirpaths: Member k's run folder for its ``grokking.json`` (None: not written, e.g. a member that
            ended before a resume).
    """

    def __init__(self, train_threshold: float = 0.99, val_threshold: float | None = None,
                 plateau_tol: float = 0.01, dirpaths: Sequence[str | Path | None] = ()) -> None:
        GrokkingMonitor(train_threshold, val_threshold, plateau_tol)  # its checks
        self.train_threshold, self.val_threshold = train_threshold, val_threshold
        self.plateau_tol = plateau_tol
        self.dirpaths = [None if d is None else Path(d) for d in dirpaths]
        self.members: list[GrokkingMonitor] = []
        self._pending: int | None = None

    @classmethod
    def from_monitor(cls, monitor: GrokkingMonitor, dirpaths: Sequence[str | Path | None]
                     ) -> EnsembleGrokkingMonitor:
        return cls(monitor.train_threshold, monitor.val_threshold, monitor.plateau_tol, dirpaths)

    def _records(self, k: int) -> list[GrokkingMonitor]:
        while len(self.members) < k:
            self.members.append(GrokkingMonitor(self.train_threshold, self.val_threshold, self.plateau_tol))
        return self.members

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if not isinstance(pl_module, EnsembleModule):
            raise TypeError("EnsembleGrokkingMonitor needs an EnsembleModule; use GrokkingMonitor for single "
                            "runs")
        self._records(pl_module.num_members)

    def state_dict(self) -> dict[str, Any]:
        return {"members": [m.state_dict() for m in self.members]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = state_dict["members"]
        for record, state in zip(self._records(len(saved)), saved, strict=False):
            record.load_state_dict(state)

    def _alive(self, pl_module: EnsembleModule) -> list[bool]:
        return [bool(a) for a in pl_module.alive.tolist()]

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        assert isinstance(pl_module, EnsembleModule)
        step = trainer.global_step
        norms = member_weight_norms(pl_module.net)
        alive = self._alive(pl_module)
        fit = [m.fit_step() for m in self.members]
        val = [m.val_step() if self.val_threshold is not None else None for m in self.members]
        known = [[math.nan if s is None else float(s) for s in steps] for steps in (fit, val)]
        values = torch.cat([norms[:, None], torch.tensor(known).T.to(norms)], 1)  # (K, 3)
        for k, norm in enumerate(norms.tolist()):
            if alive[k]:
                self.members[k].norms.append((step, norm))
        # in the member's train row, as the single run's self.log at the epoch end
        keys = [metric_keys.WEIGHT_NORM, metric_keys.GROK_FIT_STEP, metric_keys.GROK_VAL_STEP]
        pl_module.add_epoch_metrics(keys, values)
        self._pending = step  # the module logs this epoch's train/acc after the callbacks' hook

    def _flush(self, pl_module: L.LightningModule) -> None:
        assert isinstance(pl_module, EnsembleModule)
        if self._pending is not None:
            for k, alive in enumerate(self._alive(pl_module)):
                acc = pl_module.last_metrics[k].get(metric_keys.TRAIN_ACC)
                if alive and acc is not None:
                    self.members[k].train_acc.append((self._pending, float(acc)))
        self._pending = None

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._flush(pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._flush(pl_module)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        assert isinstance(pl_module, EnsembleModule)
        for k, alive in enumerate(self._alive(pl_module)):
            acc = pl_module.last_metrics[k].get(metric_keys.VAL_ACC)
            if alive and acc is not None:
                self.members[k].val_acc.append((trainer.global_step, float(acc)))

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for folder, record in zip(self.dirpaths, self.members, strict=False):
            if folder is not None:
                rundir.atomic_write_json(folder / GROKKING_JSON, record.summary())  # whole or absent
