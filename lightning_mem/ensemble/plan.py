"""Which runs of a sweep can share one process, and how they are grouped into packs (``sweep local --pack``).

Torch-free: the sweep runner plans its packs without importing torch or Lightning.

A run can join a pack when

- its command is the fit CLI (``lightning-mem fit ...`` or ``python -m lightning_mem fit ...``): the pack
  parses each member's own ``fit`` arguments (:mod:`lightning_mem.ensemble.members`), so every member gets
  the config its single run would get;
- its network is ``lightning_mem.nets.ScaledMLP``, read as the CLI merges it: the ``--config`` files in
  order, then the command line and the run's parameters (last wins). A ConvNet, a torchvision net, or a
  net that cannot be read this way runs alone, as without ``--pack``.

Runs whose parameters are equal except for the packable keys (:data:`PACKABLE_PARAMS`: σ, seed, lr, loss
scale, label seed, α, weight decay, momentum, betas) form a group; :func:`plan_packs` cuts each group into
packs of at most ``pack_size`` members and, when there are fewer packs than parallel slots, splits the
largest ones so that every slot gets work. A pack of one member is an ordinary single run.

A pack's folder ``<sweep folder>/<pack id>/`` holds ``pack.json`` (each member's run id and ``fit``
arguments), the ensemble's checkpoints (``checkpoints/``, which resume it) and its ``output.log``; it has
no ``metrics.csv``, so ``report`` and ``dashboard`` never take it for a run.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from lightning_mem import rundir, safeyaml
from lightning_mem.cli.argv import fit_args, options
from lightning_mem.cli.packaged import resolve_config

# The one table of what the members of an ensemble may differ in: the field of MemberSpec
# (lightning_mem.ensemble.stacked) -> (the ``fit`` option that sets it, the key of the parsed config that
# holds it). Order: the order of ``--ensemble.<key>`` combinations (the last varies fastest).
PACKABLE = {
    "init_std": ("--model.net.init_std", "model.net.init_args.init_std"),
    "seed": ("--seed_everything", "seed_everything"),
    "lr": ("--model.lr", "model.lr"),
    "loss_scale": ("--model.loss_scale", "model.loss_scale"),
    "label_seed": ("--data.label_seed", "data.label_seed"),
    "init_scale": ("--model.net.init_scale", "model.net.init_args.init_scale"),
    "weight_decay": ("--model.weight_decay", "model.weight_decay"),
    "momentum": ("--model.momentum", "model.momentum"),
    "betas": ("--model.betas", "model.betas"),
}
# Derived views: ``--ensemble.<field>`` -> fit option; dotted keys a sweep parameter (or a stored config)
# may use -> field; the parsed config's keys.
# (``betas`` is a pair: packable from a sweep's parameters, not listed by ``--ensemble.<key> v1,v2``.)
ENSEMBLE_KEYS = {field: option for field, (option, _) in PACKABLE.items() if field != "betas"}
PACKABLE_PARAMS = {key: field for field, (option, stored) in PACKABLE.items() for key in (option[2:], stored)}
PACKABLE_CONFIG = tuple(stored for _, stored in PACKABLE.values())
# The one architecture an ensemble stacks, as a command line or YAML may name it before anything is parsed
# (torch-free here; tests/ensemble/test_plan.py checks that each path resolves to the ScaledMLP class).
STACKED_NET_PATHS = ("lightning_mem.nets.ScaledMLP", "lightning_mem.nets.paper.ScaledMLP", "ScaledMLP")
PACK_JSON = "pack.json"
PACK_PREFIX = "pack-"


def _class_of(net: Any) -> str | None:
    if isinstance(net, dict):
        net = net.get("class_path")
    return str(net) if isinstance(net, str) and net else None


def net_class(args: Sequence[str], params: dict[str, Any]) -> str | None:
    """The ``model.net`` class a fit with ``args`` (after ``fit``) and sweep ``params`` would build, or None
    when it cannot be read without running the CLI (an unreadable config file, an interpolation)."""
    found: str | None = None
    for key, value in options(args):
        if key == "--config":
            path = Path(resolve_config(value))  # a packaged config's name: its file
            if not path.is_file():  # the run's args.json, written at its start: its values are the params
                continue
            try:
                loaded = safeyaml.load(path.read_text(), str(path))
            except (OSError, UnicodeDecodeError, yaml.YAMLError):
                return None
            model = loaded.get("model") if isinstance(loaded, dict) else None
            if isinstance(model, dict) and "net" in model:
                found = _class_of(model["net"])
        elif key in ("--model.net", "--model.net.class_path"):
            found = value
    for key in ("model.net", "model.net.class_path"):
        if key in params:
            found = _class_of(params[key])
    return found


def unpackable_reason(command: Sequence[str], params: dict[str, Any]) -> str | None:
    """Why the run of ``command`` with ``params`` cannot join a pack, or None when it can."""
    args = fit_args(command)
    if args is None:
        return "its command is not `lightning-mem fit`"
    net = net_class(args, params)
    short = net.rsplit(".", 1)[-1] if net else None
    if net not in STACKED_NET_PATHS:
        return f"its net is {short or 'not known before it starts'}; an ensemble stacks ScaledMLP only"
    return None


def group_key(params: dict[str, Any]) -> str:
    """Runs with equal keys differ only in packable keys and may share a pack."""
    fixed = {k: v for k, v in params.items() if k not in PACKABLE_PARAMS}
    return json.dumps(fixed, sort_keys=True, default=str)


def _split(items: list[str], parts: int) -> list[list[str]]:
    """``items`` in order, cut into ``parts`` runs of sizes differing by at most one."""
    size, extra = divmod(len(items), parts)
    out, start = [], 0
    for i in range(parts):
        end = start + size + (i < extra)
        out.append(items[start:end])
        start = end
    return out


def plan_packs(groups: Sequence[list[str]], slots: int, pack_size: int | None) -> list[list[str]]:
    """Cut each group (run ids in sweep order) into packs of at most ``pack_size`` members (no limit when
    None), then, while there are fewer packs than ``slots``, cut the group whose packs are largest into one
    more pack, so that every parallel slot gets work. Sizes within a group differ by at most one."""
    parts = [math.ceil(len(g) / pack_size) if pack_size else 1 for g in groups]
    while sum(parts) < slots:
        sizes = [math.ceil(len(g) / n) for g, n in zip(groups, parts, strict=True)]
        largest = max(range(len(groups)), key=lambda i: sizes[i], default=None)
        if largest is None or sizes[largest] < 2:
            break
        parts[largest] += 1
    return [pack for g, n in zip(groups, parts, strict=True) for pack in _split(list(g), n)]


def pack_id(run_ids: Sequence[str]) -> str:
    """The folder name of a pack: ``pack-<hash of its members' run ids>``, the same on every rerun."""
    return PACK_PREFIX + hashlib.sha1("\n".join(run_ids).encode()).hexdigest()[:10]


