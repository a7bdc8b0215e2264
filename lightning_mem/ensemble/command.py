"""``lightning-mem ensemble fit``: K runs of one ``ScaledMLP`` config, differing in σ, seed, lr, loss scale or
label seed, trained as one ensemble in one process — each member a run folder exactly like its single run's.

    lightning-mem ensemble fit --config configs/quickstart.yaml \\
        --ensemble.init_std 0.01,10 --ensemble.seed 0,1 [any lightning-mem fit option] [--run.name N]
    lightning-mem ensemble fit ... --ckpt_path last      # resume the newest ensemble of that run.name
    lightning-mem ensemble fit --pack DIR [--ckpt_path last]   # the members of DIR/pack.json (sweep --pack)

``--ensemble.<key> v1,v2,...`` (keys: :data:`ENSEMBLE_KEYS`) lists a packable key's values; the members are
every combination, in the order the keys are given (the last varies fastest). Member k runs exactly
``lightning-mem fit <the other options> --<key> <value> ... --run.id <ensemble id>_<k>_<values>`` in its
folder ``<run.root>/<run.name>/<member id>/`` (``metrics.csv``, ``config.yaml``, ``hp.json``,
``hparams.yaml``, ``status.json``, ``checkpoints/last.ckpt``, ``wandb/``), held under its lock for the
whole fit. The ensemble's own folder ``<run.root>/<run.name>/<ensemble id>/`` (``--run.id``, default a new
id) holds ``pack.json`` (each member's ``fit`` arguments) and the ensemble's checkpoints, from which
``--ckpt_path last`` continues every member that had not ended, bitwise, carrying each ``metrics.csv`` over
as a single run's resume does.

Exit codes: 0 every member finished; 3 the fit ended and at least one member diverged (its status.json
says so; the others finished); 2 bad input (nothing changed); 143 stopped by SIGTERM (resume with
``--ckpt_path last``); 1 an unexpected error.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightning_mem import rundir
from lightning_mem.checks import path_arg
from lightning_mem.ensemble import extend as pack_extend
from lightning_mem.ensemble.plan import ENSEMBLE_KEYS, PACK_JSON, read_pack
from lightning_mem.errors import EXIT_BAD_INPUT, UsageError

log = logging.getLogger(__name__)

# --ensemble.<key> -> the fit option it sets for each member


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lightning-mem ensemble", allow_abbrev=False,
        description="Train K ScaledMLP runs differing in packable keys as one ensemble in one process; each "
        "member writes its own run folder like `lightning-mem fit`.",
        epilog="Every other option is a `lightning-mem fit` option (see `lightning-mem fit --help`), the "
        "same for every member.")
    sub = p.add_subparsers(dest="command", required=True)
    fit = sub.add_parser(
        "fit", allow_abbrev=False, help="fit an ensemble",
        epilog="Every other option is a `lightning-mem fit` option, the same for every member.")
    for key, option in ENSEMBLE_KEYS.items():
        fit.add_argument(f"--ensemble.{key}", dest=key, metavar="V1,V2,...",
                         help=f"values of {option[2:]} (one member per combination of the keys given)")
    fit.add_argument("--run.id", dest="run_id", help="the ensemble's id (default: a new one); members are "
                     "<id>_<k>_<values>")
    fit.add_argument("--ckpt_path", help="`last` (the newest ensemble of this run.name, or --run.id's) or a "
                     "checkpoint under <ensemble folder>/checkpoints/: continue it")
    fit.add_argument("--pack", metavar="DIR", type=path_arg,
                     help="train the members listed in DIR/pack.json (what `lightning-mem sweep local "
                     "--pack` writes); no other fit option")
    return p


def grid(options: dict[str, str | None]) -> list[list[str]]:
    """Each member's extra ``fit`` options: every combination of the comma-separated values given."""
    axes = []
    for key, text in options.items():
        if text is None:
            continue
        values = [v.strip() for v in text.split(",")]
        if not text.strip() or any(not v for v in values):
            example = "0,1" if "seed" in key else "0.01,10"
            raise UsageError(f"--ensemble.{key} {text!r}: give comma-separated values, e.g. --ensemble.{key} "
                             f"{example} (an ensemble needs at least one member)")
        axes.append([(key, v) for v in values])
    return [[arg for key, value in combo for arg in (ENSEMBLE_KEYS[key], value)]
            for combo in itertools.product(*axes)]


def _member_id(pack_id: str, k: int, extra: list[str]) -> str:
    values = "_".join(f"{opt.lstrip('-').rsplit('.', 1)[-1].replace('seed_everything', 'seed')}{val}"
                      for opt, val in zip(extra[::2], extra[1::2], strict=True))
    readable = "".join(c for c in values if c.isalnum() or c in "._=+-")
    return f"{pack_id}_{k:02d}" + (f"_{readable}" if readable else "")[:60]


