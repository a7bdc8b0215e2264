"""Public path of the paper's per-example losses (defined in :mod:`lightning_mem.training.losses`): each
returns shape (B,), a loss per example; the module takes their mean."""

from lightning_mem.training.losses import LOSSES, cross_entropy, multiclass_hinge, squared_error

__all__ = ["LOSSES", "cross_entropy", "multiclass_hinge", "squared_error"]
