"""Checkpoints checked before they are used: loadable, and of the model the config builds.

A checkpoint written through the CLI carries the parsed model config (``hyper_parameters``: the net's
``class_path`` and ``init_args``, the loss, the optimizer settings; ``save_hyperparameters`` under
LightningCLI stores what was parsed) and the data config (``datamodule_hyper_parameters``). So
``validate``/``test`` can rebuild the model from ``--ckpt_path`` alone, and a config that asks for
another model is refused with what differs ("checkpoint has width 1024, config asks for 512") before
any run folder is touched. Checkpoints without that record (written in a notebook) are still checked
parameter by parameter against the built model.

Writing (:class:`RunCheckpointIO`, :class:`CheckpointPublisher`): every checkpoint file is written beside
its name, fsynced and renamed over it, so ``last.ckpt`` is whole or absent whatever kills the writer
(Lightning opens the final name, or moves a temporary file across filesystems, which a kill can tear).
The epoch-end checkpoint is written by ``ModelCheckpoint`` before Lightning logs the epoch's ``train/*``
row; its rename waits until that row is on disk, so a published checkpoint never claims an epoch whose
rows a resume could not find (``metrics.csv`` after a kill and a resume is byte-identical to an
uninterrupted run's: README, "Reliability"). ``last.ckpt`` is a hard link to the epoch checkpoint of the
same step (``ModelCheckpoint(save_last=True)`` writes the same state twice), so its bytes are on disk once.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import secrets
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import IO, Any

import lightning as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_mem import _compat, rundir
from lightning_mem.errors import CheckpointError

# Internal keys of Lightning's hparams record, and values the CLI links from the dataset or the run seed
# (given again they would clash with the link; they are compared after it is applied).
_INTERNAL = _compat.CLI_INTERNAL_HPARAMS
_LINKED_NET_ARGS = ("num_classes", "input_shape")
_LINKED_DATA_ARGS = ("seed",)


# Packages whose classes a checkpoint's stored config may name (jsonargparse imports a ``class_path`` it is
# given as a default; Lightning imports ``_instantiator``): the project's own, torch's and Lightning's.
TRUSTED_PACKAGES = ("lightning_mem", "torch", "lightning", "pytorch_lightning")
# Keys of a stored config whose string value is an import path.
CLASS_KEYS = ("class_path", *_compat.CLI_INTERNAL_HPARAMS)
_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


def load_checkpoint(path: Path, key: str = "ckpt_path", allowed: Iterable[str] = ()) -> dict[str, Any]:
    """The checkpoint at ``path`` (on the CPU, tensors and plain data only), or :class:`CheckpointError`
    naming the file and what is wrong with it.

    A file that pickles other objects (a call such as ``os.system``) is refused by torch's weights-only
    unpickler, named here. A checkpoint whose stored config names a class outside
    :data:`TRUSTED_PACKAGES` and ``allowed`` (the class paths the command line itself names) is refused
    too, naming the class, before anything would import it (:func:`untrusted_classes`)."""
    fix = "give a .ckpt written by `lightning-mem fit` (a run's checkpoints/last.ckpt or epoch<k>.ckpt)"
    if not path.is_file():
        raise CheckpointError(f"{key}={str(path)!r}: no such checkpoint file; {fix}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # garbage bytes make the unpickler raise nearly anything (IndexError, ...)
        text = str(err).strip()
        named = _GLOBAL.search(text) if "Weights only load failed" in text else None
        if named:  # a pickle of objects other than tensors and plain data (garbage: "Unsupported operand")
            raise CheckpointError(f"{key}={str(path)!r}: the file holds objects that are not allowed in a "
                                  f"checkpoint (it pickles {named.group(1)}); only tensors and plain data "
                                  f"are loaded, nothing in it was run; {fix}") from err
        if not text or "Weights only load failed" in text:  # torch's advice to unpickle anything: not ours
            reason = type(err).__name__
        else:
            reason = text.splitlines()[0].split(". ")[0]
        raise CheckpointError(f"{key}={str(path)!r}: the file does not load as a checkpoint "
                              f"(empty, truncated or not a torch file: {reason[:160]}); {fix}") from err
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), Mapping) \
            or not isinstance(ckpt.get("global_step"), int):
        raise CheckpointError(f"{key}={str(path)!r}: a torch file but not a Lightning checkpoint "
                              f"(no state_dict and global_step); {fix}")
    untrusted = untrusted_classes(ckpt, allowed)
    if untrusted:
        raise CheckpointError(
            f"{key}={str(path)!r}: the checkpoint's stored config names "
            f"{', '.join(f'{where}={name!r}' for where, name in untrusted[:4])}, outside the classes a "
            f"checkpoint may name ({', '.join(p + '.*' for p in TRUSTED_PACKAGES)}, or a class this command "
            "line names, e.g. --model.net.class_path); nothing was imported; load only checkpoints of this "
            "project, or name the class on the command line if you trust the file")
    return ckpt


def untrusted_classes(ckpt: Mapping[str, Any], allowed: Iterable[str] = ()) -> list[tuple[str, str]]:
    """(dotted key, import path) of every :data:`CLASS_KEYS` value in the checkpoint's stored configs
    (``hyper_parameters``, ``datamodule_hyper_parameters``) that is neither in a trusted package nor in
    ``allowed``; a value that is not a string counts as untrusted."""
    allowed = set(allowed)
    found: list[tuple[str, str]] = []

    def walk(tree: Any, where: str, depth: int) -> None:
        if depth > 32:
            found.append((where, "<nested too deep>"))
        elif isinstance(tree, Mapping):
            for k, v in tree.items():
                at = f"{where}.{k}"
                if k in CLASS_KEYS:
                    name = v if isinstance(v, str) else repr(v)[:60]
                    if name not in allowed and name.split(".", 1)[0] not in TRUSTED_PACKAGES:
                        found.append((at, name))
                else:
                    walk(v, at, depth + 1)
        elif isinstance(tree, (list, tuple)):
            for i, v in enumerate(tree):
                walk(v, f"{where}[{i}]", depth + 1)

    for section in ("hyper_parameters", "datamodule_hyper_parameters"):
        walk(ckpt.get(section), section, 0)
    return found


def newest_loadable_checkpoint(folder: Path) -> Path | None:
    """The newest ``epoch<k>.ckpt`` in ``folder`` that loads as a checkpoint, or None."""
    def epoch(path: Path) -> int:
        digits = path.stem.removeprefix("epoch").split("-")[0]
        return int(digits) if digits.isdigit() else -1

    for path in sorted(folder.glob("epoch*.ckpt"), key=epoch, reverse=True):
        with contextlib.suppress(CheckpointError):
            load_checkpoint(path)
            return path
    return None


def model_config(ckpt: Mapping[str, Any]) -> dict[str, Any] | None:
    """The parsed model config the checkpoint was written with, or None (no ``net`` recorded)."""
    hparams = ckpt.get("hyper_parameters") or {}
    if not isinstance(hparams, Mapping) or not isinstance(hparams.get("net"), Mapping):
        return None
    return {k: v for k, v in hparams.items() if k not in _INTERNAL}


def default_overrides(ckpt: Mapping[str, Any], subcommand: str) -> dict[str, Any]:
    """``{"<subcommand>.model.<key>": value, "<subcommand>.data.<key>": value}``: the checkpoint's model
    and data config as parser defaults, so a config or a command-line option still overrides them (and a
    model option that differs is then reported by :func:`config_differences`). Linked values are left to
    the links."""
    defaults: dict[str, Any] = {}
    model = model_config(ckpt)
    if model is not None:
        for key, value in model.items():
            if key == "net":
                args = value.get("init_args") or {}
                value = {"class_path": value["class_path"],
                         "init_args": {k: v for k, v in args.items() if k not in _LINKED_NET_ARGS}}
            defaults[f"{subcommand}.model.{key}"] = value
    data = ckpt.get("datamodule_hyper_parameters") or {}
    if isinstance(data, Mapping):
        for key, value in data.items():
            if key not in _INTERNAL and key not in _LINKED_DATA_ARGS:
                defaults[f"{subcommand}.data.{key}"] = value
    return defaults


def _model_params(config: Mapping[str, Any]) -> dict[str, Any]:
    """``{"net": {"class_path": c, "init_args": {...}}, "lr": ...}`` -> ``{"net": "ScaledMLP",
    "width": ..., "lr": ...}``; tuples as lists (YAML has no tuples)."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if key == "net" and isinstance(value, Mapping):
            out["net"] = str(value.get("class_path", "")).rsplit(".", 1)[-1]
            for arg, v in (value.get("init_args") or {}).items():
                out[arg] = list(v) if isinstance(v, tuple) else v
        elif key not in _INTERNAL:
            out[key] = list(value) if isinstance(value, tuple) else value
    return out


