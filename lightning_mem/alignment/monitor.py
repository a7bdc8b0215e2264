"""``AlignmentMonitor``: per-class alignment of gradients and representations while training.

The math lives in :mod:`lightning_mem.alignment` (measures) and :mod:`lightning_mem.alignment.grams` (Grams
and hooks); key names and the held-out metric in :mod:`lightning_mem.alignment.metric`. This
callback decides when to measure, attaches the hooks for that step, and logs.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor, nn

from lightning_mem import _compat, metric_keys
from lightning_mem.alignment.grams import GramCapture
from lightning_mem.alignment.measures import MEASURES, PerClass, class_measures_from_gram
from lightning_mem.alignment.metric import ClassAlignment, DeviceRows, Row, flatten_measures, shard_take
from lightning_mem.checks import check_int
from lightning_mem.metric_keys import REP_PREFIX
from lightning_mem.nets.layers import has_batchnorm

FLUSH_EVERY = 64  # measurements kept on the device at most before they go to the loggers


def _labels(batch: Any) -> Tensor:
    if isinstance(batch, (tuple, list)) and len(batch) >= 2 and isinstance(batch[1], Tensor):
        return batch[1]
    raise TypeError("AlignmentMonitor expects batches (x, y, ...) with integer labels y at index 1")


def _norm(t: Tensor | None) -> Tensor:
    assert t is not None
    return torch.linalg.vector_norm(t, dtype=torch.promote_types(t.dtype, torch.float32))


def _epoch_end_step(trainer: L.Trainer) -> int:
    """The step of Lightning's own epoch-end rows (``val/acc``, ``train/loss``).

    Lightning logs them at its logging step (:func:`lightning_mem._compat.batches_that_stepped`), which
    moves only after the epoch-end validation (``global_step`` has moved already: one step later).
    Lightning's ``LearningRateMonitor`` and ``DeviceStatsMonitor`` log at the same value.
    """
    return _compat.batches_that_stepped(trainer)


def _split_size(trainer: L.Trainer) -> int | None:
    """Length of the first validation loader's dataset, when it has one (a ``DataLoader``)."""
    loaders = trainer.val_dataloaders
    loader = loaders[0] if isinstance(loaders, (list, tuple)) else loaders
    try:
        return len(loader.dataset)  # type: ignore[union-attr]
    except (AttributeError, TypeError):
        return None


def _representation_layers(net: nn.Module, layers: list[str] | None) -> list[str]:
    """``layers``, else the net's ``representation_layer`` (a warning when it has none); checked."""
    if layers is None:
        rep = getattr(net, "representation_layer", None)
        layers = [rep] if isinstance(rep, str) else []
        if not layers:
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
    return layers


def _per_example(net: nn.Module) -> bool:
    """False, with a warning, for nets with BatchNorm: it couples the examples of a batch."""
    if has_batchnorm(net):
        rank_zero_warn(
            f"AlignmentMonitor: {type(net).__name__} has BatchNorm, which couples the examples of a "
            "batch, so per-example gradients (and their alignment) are not defined; measuring "
            "representation alignment only"
        )
        return False
    return True


