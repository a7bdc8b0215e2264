"""The framework's defaults: the callbacks every ``lightning-mem fit`` gets unless its config turns them off
or names its own (then it keeps only that one, never a duplicate).

- :class:`~lightning_mem.callbacks.AlignmentMonitor` (``fit`` and ``run=False``; ``validate``/``test`` log
  no training rows): the measure this framework exists for, every ``--run.alignment_every_n_steps``
  steps (10); off with ``--run.alignment_monitor false``.
- :class:`~lightning_mem.callbacks.DivergenceGuard`: off with ``--run.divergence_guard false``.
- Progress (:mod:`lightning_mem.training.progress`): Lightning's bar with epoch, ``train/acc``,
  ``val/acc`` and the main alignment (:class:`~lightning_mem.training.progress.ProgressBar`), and, where
  the bar is off, a line every ``--run.progress_every_s`` seconds on stderr
  (:class:`~lightning_mem.training.progress.ProgressLog`).

The switches are ``run.*`` keys (the CLI's own group, not a class's), so a config file can set them too
(``run: {alignment_monitor: false}``).
"""

from __future__ import annotations

import inspect
from typing import Any

from jsonargparse import Namespace
from jsonargparse.typing import NonNegativeFloat, PositiveInt
from lightning.pytorch.callbacks import ProgressBar as LightningProgressBar
from lightning.pytorch.cli import LightningArgumentParser

from lightning_mem.alignment.monitor import AlignmentMonitor
from lightning_mem.training.guard import DivergenceGuard
from lightning_mem.training.progress import ProgressBar, ProgressLog

# The default monitor's interval is AlignmentMonitor's own default (≤ 1.05× the training time, DESIGN.md).
ALIGNMENT_EVERY_N_STEPS: int = inspect.signature(AlignmentMonitor).parameters["every_n_steps"].default
PROGRESS_EVERY_S = 30.0  # a line every 30 s: a 2000-epoch paper run logs ~100 lines per GPU hour


def add_switches(parser: LightningArgumentParser) -> None:
    """``--run.alignment_monitor``, ``--run.alignment_every_n_steps`` and ``--run.divergence_guard``."""
    parser.add_argument(
        "--run.alignment_monitor", type=bool, default=True,
        help="Add an AlignmentMonitor to a fit unless trainer.callbacks has one (default: true).",
    )
    parser.add_argument(
        "--run.alignment_every_n_steps", type=PositiveInt, default=ALIGNMENT_EVERY_N_STEPS,
        help="Steps between the default AlignmentMonitor's measurements (default: "
        f"{ALIGNMENT_EVERY_N_STEPS}; a configured AlignmentMonitor keeps its own every_n_steps).",
    )
    parser.add_argument(
        "--run.divergence_guard", type=bool, default=True,
        help="Add a DivergenceGuard unless trainer.callbacks has one (default: true).",
    )
    parser.add_argument(
        "--run.progress_every_s", type=NonNegativeFloat, default=PROGRESS_EVERY_S,
        help="Seconds between progress lines on stderr where the progress bar is off (0: every epoch; "
        f"default: {PROGRESS_EVERY_S:g}).",
    )


def with_defaults(callbacks: list[Any], run: Namespace | None, subcommand: str | None,
                  progress_bar: bool = True) -> list[Any]:
    """``callbacks`` plus the default monitor, guard and progress that are on and not configured already;
    ``progress_bar``: whether the trainer shows a bar (``trainer.enable_progress_bar``)."""
    run = run or Namespace()
    out = list(callbacks)
    if subcommand in ("fit", None) and run.get("alignment_monitor", True) \
            and not any(isinstance(c, AlignmentMonitor) for c in out):
        out.append(AlignmentMonitor(every_n_steps=int(run.get("alignment_every_n_steps")
                                                      or ALIGNMENT_EVERY_N_STEPS)))
    if run.get("divergence_guard", True) and not any(isinstance(c, DivergenceGuard) for c in out):
        out.append(DivergenceGuard())
    if progress_bar and not any(isinstance(c, LightningProgressBar) for c in out):
        out.append(ProgressBar())
    if not any(isinstance(c, ProgressLog) for c in out):
        every = run.get("progress_every_s")
        out.append(ProgressLog(every_s=PROGRESS_EVERY_S if every is None else float(every)))
    return out
