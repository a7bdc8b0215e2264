"""A test-only callback that kills its own process at one chosen moment of a fit (deterministic kill points).

Passed to a ``lightning-mem fit`` subprocess with ``--trainer.callbacks+=tests.helpers.killpoints.KillAt`` and
``PYTHONPATH=tests``; the moment comes from the environment, so one command line serves every point:

- ``LIGHTNING_MEM_TEST_KILL=<point>@<n>``, where ``<point>`` is one of :data:`POINTS` and ``n`` says
  which occurrence (a step, an epoch or a count, see :data:`POINTS`);
- ``LIGHTNING_MEM_TEST_SIGNAL=KILL|TERM`` (default KILL).

SIGKILL ends the process at once. SIGTERM is handled as it would be from outside: Lightning's handler
notes it and the fit stops where Lightning next looks (``status.json`` then says ``interrupted``, exit
143). A point that the fit never reaches kills nothing (the test then sees exit 0).
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Any

import lightning as L

import lightning_mem.training.guard as guard
from lightning_mem import rundir
from lightning_mem.training.checkpoints import RunCheckpointIO

POINTS = {
    "batch": "after the optimizer step that makes global_step == n (mid-epoch unless n ends an epoch)",
    "val_start": "at the start of epoch n's validation",
    "val_batch": "after the first validation batch of epoch n",
    "val_end": "at the end of epoch n's validation (its rows logged)",
    "epoch_end": "at the train epoch end of epoch n, before the epoch's checkpoint",
    "ckpt_written": "right after the n-th checkpoint file is written (epoch<k>.ckpt, last.ckpt, ...; from 1)",
    "ckpt_published": "right after the n-th publication of held checkpoint files (their names appear)",
    "restore": "in a resumed fit's carry-over of metrics.csv: n=0 after the file is set aside, n=1 after"
               " the rows are written back",
    "ckpt_torn": "while the n-th checkpoint file is written: half of its bytes are on disk (in the run's"
                 " temporary file; with another writer, in the checkpoint's own name)",
    "status": "right after the n-th change of status in status.json (1: running, 2: finished); the "
              "running record's rewrites at each epoch end are no change",
    "fit_end": "at on_fit_end (every row, the last checkpoint and status.json on disk)",
    "thread": "from another thread, n milliseconds after the fit starts (anywhere)",
}


def _spec() -> tuple[str, int] | None:
    text = os.environ.get("LIGHTNING_MEM_TEST_KILL")
    if not text:
        return None
    point, _, n = text.partition("@")
    if point not in POINTS:
        raise ValueError(f"LIGHTNING_MEM_TEST_KILL={text!r}: the point must be one of {', '.join(POINTS)}")
    return point, int(n or 0)


def _die() -> None:
    sig = signal.SIGTERM if os.environ.get("LIGHTNING_MEM_TEST_SIGNAL", "KILL") == "TERM" else signal.SIGKILL
    os.kill(os.getpid(), sig)


class KillAt(L.Callback):
    """Sends the chosen signal to this process at the point named by ``LIGHTNING_MEM_TEST_KILL``."""

    def __init__(self) -> None:
        self.spec = _spec()
        self._count = 0
        self._val_batches = 0
        if self.spec is not None and self.spec[0] == "restore":  # runs before any hook: patch it now
            self._wrap_restore(self.spec[1])

    @staticmethod
    def _wrap_restore(n: int) -> None:
        restore = rundir.restore_metrics

        def restore_metrics(run_dir: Any, step: int, epoch: int) -> list[str]:
            if n == 0:
                _die()
            header = restore(run_dir, step, epoch)
            _die()
            return header

        rundir.restore_metrics = restore_metrics  # type: ignore[assignment]

    def _at(self, point: str, n: int) -> None:
        if self.spec == (point, n):
            _die()

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.spec is None:
            return
        point, n = self.spec
        if point in ("ckpt_written", "ckpt_torn"):
            self._wrap_checkpoint_io(trainer, point, n)
        elif point == "ckpt_published":
            io = trainer.strategy.checkpoint_io
            assert isinstance(io, RunCheckpointIO), type(io)
            publish = io.publish

            def publish_then_die() -> None:
                publish()
                self._count += 1
                if self._count == n:
                    _die()

            io.publish = publish_then_die  # type: ignore[method-assign]
        elif point == "status":
            self._wrap_status(n)
        elif point == "thread":
            timer = threading.Timer(n / 1000, _die)
            timer.daemon = True  # a moment after the process ends is no kill point: it must not wait for it
            timer.start()

    def _wrap_checkpoint_io(self, trainer: L.Trainer, point: str, n: int) -> None:
        io = trainer.strategy.checkpoint_io
        save = io.save_checkpoint
        if point == "ckpt_torn" and isinstance(io, RunCheckpointIO):
            write = io._write

            def torn_write(fh: Any, data: Any) -> None:  # the run's own writer, signalled halfway
                self._count += 1
                if self._count == n:
                    half = len(data) // 2
                    write(fh, bytes(data)[:half])
                    fh.flush()
                    _die()  # SIGKILL ends here; after SIGTERM (a flag) the writer goes on with the rest
                    write(fh, bytes(data)[half:])
                    return
                write(fh, data)

            io._write = torn_write  # type: ignore[method-assign]
            return

        def save_checkpoint(checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
            self._count += 1
            if self._count == n and point == "ckpt_torn":
                import io as _io

                import torch

                buffer = _io.BytesIO()
                torch.save(checkpoint, buffer)
                data = buffer.getvalue()
                # What a writer that opens the final name leaves when killed halfway.
                with open(path, "wb") as fh:
                    fh.write(data[: len(data) // 2])
                _die()
            save(checkpoint, path, storage_options)
            if self._count == n:
                _die()

        io.save_checkpoint = save_checkpoint  # type: ignore[method-assign]

    def _wrap_status(self, n: int) -> None:
        write = guard.write_status

        last: list[str] = []

        def write_status(run_dir: Any, status: str, *args: Any, **kwargs: Any) -> None:
            write(run_dir, status, *args, **kwargs)
            if last[-1:] == [status]:  # the running record rewritten with the epoch's progress
                return
            last.append(status)
            self._count += 1
            if self._count == n:
                _die()

        guard.write_status = write_status  # type: ignore[assignment]

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        self._at("batch", trainer.global_step)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._val_batches = 0
            self._at("val_start", trainer.current_epoch)

    def on_validation_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if not trainer.sanity_checking:
            self._val_batches += 1
            if self._val_batches == 1:
                self._at("val_batch", trainer.current_epoch)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._at("val_end", trainer.current_epoch)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._at("epoch_end", trainer.current_epoch)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._at("fit_end", 0)
