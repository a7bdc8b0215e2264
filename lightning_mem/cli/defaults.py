"""The framework's defaults: the callbacks every ``lightning-mem fit`` gets unless its config turns them off
or names its own (then it keeps only that one, never a duplicate).

- :class:`~lightning_mem.callbacks.AlignmentMonitor` (``fit`` and ``run=False``; ``validate``/``test`` log
  no training rows): the measure this framework exists for, every ``--run.alignment_every_n_steps``
  steps (10); off with ``--run.alignment_monitor false``.
- :class:`~lightning_mem.callbacks.DivergenceGuard`: off with ``--run.divergence_guard false``.

The switches are ``run.*`` keys (the CLI's own group, not a class's), so a config file can set them too
(``run: {alignment_monitor: false}``).
"""

from __future__ import annotations

from typing import Any

from jsonargparse import Namespace
from jsonargparse.typing import PositiveInt
from lightning.pytorch.cli import LightningArgumentParser

from lightning_mem.alignment.monitor import AlignmentMonitor
from lightning_mem.training.guard import DivergenceGuard

ALIGNMENT_EVERY_N_STEPS = 10  # the default monitor's interval: ≤ 1.05× the training time (DESIGN.md)


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


def with_defaults(callbacks: list[Any], run: Namespace | None, subcommand: str | None) -> list[Any]:
    """``callbacks`` plus the default monitor and guard that are on and not configured already."""
    run = run or Namespace()
    out = list(callbacks)
    if subcommand in ("fit", None) and run.get("alignment_monitor", True) \
            and not any(isinstance(c, AlignmentMonitor) for c in out):
        out.append(AlignmentMonitor(every_n_steps=int(run.get("alignment_every_n_steps")
                                                      or ALIGNMENT_EVERY_N_STEPS)))
    if run.get("divergence_guard", True) and not any(isinstance(c, DivergenceGuard) for c in out):
        out.append(DivergenceGuard())
    return out
