"""``AlignmentMonitor``: per-class alignment of gradients and representations while training.

The math lives in :mod:`lightning_mem.alignment`; this callback only decides when to measure,
attaches hooks for that one step, and logs everything through one ``logger.log_metrics`` call.
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor, nn

from lightning_mem.alignment import (
    MEASURES,
    PerClass,
    class_alignment_from_sums,
    class_measures_from_gram,
    class_sums,
)
from lightning_mem.grams import GramCapture


def _labels(batch: Any) -> Tensor:
    if isinstance(batch, (tuple, list)) and len(batch) >= 2 and isinstance(batch[1], Tensor):
        return batch[1]
    raise TypeError("AlignmentMonitor expects batches (x, y, ...) with integer labels y at index 1")


def _norm(t: Tensor | None) -> Tensor:
    assert t is not None
    return torch.linalg.vector_norm(t, dtype=torch.promote_types(t.dtype, torch.float32))


class AlignmentMonitor(L.Callback):
    """Logs the paper's alignment Ω of per-example gradients and representations every few steps.

    On a measuring step (``trainer.global_step % every_n_steps == 0``) hooks record, during the
    ordinary forward and backward of ``training_step``, the input and output gradient of every
    ``nn.Linear``/``nn.Conv2d`` of ``pl_module.net`` (or of the module itself when it has no
    ``net``), the gradient w.r.t. the logits and the output of the representation layer(s). Per-
    example gradient Grams follow without any extra forward or backward pass, and the gradients the
    optimizer sees are not touched, so training is bit-identical with and without the callback.
    Off steps no hook is attached, and nothing is measured while the trainer has no logger. The
    gradients are those of the training loss (the batch mean: ℓ_i / B); Ω is invariant to that
    scale. Parameters of other module types (or shared between modules) are not measured; they
    are listed once at setup (:func:`lightning_mem.alignment.gradient_alignment` covers them).

    Keys, logged at ``step=global_step`` through one ``log_metrics`` call per logger per measuring
    step (all values go to the host in one transfer):

    - ``align/grad/<param>`` (e.g. ``align/grad/hidden.weight``), ``align/grad/logits`` and
      ``align/rep/<layer>``: in-class mean Ω over the classes with ≥ 2 examples in the batch;
      with ``per_class`` also ``.../class_<c>`` for those classes (absent classes: no key).
    - ``norm/grad_over_weight/<param>``: ‖∇W‖ / ‖W‖ of the step's full (unscaled, accumulated) gradient.
    - with ``comparison_measures``: ``diversity/grad/<name>``, ``stiffness/grad/<name>``,
      ``confusion/grad/<name>`` (see :func:`lightning_mem.alignment.class_measures_from_gram`).
      Confusion (a min of dot products) is not scale-invariant; it is reported for the gradients
      of each example's own loss ℓ_i, assuming ``training_step`` returns the batch mean.
    - after each validation epoch: ``val/align/rep/<layer>`` on up to ``val_max_examples`` held-out
      examples (first dataloader; per class too with ``per_class``), from streamed fp64 class
      sums (no (N, N) Gram). The class count comes from ``net.num_classes`` or
      ``datamodule.num_classes`` (needed under DDP), else from the labels seen.

    BatchNorm couples the examples of a batch, so per-example gradients do not exist there: for
    such nets the callback warns once and measures representations only. Under AMP the recorded
    gradients carry the loss scale, which Ω ignores; all math runs in fp32 (no TF32) or fp64.
    Under DDP each rank measures its local batch, and rank 0 logs the mean over ranks of each value
    (over the ranks where a class is present, via ``trainer.strategy.reduce``); the validation
    statistics are summed over ranks first, so ``val/align/rep`` is exact over the whole split.
    With gradient accumulation the first micro-batch of a step is measured.

    Args:
        every_n_steps: Measure when ``global_step`` is a multiple of this (≥ 1).
        gradients: Measure per-example gradient alignment (and ‖∇W‖/‖W‖).
        representations: Measure representation alignment on the training batch and at validation.
        per_class: Also log Ω_c of every class, under ``.../class_<c>``.
        layers: Names of the representation layers in the net (``net.get_submodule`` names);
            None uses the net's ``representation_layer`` attribute.
        max_classes: Measure only the first k classes: examples with labels ≥ k are dropped before
            the Grams are built, bounding the cost (e.g. on CIFAR-100); None: all classes.
        comparison_measures: Also log gradient diversity, cosine stiffness and gradient confusion.
        val_max_examples: Held-out examples used for ``val/align/rep``; None: all, 0: off.
    """

    def __init__(
        self,
        every_n_steps: int = 10,
        gradients: bool = True,
        representations: bool = True,
        per_class: bool = False,
        layers: list[str] | None = None,
        max_classes: int | None = None,
        comparison_measures: bool = False,
        val_max_examples: int | None = 10_000,
    ) -> None:
        super().__init__()
        if not isinstance(every_n_steps, int) or every_n_steps < 1:
            raise ValueError(f"every_n_steps={every_n_steps!r} must be an integer >= 1")
        if not (gradients or representations):
            raise ValueError("gradients=False and representations=False measure nothing; enable at least one")
        if max_classes is not None and max_classes < 1:
            raise ValueError(f"max_classes={max_classes!r} must be an integer >= 1, or None for all classes")
        if val_max_examples is not None and val_max_examples < 0:
            raise ValueError(f"val_max_examples={val_max_examples!r} must be >= 0 (0: off), or None for all")
        if layers is not None and (isinstance(layers, str) or not all(isinstance(x, str) for x in layers)):
            raise ValueError(f"layers={layers!r} must be a list of module names, e.g. ['act']")
        self.every_n_steps = every_n_steps
        self.gradients = gradients
        self.representations = representations
        self.per_class = per_class
        self.layers = None if layers is None else list(layers)
        self.max_classes = max_classes
        self.measures = MEASURES if comparison_measures else ("alignment",)
        self.val_max_examples = val_max_examples
        self.last_metrics: dict[str, float] = {}  # the latest logged values, for notebooks and tests
        self._capture: GramCapture | None = None
        self._val_capture: GramCapture | None = None
        self._num_classes: int | None = None
        self._last_step = -1
        self._step = 0
        self._batch_labels: Tensor | None = None
        self._pending: tuple[list[str], Tensor] | None = None
        self._val_sums: dict[str, Tensor] = {}
        self._val_seen = 0

    # ------------------------------------------------------------------ setup

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        net = getattr(pl_module, "net", pl_module)
        if not isinstance(net, nn.Module):
            raise TypeError("AlignmentMonitor needs pl_module.net to be an nn.Module")
        layers = self.layers
        if layers is None:
            rep = getattr(net, "representation_layer", None)
            layers = [rep] if isinstance(rep, str) else []
            if self.representations and not layers:
                rank_zero_warn(
                    f"AlignmentMonitor: {type(net).__name__} has no `representation_layer`; pass "
                    "layers=[...] to measure representation alignment"
                )
        available = {name for name, _ in net.named_modules() if name}
        missing = [name for name in layers if name not in available]
        if missing:
            raise ValueError(
                f"AlignmentMonitor layers {missing} are not modules of {type(net).__name__}; "
                f"allowed: {', '.join(sorted(available))}"
            )
        gradients = self.gradients
        if gradients and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules()):
            rank_zero_warn(
                f"AlignmentMonitor: {type(net).__name__} has BatchNorm, which couples the examples of a "
                "batch, so per-example gradients (and their alignment) are not defined; measuring "
                "representation alignment only"
            )
            gradients = False
        reps = layers if self.representations else []
        self._capture = GramCapture(net, gradients=gradients, rep_layers=reps)
        self._last_step, self._pending = -1, None
        self._val_capture = GramCapture(net, gradients=False, rep_layers=reps) if reps else None
        if gradients:
            hooked = {
                f"{m}.{k}" if m else k for m, (_, local) in self._capture.modules.items() for k in local
            }
            skipped = [n for n, p in net.named_parameters() if p.requires_grad and n not in hooked]
            if skipped:
                rank_zero_info(
                    f"AlignmentMonitor: no per-example gradient Gram for {skipped} (not Linear/Conv2d)"
                )
        datamodule = getattr(trainer, "datamodule", None)
        num_classes = getattr(net, "num_classes", None) or getattr(datamodule, "num_classes", None)
        self._num_classes = int(num_classes) if num_classes else None

    # ------------------------------------------------------------------ training steps

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        # `step != _last_step`: with gradient accumulation only the first micro-batch is measured.
        if (
            self._capture is None
            or step % self.every_n_steps
            or step == self._last_step
            or not trainer.loggers
        ):
            return
        self._last_step = self._step = step
        self._batch_labels = _labels(batch)
        self._capture.attach()

    def on_after_backward(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._capture is None or self._batch_labels is None:
            return
        self._capture.detach()
        try:
            self._pending = self._measure(self._capture, self._batch_labels, self._grad_unit(trainer))
        finally:
            self._release()

    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any
    ) -> None:
        # Called after Lightning unscales AMP gradients and after the last accumulated micro-batch.
        if self._pending is None:
            return
        keys, values = self._pending
        self._pending = None
        if self._capture is not None and self._capture.gradients:
            names = [n for n, p in self._capture.net.named_parameters() if p.grad is not None]
            if names:
                params = dict(self._capture.net.named_parameters())
                # fp32 norms (fp32 accumulation is plenty for a ratio; an fp64 copy of W1 costs ~10 ms)
                ratios = [_norm(params[n].grad) / _norm(params[n].detach()) for n in names]
                keys = keys + [f"norm/grad_over_weight/{n}" for n in names]
                values = torch.cat([values, torch.stack(ratios).to(values)])
        self._log(trainer, keys, values, self._step)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._batch_labels is not None and self._capture is not None:  # no backward ran (skipped step)
            self._capture.detach()
            self._release()

    def _release(self) -> None:
        if self._capture is not None:
            self._capture.calls, self._capture.features, self._capture.grad_logits = {}, {}, None
        self._batch_labels = None

    def _grad_unit(self, trainer: L.Trainer) -> float:
        """Factor from the recorded gradients to those of each example's own loss ℓ_i: × B for the
        batch mean, × accumulate_grad_batches (Lightning divides the loss), ÷ the AMP loss scale."""
        assert self._batch_labels is not None
        factor = float(len(self._batch_labels) * trainer.accumulate_grad_batches)
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        if scaler is not None and hasattr(scaler, "get_scale"):
            factor /= float(scaler.get_scale())
        return factor

    def _measure(self, capture: GramCapture, labels: Tensor, unit: float) -> tuple[list[str], Tensor] | None:
        """All Grams of the step, stacked (P, B, B), and every measure in one batched pass."""
        g_logits = capture.grad_logits
        C = self._num_classes or (g_logits.shape[-1] if g_logits is not None else int(labels.max()) + 1)
        keep = None
        if self.max_classes is not None and self.max_classes < C:
            keep = torch.nonzero(labels < self.max_classes).flatten()
            labels, C = labels.index_select(0, keep), self.max_classes
        # No early return on data (e.g. < 2 kept examples): under DDP every rank must log the same
        # keys into the same collective; absent classes are NaN and dropped after the reduction.
        grams = capture.grams(keep)
        if not grams:
            return None
        names = list(grams)
        K = torch.stack([grams[n] for n in names])  # (P, B', B') fp64
        stats = class_measures_from_gram(K, labels.to(K.device), C, self.measures)
        keys: list[str] = []
        values: list[Tensor] = []
        if "confusion" in stats:  # the only measure that is not scale-invariant: report it for ℓ_i
            result = stats["confusion"]
            stats["confusion"] = PerClass(result.values * unit**2, result.present, result.mean * unit**2)
        for measure, result in stats.items():
            prefix = "align" if measure == "alignment" else measure
            for i, name in enumerate(names):
                kind, sub = ("rep", name[4:]) if name.startswith("rep:") else ("grad", name)
                if kind == "rep" and measure != "alignment":
                    continue  # diversity, stiffness and confusion are gradient measures
                keys.append(f"{prefix}/{kind}/{sub}")
                values.append(result.mean[i : i + 1])
                if self.per_class:
                    keys += [f"{prefix}/{kind}/{sub}/class_{c}" for c in range(C)]
                    values.append(result.values[i])
        return keys, torch.cat(values)

    # ------------------------------------------------------------------ validation

    def _val_active(self, trainer: L.Trainer) -> bool:
        return self._val_capture is not None and not trainer.sanity_checking and self.val_max_examples != 0

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._val_active(trainer) and trainer.loggers and self._val_capture is not None:
            self._val_sums, self._val_seen = {}, 0
            self._val_capture.attach()

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        capture = self._val_capture
        if capture is None or not capture.attached:
            return
        features, capture.features = capture.features, {}
        limit = self.val_max_examples
        if limit is not None and trainer.world_size > 1:
            limit = -(-limit // trainer.world_size)  # each rank takes its share of the budget
        take = len(_labels(batch)) if limit is None else min(len(_labels(batch)), limit - self._val_seen)
        if dataloader_idx != 0 or take <= 0 or not features:
            return
        labels = _labels(batch)[:take]
        C = self._num_classes or int(labels.max()) + 1
        for layer, h in features.items():
            sums = class_sums(h[:take], labels.to(h.device), C)  # (C, D+3)
            old = self._val_sums.get(layer)
            if old is not None:  # without a known class count, classes are discovered from the labels
                rows = max(old.shape[0], sums.shape[0])
                sums = F.pad(sums, (0, 0, 0, rows - sums.shape[0])) + F.pad(
                    old, (0, 0, 0, rows - old.shape[0])
                )
            self._val_sums[layer] = sums
        self._val_seen += take

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._val_capture is None or not self._val_capture.attached:
            return
        self._val_capture.detach()
        self._val_capture.features = {}
        if not self._val_sums:
            return
        keys: list[str] = []
        values: list[Tensor] = []
        for layer, sums in self._val_sums.items():
            if trainer.world_size > 1:
                sums = trainer.strategy.reduce(sums, reduce_op="sum")  # exact over the whole split
            result: PerClass = class_alignment_from_sums(sums)
            keys.append(f"val/align/rep/{layer}")
            values.append(result.mean[None])
            if self.per_class:
                keys += [f"val/align/rep/{layer}/class_{c}" for c in range(sums.shape[0])]
                values.append(result.values)
        self._val_sums = {}
        self._log(trainer, keys, torch.cat(values), trainer.global_step, reduce=False)

    # ------------------------------------------------------------------ logging

    def _log(
        self, trainer: L.Trainer, keys: list[str], values: Tensor, step: int, reduce: bool = True
    ) -> None:
        """Mean over DDP ranks (NaN: class absent on a rank), one host transfer, one call per logger."""
        values = values.double()
        if reduce and trainer.world_size > 1:
            valid = ~torch.isnan(values)
            both = torch.stack([torch.where(valid, values, torch.zeros_like(values)), valid.double()])
            both = trainer.strategy.reduce(both, reduce_op="sum")
            values = both[0] / both[1]  # 0/0 = NaN where no rank had the class
        host = values.cpu().tolist()
        metrics = {k: v for k, v in zip(keys, host, strict=True) if not math.isnan(v)}
        if not trainer.is_global_zero or not metrics:
            return
        self.last_metrics = metrics
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)
