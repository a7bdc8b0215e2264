"""Results: runs as data, and every view of many runs.

- :mod:`~lightning_mem.results.runs`: run folders and sweep manifests loaded as :class:`Run` objects.
- :mod:`~lightning_mem.results.grouping`: which keys vary, the one grouping rule all views share, the
  numbers each run contributes.
- :mod:`~lightning_mem.results.report`: ``lightning-mem report`` (tables and figures);
  :mod:`~lightning_mem.results.figures`: its matplotlib figures.
- :mod:`~lightning_mem.results.dashboard`: ``lightning-mem dashboard html`` (one self-contained page);
  :mod:`~lightning_mem.results.workspace`: ``dashboard wandb`` (a W&B workspace from code).

Torch-free: nothing here imports torch or Lightning.
"""
