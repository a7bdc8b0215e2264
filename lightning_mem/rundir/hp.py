"""``hp.json``: the canonical hyperparameters every run carries, however it was launched."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lightning_mem.errors import RunDirError
from lightning_mem.rundir.files import atomic_write_json, read_json
from lightning_mem.rundir.layout import HP

HP_KEYS = (
    "run_name", "net", "init_std", "width", "activation", "loss", "loss_scale", "loss_scale_with_init", "lr",
    "dataset", "label_noise", "label_noise_mode", "train_subset", "batch_size", "max_epochs", "seed",
    "depth", "bias", "init_scale", "init_rule", "optimizer", "momentum", "weight_decay",
)
"""The canonical hyperparameters every run carries, however it was launched: ``hp.json`` in the run
folder and the ``hp`` block of its W&B config. Dashboards and reports group on these."""


def _get(tree: Mapping[str, Any], dotted: str) -> Any:
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def canonical_hp(config: Mapping[str, Any]) -> dict[str, Any]:
    """The :data:`HP_KEYS` of a run from its full nested config (``config.yaml``'s content).

    ``net`` is the class name of ``model.net``; ``init_std`` None means Glorot init; ``seed`` is
    ``seed_everything``. Keys the config lacks are None.
    """
    net = _get(config, "model.net")
    net_args = net.get("init_args", {}) if isinstance(net, Mapping) else {}
    class_path = net.get("class_path") if isinstance(net, Mapping) else None
    seed = config.get("seed_everything")
    return {
        "run_name": _get(config, "run.name"),
        "net": str(class_path).rsplit(".", 1)[-1] if class_path else None,
        "init_std": net_args.get("init_std"),
        "width": net_args.get("width"),
        "activation": net_args.get("activation"),
        "loss": _get(config, "model.loss"),
        "loss_scale": _get(config, "model.loss_scale"),
        "loss_scale_with_init": _get(config, "model.loss_scale_with_init"),
        "lr": _get(config, "model.lr"),
        "dataset": _get(config, "data.dataset"),
        "label_noise": _get(config, "data.label_noise"),
        "label_noise_mode": _get(config, "data.label_noise_mode"),
        "train_subset": _get(config, "data.train_subset"),
        "batch_size": _get(config, "data.batch_size"),
        "max_epochs": _get(config, "trainer.max_epochs"),
        "seed": seed if isinstance(seed, int) and not isinstance(seed, bool) else None,
        "depth": net_args.get("depth"),
        "bias": net_args.get("bias"),
        "init_scale": net_args.get("init_scale"),
        "init_rule": net_args.get("init_rule"),
        "optimizer": _get(config, "model.optimizer"),
        "momentum": _get(config, "model.momentum"),
        "weight_decay": _get(config, "model.weight_decay"),
    }


def write_hp(run_dir: Path, hp: Mapping[str, Any]) -> None:
    atomic_write_json(run_dir / HP, dict(hp))


def read_hp(run_dir: Path) -> dict[str, Any] | None:
    """``hp.json`` of a run; None when absent (runs of older versions), :class:`RunDirError` if corrupt."""
    path = run_dir / HP
    if not path.is_file():
        return None
    hp = read_json(path, "hp.json", "delete it: the next fit of this run rewrites it")
    if not isinstance(hp, dict):
        raise RunDirError(f"{path}: expected a JSON object of hyperparameters, got {type(hp).__name__}")
    return hp


# ---------------------------------------------------------------------------- manifest.json
