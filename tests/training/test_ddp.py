"""DDP from the CLI: 2-process CPU runs (gloo) on the 8×8 digits.

A fit with random labels: every rank must train on the same random labels (they come from the
config's seed, not from the rank's RNG) and see its share of the examples as ``DistributedSampler``
would deal them; each held-out example is evaluated once. A validate from one checkpoint: held-out
alignment and accuracy equal those of one process. ``LabelProbe`` below is passed to the CLI with
``--config``; the subprocess imports it from this file (``PYTHONPATH`` holds the repository).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DistributedSampler

from lightning_mem.alignment.measures import representation_alignment
from lightning_mem.cli.commands import main
from lightning_mem.data.datamodule import ImageClassificationData
from lightning_mem.nets import ScaledMLP

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = REPO / "configs" / "quickstart.yaml"
DIGITS = ["--data.dataset", "digits", "--model.net.width", "32", "--trainer.enable_progress_bar", "false",
          "--trainer.accelerator", "cpu"]
DDP = ["--trainer.devices", "2", "--trainer.strategy", "ddp"]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "LIGHTNING_MEM_RUN_ID"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return env


def _run_cli(args: list[str], cwd: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "lightning_mem", *args], cwd=cwd, env=_env(),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]


def _rows(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "metrics.csv").open(newline="") as f:
        return list(csv.DictReader(f))


class LabelProbe(L.Callback):
    """Writes ``labels_rank<r>.json`` into ``out_dir``: hashes of the train labels and noise mask this
    rank trains on, and the example indices its loader serves in epoch 0."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        data = trainer.datamodule  # type: ignore[attr-defined]
        record = {
            "rank": trainer.global_rank,
            "world_size": trainer.world_size,
            "labels_sha": hashlib.sha256(data.train_y.cpu().numpy().tobytes()).hexdigest(),
            "noisy_sha": hashlib.sha256(data.train_noisy.cpu().numpy().tobytes()).hexdigest(),
            "n_noisy": int(data.train_noisy.sum()),
            "n_changed": int((data.train_y != data.train_clean_y).sum()),
            "n_train": len(data.train_y),
            "indices": data.train_dataloader().indices(0).tolist(),
            "val_labels": torch.cat([y for _, y in data.val_dataloader()]).tolist(),
        }
        Path(self.out_dir, f"labels_rank{trainer.global_rank}.json").write_text(json.dumps(record))


