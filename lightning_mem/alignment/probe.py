"""The fixed held-out probe batch of the kernel monitors (single runs and ensembles)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


class ProbeCollector:
    """The fixed held-out probe: the first ``size`` examples of the first validation loader, gathered over
    its batches at one validation (:meth:`start`, :meth:`add` per batch, :meth:`finish`), then kept."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.probe: tuple[Tensor, Tensor] | None = None
        self._parts: list[tuple[Tensor, Tensor]] | None = None

    def start(self) -> None:
        if self.probe is None:
            self._parts = []

    def add(self, batch: Any, dataloader_idx: int) -> None:
        if self._parts is None or dataloader_idx != 0:
            return
        need = self.size - sum(len(y) for _, y in self._parts)
        if need > 0:
            with torch.inference_mode(False):  # plain tensors: autograd runs through them later
                self._parts.append((batch[0][:need].clone(), batch[1][:need].clone()))

    def finish(self) -> tuple[Tensor, Tensor] | None:
        """The probe (None until one validation gave at least 2 examples)."""
        if self._parts is not None:
            parts, self._parts = self._parts, None
            if sum(len(y) for _, y in parts) >= 2:
                self.probe = torch.cat([x for x, _ in parts]), torch.cat([y for _, y in parts])
        return self.probe
