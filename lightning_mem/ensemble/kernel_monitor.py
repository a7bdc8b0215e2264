"""``EnsembleKernelMonitor``: :class:`~lightning_mem.alignment.kernel_monitor.KernelMonitor`'s keys and values
for every member of an ensemble (a :class:`~lightning_mem.ensemble.stacked.StackedMLP`), closed form per
member.

The held-out probe is the first ``probe_size`` examples of the shared validation batches; each
member's Θ, Θ₀, pattern change and class stiffness come from its own slice of the stacked weights,
with the same functions as a single run (:func:`~lightning_mem.alignment.kernel_monitor.probe_measures`), and
are logged through ``EnsembleModule.log_members`` (one host transfer for all members) at the step of
that epoch's ``val/acc``; training-batch measures (``train_every_n_steps``) on each member's own batch.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import Tensor

from lightning_mem.alignment import kernels
from lightning_mem.alignment.kernel_monitor import (
    PATTERN_MODULES,
    KernelMonitor,
    pattern_name,
    probe_measures,
)
from lightning_mem.alignment.probe import ProbeCollector
from lightning_mem.ensemble.module import EnsembleModule
from lightning_mem.ensemble.stacked import StackedMLP

PARAMS = ("hidden.weight", "out.weight")


class EnsembleKernelMonitor(L.Callback):
    """Per-member kernel and laziness measures of an :class:`~lightning_mem.ensemble.module.EnsembleModule`.

    Args: as :class:`~lightning_mem.alignment.kernel_monitor.KernelMonitor` (``jacobian_probe_size`` is
        unused: the stacked MLP has the closed form); :meth:`from_monitor` copies a configured one.
    """

    def __init__(self, probe_size: int = 256, train_every_n_steps: int | None = None, stiffness: bool = True,
                 stiffness_matrix: bool = True) -> None:
        super().__init__()
        self.spec = KernelMonitor(probe_size, train_every_n_steps, stiffness, stiffness_matrix)  # checks
        self.probe_size, self.train_every_n_steps = probe_size, train_every_n_steps
        self.stiffness, self.stiffness_matrix = stiffness, stiffness_matrix
        self._init: dict[str, Tensor] | None = None  # (K, ...) weights of init
        self._previous: Tensor | None = None  # (K, B, B)
        self._collector = ProbeCollector(probe_size)
        self._theta0: Tensor | None = None

    @classmethod
    def from_monitor(cls, monitor: KernelMonitor) -> EnsembleKernelMonitor:
        return cls(monitor.probe_size, monitor.train_every_n_steps, monitor.stiffness,
                   monitor.stiffness_matrix)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if not isinstance(pl_module, EnsembleModule) or not isinstance(pl_module.net, StackedMLP):
            raise TypeError("EnsembleKernelMonitor needs an EnsembleModule with a StackedMLP; "
                            "use KernelMonitor for single runs")

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        net = pl_module.net
        if self._init is None and isinstance(net, StackedMLP):
            self._init = {n: p.detach().clone() for n, p in net.named_parameters()}

    def state_dict(self) -> dict[str, Any]:
        return {"init": self._init, "previous": self._previous}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._init, self._previous = state_dict.get("init"), state_dict.get("previous")

    @staticmethod
    def _logging(pl_module: L.LightningModule) -> bool:
        return any(getattr(pl_module, "member_loggers", []))

    def _measure(self, module: EnsembleModule, x: Tensor, y: Tensor, probe: bool) -> tuple[list[str], Tensor]:
        """x (K, B, ...) and y (K, B): each member's examples; values (K, n)."""
        net = module.net
        assert isinstance(net, StackedMLP) and self._init is not None
        params = {n: p.detach() for n, p in net.named_parameters()}
        w1, w2 = params["hidden.weight"], params["out.weight"]
        i1, i2 = self._init["hidden.weight"].to(w1), self._init["out.weight"].to(w2)
        flat = x.flatten(2)
        K, C = w1.shape[0], net.num_classes
        name = pattern_name(net.act) if isinstance(net.act, PATTERN_MODULES) else None
        thetas = torch.stack([kernels.mlp_ntk(flat[k], w1[k], w2[k], net.act) for k in range(K)])
        if probe and self._theta0 is None:
            self._theta0 = torch.stack([kernels.mlp_ntk(flat[k], i1[k], i2[k], net.act) for k in range(K)])
        theta0 = self._theta0 if probe else torch.stack(
            [kernels.mlp_ntk(flat[k], i1[k], i2[k], net.act) for k in range(K)])
        assert theta0 is not None
        grams: list[Tensor | None] = [None] * K
        if probe and self.stiffness:
            with torch.enable_grad():
                logits = (net.act(flat @ w1.mT) @ w2.mT).detach().requires_grad_()  # (K, B, k)
                (g,) = torch.autograd.grad(module.member_losses(logits, y).sum(), logits)  # ∂ℓ_i/∂z_i
            grams = [kernels.mlp_loss_gradient_gram(flat[k], w1[k], w2[k], net.act, g[k]) for k in range(K)]
        previous = self._previous if probe and self._previous is not None else None
        if previous is not None and previous.shape != thetas.shape:
            previous = None
        rows: list[Tensor] = []
        keys: list[str] = []
        for k in range(K):
            pattern = None
            if name is not None:
                with torch.no_grad():
                    pattern = kernels.pattern_change(flat[k] @ i1[k].T, flat[k] @ w1[k].T, name)
            weights = [(n, self._init[n][k].to(params[n]), params[n][k]) for n in PARAMS] if probe else []
            keys, values = probe_measures(
                thetas[k], theta0[k], None if previous is None else previous[k].to(thetas), y[k], C, weights,
                pattern, grams[k], self.stiffness_matrix, prefix="" if probe else "train/")
            rows.append(torch.stack(values))
        if probe:
            self._previous = thetas
        return keys, torch.stack(rows)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        n = self.train_every_n_steps
        if n is None or trainer.global_step % n or not self._logging(pl_module):
            return
        assert isinstance(pl_module, EnsembleModule)
        x, y = batch[0][:, : self.probe_size], batch[1][:, : self.probe_size]
        with torch.no_grad():
            keys, values = self._measure(pl_module, x, y, probe=False)
        pl_module.log_members(keys, values, trainer.global_step, trainer.current_epoch)

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking and self._logging(pl_module):
            self._collector.start()

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                                batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._collector.add(batch, dataloader_idx)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        probe = self._collector.finish()
        if probe is None or trainer.sanity_checking or not self._logging(pl_module):
            return
        assert isinstance(pl_module, EnsembleModule)
        x, y = probe
        K = pl_module.num_members
        with torch.inference_mode(False), torch.no_grad():
            keys, values = self._measure(pl_module, x.expand(K, *x.shape), y.expand(K, -1), probe=True)
        # The step of this epoch's val/acc (the logging contract), as EnsembleModule logs it.
        pl_module.log_members(keys, values, max(trainer.global_step - 1, 0), trainer.current_epoch)
