"""Tests of lightning_mem.cli.defaults: AlignmentMonitor and DivergenceGuard in every fit, even without a
config file; off only when asked; a config that names its own gets no duplicate."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from lightning_mem.callbacks import AlignmentMonitor, DivergenceGuard
from lightning_mem.cli.run import build_cli
from tests.helpers.exitcodes import run_cli

NO_CONFIG = ["--model.net", "lightning_mem.nets.ScaledMLP", "--model.net.init_std", "10",
             "--model.net.width", "32", "--data.dataset", "digits", "--trainer.enable_progress_bar", "false",
             "--trainer.enable_model_summary", "false", "--trainer.enable_checkpointing", "false"]


@pytest.mark.slow  # three fits
def test_a_fit_without_a_config_file_measures_alignment(tmp_path: Path) -> None:
    args = ["fit", *NO_CONFIG, "--trainer.max_epochs", "2", "--run.root", str(tmp_path), "--run.name", "n"]
    assert run_cli(*args, "--run.id", "a") == 0
    rows = list(csv.DictReader((tmp_path / "n/a/metrics.csv").open()))
    # digits: 1,437 training images / batch 256 -> 6 steps an epoch, 12 in all; every 10 steps: 0 and 10.
    measured = [r for r in rows if r.get("align/grad/hidden.weight")]
    assert [int(r["step"]) for r in measured] == [0, 10], rows
    assert [int(r["epoch"]) for r in measured] == [0, 1]
    for row in measured:
        assert -1.0 <= float(row["align/grad/hidden.weight"]) <= 1.0 and row["align/rep/act"]
    assert sum(bool(r.get("val/align/rep/act")) for r in rows) == 2  # one held-out value per epoch
    assert run_cli(*args, "--run.id", "b", "--run.alignment_every_n_steps", "4") == 0
    rows = list(csv.DictReader((tmp_path / "n/b/metrics.csv").open()))
    assert [int(r["step"]) for r in rows if r.get("align/grad/hidden.weight")] == [0, 4, 8]
    assert run_cli(*args, "--run.id", "c", "--run.alignment_monitor", "false") == 0
    header = (tmp_path / "n/c/metrics.csv").read_text().splitlines()[0]
    assert "align" not in header and "val/acc" in header


def test_a_config_naming_its_own_callbacks_gets_no_duplicates(tmp_path: Path) -> None:
    built = build_cli(["--config", "quickstart", "--run.root", str(tmp_path)], run=False)
    monitors = [c for c in built.trainer.callbacks if isinstance(c, AlignmentMonitor)]
    assert [m.every_n_steps for m in monitors] == [4]  # quickstart.yaml's own, not the default's 10
    assert sum(isinstance(c, DivergenceGuard) for c in built.trainer.callbacks) == 1
    plain = build_cli([*NO_CONFIG, "--run.root", str(tmp_path)], run=False)
    assert [m.every_n_steps for m in plain.trainer.callbacks if isinstance(m, AlignmentMonitor)] == [10]
    assert sum(isinstance(c, DivergenceGuard) for c in plain.trainer.callbacks) == 1
    off = build_cli([*NO_CONFIG, "--run.root", str(tmp_path), "--run.divergence_guard", "false",
                     "--run.alignment_monitor", "false"], run=False)
    assert not any(isinstance(c, (DivergenceGuard, AlignmentMonitor)) for c in off.trainer.callbacks)
