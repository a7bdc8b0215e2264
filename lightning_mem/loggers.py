"""Public path of the run's loggers, as every run's ``config.yaml`` names them
(``lightning_mem.loggers.RunCSVLogger``, ``lightning_mem.loggers.RunWandbLogger``; defined in
:mod:`lightning_mem.training.loggers`)."""

from lightning_mem.training.loggers import RunCSVLogger, RunWandbLogger

__all__ = ["RunCSVLogger", "RunWandbLogger"]