def config_differences(ckpt: Mapping[str, Any], config: Mapping[str, Any]) -> list[str]:
    """What the config's model asks for that the checkpoint's differs in, one phrase per key:
    ``"checkpoint has width 1024, config asks for 512"``. Keys the checkpoint does not record (a newer
    argument) are not compared; [] when the checkpoint records no model config."""
    recorded = model_config(ckpt)
    if recorded is None:
        return []
    theirs, ours = _model_params(recorded), _model_params(config)
    return [f"checkpoint has {key} {theirs[key]!r}, config asks for {ours[key]!r}"
            for key in theirs if key in ours and theirs[key] != ours[key]]


def state_differences(ckpt: Mapping[str, Any], model: torch.nn.Module) -> list[str]:
    """Parameters and buffers whose names or shapes differ between the checkpoint and ``model``."""
    saved: Mapping[str, Any] = ckpt["state_dict"]
    built = model.state_dict()
    out = [f"checkpoint has {name} of shape {tuple(saved[name].shape)}, the config builds "
           f"{tuple(built[name].shape)}" for name in saved
           if name in built and hasattr(saved[name], "shape") and saved[name].shape != built[name].shape]
    missing = [n for n in built if n not in saved]
    extra = [n for n in saved if n not in built]
    if missing:
        out.append(f"the checkpoint lacks {', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}")
    if extra:
        out.append(f"the model has no {', '.join(extra[:4])}{' ...' if len(extra) > 4 else ''}")
    return out


# ---------------------------------------------------------------------------- writing


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
