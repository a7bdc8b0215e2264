"""Every callback of the package, under one public path (configs name ``lightning_mem.callbacks.<Name>``).

- :class:`AlignmentMonitor` (:mod:`lightning_mem.alignment.monitor`): per-class alignment while training.
- :class:`KernelMonitor` (:mod:`lightning_mem.alignment.kernel_monitor`): kernel and laziness measures.
- :class:`GrokkingMonitor` (:mod:`lightning_mem.training.grokking`): when a run fits and when it generalizes.
- :class:`DivergenceGuard`, :class:`RunStatus` (:mod:`lightning_mem.training.guard`): stop on divergence;
  record how the run ended in ``status.json``.
- :class:`ProgressBar`, :class:`ProgressLog` (:mod:`lightning_mem.training.progress`): epoch, accuracies
  and the main alignment on the bar, or a line every few seconds where the bar is off.
- :class:`CheckpointPublisher` (:mod:`lightning_mem.training.checkpoint_io`): checkpoints written atomically.
- :class:`EnsembleAlignmentMonitor` (:mod:`lightning_mem.ensemble.monitor`), :class:`EnsembleKernelMonitor`,
  :class:`EnsembleGrokkingMonitor` (:mod:`lightning_mem.ensemble.grokking`), :class:`MemberCheckpoint`,
  :class:`MemberStatus` (:mod:`lightning_mem.ensemble.train`): the same for every member of an ensemble.
- :class:`ConfigToRun` (:mod:`lightning_mem.cli.fit`): the CLI's config saver that claims the run folder.
"""

from lightning_mem.alignment.kernel_monitor import KernelMonitor
from lightning_mem.alignment.monitor import AlignmentMonitor
from lightning_mem.cli.fit import ConfigToRun
from lightning_mem.ensemble.grokking import EnsembleGrokkingMonitor
from lightning_mem.ensemble.kernel_monitor import EnsembleKernelMonitor
from lightning_mem.ensemble.monitor import EnsembleAlignmentMonitor
from lightning_mem.ensemble.train import MemberCheckpoint, MemberStatus
from lightning_mem.training.checkpoint_io import CheckpointPublisher
from lightning_mem.training.grokking import GrokkingMonitor
from lightning_mem.training.guard import DivergenceGuard, RunStatus
from lightning_mem.training.progress import ProgressBar, ProgressLog

__all__ = [
    "AlignmentMonitor",
    "CheckpointPublisher",
    "ConfigToRun",
    "DivergenceGuard",
    "EnsembleAlignmentMonitor",
    "EnsembleGrokkingMonitor",
    "EnsembleKernelMonitor",
    "GrokkingMonitor",
    "KernelMonitor",
    "MemberCheckpoint",
    "MemberStatus",
    "ProgressBar",
    "ProgressLog",
    "RunStatus",
]
