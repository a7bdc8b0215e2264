"""Public path of the Lightning system: ``lightning_mem.module.MemorizationModule``
(defined in :mod:`lightning_mem.training.module`)."""

from lightning_mem.training.module import MemorizationModule

__all__ = ["MemorizationModule"]
