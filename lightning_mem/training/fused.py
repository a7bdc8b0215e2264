"""The fused training step: several plain-SGD steps per Lightning step, each one CUDA graph replay on a GPU.

A step of the paper's MLP on a GPU is launch- and Python-bound: Lightning's loop, the metric updates and
the guard cost more host time than the step's kernels take on the device. ``MemorizationModule(
steps_per_call=k)`` moves the whole SGD step — gather of the batch by index, forward, per-example loss,
backward, the optimizer's update, the epoch's metric sums and the step's loss for the guard — into
:class:`FusedSGD`, which reads every input from, and writes every output to, buffers whose storage never
changes ("static"). That makes one step a unit a CUDA graph can capture once and replay; Lightning still
owns the loop, the logging, validation, checkpoints and callbacks, and one Lightning step runs up to k of
these steps.

- :func:`plan_epoch` groups one epoch's batches: a measuring step of a callback that measures every n
  steps (``AlignmentMonitor``) runs alone, eagerly, through Lightning's ordinary hooks; a group ends
  where a callback acts on a step count (``DivergenceGuard``'s loss reads, ``ModelCheckpoint`` every n
  steps), at ``max_steps``, where the batch size changes (the epoch's short last batch) and at the end
  of the epoch (validation and epoch checkpoints run there).
- :class:`FusedSGD` runs a group as consecutive replays of one captured step per batch size; backends:
  ``graph`` (a ``torch.cuda.CUDAGraph`` on CUDA; on a CPU the captured step is re-run from the same
  static buffers, which exercises the graph's bookkeeping), ``compile`` (the same step through
  ``torch.compile(mode="reduce-overhead")``, for measuring against) and ``eager``.

Every op is the one the ordinary path runs (``loss.backward()``, ``optimizer.step()``, sums in the
order of the torchmetrics states), so an eager fused run equals an ordinary run bitwise on a CPU.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import lightning as L
import torch
from torch import Tensor, nn

from lightning_mem import _compat, metric_keys
from lightning_mem.data.loader import IndexBlock
from lightning_mem.nets.layers import BATCHNORM, DROPOUT

Backend = Literal["eager", "graph", "compile"]
Source = tuple[Tensor, Tensor, "Tensor | None", torch.Size]  # (N, d) images, labels, noisy mask, image shape
METRIC_SLOTS = metric_keys.TRAIN_KEYS  # each a (sum, count) pair
WARMUP_STEPS = 3  # eager runs on a side stream before a capture (cuBLAS handles, autograd's first use)


def plan_epoch(
    start_step: int,
    batch_sizes: Sequence[int],
    steps_per_call: int,
    measure_every: Sequence[int] = (),
    boundary_every: Sequence[int] = (),
    max_steps: int = -1,
) -> list[tuple[int, bool]]:
    """How one epoch's batches are grouped into Lightning steps: ``[(steps, eager), ...]`` in order.

    Args:
        start_step: ``global_step`` at the epoch's first batch (batch i is step ``start_step + i``).
        batch_sizes: The epoch's batch sizes in order (all equal but the last).
        steps_per_call: Most SGD steps in one group.
        measure_every: Periods of callbacks that act on a step s with ``s % n == 0`` during its
            forward/backward (``AlignmentMonitor.every_n_steps``): such a step is a group of its own,
            ``eager`` (run through Lightning's hooks).
        boundary_every: Periods of callbacks that act after a batch when ``global_step % n == 0``
            (``DivergenceGuard.check_every_n_steps``, ``ModelCheckpoint`` every n steps): a group ends
            there, so the callback sees the same ``global_step`` values as without groups.
        max_steps: The trainer's ``max_steps`` (-1: none); no group crosses it.
    """
    measure = [n for n in measure_every if n > 0]
    bounds = [n for n in boundary_every if n > 0]

    def alone(step: int) -> bool:
        return any(step % n == 0 for n in measure)

    def starts_group(step: int) -> bool:  # a group must begin at `step`
        return alone(step) or any(step % n == 0 for n in bounds) or step == max_steps

    plan: list[tuple[int, bool]] = []
    i, n_batches = 0, len(batch_sizes)
    while i < n_batches:
        step = start_step + i
        if alone(step):
            plan.append((1, True))
            i += 1
            continue
        n = 1
        while (i + n < n_batches and n < steps_per_call and batch_sizes[i + n] == batch_sizes[i]
               and not starts_group(step + n)):
            n += 1
        plan.append((n, False))
        i += n
    return plan


def step_schedule(trainer: L.Trainer) -> tuple[list[int], list[int]]:
    """``(measure_every, boundary_every)`` of :func:`plan_epoch` from the trainer's callbacks.

    A callback with an integer ``every_n_steps`` (``AlignmentMonitor``) measures inside a step; one with
    ``check_every_n_steps`` (``DivergenceGuard``) reads after a step; ``ModelCheckpoint`` saves after a
    step every ``every_n_train_steps`` (:func:`lightning_mem._compat.every_n_train_steps`: Lightning has
    no public reader of it).
    """
    measure, bounds = [], []
    for callback in trainer.callbacks:  # type: ignore[attr-defined]
        every = getattr(callback, "every_n_steps", None)
        if isinstance(every, int) and not isinstance(every, bool):
            measure.append(every)
        check = getattr(callback, "check_every_n_steps", None)
        for value in (check if isinstance(check, int) and not isinstance(check, bool) else None,
                      _compat.every_n_train_steps(callback)):
            if value is not None and value > 0:
                bounds.append(value)
    return measure, bounds


def count_sgd_steps(trainer: L.Trainer, steps: int) -> None:
    """Make Lightning's logging step count the ``steps`` SGD steps of one Lightning step.

    ``trainer.global_step`` already counts them (one ``LightningOptimizer.step()`` call each). Lightning
    logs epoch-end rows (``train/loss``, ``val/acc``) at its logging step, which it moves by one per
    Lightning batch; the ``steps - 1`` others are added here, so the rows of a fused run carry the same
    ``step`` as an ordinary run's (:func:`lightning_mem._compat.advance_batches_that_stepped`;
    ``tests/training/test_fused.py`` compares the rows).
    """
    _compat.advance_batches_that_stepped(trainer, steps - 1)


def unsupported_nets(net: nn.Module) -> list[str]:
    """Module types the fused step refuses: BatchNorm (running statistics) and dropout (random masks)."""
    return sorted({type(m).__name__ for m in net.modules() if isinstance(m, (*BATCHNORM, *DROPOUT))})


def trainer_problems(trainer: L.Trainer) -> list[str]:
    """Trainer settings the fused step cannot honour, each as ``"<setting> (why)"``."""
    problems = []
    if trainer.world_size > 1:
        problems.append(f"{trainer.world_size} devices (DDP; steps_per_call runs on one device)")
    if str(trainer.precision) not in ("32-true", "32"):
        problems.append(f"precision={trainer.precision} (the fused step is FP32 only)")
    if trainer.accumulate_grad_batches != 1:
        problems.append(f"accumulate_grad_batches={trainer.accumulate_grad_batches} (one batch per SGD step)")
    if trainer.gradient_clip_val:
        problems.append(f"gradient_clip_val={trainer.gradient_clip_val} (plain SGD only)")
    if trainer.val_check_interval != 1.0:
        problems.append(f"val_check_interval={trainer.val_check_interval} (validation at epoch ends only)")
    if trainer.limit_train_batches not in (1.0, None):
        problems.append(f"limit_train_batches={trainer.limit_train_batches} (whole epochs only)")
    return problems


def check_data_device(tensors: Sequence[Tensor], device: torch.device) -> None:
    """Raise ``ValueError`` unless the training tensors are on ``device`` (the fused step gathers there)."""
    for t in tensors:
        if t.device != device:
            raise ValueError(
                f"steps_per_call > 1 gathers batches on the training device, but the training data are on "
                f"{t.device} and the network on {device}: keep the data there (--data.preload_to_device true)"
            )


def forward_loss(net: nn.Module, loss_fn: Callable[[Tensor, Tensor], Tensor], x: Tensor,
                 y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(logits (B, k), per-example loss (B,), mean loss ())``: the ordinary training step's forward."""
    logits = net(x)
    per_example = loss_fn(logits, y)
    return logits, per_example, per_example.mean()


