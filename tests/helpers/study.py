"""A mixed study of real runs for the dashboard and report tests: 102 members of small MLPs on the 8×8
digits trained by ``lightning-mem ensemble fit`` (six processes at once), plus one run left running.

- sin, ReLU, sigmoid × σ ∈ {0.001, 0.01, 0.1, 1, 10} × seeds 0–3 (60 runs; the sin runs of seed 3
  are a second ensemble that carries the KernelMonitor, so they log ``kernel/*`` and
  ``stiffness/class_matrix/<c>_<c′>``);
- sin with ``--data.label_noise 0.5`` over the same σ × seeds (20 runs: ``train/acc_noisy`` and
  ``train/acc_clean``);
- ReLU at σ ∈ {0.01, 1} × lr ∈ {0.01, 0.1} × seeds 0–4 (20 runs);
- one ReLU member at lr 1e30, diverged at its first step (status ``diverged``), beside a finished one;
- one long sin fit stopped (SIGSTOP) once its metrics.csv holds two epochs: it still holds its run
  folder's lock, so the dashboard reads it as ``running``. :func:`stop_running` ends it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from lightning_mem.errors import EXIT_DIVERGED

REPO = Path(__file__).resolve().parents[2]
SIGMAS = "0.001,0.01,0.1,1,10"
EPOCHS = 8
COMMON = ["--config", str(REPO / "configs/quickstart.yaml"), "--data.dataset", "digits",
          "--model.net.width", "32", "--trainer.enable_progress_bar", "false"]
# The KernelMonitor on a probe of 64 held-out digits (configs/kernels/monitor.yaml measures 256).
KERNEL_CONFIG = """trainer:
  callbacks:
    - {class_path: lightning_mem.callbacks.AlignmentMonitor, init_args: {every_n_steps: 4}}
    - class_path: lightning_mem.callbacks.KernelMonitor
      init_args: {probe_size: 64, train_every_n_steps: null}
"""
ACTS = {name: ["--model.net.activation", name.split("_")[-1]] for name in
        ("study_sin", "kernel_sin", "study_relu", "study_sigmoid", "noisy_sin", "lr_relu", "diverging_relu")}
GRID = ["--ensemble.init_std", SIGMAS, "--ensemble.seed", "0,1,2,3"]
STUDY = {  # run name -> options of its ensemble
    "study_sin": [*ACTS["study_sin"], "--ensemble.init_std", SIGMAS, "--ensemble.seed", "0,1,2"],
    "kernel_sin": ["--config", "kernels.yaml", *ACTS["kernel_sin"], "--ensemble.init_std", SIGMAS,
                   "--ensemble.seed", "3"],
    "study_relu": [*ACTS["study_relu"], *GRID],
    "study_sigmoid": [*ACTS["study_sigmoid"], *GRID],
    "noisy_sin": [*ACTS["noisy_sin"], "--data.label_noise", "0.5", *GRID],
    "lr_relu": [*ACTS["lr_relu"], "--ensemble.init_std", "0.01,1", "--ensemble.lr", "0.01,0.1",
                "--ensemble.seed", "0,1,2,3,4"],
    "diverging_relu": [*ACTS["diverging_relu"], "--ensemble.init_std", "10", "--ensemble.lr", "0.1,1e30",
                       "--ensemble.seed", "0"],
}
N_RUNS = 60 + 20 + 20 + 2 + 1
RUNNING_NAME = "long_sin"


def _env(root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "LIGHTNING_MEM_RUN_ID"}
    return env | {"WANDB_MODE": "disabled", "WANDB_DIR": str(root / "wandb")}


def _start(root: Path, name: str, command: list[str], options: list[str]) -> subprocess.Popen[bytes]:
    """``lightning-mem COMMAND`` with the study's options, then ``options``; output in ``root/<name>.log``."""
    argv = [sys.executable, "-m", "lightning_mem", *command, *COMMON, "--run.name", name,
            "--run.root", str(root / "runs"), *options]
    with (root / f"{name}.log").open("wb") as log:
        return subprocess.Popen(argv, cwd=root, env=_env(root), stdout=log, stderr=subprocess.STDOUT)


def build_study(root: Path) -> tuple[Path, subprocess.Popen[bytes]]:
    """Train the study under ``root / "runs"``; returns the runs' root and the stopped running fit."""
    (root / "kernels.yaml").write_text(KERNEL_CONFIG)
    epochs = ["--trainer.max_epochs", str(EPOCHS)]
    procs = {name: _start(root, name, ["ensemble", "fit"], [*epochs, *options])
             for name, options in STUDY.items()}
    running = _start(root, RUNNING_NAME, ["fit"], ["--trainer.max_epochs", "100000",
                                                   "--model.net.init_std", "0.1"])
    stopped, deadline = False, time.monotonic() + 900
    try:
        while not stopped or any(p.poll() is None for p in procs.values()):
            if not stopped and _has_curves(root / "runs" / RUNNING_NAME):
                running.send_signal(signal.SIGSTOP)  # it keeps its run folder's lock: "running"
                stopped = True
            if time.monotonic() > deadline or running.poll() is not None:
                raise RuntimeError(f"the study did not finish in 900 s (long fit exit {running.poll()})")
            time.sleep(0.5)
        for name, proc in procs.items():
            if proc.returncode != (EXIT_DIVERGED if name == "diverging_relu" else 0):  # a member diverged: 3
                tail = (root / f"{name}.log").read_text()[-3000:]
                raise RuntimeError(f"{name}: exit {proc.returncode}\n{tail}")
    except BaseException:
        for proc in (*procs.values(), running):
            proc.kill()
        raise
    return root / "runs", running


def _has_curves(folder: Path) -> bool:
    """``val/acc`` of two epochs or more in the metrics.csv of the run under ``folder``."""
    from lightning_mem.metric_keys import VAL_ACC
    from lightning_mem.results.runs import load_runs

    runs = load_runs([folder], statuses=None) if any(folder.glob("*/metrics.csv")) else []
    return any(VAL_ACC in r.metrics and r.values(VAL_ACC).size >= 2 for r in runs)


def stop_running(proc: subprocess.Popen[bytes]) -> None:
    """End the stopped fit (SIGKILL reaches a stopped process)."""
    proc.kill()
    proc.wait(timeout=60)
