"""The index-gather loader: whole batches gathered by index from tensors in memory, in a seeded per-epoch
order — no ``DataLoader``, no per-sample Python."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import NamedTuple

import numpy as np
import torch
from lightning.pytorch import Trainer
from torch import Tensor

BlockPlan = Callable[[list[int]], list[tuple[int, bool]]]
"""``plan(batch_sizes) -> [(steps, eager), ...]``: how an epoch's batches are grouped (IndexBlock)."""


class IndexBlock(NamedTuple):
    """``n`` consecutive training batches of an epoch as row indices, for a fused step that gathers them.

    Attributes:
        idx: (n, B) int64 rows of ``source.tensors`` on their device, batch i of the block in row i.
        source: The loader that served it (its ``tensors`` hold the data). Not a tensor: Lightning moves
            ``idx`` to the device with the batch and leaves ``source`` alone.
    """

    idx: Tensor
    source: TensorBatchLoader


class TensorBatchLoader:
    """Batches of in-memory tensors by index gather: ``tuple(t[idx] for t in tensors)``, no per-sample Python.

    With ``shuffle`` the order of epoch e is ``randperm`` of a generator seeded by
    ``seed * 1_000_003 + e``: a pure function of (seed, epoch), so a resumed run sees the same
    batches. The epoch comes from ``epoch_fn()`` when it returns an int (the trainer's
    ``current_epoch``), else from counting iterations. With ``world_size > 1`` each rank takes a
    disjoint, strided slice of the permutation, padded by wrap-around to equal length (as
    ``DistributedSampler``). The last batch may be short (no drop_last).

    With ``block_plan`` (the fused step of ``MemorizationModule(steps_per_call > 1)``) the same batches,
    in the same order, are grouped: at the start of each epoch ``block_plan(batch_sizes)`` returns
    ``[(steps, eager), ...]`` covering the epoch's batches; an ``eager`` group is one batch served as
    usual, any other group is an :class:`IndexBlock` of ``steps`` batches (indices only, no gather).
    The number of groups then varies between epochs, so the loader has no length (``len`` raises
    ``TypeError``; Lightning treats it as a stream and ends the epoch when it is exhausted).
    """

    def __init__(
        self, tensors: Sequence[Tensor], batch_size: int, shuffle: bool = False, seed: int = 0,
        epoch_fn: Callable[[], int | None] | None = None, rank: int = 0, world_size: int = 1,
        block_plan: BlockPlan | None = None,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} must be in [0, world_size={world_size})")
        self.tensors = tuple(tensors)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.epoch_fn = epoch_fn
        self.rank = rank
        self.world_size = world_size
        self.num_samples = math.ceil(len(self.tensors[0]) / world_size)  # per rank
        # Gather from (N, d) views: one contiguous row per example (index_select on 4-D was ~4x slower).
        self._flat = tuple((t.reshape(len(t), -1) if t.ndim > 2 else t, t.shape[1:]) for t in self.tensors)
        self._iterations = 0
        self.block_plan = block_plan

    def __len__(self) -> int:
        if self.block_plan is not None:
            raise TypeError("a TensorBatchLoader with a block_plan has no fixed number of batches per epoch")
        return self.num_batches

    @property
    def num_batches(self) -> int:
        """Batches per epoch (in block mode too: the training steps of an epoch)."""
        return math.ceil(self.num_samples / self.batch_size)

    @property
    def flat(self) -> tuple[tuple[Tensor, torch.Size], ...]:
        """Each tensor as a (N, d) or (N,) view and the shape of one row: what a gather by index reads."""
        return self._flat

    def indices(self, epoch: int) -> Tensor:
        """This rank's example indices for ``epoch``, in serving order (int64, CPU)."""
        n = len(self.tensors[0])
        if self.shuffle:
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed * 1_000_003 + epoch))
        else:
            perm = torch.arange(n)
        total = self.num_samples * self.world_size
        if total > n:  # wrap around so every rank gets the same count
            perm = perm.repeat(math.ceil(total / n))[:total]
        return perm[self.rank : total : self.world_size]

    def __iter__(self) -> Iterator[tuple[Tensor, ...] | IndexBlock]:
        # A generator: ``iter()`` alone (Lightning calls it to check the loader) has no side effect.
        epoch = self.epoch_fn() if self.epoch_fn is not None else None
        if epoch is None:
            epoch = self._iterations
        self._iterations += 1
        idx = self.indices(epoch).to(self.tensors[0].device)
        if self.block_plan is None:
            for batch in idx.split(self.batch_size):
                yield self._gather(batch)
            return
        sizes = [len(b) for b in idx.split(self.batch_size)]
        plan = self.block_plan(sizes)  # asked at the epoch's first batch: the trainer is at the epoch's start
        if sum(steps for steps, _ in plan) != len(sizes) or any(steps < 1 for steps, _ in plan):
            raise ValueError(f"block_plan returned {plan} for {len(sizes)} batches: groups must cover them")
        first = 0  # batch index of the group's first batch
        for steps, eager in plan:
            size = sizes[first]
            if any(s != size for s in sizes[first : first + steps]) or (eager and steps != 1):
                raise ValueError(f"block_plan group ({steps}, {eager}) at batch {first} mixes batch sizes "
                                 "or serves more than one eager batch")
            rows = idx[first * self.batch_size : first * self.batch_size + steps * size]
            yield self._gather(rows) if eager else IndexBlock(rows.view(steps, size), self)
            first += steps

    def _gather(self, rows: Tensor) -> tuple[Tensor, ...]:
        return tuple(_gather_rows(flat, rows).view(-1, *shape) for flat, shape in self._flat)


