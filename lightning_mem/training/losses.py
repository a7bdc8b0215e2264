"""Per-example losses of the paper. Each returns shape (B,); the module takes the mean.

The knobs ``temperature``, ``margin`` and ``target_scale`` are the paper's proposed remedy for
1-homogeneous networks (ReLU) at large init scale: scaling W1 by c scales the logits by c, so
scaling the loss the same way undoes it (Section 4).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor


def cross_entropy(logits: Tensor, labels: Tensor, temperature: float = 1.0) -> Tensor:
    """Softmax cross-entropy of ``logits / temperature``; (B, k), (B,) -> (B,)."""
    return F.cross_entropy(logits / temperature, labels, reduction="none")


def multiclass_hinge(logits: Tensor, labels: Tensor, margin: float = 1.0) -> Tensor:
    """Σ_{j≠y} max(0, Δ + z_j − z_y) with Δ = ``margin``; (B, k), (B,) -> (B,)."""
    true = logits.gather(1, labels[:, None])  # (B, 1) z_y
    terms = torch.clamp(margin + logits - true, min=0.0)  # (B, k); the j = y term equals Δ
    return terms.sum(dim=1) - margin


def squared_error(logits: Tensor, labels: Tensor, target_scale: float = 1.0) -> Tensor:
    """mean_j (z_j − s·onehot_j)² with s = ``target_scale``; (B, k), (B,) -> (B,)."""
    target = F.one_hot(labels, logits.shape[1]).to(logits.dtype) * target_scale
    return (logits - target).pow(2).mean(dim=1)


LOSSES: dict[str, Callable[..., Tensor]] = {
    "cross_entropy": cross_entropy,
    "hinge": multiclass_hinge,
    "squared": squared_error,
}
"""Loss name -> per-example function; the second positional knob is the loss scale."""
