"""Writing checkpoints: whole files only, published after their epoch's rows, ``last.ckpt`` without a second
copy of the bytes.

:class:`RunCheckpointIO` writes every checkpoint file beside its name, fsynced and renamed over it, so
``last.ckpt`` is whole or absent whatever kills the writer (Lightning opens the final name, or moves a
temporary file across filesystems, which a kill can tear). The epoch-end checkpoint is written by
``ModelCheckpoint`` before Lightning logs the epoch's ``train/*`` row; :class:`CheckpointPublisher` makes
its rename wait until that row is on disk, so a published checkpoint never claims an epoch whose rows a
resume could not find (``metrics.csv`` after a kill and a resume is byte-identical to an uninterrupted
run's: README, "Reliability"). ``last.ckpt`` is a hard link to the epoch checkpoint of the same step
(``ModelCheckpoint(save_last=True)`` writes the same state twice), so its bytes are on disk once.
"""

from __future__ import annotations

import contextlib
import io
import os
import secrets
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

import lightning as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_mem import _compat, rundir

TMP_SUFFIX = ".tmp"  # .<name>.<random>.tmp beside the checkpoint while it is written


class RunCheckpointIO(TorchCheckpointIO):
    """``torch.save`` into a temporary file beside the checkpoint, fsync, then ``os.replace`` onto its name.

    While :attr:`hold` is set (by :class:`CheckpointPublisher`, from a train epoch's end until its rows
    are on disk), the renames and removals wait in order for :meth:`publish`; :meth:`discard` drops them.
    Paths with a URL scheme (``s3://``) go to Lightning's own writer.

    ``last.ckpt`` asked for right after another checkpoint of the same folder, epoch and step, with the
    same loop, callback and hyperparameter state (what ``save_last=True`` does after each epoch's file from
    the second epoch on; at the first, ``ModelCheckpoint``'s own state differs, so that one is written) is
    not written again: a hard link to that file's bytes takes a temporary name beside it and is renamed
    onto ``last.ckpt`` like any written file. A hard link
    rather than a symbolic one (Lightning's ``save_last="link"``): it cannot dangle, whichever name is
    removed first (Lightning removes the previous epoch's file before it saves ``last.ckpt``), and it
    works while the epoch's file is still held under its temporary name; ``last.ckpt`` stays a plain file
    for every reader. Where the filesystem has no hard links, the bytes are written as before.
    """

    def __init__(self) -> None:
        super().__init__()
        self.hold = False
        # In order: ("replace", target, tmp) or ("remove", target, None).
        self._pending: list[tuple[str, Path, Path | None]] = []
        # The last file written: (its name, the file holding its bytes now, (global_step, epoch), the bytes
        # of its state other than the weights and the optimizer's).
        self._written: tuple[Path, Path, tuple[int, int], bytes] | None = None

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        if "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        if storage_options is not None:
            raise TypeError(f"storage_options is not supported by {type(self).__name__}")
        target = Path(path)
        target.parent.mkdir(exist_ok=True)  # checkpoints/ only: a run folder removed under the fit stays gone
        step, epoch = checkpoint.get("global_step"), checkpoint.get("epoch")
        when = (step, epoch) if isinstance(step, int) and isinstance(epoch, int) else None
        state = _state_bytes(checkpoint) if when is not None else b""
        if when is not None and target.name == rundir.LAST_CKPT and self._link_last(target, when, state):
            return
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=TMP_SUFFIX)
        tmp = Path(name)
        try:
            with os.fdopen(fd, "wb") as fh:
                self._write(fh, buffer.getbuffer())
                fh.flush()
                os.fchmod(fh.fileno(), rundir.file_mode())
                os.fsync(fh.fileno())
        except OSError as err:  # a full disk, the file-size limit: name the checkpoint being written
            tmp.unlink(missing_ok=True)
            if err.filename is None:
                raise OSError(err.errno, err.strerror, str(target)) from err
            raise
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        self._place(target, tmp)
        self._written = (target, tmp if self.hold else target, when, state) if when is not None else None

    def _place(self, target: Path, tmp: Path) -> None:
        """Rename ``tmp`` onto ``target`` now, or when published while :attr:`hold` is set."""
        if self.hold:
            self._pending.append(("replace", target, tmp))
        else:
            os.replace(tmp, target)
            rundir.fsync_dir(target.parent)

    def _link_last(self, target: Path, when: tuple[int, int], state: bytes) -> bool:
        """``target`` (``last.ckpt``) as a hard link to the file just written in its folder at the same
        step and epoch with the same state; False (write the bytes) if there is none or the filesystem
        refuses the link."""
        if self._written is None:
            return False
        name, source, written_when, written_state = self._written
        if name.parent != target.parent or name == target or (written_when, written_state) != (when, state):
            return False
        tmp = target.parent / f".{target.name}.{secrets.token_hex(6)}{TMP_SUFFIX}"
        try:
            os.link(source, tmp)
        except OSError:  # no hard links here (some network or FUSE filesystems), or the file is gone
            return False
        self._place(target, tmp)
        return True

    @staticmethod
    def _write(fh: IO[bytes], data: Any) -> None:
        fh.write(data)

    def remove_checkpoint(self, path: Any) -> None:
        if "://" in str(path):
            return super().remove_checkpoint(path)
        if self.hold:
            self._pending.append(("remove", Path(path), None))
        else:
            Path(path).unlink(missing_ok=True)

    @property
    def pending(self) -> list[Path]:
        """The checkpoint files written and not yet published."""
        return [target for op, target, _ in self._pending if op == "replace"]

    def publish(self) -> None:
        """Rename the held files onto their names (``last.ckpt`` first), then do the held removals."""
        ops, self._pending, self.hold, self._written = self._pending, [], False, None
        replaces = sorted((op for op in ops if op[0] == "replace"),
                          key=lambda op: op[1].name != rundir.LAST_CKPT)
        for _, target, tmp in replaces:
            assert tmp is not None
            os.replace(tmp, target)
        for _, target, _ in (op for op in ops if op[0] == "remove"):
            if target not in {t for _, t, _ in replaces}:
                target.unlink(missing_ok=True)
        for folder in {target.parent for _, target, _ in ops}:
            rundir.fsync_dir(folder)

    def discard(self) -> None:
        """Drop the held files (their epoch's rows never reached the disk) and the held removals."""
        ops, self._pending, self.hold, self._written = self._pending, [], False, None
        for _, _, tmp in ops:
            if tmp is not None:
                tmp.unlink(missing_ok=True)


