"""``EnsembleAlignmentMonitor``: ``AlignmentMonitor``'s keys and values for every member of an ensemble.

On a measuring step, hooks on the stacked layers of :class:`~lightning_mem.ensemble.stacked.StackedMLP`
record what the ordinary forward and backward already hold — each layer's input A (K, B, in) and
the gradient G (K, B, out) at its output — and one batched pass builds every member's Grams:
K_W = (A Aᵀ)∘(G Gᵀ) for ``hidden.weight`` and ``out.weight``, G_z G_zᵀ for the logits and H Hᵀ for
the representation ``act``. No per-example gradient is formed and no extra pass runs.

Every measure reads only the same-class entries of a Gram, so only its C in-class blocks are built:
each member's batch is grouped by class into blocks of m rows (m = the largest class count of the
step; shorter blocks are padded with rows labelled as an extra class, which no measure of a real
class reads). That is C·m² instead of B² entries per Gram — about 4× fewer flops for B = 256 and
10 classes. The measures are :func:`lightning_mem.alignment.class_measures_from_gram` itself,
vmapped over the (member, class) blocks, so the definitions cannot drift from the single run's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import vmap
from torch.utils.hooks import RemovableHandle

from lightning_mem.alignment.grams import ieee_fp32
from lightning_mem.alignment.measures import (
    MEASURES,
    PerClass,
    class_alignment_from_sums,
    class_measures_from_gram,
    class_sums,
)
from lightning_mem.alignment.monitor import AlignmentMonitor
from lightning_mem.ensemble.module import EnsembleModule
from lightning_mem.ensemble.stacked import StackedLinear, StackedMLP
from lightning_mem.metric_keys import REP_PREFIX, metric_key


def member_grams(vectors: Tensor) -> Tensor:
    """(..., B, n) -> (..., B, B) fp64 Gram of the rows of each leading index (matmul in ≥ fp32, no TF32)."""
    v = vectors.detach().to(torch.promote_types(vectors.dtype, torch.float32))
    with ieee_fp32():
        return torch.matmul(v, v.mT).double()


def class_blocks(labels: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    """Each member's batch grouped by class: ``(rows, block_labels)``, both (K, C, m).

    ``rows[k, c]`` are the batch positions of member k's examples of class c, padded to m (the
    largest count; one host sync) with positions whose ``block_labels`` is C, an extra class.
    """
    K, B = labels.shape
    counts = F.one_hot(labels, num_classes).sum(1)  # (K, C)
    m = max(int(counts.max()), 2)
    order = torch.argsort(labels, dim=1, stable=True)  # (K, B): positions grouped by class
    r = torch.arange(m, device=labels.device)
    pos = (counts.cumsum(1) - counts)[..., None] + r  # (K, C, m) into ``order``
    rows = order.gather(1, pos.clamp(max=B - 1).flatten(1)).view(K, num_classes, m)
    classes = torch.arange(num_classes, device=labels.device)[None, :, None]
    return rows, torch.where(r < counts[..., None], classes, num_classes)


def gather_blocks(vectors: Tensor, rows: Tensor) -> Tensor:
    """(K, B, n) rows gathered into (K, C, m, n) blocks by ``rows`` (K, C, m) of :func:`class_blocks`."""
    K, B = vectors.shape[:2]
    flat = (rows + B * torch.arange(K, device=rows.device)[:, None, None]).flatten()
    return vectors.flatten(0, 1).index_select(0, flat).view(*rows.shape, -1)


class StackedCapture:
    """Forward hooks on every :class:`StackedLinear` of a net (input, and a tensor hook for the
    output's gradient) and on the representation layer (its output), for one step."""

    def __init__(self, net: nn.Module, gradients: bool, rep_layer: str | None) -> None:
        self.net = net
        stacked = {name: m for name, m in net.named_modules() if isinstance(m, StackedLinear)}
        self.layers = stacked if gradients else {}
        self.rep_layer = rep_layer
        self.inputs: dict[str, Tensor] = {}
        self.grads: dict[str, Tensor] = {}
        self.features: Tensor | None = None
        self._handles: list[RemovableHandle] = []

    @property
    def attached(self) -> bool:
        return bool(self._handles)

    def attach(self, gradients: bool = True) -> None:
        self.inputs, self.grads, self.features = {}, {}, None
        if gradients:
            for name, module in self.layers.items():
                self._handles.append(module.register_forward_hook(self._layer_hook(name)))
        if self.rep_layer is not None:
            self._handles.append(self.net.get_submodule(self.rep_layer).register_forward_hook(self._rep_hook))

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def clear(self) -> None:
        self.inputs, self.grads, self.features = {}, {}, None

    def _layer_hook(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...], output: Tensor) -> None:
            if not output.requires_grad:
                return
            self.inputs[name] = args[0].detach()

            def save(grad: Tensor) -> None:
                self.grads[name] = grad.detach()

            output.register_hook(save)

        return hook

    def _rep_hook(self, module: nn.Module, args: Any, output: Tensor) -> None:
        self.features = output.detach()


