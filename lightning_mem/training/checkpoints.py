"""Checkpoints checked before they are used: loadable, and of the model the config builds.

A checkpoint written through the CLI carries the parsed model config (``hyper_parameters``: the net's
``class_path`` and ``init_args``, the loss, the optimizer settings; ``save_hyperparameters`` under
LightningCLI stores what was parsed) and the data config (``datamodule_hyper_parameters``). So
``validate``/``test`` can rebuild the model from ``--ckpt_path`` alone, and a config that asks for
another model is refused with what differs ("checkpoint has width 1024, config asks for 512") before
any run folder is touched. Checkpoints without that record (written in a notebook) are still checked
parameter by parameter against the built model.

Writing them (atomic files, published after their epoch's rows, ``last.ckpt`` a hard link) lives in
:mod:`lightning_mem.training.checkpoint_io`; its names are re-exported here.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from lightning_mem import _compat
from lightning_mem.errors import CheckpointError

# Writing lives in checkpoint_io; these names stay importable from here (the CLI and tests use them).
from lightning_mem.training.checkpoint_io import TMP_SUFFIX as TMP_SUFFIX
from lightning_mem.training.checkpoint_io import CheckpointPublisher as CheckpointPublisher
from lightning_mem.training.checkpoint_io import RunCheckpointIO as RunCheckpointIO
from lightning_mem.training.checkpoint_io import install_checkpoint_io as install_checkpoint_io

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
