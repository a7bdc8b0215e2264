"""Ensembles: K runs of the paper's MLP stacked on a member axis and trained in one process.

Each member writes an ordinary run folder, exactly like its single run's. In data-flow order:

- :mod:`~lightning_mem.ensemble.plan`: which runs of a sweep can share a process, packs and ``pack.json``
  (torch-free: the sweep runner plans with it).
- :mod:`~lightning_mem.ensemble.members`: each member's ``fit`` arguments parsed by the fit CLI, checked to
  differ only in packable keys.
- :mod:`~lightning_mem.ensemble.stacked`: :class:`StackedMLP` (weights with a member axis) and per-member SGD.
- :mod:`~lightning_mem.ensemble.data`: one image table, per-member rows, labels and order.
- :mod:`~lightning_mem.ensemble.module`: :class:`EnsembleModule`, the Lightning system of K members.
- :mod:`~lightning_mem.ensemble.monitor`: :class:`EnsembleAlignmentMonitor`, every member's alignment.
- :mod:`~lightning_mem.ensemble.pack`: check everything, claim every member's folder (``prepare_pack``).
- :mod:`~lightning_mem.ensemble.train`: fit a prepared pack on a Trainer; per-member checkpoints and status.
- :mod:`~lightning_mem.ensemble.command`: ``lightning-mem ensemble fit``.

This ``__init__`` imports nothing, so the torch-free modules stay torch-free.
"""
