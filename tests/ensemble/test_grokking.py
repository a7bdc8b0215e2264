"""Grokking metrics per member, and the Omnigrok α sweep (sweeps/grokking_alpha.yaml) run packed.

The reference is the single run: ``GrokkingMonitor`` on ``lightning-mem fit`` of the same point. A packed
sweep's members must log the same ``weight_norm`` / ``grok/fit_step`` rows and write the same
``grokking.json`` (steps equal, norms and accuracies to the ensemble's tolerance, see
tests/ensemble/test_train.py).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from lightning_mem.ensemble.grokking import EnsembleGrokkingMonitor, member_weight_norms
from lightning_mem.ensemble.stacked import MemberSpec, StackedMLP
from lightning_mem.sweeps import command as sweep
from lightning_mem.training.grokking import GROKKING_JSON, weight_norm

REPO = Path(__file__).resolve().parents[2]
RTOL, ATOL = 1e-4, 1e-6


def test_member_weight_norms_are_each_single_nets_norm() -> None:
    members = [MemberSpec(0, None, init_scale=1.0), MemberSpec(1, None, init_scale=8.0), MemberSpec(2, 0.5)]
    net = StackedMLP.from_members(members, (1, 8, 8), 10, 12, "relu", depth=2, bias=True, init_rule="torch")
    norms = member_weight_norms(net).tolist()
    for k in range(3):
        assert norms[k] == pytest.approx(weight_norm(net.member(k)), rel=1e-12)
    assert norms[1] > 5 * norms[0]  # α = 8 multiplies every parameter of the same-rule init


def test_bad_thresholds_are_refused_as_the_single_monitor_refuses_them() -> None:
    with pytest.raises(ValueError, match=r"train_threshold=1.5 must be a number in \[0, 1\]"):
        EnsembleGrokkingMonitor(train_threshold=1.5)


def _small_sweep(tmp_path: Path) -> Path:
    """sweeps/grokking_alpha.yaml as written, with α ∈ {1, 8} × 2 seeds and a net and run cut to seconds."""
    spec = yaml.safe_load((REPO / "sweeps/grokking_alpha.yaml").read_text())
    spec["command"] = [str(REPO / c) if c.startswith("configs/") else c for c in spec["command"]]
    spec["parameters"]["model.net.init_args.init_scale"] = {"values": [1.0, 8.0]}
    spec["parameters"]["seed_everything"] = {"values": [0, 1]}
    spec["parameters"] |= {"trainer.max_steps": {"value": 20}, "model.net.init_args.width": {"value": 16},
                           "trainer.accelerator": {"value": "cpu"}}
    path = tmp_path / "grokking_alpha.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _run(path: Path, root: Path, *extra: str) -> dict[str, Any]:
    argv = ["local", str(path), "--root", str(root), "--max-parallel", "1", "--wandb-mode", "disabled",
            *extra]
    assert sweep.run(argv) == 0
    return json.loads((root / path.stem / "manifest.json").read_text())["runs"]


@pytest.mark.slow  # 4 single fits and one pack of the Omnigrok config cut to 20 steps: ~1 min on 2 cores
def test_the_grokking_sweep_runs_packed_as_its_single_runs(tmp_path: Path) -> None:
    path = _small_sweep(tmp_path)
    packed = _run(path, tmp_path / "packed", "--pack")
    plain = _run(path, tmp_path / "plain")
    assert packed.keys() == plain.keys() and len(packed) == 4
    assert len({r["pack"] for r in packed.values()}) == 1  # α and seed are packable: one pack of 4
    for rid, entry in packed.items():
        a, b = Path(entry["run_dir"]), Path(plain[rid]["run_dir"])
        assert entry["status"] == plain[rid]["status"] == "finished"
        got, want = (json.loads((d / GROKKING_JSON).read_text()) for d in (a, b))
        assert got.keys() == want.keys()
        for key, value in want.items():
            if isinstance(value, float):
                assert math.isclose(got[key], value, rel_tol=RTOL, abs_tol=ATOL), (rid, key)
            else:
                assert got[key] == value, (rid, key)
        x, y = pd.read_csv(a / "metrics.csv"), pd.read_csv(b / "metrics.csv")
        assert list(x.columns) == list(y.columns) and "weight_norm" in x.columns
        assert x[["step", "epoch"]].equals(y[["step", "epoch"]]) and x.notna().equals(y.notna())
        for key in ("weight_norm", "train/acc", "val/acc", "align/rep/act"):
            for u, v in zip(x[key].dropna(), y[key].dropna(), strict=True):
                assert math.isclose(u, v, rel_tol=RTOL, abs_tol=ATOL), (rid, key, u, v)
    norms = {json.loads((Path(e["run_dir"]) / "hp.json").read_text())["init_scale"]:
             json.loads((Path(e["run_dir"]) / GROKKING_JSON).read_text())["weight_norm_first"]
             for e in packed.values()}
    assert norms[8.0] > 5 * norms[1.0]
