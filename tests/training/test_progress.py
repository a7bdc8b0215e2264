"""Tests of lightning_mem.training.progress: the progress line, and a running fit whose status.json
advances every epoch with its figures (a real ``lightning-mem fit`` subprocess, polled while it runs)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from lightning_mem import rundir
from lightning_mem.training.progress import ProgressLog, progress_line, row_figures

# A fit with no config file; digits: 1,437 training images / 256 -> 6 steps an epoch.
FIT = ["fit", "--model.net", "lightning_mem.nets.ScaledMLP", "--model.net.init_std", "10",
       "--model.net.width", "32", "--data.dataset", "digits", "--trainer.enable_progress_bar", "false",
       "--trainer.enable_model_summary", "false", "--trainer.enable_checkpointing", "false"]
# The CLI in a fresh interpreter, saying at its end whether torchvision was imported.
SCRIPT = ("import sys\nfrom lightning_mem.cli.commands import main\ntry:\n    main(sys.argv[1:])\nfinally:\n"
          "    sys.stderr.write(f\"\\nTORCHVISION {'torchvision' in sys.modules}\\n\")\n")


def test_progress_line() -> None:
    figures = {"train/acc": 0.91234, "val/acc": 0.5, "align/grad/hidden.weight": 0.012345}
    assert progress_line(12, 2000, 192, figures, 41.0) == (
        "epoch 12/2000 step 192 train/acc 0.9123 val/acc 0.5 align/grad/hidden.weight 0.01235 "
        "(41 s, ~113 min left)")  # 41 s / 12 epochs * 1988 = 6792 s
    assert progress_line(12, 2000, 192, {}, 82.0).endswith("(82 s, ~3 h 46 min left)")  # 13,584 s
    assert progress_line(3, 3, 18, {}, 90.0) == "epoch 3/3 step 18 (90 s)"
    assert progress_line(110, 120, 5, {}, 600.0, done=10) == "epoch 110/120 step 5 (10 min, ~10 min left)"
    assert progress_line(1, None, 6, {}, 1.0) == "epoch 1 step 6 (1 s)"
    assert row_figures({"val/acc": 0.5, "train/loss": float("nan"), "align/grad/logits": 0.3, "epoch": 2,
                        "align/grad/w.weight": 0.2}) == {"val/acc": 0.5, "align/grad/w.weight": 0.2}
    with pytest.raises(ValueError, match="every_s=-1"):
        ProgressLog(every_s=-1)


@pytest.mark.slow
def test_status_json_of_a_running_fit_advances_every_epoch(tmp_path: Path) -> None:
    run_dir = tmp_path / "n/a"
    cmd = [sys.executable, "-c", SCRIPT, *FIT, "--trainer.max_epochs", "12", "--run.root", str(tmp_path),
           "--run.name", "n", "--run.id", "a", "--run.progress_every_s", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen: dict[int, dict[str, Any]] = {}
    while proc.poll() is None:
        try:
            record = json.loads((run_dir / "status.json").read_text())
        except (OSError, ValueError):  # not written yet (every write is atomic: never a partial file)
            time.sleep(0.02)
            continue
        if record["status"] == "running":
            seen[record["epoch"]] = record
        time.sleep(0.02)
    _, err = proc.communicate()
    assert proc.returncode == 0, err[-3000:]
    epochs = sorted(seen)
    assert len(epochs) >= 6 and epochs[-1] >= 10, epochs  # polled while it ran: most epochs seen
    for e in epochs[1:]:
        assert seen[e]["global_step"] == 6 * e and seen[e]["pid"] == proc.pid
        # align/grad/hidden.weight: the default AlignmentMonitor's, measured at steps 0, 10, 20, ...
        assert set(seen[e]["metrics"]) == {"train/loss", "train/acc", "val/acc", "align/grad/hidden.weight"}
        assert 0.0 <= seen[e]["metrics"]["train/acc"] <= 1.0
    final = json.loads((run_dir / "status.json").read_text())
    assert final["status"] == "finished" and final["epoch"] == 12 and final["global_step"] == 72
    lines = [line for line in err.splitlines() if line.startswith("epoch ")]
    assert len(lines) == 12, lines  # --run.progress_every_s 0: one line every epoch
    assert lines[-1].startswith("epoch 12/12 step 72 train/loss ")
    assert " align/grad/hidden.weight " in lines[-1]
    last = rundir.final_metrics(run_dir)
    assert f"train/acc {last['train/acc']:.4g} " in lines[-1]  # the line and metrics.csv agree
    assert "TORCHVISION False" in err  # an MLP on the embedded digits never imports torchvision