def _ensemble_dir(fit_args: list[str], pack_id: str | None, ckpt: str | None) -> Path:
    """``<run.root>/<run.name>/<ensemble id>``, the root and name as the fit CLI resolves them."""
    from lightning_mem.ensemble.members import parse_member

    probe = parse_member("probe", [*fit_args, "--run.id", "probe"])  # nothing is written
    base = probe.run_dir.parent
    if pack_id is not None:
        return base / rundir.check_name("run.id", pack_id)
    if ckpt == "last":
        found = [p for p in base.glob(f"*/{rundir.CHECKPOINTS}/{rundir.LAST_CKPT}")
                 if (p.parent.parent / PACK_JSON).is_file()]
        found.sort(key=lambda p: p.stat().st_mtime)
        if not found:
            raise UsageError(f"--ckpt_path last: no ensemble with a checkpoint under {base.resolve()} (<id>/"
                             f"{PACK_JSON} and <id>/checkpoints/last.ckpt); give --run.id of the ensemble")
        return found[-1].parent.parent
    from lightning_mem.cli.runfolder import new_run_id

    return base / new_run_id()


def _direct(args: argparse.Namespace, fit_args: list[str]) -> tuple[Path, list[dict[str, Any]], bool]:
    """(ensemble folder, members, whether pack.json is to be written) of the direct form."""
    ckpt = args.ckpt_path
    pack_id = args.run_id
    if ckpt not in (None, "last"):
        pack_id = pack_id or _from_checkpoint(Path(ckpt)).name
    pack_dir = _ensemble_dir(fit_args, pack_id, ckpt)
    members = []
    for k, extra in enumerate(grid({key: getattr(args, key) for key in ENSEMBLE_KEYS})):
        run_id = _member_id(pack_dir.name, k, extra)
        members.append({"run_id": run_id, "argv": [*fit_args, *extra, "--run.id", run_id]})
    if ckpt is None:
        return pack_dir, members, True
    recorded = read_pack(pack_dir)
    ids = [m["run_id"] for m in members]
    if [m["run_id"] for m in recorded] != ids:
        raise UsageError(f"{pack_dir / PACK_JSON}: the ensemble there has the members "
                         f"{[m['run_id'] for m in recorded]}; these options give {ids}; resume it with the "
                         "options that started it, or `--pack DIR --ckpt_path last`")
    refused, extended = pack_extend.differences(recorded, members)
    if refused:
        raise UsageError(f"{pack_dir / PACK_JSON}: the ensemble there was started with other options "
                         f"({'; '.join(refused)}); a resume may change only the "
                         f"{', '.join(pack_extend.EXTENDABLE)}* options; resume it with the options that "
                         "started it, or `--pack DIR --ckpt_path last`")
    return pack_dir, members, bool(extended)  # extended (a larger max_epochs): record the new arguments


def _from_checkpoint(path: Path) -> Path:
    pack_dir = path.parent.parent
    if path.parent.name != rundir.CHECKPOINTS or not (pack_dir / PACK_JSON).is_file():
        raise UsageError(f"--ckpt_path {path}: an ensemble resumes from `last` or a checkpoint under "
                         f"<ensemble folder>/{rundir.CHECKPOINTS}/ (next to its {PACK_JSON})")
    return pack_dir


def _checkpoint(pack_dir: Path, ckpt: str | None) -> Path | None:
    if ckpt is None:
        return None
    path = rundir.last_checkpoint(pack_dir) if ckpt == "last" else Path(ckpt)
    if ckpt != "last" and _from_checkpoint(path).resolve() != pack_dir.resolve():
        raise UsageError(f"--ckpt_path {ckpt} is not a checkpoint of the ensemble in {pack_dir}")
    if not path.is_file():
        raise UsageError(f"--ckpt_path {ckpt}: no checkpoint {path} (the ensemble wrote none yet, or ran "
                         "with enable_checkpointing false); start it again without --ckpt_path")
    return path


def run(argv: Sequence[str]) -> int:
    """``lightning-mem ensemble fit ...``; returns the exit code (see the module docstring)."""
    args, fit_args = parser().parse_known_args(list(argv))
    try:
        stray = [a for a in fit_args if a.startswith("--ensemble.")]
        if stray:
            key = stray[0].split("=", 1)[0]
            raise UsageError(f"{key}: not a packable key; an ensemble's members may differ in "
                             f"{', '.join(f'--ensemble.{k}' for k in ENSEMBLE_KEYS)} only (give any other "
                             f"option once, for every member, e.g. --{key[len('--ensemble.'):]} ...)")
        if args.pack is not None:
            if fit_args or any(getattr(args, k) is not None for k in ENSEMBLE_KEYS) or args.run_id:
                raise UsageError(f"--pack {args.pack} takes its members from {PACK_JSON}; give no other "
                                 "option but --ckpt_path")
            pack_dir, members, new = Path(args.pack), read_pack(Path(args.pack)), False
        else:
            pack_dir, members, new = _direct(args, fit_args)
        ckpt = _checkpoint(pack_dir, args.ckpt_path)
        from lightning_mem.ensemble.pack import prepare_pack  # torch and Lightning from here on

        pack = prepare_pack(pack_dir, members, ckpt, write_members=new)
    except ValueError as err:  # UsageError, PackError, RunDirError (LockedError), CheckpointError
        log.error("error: %s", err)
        return EXIT_BAD_INPUT
    return pack.fit()


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``lightning-mem ensemble ...``."""
    ours = logging.getLogger("lightning_mem")  # our lines on stderr (Lightning's have their own handler)
    if not logging.getLogger().handlers and not ours.handlers:
        ours.addHandler(logging.StreamHandler())
        ours.setLevel(logging.INFO)
    code = run(sys.argv[1:] if argv is None else argv)
    if code:
        raise SystemExit(code)
