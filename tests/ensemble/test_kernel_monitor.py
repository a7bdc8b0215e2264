"""``ensemble fit`` with a KernelMonitor: each member logs its single run's kernel keys and values."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pandas as pd
import pytest

from tests.helpers.ensembles import BASE, REPO, packed_and_single

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
