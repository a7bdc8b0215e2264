"""``ensemble fit`` with a KernelMonitor: each member logs its single run's kernel keys and values."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pandas as pd
import pytest

from tests.helpers.ensembles import BASE, REPO, lm, packed_and_single

ARGS = [*BASE, "--config", str(REPO / "configs/kernels/monitor.yaml"),
        "--trainer.callbacks.init_args.probe_size", "50",
        "--trainer.callbacks.init_args.train_every_n_steps", "5"]


@pytest.mark.slow  # two fits and a pack of two: ~15 s on the 2 shared cores
def test_members_log_the_kernel_keys_and_values_of_their_single_runs(tmp_path: Path) -> None:
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    packed, single = tmp_path / "packed", tmp_path / "single"
    code, members = packed_and_single(packed, single, ARGS, "--ensemble.init_std", "0.01,10",
                                      "--ensemble.seed", "0")
    assert code == 0
    for member in members:
        a = pd.read_csv(packed / "g" / member["run_id"] / "metrics.csv")
        b = pd.read_csv(single / "g" / member["run_id"] / "metrics.csv")
        ours = [k for k in b.columns if k.startswith(("kernel/", "train/kernel/", "weights/", "act/",
                                                       "stiffness/class_matrix", "train/act/"))]
        assert {"kernel/target_alignment", "kernel/velocity", "weights/distance_from_init/hidden.weight",
                "act/pattern_change", "stiffness/class_matrix/0_1",
                "train/kernel/distance_from_init"} <= set(ours)
        assert set(ours) <= set(a.columns)
        for key in ours:
            x, y = a[["step", "epoch", key]].dropna(), b[["step", "epoch", key]].dropna()
            assert x[["step", "epoch"]].values.tolist() == y[["step", "epoch"]].values.tolist(), key
            for u, v in zip(x[key], y[key], strict=True):
                assert math.isclose(u, v, rel_tol=1e-4, abs_tol=1e-6), (key, u, v)


@pytest.mark.slow  # a fit and an ensemble of 2 with W&B offline, then report: 95 s on the loaded cores
def test_kernel_keys_reach_wandb_and_report_for_single_runs_and_members(tmp_path: Path) -> None:
    """Every kernel key of metrics.csv is in the offline W&B run's history with the same rows, for a single
    run and for each member; ``report`` over both draws kernel_curves.png."""
    import csv
    import os
    import subprocess
    import sys

    from tests.training.test_loggers import _history, read_wandb_records

    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env |= {"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path / "wandb_dir"), "WANDB_SILENT": "true",
            "WANDB_CACHE_DIR": str(tmp_path / "cache"), "WANDB_CONFIG_DIR": str(tmp_path / "config")}
    common = [*ARGS, "--config", str(REPO / "configs/logger/wandb.yaml"),
              "--run.root", str(tmp_path / "runs"), "--run.name", "k"]
    for cmd in (["fit", *common, "--run.id", "single", "--model.net.init_std", "1"],
                ["ensemble", "fit", *common, "--run.id", "e", "--ensemble.init_std", "0.01,10"]):
        proc = subprocess.run([sys.executable, "-m", "lightning_mem", *cmd], env=env, cwd=tmp_path,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
    runs = sorted(p for p in (tmp_path / "runs" / "k").iterdir() if (p / "metrics.csv").is_file())
    assert [p.name for p in runs] == ["e_00_init_std0.01", "e_01_init_std10", "single"]
    for run_dir in runs:
        with (run_dir / "metrics.csv").open(newline="") as fh:
            rows = [{k: float(v) for k, v in row.items() if v} for row in csv.DictReader(fh)]
        keys = {k for r in rows for k in r}
        assert {"kernel/target_alignment", "kernel/distance_from_init", "kernel/velocity",
                "weights/distance_from_init/hidden.weight", "act/pattern_change",
                "stiffness/class_matrix/diag_mean", "stiffness/class_matrix/3_5",
                "train/kernel/target_alignment", "train/act/pattern_change"} <= keys, run_dir.name
        (path,) = (run_dir / "wandb").glob("offline-run-*/run-*.wandb")
        records = read_wandb_records(path)
        history = [{k: v for k, v in h.items() if not k.startswith("_")} for h in _history(records)]
        for h in history:
            h["step"] = h.pop("trainer/global_step")
        assert history == rows, run_dir.name
    assert lm("report", str(tmp_path / "runs" / "k"), "--out", str(tmp_path / "report")) == 0
    assert (tmp_path / "report" / "kernel_curves.png").stat().st_size > 10_000
