"""Layer kinds the framework treats specially, named by torch's public classes.

BatchNorm couples the examples of a batch (per-example gradients are not independent, so only
representation alignment is measured there); the fused step refuses BatchNorm (running statistics) and
dropout (random masks).
"""

from __future__ import annotations

from torch import nn

BATCHNORM: tuple[type[nn.Module], ...] = (
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d,
    nn.LazyBatchNorm1d, nn.LazyBatchNorm2d, nn.LazyBatchNorm3d, nn.SyncBatchNorm,
)
DROPOUT: tuple[type[nn.Module], ...] = (
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout,
)


def has_batchnorm(net: nn.Module, training: bool | None = None) -> bool:
    """Whether ``net`` holds a BatchNorm layer (``training=True``: one in training mode)."""
    return any(isinstance(m, BATCHNORM) and training in (None, m.training) for m in net.modules())