def write_pack(pack_dir: Path, members: Sequence[dict[str, Any]]) -> None:
    """``pack.json``: ``{"members": [{"run_id": ..., "argv": [fit arguments ...]}, ...]}``."""
    rundir.atomic_write_json(pack_dir / PACK_JSON, {"members": [dict(m) for m in members]})


def read_pack(pack_dir: Path) -> list[dict[str, Any]]:
    """The members of ``pack.json``; :class:`~lightning_mem.rundir.RunDirError` naming the file if it is
    not one."""
    path = pack_dir / PACK_JSON
    fix = "it is written by `lightning-mem sweep local --pack` or `lightning-mem ensemble fit`"
    if pack_dir.is_file():
        raise rundir.RunDirError(f"--pack {pack_dir} is a file; give the folder that holds its {PACK_JSON} "
                                 f"({pack_dir.parent if pack_dir.name == PACK_JSON else '<pack folder>'})")
    if not path.is_file():
        raise rundir.RunDirError(f"{path}: no such file; {fix}")
    data = rundir.read_json(path, "pack file", fix)
    members = data.get("members") if isinstance(data, dict) else None
    ok = isinstance(members, list) and all(
        isinstance(m, dict) and isinstance(m.get("run_id"), str) and isinstance(m.get("argv"), list)
        and all(isinstance(a, str) for a in m["argv"]) for m in members)
    if not ok or not members:
        raise rundir.RunDirError(f"{path}: not a pack file (expected {{\"members\": [{{\"run_id\": ..., "
                                 f"\"argv\": [...]}}, ...]}} with at least one member); {fix}")
    return members
