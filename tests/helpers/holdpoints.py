"""A test-only callback that holds its fit at one epoch's first batch until the process receives SIGTERM.

For tests that signal a fit from outside (a SLURM preemption through its task) and need the signal to land
mid-run, after a checkpoint, whatever the machine's load. Passed to ``lightning-mem fit`` with
``--trainer.callbacks+=tests.helpers.holdpoints.HoldAt`` and the repository on ``PYTHONPATH``:

- ``LIGHTNING_MEM_TEST_HOLD=<n>``: hold before the first training batch of epoch ``n`` (n >= 1: epoch
  ``n - 1``'s checkpoint is published by then, at the epoch's start);
- ``LIGHTNING_MEM_TEST_HOLD_FILE=<path>``: created when the hold begins (the test's cue to send the
  signal); when it already exists the fit is not held, so a resumed fit runs through;
- ``LIGHTNING_MEM_TEST_HOLD_S`` (default 300): the longest hold; the fit then goes on unsignalled.

The hold ends when Lightning's own SIGTERM handler has noted the signal (``trainer.received_sigterm``);
the fit then stops as it would for any SIGTERM. Without ``LIGHTNING_MEM_TEST_HOLD`` the callback is inert.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import lightning as L


class HoldAt(L.Callback):
    """Holds the fit before epoch ``LIGHTNING_MEM_TEST_HOLD``'s first batch until SIGTERM (see the module)."""

    def __init__(self) -> None:
        epoch = os.environ.get("LIGHTNING_MEM_TEST_HOLD")
        self.epoch = int(epoch) if epoch else None
        self.file = Path(os.environ.get("LIGHTNING_MEM_TEST_HOLD_FILE", "hold"))
        self.limit = float(os.environ.get("LIGHTNING_MEM_TEST_HOLD_S", "300"))

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if self.epoch is None or trainer.current_epoch != self.epoch or batch_idx != 0:
            return
        try:
            self.file.touch(exist_ok=False)
        except FileExistsError:  # held once already: this is the resumed fit
            return
        deadline = time.monotonic() + self.limit
        while not trainer.received_sigterm and time.monotonic() < deadline:
            time.sleep(0.1)  # Python runs the signal handler between these sleeps