class EnsembleAlignmentMonitor(L.Callback):
    """Per-member alignment of an :class:`~lightning_mem.ensemble.module.EnsembleModule`, with the keys,
    schedule and definitions of :class:`~lightning_mem.callbacks.AlignmentMonitor`.

    Measures when ``global_step % every_n_steps == 0`` and logs, per member through
    ``EnsembleModule.log_members`` (one host transfer for all members, at ``step = global_step`` with
    the epoch): ``align/grad/<layer>.weight`` (and ``.bias`` with biases) of every stacked layer
    (``hidden``, ``deep.<i>``, ``out``), ``align/grad/logits``,
    ``align/rep/act``, ``norm/grad_over_weight/<param>``; after each validation epoch
    ``val/align/rep/act`` at the step of that epoch's ``val/acc``. With ``per_class`` also
    ``.../class_<c>``; with ``comparison_measures`` ``diversity/``, ``stiffness/``, ``confusion/``
    keys. Members that are not alive are not logged. The gradients are those of each member's mean
    batch loss; Ω is invariant to that scale, and ``confusion`` is reported for ℓ_i (× B²).

    Args: as :class:`~lightning_mem.callbacks.AlignmentMonitor` (``layers`` and ``max_classes`` are
        not offered: the net is ScaledMLP's, with its representation ``act``);
        :meth:`from_monitor` copies a configured ``AlignmentMonitor``.
    """

    def __init__(
        self, every_n_steps: int = 10, gradients: bool = True, representations: bool = True,
        per_class: bool = False, comparison_measures: bool = False, val_max_examples: int | None = 10_000,
    ) -> None:
        super().__init__()
        # The single run's monitor checks the arguments and keeps them; it is not attached to a trainer.
        self.spec = AlignmentMonitor(
            every_n_steps=every_n_steps, gradients=gradients, representations=representations,
            per_class=per_class, comparison_measures=comparison_measures, val_max_examples=val_max_examples,
        )
        self.every_n_steps, self.gradients, self.representations = every_n_steps, gradients, representations
        self.per_class, self.measures, self.val_max_examples = per_class, self.spec.measures, val_max_examples
        self._capture: StackedCapture | None = None
        self._labels: Tensor | None = None
        self._pending: tuple[list[str], Tensor] | None = None
        self._val_sums: Tensor | None = None
        self._val_seen = 0
        self._num_classes = 0

    @classmethod
    def from_monitor(cls, monitor: AlignmentMonitor) -> EnsembleAlignmentMonitor:
        """The ensemble form of a configured single-run monitor (``layers``/``max_classes`` must be unset)."""
        if monitor.layers not in (None, ["act"]) or monitor.max_classes is not None:
            raise ValueError("EnsembleAlignmentMonitor measures ScaledMLP's layers and every class; layers="
                             f"{monitor.layers!r}, max_classes={monitor.max_classes!r} are not supported")
        return cls(monitor.every_n_steps, monitor.gradients, monitor.representations, monitor.per_class,
                   monitor.measures == MEASURES, monitor.val_max_examples)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if not isinstance(pl_module, EnsembleModule) or not isinstance(pl_module.net, StackedMLP):
            raise TypeError("EnsembleAlignmentMonitor needs an EnsembleModule with a StackedMLP; "
                            "use AlignmentMonitor for single runs")
        rep = pl_module.net.representation_layer if self.representations else None
        self._capture = StackedCapture(pl_module.net, self.gradients, rep)
        self._num_classes = pl_module.net.num_classes

    @staticmethod
    def _logging(pl_module: L.LightningModule) -> bool:
        return any(getattr(pl_module, "member_loggers", []))

    # ------------------------------------------------------------------ training steps

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if self._capture is None or trainer.global_step % self.every_n_steps or not self._logging(pl_module):
            return
        self._labels = batch[1]  # (K, B)
        self._capture.attach()

    def on_after_backward(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._capture is None or self._labels is None:
            return
        self._capture.detach()
        try:
            self._pending = self._measure(self._capture, self._labels)
        finally:
            self._capture.clear()
            self._labels = None

    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any
    ) -> None:
        pending, self._pending = self._pending, None
        if pending is None:
            return
        keys, values = pending
        assert isinstance(pl_module, EnsembleModule)
        if self.gradients:  # ‖∇W_k‖ / ‖W_k‖ of the step's gradient, before the divergence guard masks it
            params = dict(pl_module.net.named_parameters())
            names = [n for n, p in params.items() if p.grad is not None]
            ratios = [_member_norm(params[n].grad) / _member_norm(params[n].detach()) for n in names]
            keys = keys + [f"norm/grad_over_weight/{n}" for n in names]
            values = torch.cat([values, torch.stack(ratios, 1).to(values)], 1)
        pl_module.log_members(keys, values, trainer.global_step, trainer.current_epoch)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self._capture is not None and self._capture.attached:  # no backward ran (a skipped step)
            self._capture.detach()
            self._capture.clear()
            self._labels = None

    def _measure(self, capture: StackedCapture, labels: Tensor) -> tuple[list[str], Tensor] | None:
        """Every member's in-class Gram blocks and every measure, in one vmapped pass: (keys, (K, n))."""
        C = self._num_classes
        rows, block_labels = class_blocks(labels, C)  # labels (K, B) come with the batch, on its device
        feats = capture.features
        rep = member_grams(gather_blocks(feats, rows)) if feats is not None else None  # (K, C, m, m)
        factors: dict[str, tuple[Tensor, ...]] = {}  # Gram name -> the Gram blocks whose product it is
        for name in capture.layers:
            if name in capture.grads and name in capture.inputs:
                a, g = capture.inputs[name], capture.grads[name]
                k_a = rep if rep is not None and _same(a, feats) else member_grams(gather_blocks(a, rows))
                k_g = member_grams(gather_blocks(g, rows))
                factors[f"{name}.weight"] = (k_a, k_g)
                if capture.layers[name].bias is not None:  # per-example ∂b = g_i: its Gram is G Gᵀ
                    factors[f"{name}.bias"] = (k_g,)
                if name == "out":  # the net's output: its gradient is the logits' gradient
                    factors["logits"] = (k_g,)
        if rep is not None:
            factors["rep:act"] = (rep,)
        if not factors:
            return None
        names = list(factors)
        first = factors[names[0]][0]
        K = first.new_empty(len(names), *first.shape)  # (P, K_members, C, m, m), filled in place
        for i, name in enumerate(names):
            f = factors[name]
            torch.mul(f[0], f[1], out=K[i]) if len(f) == 2 else K[i].copy_(f[0])
        members = len(labels)
        measures = vmap(lambda k, y: class_measures_from_gram(k, y, C + 1, self.measures), in_dims=(1, 0))
        blocks = measures(K.flatten(1, 2), block_labels.flatten(0, 1).to(K.device))  # over (member, class)
        stats = {}
        for key, result in blocks.items():  # block c's value of class c: (K, C, P, C + 1) -> (K, P, C)
            per_class = result.values.view(members, C, len(names), C + 1)[..., :C].diagonal(dim1=1, dim2=3)
            present = result.present.view(members, C, C + 1)[..., :C].diagonal(dim1=1, dim2=2)[:, None]
            mean = torch.where(present, per_class, torch.zeros_like(per_class)).sum(-1) / present.sum(-1)
            stats[key] = PerClass(per_class, present, mean)  # NaN mean where no class has 2 examples
        unit = float(labels.shape[1])  # the recorded gradients are of ℓ_i / B
        keys: list[str] = []
        values: list[Tensor] = []
        for measure, result in stats.items():
            scale = unit**2 if measure == "confusion" else 1.0  # the only measure that is not scale-invariant
            for i, name in enumerate(names):
                if measure != "alignment" and name.startswith(REP_PREFIX):  # representations: Ω only
                    continue
                keys.append(metric_key(measure, name))
                values.append(result.mean[:, i : i + 1] * scale)
                if self.per_class:
                    keys += [metric_key(measure, name, c) for c in range(C)]
                    values.append(result.values[:, i] * scale)
        return keys, torch.cat(values, 1)

    # ------------------------------------------------------------------ validation

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if (self._capture is not None and self._capture.rep_layer is not None and not trainer.sanity_checking
                and self.val_max_examples != 0 and self._logging(pl_module)):
            self._val_sums, self._val_seen = None, 0
            self._capture.attach(gradients=False)

    def on_validation_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        capture = self._capture
        if capture is None or not capture.attached or capture.features is None:
            return
        h, capture.features = capture.features, None  # (K, b, width), shared held-out batch
        labels = batch[1]
        limit = self.val_max_examples
        take = len(labels) if limit is None else min(len(labels), limit - self._val_seen)
        if dataloader_idx != 0 or take <= 0:
            return
        sums = vmap(class_sums, in_dims=(0, None, None))(h[:, :take], labels[:take].to(h.device),
                                                         self._num_classes)  # (K, C, width + 3)
        self._val_sums = sums if self._val_sums is None else self._val_sums + sums
        self._val_seen += take

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._capture is None or not self._capture.attached:
            return
        self._capture.detach()
        self._capture.clear()
        if self._val_sums is None:
            return
        result = vmap(class_alignment_from_sums)(self._val_sums)
        self._val_sums = None
        keys, values = ["val/align/rep/act"], [result.mean[:, None]]
        if self.per_class:
            keys += [f"val/align/rep/act/class_{c}" for c in range(self._num_classes)]
            values.append(result.values)
        assert isinstance(pl_module, EnsembleModule)
        # The step of this epoch's val/acc (the logging contract), not the counter after it.
        step = max(trainer.global_step - 1, 0)
        pl_module.log_members(keys, torch.cat(values, 1), step, trainer.current_epoch)


def _same(a: Tensor, b: Tensor | None) -> bool:
    """The representation is the next layer's input: same storage, shape and strides (one Gram)."""
    return b is not None and (a.data_ptr(), a.shape, a.stride()) == (b.data_ptr(), b.shape, b.stride())


def _member_norm(t: Tensor | None) -> Tensor:
    """(K, ...) -> (K,) ‖t_k‖ in ≥ fp32."""
    assert t is not None
    return torch.linalg.vector_norm(t.flatten(1), dim=1, dtype=torch.promote_types(t.dtype, torch.float32))
