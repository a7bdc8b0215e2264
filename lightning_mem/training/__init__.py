"""Training: the Lightning system and everything that shapes one optimization run.

- :mod:`~lightning_mem.training.module`: :class:`MemorizationModule` (net + per-example loss + SGD +
  torchmetrics); public path ``lightning_mem.module``.
- :mod:`~lightning_mem.training.losses`: the paper's per-example losses with their remedy knobs; public
  path ``lightning_mem.losses``.
- :mod:`~lightning_mem.training.fused`: the fused step (several SGD steps per Lightning step, one CUDA
  graph replay each on a GPU).
- :mod:`~lightning_mem.training.precision`: the FP32/TF32 policy.
- :mod:`~lightning_mem.training.guard`: :class:`DivergenceGuard` and :class:`RunStatus` (how a run ended).
- :mod:`~lightning_mem.training.progress`: the progress bar's figures, a progress line where the bar is
  off, and the figures :class:`RunStatus` writes into ``status.json`` at every epoch end.
- :mod:`~lightning_mem.training.checkpoints`: checkpoints verified before use, atomic checkpoint writes.
- :mod:`~lightning_mem.training.loggers`: the CSV logger that continues a resumed run, the W&B run's
  metric definitions; public path ``lightning_mem.loggers``.
"""
