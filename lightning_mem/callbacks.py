"""Every callback of the package, under one public path (configs name ``lightning_mem.callbacks.<Name>``).

- :class:`AlignmentMonitor` (:mod:`lightning_mem.alignment.monitor`): per-class alignment while training.
- :class:`KernelMonitor` (:mod:`lightning_mem.alignment.kernel_monitor`): kernel and laziness measures.
- :class:`GrokkingMonitor` (:mod:`lightning_mem.training.grokking`): when a run fits and when it generalizes.
- :class:`DivergenceGuard`, :class:`RunStatus` (:mod:`lightning_mem.training.guard`): stop on divergence;
  record how the run ended in ``status.json``.
- :class:`CheckpointPublisher` (:mod:`lightning_mem.training.checkpoint_io`): checkpoints written atomically.
- :class:`EnsembleAlignmentMonitor` (:mod:`lightning_mem.ensemble.monitor`), :class:`EnsembleKernelMonitor`,
  :class:`MemberCheckpoint`,
  :class:`MemberStatus` (:mod:`lightning_mem.ensemble.train`): the same for every member of an ensemble.
- :class:`ConfigToRun` (:mod:`lightning_mem.cli.fit`): the CLI's config saver that claims the run folder.
"""

from lightning_mem.alignment.kernel_monitor import KernelMonitor
from lightning_mem.alignment.monitor import AlignmentMonitor
from lightning_mem.cli.fit import ConfigToRun
from lightning_mem.ensemble.kernel_monitor import EnsembleKernelMonitor
from lightning_mem.ensemble.monitor import EnsembleAlignmentMonitor
from lightning_mem.ensemble.train import MemberCheckpoint, MemberStatus
from lightning_mem.training.checkpoint_io import CheckpointPublisher
from lightning_mem.training.grokking import GrokkingMonitor
from lightning_mem.training.guard import DivergenceGuard, RunStatus

__all__ = [
    "AlignmentMonitor",
    "CheckpointPublisher",
    "ConfigToRun",
    "DivergenceGuard",
    "EnsembleAlignmentMonitor",
    "EnsembleKernelMonitor",
    "GrokkingMonitor",
    "KernelMonitor",
    "MemberCheckpoint",
    "MemberStatus",
    "RunStatus",
]
