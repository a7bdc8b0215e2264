"""The Lightning system: a network, a per-example loss, plain SGD and accuracy metrics."""

from __future__ import annotations

import inspect
import math
import warnings
from typing import Any, Literal, get_args

import lightning as L
import torch
from torch import Tensor, nn
from torchmetrics import MeanMetric, Metric

from lightning_mem.checks import check_choice
from lightning_mem.losses import LOSSES

LossName = Literal["cross_entropy", "hinge", "squared"]


class MaskedMean(Metric):
    """Σ value·mask / Σ mask over an epoch, with sum states on the device (no host sync per update; summed
    across DDP ranks). ``MeanMetric(nan_strategy="disable")`` silently ignores its ``weight`` argument
    (torchmetrics 1.9: the weights are replaced by ones), so the clean/noisy accuracies need this."""

    full_state_update = False
    total: Tensor
    count: Tensor

    def __init__(self) -> None:
        super().__init__()
        self.add_state("total", default=torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0.0), dist_reduce_fx="sum")

    def update(self, value: Tensor, mask: Tensor) -> None:
        """``value`` (B,) and ``mask`` (B,) of 0/1 (or bool)."""
        weight = mask.to(value.dtype)
        self.total += (value * weight).sum()
        self.count += weight.sum()

    def compute(self) -> Tensor:
        return self.total / self.count  # NaN for an epoch without such examples


def _mean() -> MeanMetric:
    # nan_strategy="disable": the default ("warn") tests every update for NaN with `if nans.any()`,
    # a host sync per update, and drops NaN values from the mean, which would hide a diverging loss;
    # DivergenceGuard stops the run on a non-finite loss instead.
    return MeanMetric(nan_strategy="disable")


