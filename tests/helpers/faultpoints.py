"""A test-only callback that makes the machine fail under its own fit at one chosen moment.

Passed to a ``lightning-mem fit`` subprocess with
``--trainer.callbacks+=tests.helpers.faultpoints.FaultAt`` and ``PYTHONPATH`` holding the repository;
``LIGHTNING_MEM_TEST_FAULT=<fault>:<point>@<n>`` chooses it:

- ``fill``: write ``LIGHTNING_MEM_TEST_FILLER`` (a file on the run folder's filesystem, a small tmpfs) until
  the disk is full (``ENOSPC``);
- ``fsize``: lower this process's file-size limit (``RLIMIT_FSIZE``) to the size of ``metrics.csv`` plus
  ``LIGHTNING_MEM_TEST_FSIZE_SLACK`` bytes (default 0): the next growth of any file past it fails with
  ``EFBIG`` (Python ignores ``SIGXFSZ``);
- ``rmtree``: remove the run folder.

``<point>@<n>``: ``batch@n`` after the optimizer step that makes ``global_step == n``; ``epoch_end@n`` at
the train end of epoch ``n``, before its checkpoint is written.
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
from pathlib import Path
from typing import Any

import lightning as L

from lightning_mem import rundir


def _spec() -> tuple[str, str, int] | None:
    text = os.environ.get("LIGHTNING_MEM_TEST_FAULT")
    if not text:
        return None
    fault, _, where = text.partition(":")
    point, _, n = where.partition("@")
    if fault not in ("fill", "fsize", "rmtree") or point not in ("batch", "epoch_end"):
        raise ValueError(f"LIGHTNING_MEM_TEST_FAULT={text!r}: <fill|fsize|rmtree>:<batch|epoch_end>@<n>")
    return fault, point, int(n)


def fill(path: Path) -> int:
    """Write ``path`` until its filesystem has no room left; the bytes written."""
    written = 0
    with path.open("wb", buffering=0) as fh:
        for chunk in (1 << 16, 1 << 12, 1):
            with contextlib.suppress(OSError):
                while True:
                    written += fh.write(b"\0" * chunk)
    return written


class FaultAt(L.Callback):
    """Makes the fault of ``LIGHTNING_MEM_TEST_FAULT`` happen once (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self.spec = _spec()
        self.done = False

    def _fault(self, trainer: L.Trainer) -> None:
        if self.spec is None or self.done:
            return
        self.done = True
        fault = self.spec[0]
        run_dir = Path(str(trainer.log_dir))
        if fault == "fill":
            fill(Path(os.environ["LIGHTNING_MEM_TEST_FILLER"]))
        elif fault == "fsize":
            slack = int(os.environ.get("LIGHTNING_MEM_TEST_FSIZE_SLACK", "0"))
            size = (run_dir / rundir.METRICS).stat().st_size + slack
            resource.setrlimit(resource.RLIMIT_FSIZE, (size, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
        else:
            shutil.rmtree(run_dir)

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if self.spec is not None and self.spec[1] == "batch" and trainer.global_step == self.spec[2]:
            self._fault(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.spec is not None and self.spec[1] == "epoch_end" and trainer.current_epoch == self.spec[2]:
            self._fault(trainer)