@pytest.mark.slow  # ~25 s on 2 busy cores: two processes each import torch and start gloo
def test_two_process_cpu_ddp_fit_trains_every_rank_on_the_same_random_labels(tmp_path: Path) -> None:
    probe_dir = tmp_path / "probe"
    probe_dir.mkdir()
    callbacks = tmp_path / "probe.yaml"
    callbacks.write_text(yaml.safe_dump({"trainer": {"callbacks": [
        {"class_path": "lightning_mem.callbacks.AlignmentMonitor", "init_args": {"every_n_steps": 4}},
        {"class_path": "tests.training.test_ddp.LabelProbe", "init_args": {"out_dir": str(probe_dir)}}]}}))
    _run_cli(["fit", "--config", str(QUICKSTART), "--config", str(callbacks), *DIGITS, *DDP,
              "--data.label_noise", "0.5", "--data.batch_size", "64", "--trainer.max_epochs", "1",
              "--run.root", str(tmp_path / "runs")],
             tmp_path)

    runs = list((tmp_path / "runs" / "quickstart").iterdir())
    assert len(runs) == 1  # both ranks wrote into rank 0's run folder
    rows = _rows(runs[0])
    assert {"train/acc", "train/acc_clean", "train/acc_noisy", "val/acc", "val/align/rep/act"} <= set(rows[0])
    assert json.loads((runs[0] / "status.json").read_text())["status"] == "finished"
    # Training-batch alignment: rank 0 logs the mean over the ranks, at the step it was measured.
    align = [(r["step"], r["epoch"]) for r in rows if r["align/grad/hidden.weight"]]
    assert align == [("0", "0"), ("4", "0"), ("8", "0")]  # 719 examples per rank: 12 steps of 64
    val_steps = [(r["step"], r["epoch"]) for r in rows if r["val/acc"] or r["val/align/rep/act"]]
    assert val_steps == [("11", "0")] * 2  # val/align/rep/act, then Lightning's val/acc

    ranks = [json.loads((probe_dir / f"labels_rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["rank"] for r in ranks] == [0, 1] and {r["world_size"] for r in ranks} == {2}
    assert ranks[0]["labels_sha"] == ranks[1]["labels_sha"]
    assert ranks[0]["noisy_sha"] == ranks[1]["noisy_sha"]
    n = ranks[0]["n_train"]
    assert n == 1437 and ranks[0]["n_noisy"] == round(0.5 * n)
    assert ranks[0]["n_changed"] > 0.4 * n  # really random labels (uniform: ~90% of the chosen change)
    # Independent references: the ranks deal the single-process epoch order as torch's
    # DistributedSampler deals a dataset (wrap-around padding included) ...
    data = ImageClassificationData("digits", batch_size=64)
    data.setup("fit")
    order = data.train_dataloader().indices(0).tolist()
    for rank, record in enumerate(ranks):
        dealt = DistributedSampler(range(n), num_replicas=2, rank=rank, shuffle=False)
        assert record["indices"] == [order[i] for i in dealt]
    # ... and the held-out split as Lightning's unpadded sampler does: every example exactly once.
    for rank, record in enumerate(ranks):
        dealt = UnrepeatedDistributedSampler(range(len(data.val_y)), num_replicas=2, rank=rank, shuffle=False)
        assert record["val_labels"] == data.val_y[list(dealt)].tolist()


@pytest.mark.slow  # ~40 s on 2 busy cores: a 1-epoch fit, then validate in 1 and in 2 processes
def test_held_out_alignment_under_ddp_equals_one_process(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    assert main(["fit", "--config", str(QUICKSTART), *DIGITS, "--trainer.max_epochs", "1",
                 "--run.root", str(runs), "--run.name", "train", "--run.id", "0"]) is None
    ckpt = runs / "train" / "0" / "checkpoints" / "last.ckpt"
    # Two monitors: all 360 held-out examples at `act`, the first 101 at `hidden` (51 of them on
    # rank 0, 50 on rank 1, across batches of 32).
    monitors = tmp_path / "monitors.yaml"
    monitors.write_text(yaml.safe_dump({"trainer": {"callbacks": [
        {"class_path": "lightning_mem.callbacks.AlignmentMonitor", "init_args": {"val_max_examples": None}},
        {"class_path": "lightning_mem.callbacks.AlignmentMonitor",
         "init_args": {"layers": ["hidden"], "gradients": False, "val_max_examples": 101}}]}}))
    common = ["validate", "--config", str(QUICKSTART), "--config", str(monitors), *DIGITS,
              "--data.eval_batch_size", "32", "--ckpt_path", str(ckpt), "--run.root", str(runs)]
    assert main([*common, "--run.name", "one", "--trainer.devices", "1"]) is None
    _run_cli([*common, "--run.name", "two", *DDP], tmp_path)

    keys = ("val/align/rep/act", "val/align/rep/hidden", "val/acc", "val/loss")
    got = {}
    for name in ("one", "two"):
        (run_dir,) = (runs / name).iterdir()
        rows = _rows(run_dir)
        got[name] = {k: float(r[k]) for r in rows for k in keys if r.get(k)}
        assert len({r["step"] for r in rows if any(r.get(k) for k in keys)}) == 1  # one step for all
    # The reference: the checkpoint's net on the held-out split, in this process.
    data = ImageClassificationData("digits")
    data.setup("validate")
    net = ScaledMLP(data.input_shape, data.num_classes, width=32, activation="sin", init_std=0.01)
    state = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    net.load_state_dict({k.removeprefix("net."): v for k, v in state.items() if k.startswith("net.")})
    with torch.no_grad():
        hidden = net.hidden(net.flatten(data.val_x))
        y = data.val_y
        want = {"val/align/rep/act": representation_alignment(net.act(hidden), y, num_classes=10),
                "val/align/rep/hidden": representation_alignment(hidden[:101], y[:101], num_classes=10),
                "val/acc": float((net(data.val_x).argmax(1) == y).float().mean())}
    for key in keys:
        assert got["two"][key] == pytest.approx(got["one"][key], rel=1e-6), key
    for key, value in want.items():
        assert got["two"][key] == pytest.approx(value, rel=1e-6), key
