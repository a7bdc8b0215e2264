"""Random labels on the train split, from a local generator (never the global RNG), with the mask of the
examples whose label was chosen."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

LabelNoiseMode = Literal["uniform", "shuffle"]


def corrupt_labels(
    labels: Tensor, num_classes: int, fraction: float, mode: LabelNoiseMode, seed: int
) -> tuple[Tensor, Tensor]:
    """Random labels on exactly ``round(fraction · N)`` examples chosen by a local generator.

    ``uniform`` draws a new class uniformly from all k (it may coincide with the true one);
    ``shuffle`` permutes the chosen labels among themselves (class counts unchanged).
    Returns ``(new_labels, chosen)``: a new tensor, and the bool mask of the chosen examples.
    """
    g = torch.Generator().manual_seed(seed)
    n = len(labels)
    k = round(fraction * n)
    chosen_idx = torch.randperm(n, generator=g)[:k]
    chosen = torch.zeros(n, dtype=torch.bool)
    chosen[chosen_idx] = True
    new = labels.clone()
    if mode == "uniform":
        new[chosen_idx] = torch.randint(num_classes, (k,), generator=g)
    else:
        new[chosen_idx] = labels[chosen_idx][torch.randperm(k, generator=g)]
    return new, chosen