def accumulate(sums: Tensor, logits: Tensor, per_example: Tensor, y: Tensor, noisy: Tensor | None) -> None:
    """Add one batch to the epoch's sums in place (device ops only).

    ``sums`` (8,) float32 holds (sum, count) pairs for :data:`METRIC_SLOTS`, updated exactly as the
    ordinary path's torchmetrics states are (``MeanMetric``: Σ value, Σ 1; ``MaskedMean``: Σ value·mask,
    Σ mask), in the same float32 order, so the epoch means are bitwise the same. ``noisy`` (B,) bool, or
    None without label noise (the clean/noisy pairs are then left at 0).
    """
    correct = (logits.detach().argmax(dim=1) == y).float()
    count = torch.ones_like(correct).sum()  # B, made on the device (a host scalar would be a transfer)
    parts = [per_example.detach().sum(), count, correct.sum(), count]
    if noisy is not None:
        clean, dirty = (~noisy).to(correct.dtype), noisy.to(correct.dtype)
        parts += [(correct * clean).sum(), clean.sum(), (correct * dirty).sum(), dirty.sum()]
    sums[: len(parts)] += torch.stack(parts)


def epoch_means(sums: Tensor, label_noise: bool) -> dict[str, Tensor]:
    """The epoch's logged values from :func:`accumulate`'s sums (device scalars)."""
    keys = METRIC_SLOTS if label_noise else METRIC_SLOTS[:2]
    return {key: sums[2 * i] / sums[2 * i + 1] for i, key in enumerate(keys)}


