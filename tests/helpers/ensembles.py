"""``lightning-mem ensemble fit`` of a small grid on the digits, and the same points as single ``fit``
runs, in this process (tests/ensemble/)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning_mem.ensemble.plan import read_pack
from tests.helpers.exitcodes import run_cli

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = str(REPO / "configs/quickstart.yaml")
# The quickstart on the digits, width 16, 2 epochs: 12 steps.
BASE = ["--config", QUICKSTART, "--data.dataset", "digits", "--model.net.width", "16",
        "--trainer.max_epochs", "2", "--trainer.enable_progress_bar", "false"]


def lm(*argv: str) -> int:
    """``lightning-mem ARGV`` in this process; its exit code."""
    return run_cli(*argv)


def packed_and_single(root: Path, single_root: Path, args: list[str], *members: str, name: str = "g",
                      ensemble_id: str = "e") -> tuple[int, list[dict[str, Any]]]:
    """``ensemble fit ARGS --run.root ROOT --run.name NAME --run.id ID MEMBERS`` (e.g. ``--ensemble.seed
    0,1``), then every member's own ``fit`` arguments as a single run under ``single_root`` (each must
    exit 0): the ensemble's exit code and its members (pack.json)."""
    code = lm("ensemble", "fit", *args, "--run.root", str(root), "--run.name", name, "--run.id", ensemble_id,
              *members)
    pack = read_pack(root / name / ensemble_id)
    for member in pack:
        assert lm("fit", *[str(single_root) if a == str(root) else a for a in member["argv"]]) == 0
    return code, pack
