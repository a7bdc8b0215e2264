"""Run folders written by 0.1.0 (tests/fixtures/written_v0_1) still work with today's code.

Their ``config.yaml`` names the public class paths (``lightning_mem.nets.ScaledMLP``,
``lightning_mem.callbacks.AlignmentMonitor``, ``lightning_mem.loggers.RunCSVLogger``) and their checkpoints
the network's config: ``validate --ckpt_path`` reads the single run's checkpoint, ``fit --ckpt_path last``
and ``ensemble fit --pack ... --ckpt_path last`` resume both past their last epoch, and ``report`` and
``dashboard html`` read every folder. A move of a public name breaks one of these.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "written_v0_1"
LM = [sys.executable, "-m", "lightning_mem"]
SHRINK = ["--data.dataset", "digits", "--trainer.enable_progress_bar", "false"]


@pytest.fixture
def old_runs(tmp_path: Path) -> Path:
    shutil.copytree(FIXTURE, tmp_path / "old")
    return tmp_path / "old"


def _run(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "WANDB_MODE": "disabled", "WANDB_DIR": str(cwd), "PYTHONWARNINGS": "ignore"}
    return subprocess.run([*LM, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_the_fixture_names_the_public_class_paths() -> None:
    text = (FIXTURE / "runs/single/v0/config.yaml").read_text()
    for path in ("lightning_mem.nets.ScaledMLP", "lightning_mem.callbacks.AlignmentMonitor",
                 "lightning_mem.loggers.RunCSVLogger"):
        assert f"class_path: {path}" in text


@pytest.mark.slow
def test_old_single_run_validates_and_resumes(old_runs: Path) -> None:
    run = old_runs / "runs/single/v0"
    done = _run(old_runs, "validate", "--config", str(run / "config.yaml"),
                "--ckpt_path", str(run / "checkpoints/last.ckpt"), "--run.id", "val0")
    assert done.returncode == 0, done.stderr[-3000:]
    before = pd.read_csv(run / "metrics.csv")
    done = _run(old_runs, "fit", "--config", "quickstart.yaml", *SHRINK, "--model.net.width", "16",
                "--trainer.max_epochs", "3", "--run.root", "runs", "--run.name", "single", "--run.id", "v0",
                "--ckpt_path", "last")
    assert done.returncode == 0, done.stderr[-3000:]
    after = pd.read_csv(run / "metrics.csv")
    assert len(after) > len(before) and after["epoch"].max() == 2  # epochs 0, 1 kept; epoch 2 added
    pd.testing.assert_frame_equal(after.iloc[: len(before)][before.columns], before, check_dtype=False)
    assert json.loads((run / "status.json").read_text())["status"] == "finished"


@pytest.mark.slow
def test_old_ensemble_resumes_from_its_pack(old_runs: Path) -> None:
    """The pack's checkpoint and pack.json load; its members had finished, so their files stay as they
    were."""
    members = [old_runs / "runs/pack" / m for m in ("p0_00_init_std0.01", "p0_01_init_std10")]
    before = [(m / "metrics.csv").read_bytes() for m in members]
    done = _run(old_runs, "ensemble", "fit", "--pack", "runs/pack/p0", "--ckpt_path", "last")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Restored all states from the checkpoint at runs/pack/p0/checkpoints/last.ckpt" in done.stderr
    assert [(m / "metrics.csv").read_bytes() for m in members] == before


def test_old_runs_report_and_dashboard(old_runs: Path) -> None:
    done = _run(old_runs, "report", "runs", "--out", "report")
    assert done.returncode == 0, done.stderr[-3000:]
    table = pd.read_csv(old_runs / "report" / "runs.csv")
    assert len(table) == 3
    done = _run(old_runs, "dashboard", "html", "runs", "--out", "dash.html")
    assert done.returncode == 0, done.stderr[-3000:]
    page = (old_runs / "dash.html").read_text()
    for run_id in ("v0", "p0_00_init_std0.01", "p0_01_init_std10"):
        assert run_id in page
