"""``EnsembleModule``: K single runs of the paper's MLP trained as one Lightning system.

Each member behaves as its own ``MemorizationModule`` run with the ``DivergenceGuard``: the same
per-example loss and metrics, plain SGD with its lr, and it stops alone when it diverges. Nothing is
logged through ``self.log``: every member has its own list of Lightning loggers
(``member_loggers[k]``, e.g. a ``CSVLogger`` in its run folder) and :meth:`EnsembleModule.log_members`
writes each member's row there with its ``epoch`` and step, one host transfer for all members.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any, get_args

import lightning as L
import torch
from lightning.pytorch.loggers import Logger
from torch import Tensor

from lightning_mem import metric_keys
from lightning_mem.checks import check_choice
from lightning_mem.ensemble.optim import MemberOptimizer, MemberOptimizerName
from lightning_mem.ensemble.stacked import MemberSGD, MemberSpec, StackedMLP
from lightning_mem.training.guard import divergence_message
from lightning_mem.training.losses import LOSSES
from lightning_mem.training.module import LossName


class EnsembleModule(L.LightningModule):
    """Trains the K members of a :class:`~lightning_mem.ensemble.stacked.StackedMLP` as K independent runs.

    Per member k, with the definitions of ``MemorizationModule``: the loss is the mean over k's own
    batch of the per-example loss with k's loss scale, the step is plain SGD with k's lr, and the
    keys ``train/loss``, ``train/acc`` (with label noise ``train/acc_clean``, ``train/acc_noisy``),
    ``val/loss``, ``val/acc`` are logged at each epoch end to ``member_loggers[k]`` at the step
    Lightning uses for epoch-end rows (the epoch's last step), each row with its ``epoch``.

    Divergence, per member and without a host sync per step: before each update, a member whose
    loss or gradient (its sum per member) is non-finite is marked dead, its gradient zeroed, so its
    weights stay at their last finite values and never change again; the others go on bitwise as
    if it were not there. The step, epoch and loss are kept in buffers (``alive``,
    ``diverged_step``, ``diverged_epoch``, ``diverged_loss``, saved in checkpoints); at the epoch end
    its loggers get the single run's ``diverged``/``diverged_step`` row and no further rows.
    :meth:`divergence` gives the record for its ``status.json``.

    Args:
        net: The stacked members, from :meth:`StackedMLP.from_members`.
        members: The members in the order of ``net`` (their σ must match ``net.init_stds``).
        loss: Per-example loss: cross_entropy, hinge or squared.
        loss_scale_with_init: Multiply each member's loss scale by its σ (as ``MemorizationModule``).
        optimizer: ``sgd``, ``adam`` or ``adamw``, shared by the members; each member's lr, weight decay,
            momentum and betas are its own (:class:`~lightning_mem.ensemble.optim.MemberOptimizer`, with
            per-member state; plain SGD without momentum or decay: :class:`MemberSGD`, bitwise torch's).
    """

    net: StackedMLP
    lr: Tensor  # (K,) per-member learning rates
    weight_decay: Tensor  # (K,) float64, as the next three
    momentum: Tensor
    beta1: Tensor
    beta2: Tensor
    alive: Tensor  # (K,) bool: still training
    diverged_step: Tensor  # (K,) the step whose loss or gradient was non-finite, −1 while alive
    diverged_epoch: Tensor
    diverged_loss: Tensor  # (K,) that step's loss
    _group_order: Tensor
    _group_inverse: Tensor
    _train_sums: Tensor  # (K, 7) fp64: loss, correct, count, then correct/count on kept and on random labels
    _eval_sums: Tensor  # (K, 3) fp64: loss, correct, count

    def __init__(
        self, net: StackedMLP, members: Sequence[MemberSpec], loss: LossName = "cross_entropy",
        loss_scale_with_init: bool = False, optimizer: MemberOptimizerName = "sgd",
    ) -> None:
        super().__init__()
        check_choice("loss", loss, get_args(LossName))
        check_choice("optimizer", optimizer, get_args(MemberOptimizerName))
        if optimizer != "sgd" and any(m.momentum for m in members):
            raise ValueError(f"momentum is SGD's; optimizer={optimizer!r} has betas instead: set momentum 0")
        self.members = list(members)
        if [m.init_std for m in self.members] != net.init_stds:
            raise ValueError(f"members have init_std {[m.init_std for m in self.members]} but the net was "
                             f"built with {net.init_stds}; build it with StackedMLP.from_members(members)")
        scales = []
        for m in self.members:
            if not loss_scale_with_init:
                scales.append(m.loss_scale)
            elif m.init_std is None:
                raise ValueError(f"loss_scale_with_init=True needs a numeric init_std; member {m} has None")
            else:
                scales.append(m.loss_scale * float(m.init_std))  # MemorizationModule's product, bit for bit
        self.save_hyperparameters({
            "members": [asdict(m) for m in self.members], "loss": loss,
            "loss_scale_with_init": loss_scale_with_init, "optimizer": optimizer,
            "net": {"input_shape": list(net.input_shape), "num_classes": net.num_classes, "width": net.width,
                    "activation": net.activation, "depth": net.depth, "bias": net.bias,
                    "init_rule": net.init_rule},
        })
        self.optimizer_name = optimizer
        self.net = net
        self.loss_name, self.loss_scale_with_init, self.loss_scales = loss, loss_scale_with_init, scales
        K = len(self.members)
        self.register_buffer("lr", torch.tensor([m.lr for m in self.members]), persistent=False)
        for name, values in (("weight_decay", [m.weight_decay for m in self.members]),
                             ("momentum", [m.momentum for m in self.members]),
                             ("beta1", [m.betas[0] for m in self.members]),
                             ("beta2", [m.betas[1] for m in self.members])):
            self.register_buffer(name, torch.tensor(values, dtype=torch.float64), persistent=False)
        self.register_buffer("alive", torch.ones(K, dtype=torch.bool))
        self.register_buffer("diverged_step", torch.full((K,), -1, dtype=torch.long))
        self.register_buffer("diverged_epoch", torch.full((K,), -1, dtype=torch.long))
        self.register_buffer("diverged_loss", torch.zeros(K))
        # Members sharing a loss scale are one call of the loss function with a Python-float scale
        # (the single run's exact arithmetic): (order, sizes) regroup them, ``inverse`` undoes it.
        distinct = sorted(set(scales))
        order = sorted(range(K), key=lambda k: distinct.index(scales[k]))
        self._group_scales = distinct
        self._group_sizes = [scales.count(s) for s in distinct]
        self.register_buffer("_group_order", torch.tensor(order), persistent=False)
        self.register_buffer("_group_inverse", torch.argsort(torch.tensor(order)), persistent=False)
        self.register_buffer("_train_sums", torch.zeros(K, 7, dtype=torch.float64), persistent=False)
        self.register_buffer("_eval_sums", torch.zeros(K, 3, dtype=torch.float64), persistent=False)
        self.member_loggers: list[list[Logger]] = [[] for _ in range(K)]
        # Per member (module, data) hyperparameters of its single run, as LightningCLI records them
        # (``net`` with its class path, ``_instantiator``): set by the ensemble CLI, None otherwise.
        self.member_records: list[tuple[dict[str, Any], dict[str, Any]]] | None = None
        self.last_metrics: list[dict[str, float]] = [{} for _ in range(K)]  # last logged value of each key
        self._label_noise = False
        self._step_loss: Tensor | None = None
        self._epoch_first_step = 0
        self._epoch_extras: list[tuple[list[str], Tensor]] = []  # add_epoch_metrics, until the epoch end

    @property
    def num_members(self) -> int:
        return len(self.members)

    # ------------------------------------------------------------------ loss and metrics

    def member_losses(self, logits: Tensor, labels: Tensor) -> Tensor:
        """Per-example losses (K, B) of logits (K, B, k) and labels (K, B), each member with its scale."""
        fn = LOSSES[self.loss_name]
        K, B = labels.shape
        if len(self._group_scales) == 1:
            return fn(logits.flatten(0, 1), labels.flatten(), self._group_scales[0]).view(K, B)
        zs = logits.index_select(0, self._group_order).split(self._group_sizes)
        ys = labels.index_select(0, self._group_order).split(self._group_sizes)
        groups = zip(self._group_scales, zs, ys, strict=True)
        parts = [fn(z.flatten(0, 1), y.flatten(), s).view(-1, B) for s, z, y in groups]
        return torch.cat(parts).index_select(0, self._group_inverse)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> Tensor:
        x, y, noisy = batch  # (K, B, C, H, W), (K, B), (K, B): member k's batch of its single run
        logits = self.net(x)
        per_example = self.member_losses(logits, y)
        loss = per_example.mean(1)  # (K,) each member's batch mean, as in its single run
        self._step_loss = loss.detach()
        with torch.no_grad():
            correct = (logits.argmax(-1) == y).double()
            clean, noisy_ = (~noisy).double(), noisy.double()
            self._train_sums += torch.stack([
                per_example.double().sum(1), correct.sum(1), torch.full_like(correct[:, 0], y.shape[1]),
                (correct * clean).sum(1), clean.sum(1), (correct * noisy_).sum(1), noisy_.sum(1),
            ], 1)
        return loss.sum()  # members are decoupled: ∂(Σ_j L_j)/∂W_k = ∂L_k/∂W_k

    def on_before_optimizer_step(self, optimizer: Any) -> None:
        """The per-member divergence guard: freeze members with a non-finite loss or gradient."""
        assert self._step_loss is not None
        grads = [p.grad for p in self.net.parameters() if p.grad is not None]
        ok = self.alive & torch.isfinite(self._step_loss)
        for g in grads:
            ok &= torch.isfinite(g.sum(dim=tuple(range(1, g.dim()))))  # NaN/inf, or a sum beyond fp32
        newly = self.alive & ~ok
        self.diverged_step.copy_(torch.where(newly, self.trainer.global_step, self.diverged_step))
        self.diverged_epoch.copy_(torch.where(newly, self.trainer.current_epoch, self.diverged_epoch))
        self.diverged_loss.copy_(torch.where(newly, self._step_loss, self.diverged_loss))
        self.alive.copy_(ok)
        for g in grads:
            g.masked_fill_(~ok.view(-1, *[1] * (g.dim() - 1)), 0.0)  # W − lr·0 = W: frozen bitwise

    def configure_optimizers(self) -> Any:
        params = list(self.net.parameters())
        stateless = not any(m.weight_decay or m.momentum for m in self.members)
        if self.optimizer_name == "sgd" and stateless:
            return MemberSGD(params, lr=self.lr)  # the paper's plain SGD, bitwise torch's
        return MemberOptimizer(params, self.optimizer_name, self.lr, self.weight_decay, self.momentum,
                               self.beta1, self.beta2, active=self.alive)

    # ------------------------------------------------------------------ epoch ends

    def on_fit_start(self) -> None:
        trainer = self.trainer
        if trainer.world_size > 1:
            raise RuntimeError("EnsembleModule trains on one device; run one ensemble per device instead")
        if trainer.accumulate_grad_batches != 1 or trainer.precision != "32-true":
            raise ValueError("EnsembleModule supports accumulate_grad_batches=1 and precision='32-true' only;"
                             f" got {trainer.accumulate_grad_batches} and {trainer.precision!r}")
        datamodule = getattr(self.trainer, "datamodule", None)
        self._label_noise = float(getattr(datamodule, "label_noise", 0.0)) > 0
        member_data = getattr(datamodule, "member_data", None)
        for k, loggers in enumerate(self.member_loggers):
            params = dict(member_data[k].hparams) if member_data is not None else {}
            if self.member_records is not None:
                params = self.member_records[k][1]
            for logger in loggers:
                logger.log_hyperparams(self.member_hparams(k) | params)  # the single run: module, then data

    def on_train_epoch_start(self) -> None:
        self._train_sums.zero_()
        self._epoch_first_step = self.trainer.global_step
        self.save_member_logs()  # the rows of every finished epoch are on disk before the next starts

    def on_train_epoch_end(self) -> None:
        s = self._train_sums
        values = torch.stack([s[:, 0] / s[:, 2], s[:, 1] / s[:, 2], s[:, 3] / s[:, 4], s[:, 5] / s[:, 6]], 1)
        n = 4 if self._label_noise else 2
        extra_keys = [key for keys, _ in self._epoch_extras for key in keys]
        extras = [v.to(values) for _, v in self._epoch_extras]
        self._epoch_extras = []
        record = torch.cat([values[:, :n], *extras, self.alive[:, None], self.diverged_step[:, None]], 1)
        host = record.double().cpu().tolist()  # the one host sync of the epoch end
        step, epoch = max(self.trainer.global_step - 1, 0), self.trainer.current_epoch
        m = n + len(extra_keys)
        for k, row in enumerate(host):
            alive, bad_step = row[m], int(row[m + 1])
            if alive:  # NaN kept, as MemorizationModule logs it (e.g. train/acc_clean with no clean label)
                logged = dict(zip(metric_keys.TRAIN_KEYS[:n], row[:n], strict=True))
                logged |= {key: v for key, v in zip(extra_keys, row[n:m], strict=True) if not math.isnan(v)}
                self._write(k, logged, step, epoch)
            elif bad_step >= self._epoch_first_step:  # diverged in this epoch: the guard's row, then silence
                self._write(k, {"diverged": 1.0, "diverged_step": float(bad_step)}, bad_step, epoch)

    def add_epoch_metrics(self, keys: list[str], values: Tensor) -> None:
        """Values (K, len(keys)) for this epoch's train row of each member (a callback's ``self.log`` at the
        train epoch end lands in that row in a single run); NaN values are left out of the row."""
        self._epoch_extras.append((list(keys), values.detach()))

    def _eval_step(self, batch: tuple[Tensor, ...]) -> None:
        x, y = batch[0], batch[1]  # one held-out batch shared by all members
        logits = self.net(x)  # (K, b, k)
        labels = y.expand(self.num_members, -1)
        per_example = self.member_losses(logits, labels)
        correct = (logits.argmax(-1) == labels).double()
        self._eval_sums += torch.stack([per_example.double().sum(1), correct.sum(1),
                                        torch.full_like(correct[:, 0], len(y))], 1)

    def _eval_epoch_end(self, stage: str) -> None:
        s = self._eval_sums
        values = torch.stack([s[:, 0] / s[:, 2], s[:, 1] / s[:, 2]], 1)
        self.log_members([f"{stage}/loss", f"{stage}/acc"], values, max(self.trainer.global_step - 1, 0),
                         self.trainer.current_epoch, drop_nan=False)

    def on_validation_epoch_start(self) -> None:
        self._eval_sums.zero_()

    def validation_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> None:
        self._eval_step(batch)

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking:
            self._eval_epoch_end("val")

    def on_test_epoch_start(self) -> None:
        self._eval_sums.zero_()

    def test_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> None:
        self._eval_step(batch)

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    # ------------------------------------------------------------------ per-member logging

    def log_members(
        self, keys: list[str], values: Tensor, step: int, epoch: int, members: Sequence[int] | None = None,
        drop_nan: bool = True,
    ) -> None:
        """Write ``values`` (K, len(keys)) as one row per member to its loggers, at ``step`` with ``epoch``.

        ``members``: the members to write (default: those alive now); one host transfer for all.
        ``drop_nan``: leave NaN values out of the row (alignment of an absent class).
        """
        if members is None:
            values = torch.cat([values.double(), self.alive[:, None].double()], 1)
        host = values.double().cpu().tolist()
        chosen = members if members is not None else [k for k, row in enumerate(host) if row[-1]]
        for k in chosen:
            row = {key: v for key, v in zip(keys, host[k], strict=False) if not (drop_nan and math.isnan(v))}
            if row:
                self._write(k, row, step, epoch)

    def _write(self, k: int, row: dict[str, float], step: int, epoch: int) -> None:
        row = row | {"epoch": epoch}
        self.last_metrics[k].update(row)
        for logger in self.member_loggers[k]:
            logger.log_metrics(row, step=step)

    def save_member_logs(self) -> None:
        for loggers in self.member_loggers:
            for logger in loggers:
                logger.save()

    def on_fit_end(self) -> None:
        for loggers in self.member_loggers:
            for logger in loggers:
                logger.finalize("success")

    def teardown(self, stage: str) -> None:
        self.save_member_logs()  # also after an exception: the rows logged so far reach the files

    # ------------------------------------------------------------------ per-member records

    def member_hparams(self, k: int) -> dict[str, Any]:
        """Member k's ``MemorizationModule`` hyperparameters (what its single run's checkpoint holds)."""
        if self.member_records is not None:
            return dict(self.member_records[k][0])
        m = self.members[k]
        return {"loss": self.loss_name, "loss_scale": m.loss_scale,
                "loss_scale_with_init": self.loss_scale_with_init, "lr": m.lr, "momentum": m.momentum,
                "weight_decay": m.weight_decay, "optimizer": self.optimizer_name, "betas": m.betas}

    def member_state_dict(self, k: int) -> dict[str, Tensor]:
        """Member k's weights as a ``MemorizationModule`` state dict (``net.hidden.weight``, ...)."""
        return {f"net.{name}": w for name, w in self.net.member_state_dict(k).items()}

    def divergence(self) -> list[dict[str, Any] | None]:
        """Per member: None while it trains, else ``{"step", "epoch", "reason", "message"}`` of its end."""
        out: list[dict[str, Any] | None] = []
        for k, (alive, step, epoch, loss) in enumerate(zip(
            self.alive.tolist(), self.diverged_step.tolist(), self.diverged_epoch.tolist(),
            self.diverged_loss.tolist(), strict=True,
        )):
            if alive:
                out.append(None)
                continue
            m = self.members[k]
            reason = (f"the training loss is {loss:g}" if not math.isfinite(loss)
                      else "the gradients are non-finite")
            setting = f"init_std={m.init_std}, lr={m.lr}, loss={self.loss_name}"
            message = divergence_message(step, epoch, reason, setting)
            out.append({"step": step, "epoch": epoch, "reason": reason, "message": message})
        return out

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get("hyper_parameters", {})
        if "members" in saved:  # written before the members had optimizer fields: those are the defaults
            saved = {**saved, "members": [asdict(MemberSpec(**m)) for m in saved["members"]]}
        if "net" in saved:
            saved = {**saved, "net": {"depth": 1, "bias": False, "init_rule": "glorot", **saved["net"]}}
        saved = {"optimizer": "sgd", **saved}
        for key in ("members", "loss", "loss_scale_with_init", "net", "optimizer"):
            if key in saved and saved[key] != self.hparams[key]:
                raise ValueError(f"the checkpoint's ensemble has {key}={saved[key]!r} but this one has "
                                 f"{self.hparams[key]!r}; resume with the ensemble that wrote it")