class AlignmentMonitor(L.Callback):
    """Logs the paper's alignment Ω of per-example gradients and representations every few steps.

    On a measuring step (``trainer.global_step % every_n_steps == 0``) hooks record, during the
    ordinary forward and backward of ``training_step``, the input and output gradient of every
    ``nn.Linear``/``nn.Conv2d`` of ``pl_module.net`` (or of the module itself), the gradient w.r.t.
    the logits and the output of the representation layer(s). Per-example gradient Grams follow
    without any extra forward or backward pass and without touching the gradients the optimizer
    sees: training is bit-identical with and without the callback. Off steps no hook is attached;
    nothing is measured while the trainer has no logger. Parameters of other module types (or
    shared) are listed once at setup and not measured (``alignment.gradient_alignment`` covers them).

    Keys (:func:`~lightning_mem.alignment.metric.metric_key`), ``.../class_<c>`` too with ``per_class``:

    - ``align/grad/<param>``, ``align/grad/logits``, ``align/rep/<layer>``: mean Ω_c over the classes
      with ≥ 2 examples in the batch. Ω ignores the scale of the gradients (ℓ_i / B, times the AMP
      loss scale): every measure runs in fp32 without TF32, or fp64.
    - ``norm/grad_over_weight/<param>``: ‖∇W‖ / ‖W‖ of the step's full (unscaled, accumulated) gradient.
    - with ``comparison_measures``: ``diversity/grad/...``, ``stiffness/grad/...``, ``confusion/grad/...``
      (:func:`~lightning_mem.alignment.class_measures_from_gram`); confusion, a min of dot products,
      is given for the gradients of each example's own loss ℓ_i (the batch size, accumulation and
      AMP loss scale divided out on the device), assuming ``training_step`` returns the batch mean.
    - ``val/align/rep/<layer>`` after each validation: the first ``val_max_examples`` held-out examples
      of the first dataloader, in a :class:`~lightning_mem.alignment.metric.ClassAlignment` metric.
      Classes: ``net.num_classes`` or ``datamodule.num_classes`` (needed under DDP), else the labels.

    Rows carry ``epoch`` and the step, like Lightning's own: a training batch measured at step s is
    logged at step s, the held-out row at the step of its epoch's ``val/acc``. Values stay on the
    device until a flush (one host transfer): at validation start, epoch end and fit end, every
    :data:`FLUSH_EVERY` measurements, and before ``DivergenceGuard`` logs a divergence.

    Under DDP each rank measures its local batch and rank 0 logs the mean over the ranks (where a
    class is present). The held-out class sums are all-reduced, so ``val/align/rep`` equals the
    single-process value when the loader shards the split as ``DistributedSampler`` strides it
    (rank r serves r, r + W, ...; ``ImageClassificationData`` does, without padding; the padding of
    Lightning's sampler for a ``DataLoader`` is left out). BatchNorm couples a batch's examples:
    such nets get a warning and representation alignment only. With gradient accumulation the
    first micro-batch of a step is measured.

    Args:
        every_n_steps: Measure when ``global_step`` is a multiple of this (≥ 1).
        gradients: Measure per-example gradient alignment (and ‖∇W‖/‖W‖).
        representations: Measure representation alignment on the training batch and at validation.
        per_class: Also log Ω_c of every class, under ``.../class_<c>``.
        layers: Names of the representation layers in the net (``net.get_submodule`` names);
            None uses the net's ``representation_layer`` attribute.
        max_classes: Measure and log only the first k classes: examples with labels ≥ k are left out
            of every measure (masked, so no host sync; the Grams still span the batch); None: all.
        comparison_measures: Also log gradient diversity, cosine stiffness and gradient confusion.
        val_max_examples: Held-out examples used for ``val/align/rep``: the first N of the split
            (in its order, across DDP ranks); None: all, 0: off.
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
        check_int("every_n_steps", every_n_steps, 1)
        if not (gradients or representations):
            raise ValueError("gradients=False and representations=False measure nothing; enable at least one")
        check_int("max_classes", max_classes, 1, none="for all classes")
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
        self._capture: GramCapture | None = None
        self._val_capture: GramCapture | None = None
        self._num_classes: int | None = None
        self._last_step = -1
        self._batch_labels: Tensor | None = None  # labels of the batch being measured
        self._row: Row | None = None  # measured in the backward, completed before the optimizer step
        self._rows = DeviceRows()  # measured, still on the device
        self._val: dict[str, ClassAlignment] = {}
        self._val_seen = 0  # held-out examples this rank has served in this validation epoch
        self._val_limit: int | None = None

    @property
    def last_metrics(self) -> dict[str, float]:
        """The values of the latest row logged (global rank 0), for notebooks and tests."""
        return self._rows.last

    # ------------------------------------------------------------------ setup

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        net = getattr(pl_module, "net", pl_module)
        if not isinstance(net, nn.Module):
            raise TypeError("AlignmentMonitor needs pl_module.net to be an nn.Module")
        reps = _representation_layers(net, self.layers) if self.representations else []
        self._capture = GramCapture(net, gradients=self.gradients and _per_example(net), rep_layers=reps)
        self._val_capture = GramCapture(net, gradients=False, rep_layers=reps) if reps else None
        self._last_step, self._row, self._rows = -1, None, DeviceRows()
        if self._capture.gradients and self._capture.unhooked():
            rank_zero_info(f"AlignmentMonitor: no per-example gradient Gram for {self._capture.unhooked()} "
                           "(not Linear/Conv2d)")
        datamodule = getattr(trainer, "datamodule", None)
        num_classes = getattr(net, "num_classes", None) or getattr(datamodule, "num_classes", None)
        self._num_classes = int(num_classes) if num_classes else None
        if reps and self.val_max_examples != 0 and trainer.world_size > 1 and self._num_classes is None:
            raise ValueError(
                "AlignmentMonitor under DDP needs the class count for val/align/rep: give the net or the "
                "datamodule a `num_classes` attribute, or pass val_max_examples=0"
            )
        self._val = {layer: ClassAlignment(self._num_classes) for layer in reps}

    # ------------------------------------------------------------------ training steps

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        # `step == _last_step`: with gradient accumulation only the first micro-batch is measured.
        if self._capture is None or step % self.every_n_steps or step == self._last_step:
            return
        if not trainer.loggers:
            return
        self._last_step = step
        self._batch_labels = _labels(batch)
        self._capture.attach()

    def on_after_backward(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._capture is None or self._batch_labels is None:
            return
        self._capture.detach()
        try:
            self._row = self._measure(trainer, self._capture, self._batch_labels)
        finally:
            self._release()

    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any
    ) -> None:
        # Called after Lightning unscales AMP gradients and after the last accumulated micro-batch.
        row, self._row = self._row, None
        if row is None:
            return
        if self._capture is not None and self._capture.gradients:
            params = [(n, p) for n, p in self._capture.net.named_parameters() if p.grad is not None]
            if params:
                # fp32 norms (fp32 accumulation is plenty for a ratio; an fp64 copy of W1 costs ~10 ms)
                ratios = torch.stack([_norm(p.grad) / _norm(p.detach()) for _, p in params])
                row.keys += [f"norm/grad_over_weight/{n}" for n, _ in params]
                row.values = torch.cat([row.values, ratios.to(row.values)])
        self._rows.append(row)
        if len(self._rows) >= FLUSH_EVERY:
            self.flush_metrics(trainer)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._batch_labels is not None and self._capture is not None:  # no backward ran (skipped step)
            self._capture.detach()
            self._release()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.flush_metrics(trainer)  # runs before the module's hook logs train/* at the epoch's end

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.flush_metrics(trainer)

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        if trainer.world_size == 1:  # under DDP another rank may be gone: no collective now
            self.flush_metrics(trainer)

    def _release(self) -> None:
        if self._capture is not None:
            self._capture.calls, self._capture.features, self._capture.grad_logits = {}, {}, None
        self._batch_labels = None

    def _grad_unit(self, trainer: L.Trainer, batch_size: int) -> Tensor | float:
        """Factor from the recorded gradients to those of each example's own loss ℓ_i: × B for the
        batch mean, × accumulate_grad_batches (Lightning divides the loss), ÷ the AMP loss scale (read
        as the scaler's device tensor: ``GradScaler.get_scale()`` would sync the host)."""
        factor = float(batch_size * trainer.accumulate_grad_batches)
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        if scaler is None or not scaler.is_enabled():
            return factor
        scale = _compat.amp_scale_tensor(scaler)
        return factor / (scaler.get_scale() if scale is None else scale.double())

    def _measure(self, trainer: L.Trainer, capture: GramCapture, labels: Tensor) -> Row | None:
        """All Grams of the step, stacked (P, B, B), and every measure in one batched pass."""
        g_logits = capture.grad_logits
        C = self._num_classes or (g_logits.shape[-1] if g_logits is not None else int(labels.max()) + 1)
        if self.max_classes is not None:
            C = min(C, self.max_classes)  # labels ≥ C are ignored by the measures: a mask, no index
        # No early return on data (e.g. < 2 examples of a class): under DDP every rank must log the
        # same keys into the same collective; absent classes are NaN and dropped after the reduction.
        grams = capture.grams()
        if not grams:
            return None
        names = list(grams)
        K = torch.stack([grams[n] for n in names])  # (P, B, B) fp64
        stats = class_measures_from_gram(K, labels.to(K.device), C, self.measures)
        if "confusion" in stats:  # the only measure that is not scale-invariant: report it for ℓ_i
            unit2 = self._grad_unit(trainer, len(labels)) ** 2
            result = stats["confusion"]
            stats["confusion"] = PerClass(result.values * unit2, result.present, result.mean * unit2)
        keys, values = flatten_measures(stats, names, self.per_class)
        return Row(trainer.global_step, trainer.current_epoch, keys, values)

    # ------------------------------------------------------------------ validation

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.flush_metrics(trainer)  # the training rows of this epoch go before its held-out row
        off = self.val_max_examples == 0 or trainer.sanity_checking or not trainer.loggers
        if self._val_capture is None or off:
            return
        for metric in self._val.values():
            metric.reset()
        self._val_seen = 0
        sizes = [n for n in (self.val_max_examples, _split_size(trainer)) if n is not None]
        self._val_limit = min(sizes) if sizes else None
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
        if dataloader_idx != 0:
            return
        labels = _labels(batch)
        take = len(labels)
        if self._val_limit is not None:
            take = shard_take(self._val_limit, trainer.global_rank, trainer.world_size, self._val_seen, take)
        for layer, h in features.items():
            self._val[layer].update(h[:take], labels[:take])  # an empty update still fixes the shape
        self._val_seen += len(labels)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._val_capture is None or not self._val_capture.attached:
            return
        self._val_capture.detach()
        self._val_capture.features = {}
        metrics = {layer: m for layer, m in self._val.items() if trainer.world_size > 1 or m.update_called}
        if not metrics:
            return
        results = [m.compute() for m in metrics.values()]  # the DDP all-reduce of the class sums
        for m in metrics.values():
            m.reset()
        values, means = torch.stack([r.values for r in results]), torch.stack([r.mean for r in results])
        stats = {"alignment": PerClass(values, results[0].present, means)}  # (layers, C), (layers,)
        names = [REP_PREFIX + layer for layer in metrics]
        keys, flat = flatten_measures(stats, names, self.per_class, prefix=metric_keys.VAL_PREFIX)
        row = Row(_epoch_end_step(trainer), trainer.current_epoch, keys, flat)
        self._rows.log(trainer, [row], reduce=False)  # already exact over all ranks

    # ------------------------------------------------------------------ logging

    def flush_metrics(self, trainer: L.Trainer) -> None:
        """Log the measurements still on the device, each at its own step with its epoch (one DDP
        reduction and one host transfer for all). Every rank must call it at the same point."""
        self._rows.flush(trainer)
