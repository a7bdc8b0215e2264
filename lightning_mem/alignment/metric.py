"""What :class:`~lightning_mem.callbacks.AlignmentMonitor` logs, and how it reaches the loggers.

- :func:`metric_key` and :func:`flatten_measures` name every logged value (pure functions).
- :class:`ClassAlignment` is a ``torchmetrics.Metric`` for Ω_c of a stream of vectors (held-out
  representations): fp64 class sums as a sum state, so batches add up and DDP ranks all-reduce
  them once, exactly, through torchmetrics' own synchronisation. :func:`shard_take` picks the
  first N examples of a split that DDP ranks serve in strided shards.
- :class:`DeviceRows` keeps measured rows on the device and logs them in batches: one DDP
  reduction and one host transfer per flush, each row at its own step with its epoch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric

from lightning_mem.alignment.measures import PerClass, class_alignment_from_sums, class_sums
from lightning_mem.metric_keys import REP_PREFIX, metric_key


def flatten_measures(
    stats: Mapping[str, PerClass], names: Sequence[str], per_class: bool, prefix: str = ""
) -> tuple[list[str], Tensor]:
    """Keys and values (K,) of measures of P Grams: ``stats[measure]`` has values (P, C), mean (P,).

    Per measure and name: the in-class mean, then (``per_class``) the C class values, NaN where a
    class is absent. Representations get alignment only (the others are gradient measures). The
    values stay on their device.
    """
    keys: list[str] = []
    values: list[Tensor] = []
    for measure, result in stats.items():
        for i, name in enumerate(names):
            if measure != "alignment" and name.startswith(REP_PREFIX):
                continue
            keys.append(metric_key(measure, name, prefix=prefix))
            values.append(result.mean[i : i + 1])
            if per_class:
                classes = result.values.shape[-1]
                keys += [metric_key(measure, name, c, prefix) for c in range(classes)]
                values.append(result.values[i])
    return keys, torch.cat(values)


class ClassAlignment(Metric):
    """Ω_c per class and Ω_in-class of a stream of vectors (B, ...) with labels (B,).

    The state is the (C, D+3) fp64 class sums of :func:`lightning_mem.alignment.class_sums` with
    ``dist_reduce_fx="sum"``: ``compute`` all-reduces it once across DDP ranks and returns
    :func:`~lightning_mem.alignment.class_alignment_from_sums` — the value of the (n, n) Gram of all
    vectors of all ranks, without forming it. D comes from the first update, so under DDP every rank
    must call ``update`` at least once (an empty batch will do). Labels outside [0, num_classes)
    are ignored.

    Args:
        num_classes: Number of classes C. None: discovered from the labels (one host sync per update,
            single process only: the states of all ranks must have one shape).
        kwargs: Passed to ``torchmetrics.Metric``.
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = None
    sums: Tensor

    def __init__(self, num_classes: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if num_classes is not None and num_classes < 1:
            raise ValueError(f"num_classes={num_classes!r} must be an integer >= 1, or None to discover them")
        self.num_classes = num_classes
        self.add_state("sums", torch.zeros(0, 0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, vectors: Tensor, labels: Tensor) -> None:
        C = self.num_classes
        if C is None:
            C = max(len(self.sums), int(labels.max()) + 1 if len(labels) else 1)
        chunk = class_sums(vectors, labels.to(vectors.device), C)  # (C, D+3)
        if self.sums.numel() == 0:
            self.sums = chunk
            return
        if len(chunk) > len(self.sums):  # a class seen for the first time (discovered classes only)
            self.sums = F.pad(self.sums, (0, 0, 0, len(chunk) - len(self.sums)))
        self.sums = self.sums + chunk

    def compute(self) -> PerClass:
        return class_alignment_from_sums(self.sums)


def shard_take(limit: int, rank: int, world_size: int, seen: int, batch_size: int) -> int:
    """How many of the next ``batch_size`` examples of ``rank`` are among the first ``limit`` of the
    split, when rank r serves examples r, r + W, r + 2W, ... (``DistributedSampler``'s layout) and
    has served ``seen`` before: its j-th example is wanted iff r + j·W < limit. Always a prefix."""
    wanted = -(-(limit - rank) // world_size)  # ⌈(limit − r) / W⌉ examples of this rank
    return min(batch_size, max(0, wanted - seen))


@dataclass
class Row:
    """A row to log: ``values`` (K,) fp64 still on the device, named by ``keys``, at ``step`` of ``epoch``."""

    step: int
    epoch: int
    keys: list[str]
    values: Tensor


class DeviceRows:
    """Rows measured on the device, logged in batches by :meth:`flush`.

    Every rank must flush at the same points with the same rows (one collective per flush under DDP).
    ``last`` holds the values of the latest row logged (on global rank 0).
    """

    def __init__(self) -> None:
        self.rows: list[Row] = []
        self.last: dict[str, float] = {}

    def __len__(self) -> int:
        return len(self.rows)

    def append(self, row: Row) -> None:
        self.rows.append(row)

    def flush(self, trainer: L.Trainer) -> None:
        """Log the buffered rows (see :meth:`log`) and empty the buffer."""
        rows, self.rows = self.rows, []
        self.log(trainer, rows)

    def log(self, trainer: L.Trainer, rows: list[Row], reduce: bool = True) -> None:
        """Log every row at its step with its epoch; with ``reduce`` under DDP each value is the mean
        over the ranks where it is not NaN (a class absent from a rank's batch). NaN values are not
        logged. One reduction and one host transfer for all rows; one call per row and logger."""
        if not rows:
            return
        values = torch.cat([row.values for row in rows]).double()
        if reduce and trainer.world_size > 1:
            valid = ~torch.isnan(values)
            both = torch.stack([torch.where(valid, values, torch.zeros_like(values)), valid.double()])
            both = trainer.strategy.reduce(both, reduce_op="sum")
            values = both[0] / both[1]  # 0/0 = NaN where no rank had the class
        if not trainer.is_global_zero:
            return
        host = values.tolist()  # the one device-to-host transfer
        start = 0
        for row in rows:
            chunk, start = host[start : start + len(row.keys)], start + len(row.keys)
            metrics = {k: v for k, v in zip(row.keys, chunk, strict=True) if not math.isnan(v)}
            if not metrics:
                continue
            self.last = metrics
            for logger in trainer.loggers:
                logger.log_metrics({**metrics, "epoch": row.epoch}, step=row.step)
