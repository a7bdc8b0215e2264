"""Sweeps: W&B sweep files run on this machine, by W&B agents, or on a cluster.

- :mod:`~lightning_mem.sweeps.spec`: a sweep file as runs, ids and command lines, checked before launch.
- :mod:`~lightning_mem.sweeps.search`: grid and seeded random search spaces with W&B's distributions.
- :mod:`~lightning_mem.sweeps.runner`: :class:`LocalSweep`, runs as child processes, one GPU slot each,
  recorded in the sweep's manifest.
- :mod:`~lightning_mem.sweeps.launch`: GPU slots, the children's environment and signals, W&B agents.
- :mod:`~lightning_mem.sweeps.command`: ``lightning-mem sweep local|agents``.
- :mod:`~lightning_mem.sweeps.slurm`: ``sweep slurm|status``, a sweep as one SLURM job array.
- :mod:`~lightning_mem.sweeps.slurmtask`: its array tasks (one run or one pack each) and their claims.

Torch-free: the runner starts without importing torch or Lightning.
"""
