"""The Lightning system: a network, a per-example loss, plain SGD and accuracy metrics."""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Callable
from typing import Any, Literal, get_args

import lightning as L
import torch
from torch import Tensor, nn
from torchmetrics import MeanMetric, Metric

from lightning_mem import metric_keys
from lightning_mem.checks import check_choice
from lightning_mem.data.loader import IndexBlock, TensorBatchLoader
from lightning_mem.training.fused import (
    Backend,
    FusedSGD,
    accumulate,
    check_data_device,
    count_sgd_steps,
    epoch_means,
    forward_loss,
    plan_epoch,
    step_schedule,
    trainer_problems,
    unsupported_nets,
)
from lightning_mem.training.losses import LOSSES

LossName = Literal["cross_entropy", "hinge", "squared"]
FusedBackend = Literal["auto", "graph", "compile", "eager"]
OptimizerName = Literal["sgd", "adam", "adamw"]


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
        momentum: SGD momentum (0 in the paper); SGD only.
        weight_decay: Weight decay (0 in the paper): L2 added to the gradient for ``sgd`` and ``adam``,
            decoupled for ``adamw`` (Omnigrok: 0.01).
        optimizer: ``sgd`` (the paper), ``adam`` or ``adamw``: torch's own ``SGD``, ``Adam``, ``AdamW``.
        betas: Adam's (β1, β2); ``adam``/``adamw`` only.
        steps_per_call: SGD steps per Lightning step (1: the ordinary training step). Above 1 the fused
            step of :mod:`lightning_mem.training.fused` runs up to this many consecutive batches per
            Lightning step
            (manual optimization; ``global_step`` and the logged ``step`` still count SGD steps; measuring
            steps of ``AlignmentMonitor`` run alone through the ordinary hooks). Needs
            ``ImageClassificationData``, one device, FP32, plain SGD (no momentum) and a net without
            BatchNorm or dropout.
        fused_backend: How the fused step runs: auto (a CUDA graph on a GPU, eager on a CPU), graph
            (on a CPU: the graph's bookkeeping emulated), compile (``torch.compile(mode="reduce-overhead")``)
            or eager. Ignored when ``steps_per_call`` is 1.
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
        steps_per_call: int = 1,
        fused_backend: FusedBackend = "auto",
        optimizer: OptimizerName = "sgd",
        betas: tuple[float, float] = (0.9, 0.999),
    ) -> None:
        super().__init__()
        check_choice("loss", loss, get_args(LossName))
        check_choice("optimizer", optimizer, get_args(OptimizerName))
        check_optimizer(optimizer, momentum, betas, steps_per_call)
        check_choice("fused_backend", fused_backend, get_args(FusedBackend))
        if isinstance(steps_per_call, bool) or not isinstance(steps_per_call, int) or steps_per_call < 1:
            raise ValueError(f"steps_per_call={steps_per_call!r} must be an integer >= 1")
        if steps_per_call > 1 and momentum:
            raise ValueError(f"steps_per_call={steps_per_call} runs plain SGD only, not momentum={momentum}: "
                             "set momentum 0 or steps_per_call 1")
        if steps_per_call > 1 and unsupported_nets(net):
            raise ValueError(f"steps_per_call={steps_per_call} cannot run {type(net).__name__}: it has "
                             f"{', '.join(unsupported_nets(net))} (batch statistics or random masks per "
                             "step); use steps_per_call 1")
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
        self.optimizer_name, self.betas = optimizer, (float(betas[0]), float(betas[1]))
        # Accuracy is the mean of per-example correctness (micro accuracy); MeanMetric keeps the
        # running sums on the device, so logging them does not sync the host every step.
        self.train_loss, self.train_acc = _mean(), _mean()
        self.train_acc_clean, self.train_acc_noisy = MaskedMean(), MaskedMean()
        self.val_loss, self.val_acc = _mean(), _mean()
        self.test_loss, self.test_acc = _mean(), _mean()
        self._label_noise = False
        self.steps_per_call, self.fused_backend = steps_per_call, fused_backend
        self.automatic_optimization = steps_per_call == 1
        self._fused: FusedSGD | None = None

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

    def training_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> Tensor | dict[str, Tensor]:
        if not self.automatic_optimization:
            return self._fused_training_step(batch)
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
        if self._fused is not None:
            for key, value in epoch_means(self._fused.sums, self._label_noise).items():
                self.log(key, value, sync_dist=True)
            self._fused.sums.zero_()
            return
        metrics: dict[str, Metric] = {metric_keys.TRAIN_LOSS: self.train_loss,
                                      metric_keys.TRAIN_ACC: self.train_acc}
        if self._label_noise:
            metrics |= {metric_keys.TRAIN_ACC_CLEAN: self.train_acc_clean,
                        metric_keys.TRAIN_ACC_NOISY: self.train_acc_noisy}
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

    # ------------------------------------------------------------------ the fused step (steps_per_call > 1)

    @property
    def train_block_plan(self) -> Callable[[list[int]], list[tuple[int, bool]]] | None:
        """How ``ImageClassificationData``'s train loader groups an epoch's batches (None: one per step)."""
        return None if self.steps_per_call == 1 else self._plan_blocks

    def _plan_blocks(self, batch_sizes: list[int]) -> list[tuple[int, bool]]:
        trainer = self.trainer
        measure, bounds = step_schedule(trainer)
        return plan_epoch(trainer.global_step, batch_sizes, self.steps_per_call, measure, bounds,
                          trainer.max_steps)

    def check_trainer(self, trainer: L.Trainer) -> None:
        """Raise ``ValueError`` naming the trainer settings ``steps_per_call > 1`` cannot run with."""
        problems = trainer_problems(trainer) if self.steps_per_call > 1 else []
        if problems:
            raise ValueError(f"steps_per_call={self.steps_per_call} cannot run with {'; '.join(problems)}; "
                             "change those settings or use steps_per_call 1")

    def configure_callbacks(self) -> list[L.Callback]:
        # The earliest hook that sees the trainer: the fused step's checks come before Lightning's own
        # (which would refuse accumulation or clipping for "manual optimization", a name users never chose).
        if self.steps_per_call > 1 and self.trainer.state.fn == "fit":
            self.check_trainer(self.trainer)
        return []

    def on_train_start(self) -> None:
        if self.automatic_optimization:
            return
        loader = self.trainer.train_dataloader
        if not isinstance(loader, TensorBatchLoader) or loader.block_plan is None:
            raise ValueError(f"steps_per_call={self.steps_per_call} needs the train loader of "
                             "ImageClassificationData (batches gathered by index on the device); got "
                             f"{type(loader).__name__}")
        optimizer = self.optimizers()
        assert not isinstance(optimizer, list)
        raw = optimizer.optimizer  # the torch SGD inside Lightning's wrapper: the fused step calls it
        device = next(self.net.parameters()).device
        check_data_device(loader.tensors, device)  # before any step, not at the first group
        backend: Backend = ("graph" if device.type == "cuda" else "eager") if self.fused_backend == "auto" \
            else self.fused_backend
        self._fused = FusedSGD(self.net, self.loss_fn, raw, self.steps_per_call, self._label_noise, backend)

    def on_train_end(self) -> None:
        self._fused = None  # its buffers and graphs hold device memory; a later fit makes new ones

    def _fused_training_step(self, batch: Any) -> dict[str, Tensor]:
        """One group of SGD steps: an :class:`IndexBlock` through the fused step, or one ordinary batch (a
        measuring step) through Lightning's hooks (``manual_backward`` fires ``on_after_backward``, the
        optimizer step ``on_before_optimizer_step``). ``global_step`` moves by one ``optimizer.step()`` per
        SGD step; the block's updates are already done, so those calls find no gradient and change nothing."""
        fused = self._fused
        assert fused is not None, "on_train_start builds the fused step"
        optimizer = self.optimizers()
        assert not isinstance(optimizer, list)
        if isinstance(batch, IndexBlock):
            losses = fused.run(batch)
            for _ in range(len(losses)):
                optimizer.step()
        else:
            x, y = batch[0], batch[1]
            noisy = batch[2] if self._label_noise and len(batch) > 2 else None
            logits, per_example, loss = forward_loss(self.net, self.loss_fn, x, y)
            accumulate(fused.sums, logits, per_example, y, noisy)
            optimizer.zero_grad()
            self.manual_backward(loss)
            optimizer.step()
            optimizer.zero_grad()
            losses = loss.detach().view(1)
        count_sgd_steps(self.trainer, len(losses))
        return {"loss": losses[-1], "step_losses": losses}

    def configure_optimizers(self) -> Any:
        if self.optimizer_name == "adam":
            return torch.optim.Adam(self.net.parameters(), lr=self.lr, betas=self.betas,
                                    weight_decay=self.weight_decay)
        if self.optimizer_name == "adamw":
            return torch.optim.AdamW(self.net.parameters(), lr=self.lr, betas=self.betas,
                                     weight_decay=self.weight_decay)
        return torch.optim.SGD(
            self.net.parameters(), lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay
        )


def check_optimizer(optimizer: str, momentum: float, betas: Any, steps_per_call: int) -> None:
    """Refuse the optimizer settings that do not go together, naming the values."""
    if optimizer != "sgd" and momentum:
        raise ValueError(f"momentum={momentum} is SGD's; optimizer={optimizer!r} has betas instead: set "
                         "momentum 0 or optimizer sgd")
    if optimizer != "sgd" and steps_per_call > 1:
        raise ValueError(f"steps_per_call={steps_per_call} runs plain SGD only, not optimizer={optimizer!r} "
                         "(the fused step captures SGD's update, not Adam's per-parameter moments): set "
                         "steps_per_call 1 or optimizer sgd")
    ok = isinstance(betas, (tuple, list)) and len(betas) == 2 and all(
        isinstance(b, (int, float)) and not isinstance(b, bool) and 0.0 <= b < 1.0 for b in betas)
    if not ok:
        raise ValueError(f"betas={betas!r} must be two numbers in [0, 1)")