def _state_bytes(checkpoint: Mapping[str, Any]) -> bytes:
    """The checkpoint's sections other than the weights and the optimizer's state, serialized (small):
    two checkpoints of one step are the same file when these bytes are."""
    buffer = io.BytesIO()
    torch.save({k: v for k, v in checkpoint.items() if k not in ("state_dict", "optimizer_states")}, buffer)
    return buffer.getvalue()


def install_checkpoint_io(trainer: L.Trainer) -> RunCheckpointIO | None:
    """Give ``trainer`` a :class:`RunCheckpointIO` unless a checkpoint IO of another kind is configured."""
    strategy = trainer.strategy
    current = _compat.configured_checkpoint_io(trainer)
    if current is not None and type(current) is not TorchCheckpointIO:
        return current if isinstance(current, RunCheckpointIO) else None
    run_io = RunCheckpointIO()
    strategy.checkpoint_io = run_io
    return run_io


class CheckpointPublisher(L.Callback):
    """Holds the epoch-end checkpoint files of :class:`RunCheckpointIO` until the epoch's rows are on disk.

    Lightning's fit loop runs ``ModelCheckpoint`` in ``on_train_epoch_end`` and logs the epoch's ``train/*``
    row after it. So the files written there are held (renamed into place later) and published at the
    next epoch's start or at the training end, after the loggers are saved; on an exception they are
    published only if their epoch completed (its rows logged), else dropped. Left-over temporary files
    of a killed writer are removed at setup (the run folder's lock makes them ours).
    """

    def __init__(self) -> None:
        super().__init__()
        self._epoch: int | None = None

    @staticmethod
    def _io(trainer: L.Trainer) -> RunCheckpointIO | None:
        current = _compat.configured_checkpoint_io(trainer)
        return current if isinstance(current, RunCheckpointIO) else None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit" or not trainer.is_global_zero:
            return
        for callback in trainer.checkpoint_callbacks:
            folder = getattr(callback, "dirpath", None) if isinstance(callback, ModelCheckpoint) else None
            if folder and "://" not in str(folder) and Path(folder).is_dir():
                for tmp in Path(folder).glob(f".*.ckpt.*{TMP_SUFFIX}"):
                    tmp.unlink(missing_ok=True)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        run_io = self._io(trainer)
        if run_io is not None:  # runs before ModelCheckpoint's hook (Lightning calls it last)
            run_io.hold, self._epoch = True, trainer.current_epoch

    def _publish(self, trainer: L.Trainer) -> None:
        run_io = self._io(trainer)
        if run_io is not None and run_io.hold:
            for logger in trainer.loggers:
                logger.save()
            run_io.publish()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._publish(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._publish(trainer)

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        run_io = self._io(trainer)
        if run_io is None or not run_io.hold:
            return
        completed = trainer.fit_loop.epoch_progress.current.completed  # epochs whose rows were logged
        if self._epoch is not None and completed > self._epoch:
            try:
                self._publish(trainer)
            except OSError:  # the rows cannot reach the disk (full, removed): the held files are not theirs
                run_io.discard()
        else:
            run_io.discard()

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        run_io = self._io(trainer)
        if run_io is not None and run_io.hold:
            with contextlib.suppress(OSError):
                run_io.discard()
