"""An AdamW pack killed with SIGKILL mid-fit and resumed with ``--ckpt_path last`` ends byte-identical to an
uninterrupted one: every member's ``metrics.csv`` byte for byte, the ensemble's ``last.ckpt`` with the same
weights and the same optimizer state (Adam's moments and step, per member) bit for bit.

The pack: Omnigrok's net shape in small (2 hidden layers of 16, biases, torch init times α ∈ {1, 8}), MSE,
AdamW with weight decay 0.01, on scikit-learn's 8×8 digits, 2 seeds × 2 α = 4 members, 5 epochs. A real
``lightning-mem ensemble fit`` subprocess is killed from outside once its second epoch checkpoint exists.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from lightning_mem import rundir
from lightning_mem.ensemble.plan import read_pack

REPO = Path(__file__).resolve().parents[2]
EXE = Path(sys.executable).with_name("lightning-mem")
ARGS = ["ensemble", "fit", "--config", str(REPO / "configs/quickstart.yaml"), "--data.dataset", "digits",
        "--model.net.width", "16", "--model.net.depth", "2", "--model.net.bias", "true",
        "--model.net.init_rule", "torch", "--model.net.activation", "relu", "--model.loss", "squared",
        "--model.optimizer", "adamw", "--model.lr", "0.001", "--model.weight_decay", "0.01",
        "--data.batch_size", "64", "--trainer.max_epochs", "5", "--trainer.enable_progress_bar", "false",
        "--trainer.accelerator", "cpu", "--run.name", "g", "--run.id", "e",
        "--ensemble.seed", "0,1", "--ensemble.init_scale", "1,8"]


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "LIGHTNING_MEM_RUN_ID"} | {"WANDB_MODE": "disabled"}


def _fit(root: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(EXE), *ARGS, "--run.root", str(root), *extra], cwd=root, env=_env(),
                          capture_output=True, text=True, timeout=600)


def _load(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=False)


def _assert_equal_states(a: Any, b: Any, where: str) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            _assert_equal_states(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_equal_states(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


@pytest.mark.slow
def test_a_killed_adamw_pack_resumes_byte_identical(tmp_path: Path) -> None:
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    straight.mkdir()
    killed.mkdir()
    done = _fit(straight)
    assert done.returncode == 0, done.stderr[-3000:]
    pack = killed / "g" / "e"
    proc = subprocess.Popen([str(EXE), *ARGS, "--run.root", str(killed)], cwd=killed, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not (pack / rundir.CHECKPOINTS / "epoch1.ckpt").exists() and proc.poll() is None:
        assert time.monotonic() < deadline, "no second epoch checkpoint within 300 s"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(60) == -signal.SIGKILL  # killed mid-fit, not after it ended
    ids = [m["run_id"] for m in read_pack(pack)]
    assert len(ids) == 4
    assert all(rundir.effective_status(killed / "g" / rid) == rundir.KILLED for rid in ids)
    resumed = _fit(killed, "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    for rid in ids:
        a, b = straight / "g" / rid, killed / "g" / rid
        assert (a / rundir.METRICS).read_bytes() == (b / rundir.METRICS).read_bytes(), rid
        assert rundir.read_status(b)["status"] == "finished"  # type: ignore[index]
    want = _load(straight / "g" / "e" / rundir.CHECKPOINTS / "last.ckpt")
    got = _load(pack / rundir.CHECKPOINTS / "last.ckpt")
    assert (got["global_step"], got["epoch"]) == (want["global_step"], want["epoch"])
    _assert_equal_states(want["state_dict"], got["state_dict"], "state_dict")
    _assert_equal_states(want["optimizer_states"], got["optimizer_states"], "optimizer_states")
    state = got["optimizer_states"][0]["state"]
    assert {"step", "exp_avg", "exp_avg_sq"} <= set(state[0])  # Adam's state is in the checkpoint
    assert state[0]["exp_avg"].shape[0] == 4  # one moment per member
