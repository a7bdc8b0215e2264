"""Checkpoints checked before they are used: loadable, and of the model the config builds.

A checkpoint written through the CLI carries the parsed model config (``hyper_parameters``: the net's
``class_path`` and ``init_args``, the loss, the optimizer settings; ``save_hyperparameters`` under
LightningCLI stores what was parsed) and the data config (``datamodule_hyper_parameters``). So
``validate``/``test`` can rebuild the model from ``--ckpt_path`` alone, and a config that asks for
another model is refused with what differs ("checkpoint has width 1024, config asks for 512") before
any run folder is touched. Checkpoints without that record (written in a notebook) are still checked
parameter by parameter against the built model.
"""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

# Internal keys of Lightning's hparams record, and values the CLI links from the dataset or the run seed
# (given again they would clash with the link; they are compared after it is applied).
_INTERNAL = ("_instantiator", "_class_path")
_LINKED_NET_ARGS = ("num_classes", "input_shape")
_LINKED_DATA_ARGS = ("seed",)


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: unreadable, not Lightning's, or of another model."""


def load_checkpoint(path: Path, key: str = "ckpt_path") -> dict[str, Any]:
    """The checkpoint at ``path`` (on the CPU, tensors and plain data only), or :class:`CheckpointError`
    naming the file and what is wrong with it."""
    fix = "give a .ckpt written by `lightning-mem fit` (a run's checkpoints/last.ckpt or epoch<k>.ckpt)"
    if not path.is_file():
        raise CheckpointError(f"{key}={str(path)!r}: no such checkpoint file; {fix}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile) as err:
        text = str(err).strip()
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
    return ckpt


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


def _flat(config: Mapping[str, Any]) -> dict[str, Any]:
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
    theirs, ours = _flat(recorded), _flat(config)
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