def training_loader(
    tensors: Sequence[Tensor], batch_size: int, seed: int, trainer: Trainer | None
) -> TensorBatchLoader:
    """The training loader of ``tensors`` ``(x, y, noisy)`` under ``trainer``: ImageClassificationData's.

    Shuffled by (seed, ``trainer.current_epoch``), this rank's share under DDP, and grouped into
    :class:`IndexBlock` s when the module being fit asks for it through a ``train_block_plan`` attribute
    (``MemorizationModule(steps_per_call > 1)``). Such a loader has no length, and Lightning fetches one
    batch ahead from it, the first already in ``setup_data``, which on a resume runs before
    ``current_epoch`` is moved to the resumed epoch: its epoch is read from
    ``fit_loop.epoch_progress.current.processed`` instead (the epoch Lightning gives samplers' ``set_epoch``;
    equal to ``current_epoch`` once the epoch runs).
    """
    if trainer is None:
        return TensorBatchLoader(tensors, batch_size, shuffle=True, seed=seed)
    plan = getattr(trainer.lightning_module, "train_block_plan", None)

    def current_epoch() -> int:
        return trainer.current_epoch

    def epoch_being_started() -> int:
        current = trainer.fit_loop.epoch_progress.current  # a _ProcessedTracker (typed as its base)
        return int(getattr(current, "processed", current.completed))

    return TensorBatchLoader(tensors, batch_size, shuffle=True, seed=seed,
                             epoch_fn=current_epoch if plan is None else epoch_being_started,
                             rank=trainer.global_rank, world_size=trainer.world_size, block_plan=plan)


def _gather_rows(flat: Tensor, idx: Tensor) -> Tensor:
    """``flat[idx]`` for a (N, d) or (N,) tensor and an index on the same device."""
    if flat.device.type == "cpu":
        # A serial row copy: torch's parallel index_select stalls when the cores are busy (on 2 loaded
        # cores: ~30k images/s against ~500k here); one thread is enough for a memory-bound copy.
        return torch.from_numpy(np.take(flat.numpy(), idx.numpy(), axis=0))
    return flat.index_select(0, idx)