@dataclass
class _Statics:
    """The buffers one captured step reads and writes, for one batch size; their storage never changes."""

    idx: Tensor  # (steps_per_call, B) int64: the rows of the group's batches
    slot: Tensor  # (1,) int64: which row the next step reads (the graph advances it)
    losses: Tensor  # (steps_per_call,) float32: each step's mean loss, for the guard
    source: Source  # the loader's tensors the rows index
    graph: Any = None  # torch.cuda.CUDAGraph, a _Replay, or a compiled step


class _Replay:
    """A CUDA graph's contract on any device: ``capture(fn)`` keeps ``fn``; ``replay()`` re-runs it with no
    arguments, so everything it reads must come from buffers filled before the replay (as a graph's)."""

    def __init__(self) -> None:
        self.fn: Callable[[], None] | None = None
        self.replays = 0

    def capture(self, fn: Callable[[], None]) -> None:
        self.fn = fn

    def replay(self) -> None:
        assert self.fn is not None
        self.replays += 1
        self.fn()


class FusedSGD:
    """Runs groups of plain-SGD steps of a ``MemorizationModule`` from :class:`IndexBlock` s.

    One step (:meth:`_step`): the batch's rows ``idx[slot]`` gathered from the loader's tensors, the
    forward, the per-example loss and its mean, the epoch sums (:func:`accumulate`), the loss into
    ``losses[slot]``, ``loss.backward()``, ``optimizer.step()``, ``optimizer.zero_grad(set_to_none=True)``
    and ``slot += 1``. It reads only static buffers, allocates nothing that outlives it and reads nothing
    back to the host, so on CUDA it is captured once per batch size (after :data:`WARMUP_STEPS` eager runs
    on a side stream, whose updates are undone) and replayed for every batch of that size.

    Args:
        net: The network (its parameters are updated in place; their storage must not change after a
            capture).
        loss_fn: Per-example loss ``(logits, y) -> (B,)``.
        optimizer: The plain ``torch.optim.SGD`` (no momentum) Lightning was given.
        steps_per_call: Most steps in one group.
        label_noise: Also sum the clean/noisy accuracies.
        backend: ``graph``, ``compile`` or ``eager`` (see the module docstring).
    """

    def __init__(self, net: nn.Module, loss_fn: Callable[[Tensor, Tensor], Tensor],
                 optimizer: torch.optim.Optimizer, steps_per_call: int, label_noise: bool,
                 backend: Backend) -> None:
        self.net, self.loss_fn, self.optimizer = net, loss_fn, optimizer
        self.steps_per_call, self.label_noise, self.backend = steps_per_call, label_noise, backend
        self.params = [p for group in optimizer.param_groups for p in group["params"]]
        device = self.params[0].device
        self.device = device
        self.sums = torch.zeros(2 * len(METRIC_SLOTS), device=device)  # the epoch's metric sums
        self._statics: dict[tuple[int, int], _Statics] = {}  # (id(loader), batch size) -> buffers
        self.captures = 0  # graphs (or compiled steps) made so far

    # ------------------------------------------------------------------ one group

    def run(self, block: IndexBlock) -> Tensor:
        """Run the block's steps in order; returns their mean losses (steps,) (a copy)."""
        steps, size = block.idx.shape
        if steps > self.steps_per_call:
            raise ValueError(f"a block of {steps} steps is longer than steps_per_call={self.steps_per_call}")
        statics = self._statics_for(block, size)
        statics.idx[:steps].copy_(block.idx)  # the only per-block inputs: rows and a zero slot
        statics.slot.zero_()
        for _ in range(steps):
            if self.backend == "eager":
                self._step(statics)
            elif self.backend == "compile":
                statics.graph(statics)
            else:
                statics.graph.replay()
        return statics.losses[:steps].clone()

    def _step(self, statics: _Statics) -> None:
        """One SGD step from ``statics`` (see the class docstring); reads nothing back to the host."""
        x_all, y_all, noisy_all, shape = statics.source
        rows = statics.idx.index_select(0, statics.slot).view(-1)  # (B,) row indices, on the device
        x = x_all.index_select(0, rows).view(-1, *shape)
        y = y_all.index_select(0, rows)
        noisy = noisy_all.index_select(0, rows) if noisy_all is not None else None
        logits, per_example, loss = forward_loss(self.net, self.loss_fn, x, y)
        accumulate(self.sums, logits, per_example, y, noisy)
        statics.losses.index_copy_(0, statics.slot, loss.detach().view(1))
        statics.slot.add_(1)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    # ------------------------------------------------------------------ buffers and captures

    def _source(self, block: IndexBlock) -> Source:
        check_data_device(block.source.tensors, self.device)
        (x, shape), (y, _), *rest = block.source.flat
        noisy = rest[0][0] if rest and self.label_noise else None
        return x, y, noisy, shape

    def _statics_for(self, block: IndexBlock, size: int) -> _Statics:
        """The buffers (and graph) of this loader and batch size, made and captured at their first use."""
        key = (id(block.source), size)
        if key not in self._statics:
            k = self.steps_per_call
            statics = _Statics(idx=torch.zeros(k, size, dtype=torch.long, device=self.device),
                               slot=torch.zeros(1, dtype=torch.long, device=self.device),
                               losses=torch.zeros(k, device=self.device), source=self._source(block))
            if self.backend != "eager":
                statics.idx[:1].copy_(block.idx[:1])  # a real batch for the warm-up steps
                statics.graph = self._capture(statics)
            self._statics[key] = statics
        return self._statics[key]

    def _capture(self, statics: _Statics) -> Any:
        """Capture :meth:`_step` on ``statics``: warm-up steps (then undone), then the graph.

        CUDA needs the warm-up on a side stream before a capture; its updates to the weights and sums
        are copied back over (the storage stays: the graph will write there).
        """
        saved = [p.detach().clone() for p in self.params] + [self.sums.clone()]
        cuda = self.device.type == "cuda"
        step: Callable[[_Statics], None] = self._step
        if self.backend == "compile":
            step = torch.compile(self._step, mode="reduce-overhead")
        stream = torch.cuda.Stream(self.device) if cuda else None
        if stream is not None:
            stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
            for _ in range(WARMUP_STEPS):
                statics.slot.zero_()
                step(statics)
        if stream is not None:
            torch.cuda.current_stream(self.device).wait_stream(stream)
        with torch.no_grad():
            for target, value in zip([*self.params, self.sums], saved, strict=True):
                target.copy_(value)
        self.optimizer.zero_grad(set_to_none=True)
        self.captures += 1
        if self.backend == "compile":
            return step
        if not cuda:
            replay = _Replay()
            replay.capture(lambda: self._step(statics))  # bound now, as a graph binds its buffers
            return replay
        graph = torch.cuda.CUDAGraph()
        # thread_local: a CUDA call from another thread (a logger's) during the capture is not an error
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            self._step(statics)
        return graph