class MemorizationModule(L.LightningModule):
    """Trains ``net`` with plain SGD on a per-example loss and logs the paper's metrics.

    Logged every epoch: ``train/loss``, ``train/acc``, ``val/loss``, ``val/acc`` and, when the
    training labels are corrupted, ``train/acc_clean`` and ``train/acc_noisy`` (accuracy against
    the labels the network was trained on, on the examples whose label was kept / corrupted).

    Args:
        net: Any ``nn.Module`` mapping a batch of images to logits (B, k).
        loss: Per-example loss: cross_entropy, hinge (multi-class hinge) or squared.
        loss_scale: The loss-side knob of Section 4: the softmax temperature T for cross_entropy,
            the margin Δ for hinge, the target scale s for squared. 1 is the standard loss.
        loss_scale_with_init: Multiply ``loss_scale`` by the net's ``init_std`` σ (the paper's
            remedy for 1-homogeneous nets: scaling W1 by c scales the logits by c, so the loss
            knob follows σ). Lets one sweep over σ alone; needs a net with a numeric ``init_std``.
        lr: SGD learning rate (0.01 in the paper).
        momentum: SGD momentum (0 in the paper).
        weight_decay: SGD weight decay (0 in the paper).
    """

    def __init__(
        self,
        net: nn.Module,
        loss: LossName = "cross_entropy",
        loss_scale: float = 1.0,
        loss_scale_with_init: bool = False,
        lr: float = 0.01,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__()
        check_choice("loss", loss, get_args(LossName))
        for name, value in (("loss_scale", loss_scale), ("lr", lr)):
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(f"{name}={value!r} must be a positive finite number")
        for name, value in (("momentum", momentum), ("weight_decay", weight_decay)):
            if not (value >= 0 and math.isfinite(value)):
                raise ValueError(f"{name}={value!r} must be a finite number >= 0")
        self._save_hyperparameters(net)
        self.net = net
        self._loss = LOSSES[loss]
        self.loss_scale = loss_scale
        if loss_scale_with_init:
            init_std = getattr(net, "init_std", None)
            if not isinstance(init_std, (int, float)):
                raise ValueError(
                    f"loss_scale_with_init=True needs a net with a numeric init_std; "
                    f"{type(net).__name__} has init_std={init_std!r}"
                )
            self.loss_scale = loss_scale * float(init_std)
        self.lr, self.momentum, self.weight_decay = lr, momentum, weight_decay
        # Accuracy is the mean of per-example correctness (micro accuracy); MeanMetric keeps the
        # running sums on the device, so logging them does not sync the host every step.
        self.train_loss, self.train_acc = _mean(), _mean()
        self.train_acc_clean, self.train_acc_noisy = MaskedMean(), MaskedMean()
        self.val_loss, self.val_acc = _mean(), _mean()
        self.test_loss, self.test_acc = _mean(), _mean()
        self._label_noise = False

    def _save_hyperparameters(self, net: nn.Module) -> None:
        """Record the config in ``hparams`` (and so in every checkpoint).

        Under LightningCLI, ``save_hyperparameters`` stores what was parsed: ``net`` as its
        ``class_path`` and ``init_args``, so ``validate``/``test --ckpt_path`` and
        ``MemorizationModule.load_from_checkpoint(path)`` rebuild the network. Built by hand (a notebook),
        ``net`` is a module object: it is left out (its weights are in the state dict; pass ``net=`` to
        ``load_from_checkpoint``).
        """
        frame = inspect.currentframe()
        caller = frame.f_back if frame is not None else None  # __init__'s frame: its arguments
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*is an instance of `nn.Module`")
            self.save_hyperparameters(frame=caller)
        if isinstance(self.hparams.get("net"), nn.Module):
            self.save_hyperparameters(ignore=["net"], frame=caller)  # drops it, re-snapshots hparams_initial

    def loss_fn(self, logits: Tensor, labels: Tensor) -> Tensor:
        """Per-example loss (B,) with this module's loss and scale."""
        return self._loss(logits, labels, self.loss_scale)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def on_fit_start(self) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        self._label_noise = float(getattr(datamodule, "label_noise", 0.0)) > 0

    def training_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> Tensor:
        x, y = batch[0], batch[1]
        logits = self.net(x)
        per_example = self.loss_fn(logits, y)
        loss = per_example.mean()
        correct = (logits.detach().argmax(dim=1) == y).float()
        self.train_loss.update(per_example.detach())
        self.train_acc.update(correct)
        if self._label_noise and len(batch) > 2:
            noisy = batch[2]
            # Masking (not indexing) keeps one update per step and no host sync for empty subsets.
            self.train_acc_clean.update(correct, ~noisy)
            self.train_acc_noisy.update(correct, noisy)
        return loss

    def on_train_epoch_end(self) -> None:
        metrics: dict[str, Metric] = {"train/loss": self.train_loss, "train/acc": self.train_acc}
        if self._label_noise:
            metrics |= {"train/acc_clean": self.train_acc_clean, "train/acc_noisy": self.train_acc_noisy}
        for key, metric in metrics.items():
            self.log(key, metric.compute(), sync_dist=True)
            metric.reset()

    def _eval_step(self, batch: tuple[Tensor, ...], loss_metric: MeanMetric, acc_metric: MeanMetric) -> None:
        x, y = batch[0], batch[1]
        logits = self.net(x)
        loss_metric.update(self.loss_fn(logits, y))
        acc_metric.update((logits.argmax(dim=1) == y).float())

    def validation_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> None:
        self._eval_step(batch, self.val_loss, self.val_acc)

    def on_validation_epoch_end(self) -> None:
        self._log_eval("val", self.val_loss, self.val_acc)

    def test_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> None:
        self._eval_step(batch, self.test_loss, self.test_acc)

    def on_test_epoch_end(self) -> None:
        self._log_eval("test", self.test_loss, self.test_acc)

    def _log_eval(self, stage: str, loss_metric: MeanMetric, acc_metric: MeanMetric) -> None:
        self.log(f"{stage}/loss", loss_metric.compute(), sync_dist=True)
        self.log(f"{stage}/acc", acc_metric.compute(), sync_dist=True)
        loss_metric.reset()
        acc_metric.reset()

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(
            self.net.parameters(), lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay
        )
