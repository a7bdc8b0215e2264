"""DDP from the CLI: a 2-process CPU fit (gloo) on the 8×8 digits with random labels.

Every rank must train on the same random labels (they come from the config's seed, not from the
rank's RNG) and see a disjoint share of the examples. ``LabelProbe`` below is passed to the CLI with
``--trainer.callbacks``; the subprocess imports it from this file (``PYTHONPATH=tests``).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


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
        }
        Path(self.out_dir, f"labels_rank{trainer.global_rank}.json").write_text(json.dumps(record))


@pytest.mark.slow  # ~25 s on 2 busy cores: two processes each import torch and start gloo
def test_two_process_cpu_ddp_fit_trains_every_rank_on_the_same_random_labels(tmp_path: Path) -> None:
    probe_dir = tmp_path / "probe"
    probe_dir.mkdir()
    callbacks = tmp_path / "probe.yaml"
    callbacks.write_text(yaml.safe_dump({"trainer": {"callbacks": [
        {"class_path": "test_ddp.LabelProbe", "init_args": {"out_dir": str(probe_dir)}}]}}))
    env = {k: v for k, v in os.environ.items() if k != "LIGHTNING_MEM_RUN_ID"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "tests"), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, "-m", "lightning_mem", "fit", "--config", str(REPO / "configs/quickstart.yaml"),
           "--config", str(callbacks), "--data.dataset", "digits", "--model.net.width", "32",
           "--data.label_noise", "0.5", "--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false",
           "--trainer.devices", "2", "--trainer.strategy", "ddp", "--trainer.accelerator", "cpu",
           "--run.root", str(tmp_path / "runs")]
    result = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]

    runs = list((tmp_path / "runs" / "quickstart").iterdir())
    assert len(runs) == 1  # both ranks wrote into rank 0's run folder
    header = (runs[0] / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"train/acc", "train/acc_clean", "train/acc_noisy", "val/acc"} <= set(header)
    assert json.loads((runs[0] / "status.json").read_text())["status"] == "finished"

    ranks = [json.loads((probe_dir / f"labels_rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["rank"] for r in ranks] == [0, 1] and {r["world_size"] for r in ranks} == {2}
    assert ranks[0]["labels_sha"] == ranks[1]["labels_sha"]
    assert ranks[0]["noisy_sha"] == ranks[1]["noisy_sha"]
    n = ranks[0]["n_train"]
    assert n == 1437 and ranks[0]["n_noisy"] == round(0.5 * n)
    assert ranks[0]["n_changed"] > 0.4 * n  # really random labels (uniform: ~90% of the chosen change)
    # Each rank serves half of the (wrap-padded) permutation; together they cover every example.
    served = [set(r["indices"]) for r in ranks]
    assert len(ranks[0]["indices"]) == len(ranks[1]["indices"]) == (n + 1) // 2
    assert served[0] | served[1] == set(range(n)) and len(served[0] & served[1]) <= 1
