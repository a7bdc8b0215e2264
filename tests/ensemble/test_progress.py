"""What ``ensemble fit`` shows and measures by default (``lightning_mem/ensemble/progress.py`` and the default
monitor of ``lightning_mem/ensemble/members.py``).

An ensemble started with no config file measures alignment as its single runs would (the rows in every
member's ``metrics.csv``) and shows its members in the progress bar's postfix (worst..best read against
the members' own CSVs); a configured monitor is the only one; with the bar off, one log line on the
members.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import lightning as L
import pandas as pd
import pytest
import torch

from lightning_mem.ensemble.members import default_monitor
from lightning_mem.ensemble.progress import EnsembleProgressLog, member_summary
from lightning_mem.ensemble.stacked import MemberSpec
from lightning_mem.ensemble.train import build_ensemble
from tests.ensemble.test_command import lm

NO_CONFIG = ["ensemble", "fit", "--model.net", "lightning_mem.nets.ScaledMLP", "--data.dataset", "digits",
             "--model.net.width", "16", "--model.lr", "0.1", "--trainer.max_epochs", "2",
             "--ensemble.init_std", "0.01,10", "--run.id", "e"]


def _span(frames: list[pd.DataFrame], key: str) -> str:
    last = [f[key].dropna().iloc[-1] for f in frames]
    return f"{min(last):.3f}..{max(last):.3f}"


@pytest.mark.slow  # a 2-member ensemble fit on the digits: ~4-9 s
def test_an_ensemble_without_a_config_measures_alignment_and_shows_its_members(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert lm(*NO_CONFIG, "--run.root", str(tmp_path)) == 0
    frames = [pd.read_csv(d / "metrics.csv") for d in sorted((tmp_path / "default").glob("e_*"))]
    assert len(frames) == 2
    for frame in frames:  # the default AlignmentMonitor: every 10 steps (6 an epoch), held-out at epoch ends
        assert {"align/rep/act", "align/grad/hidden.weight", "align/grad/logits", "val/align/rep/act"} \
            <= set(frame.columns)
        assert frame.loc[frame["align/rep/act"].notna(), "step"].tolist() == [0, 10]
        assert frame["val/align/rep/act"].notna().sum() == 2
    # The bar's postfix after the last validation: both members alive, worst..best of their last values
    # (train/acc: the epoch before the last, logged after the bar's update).
    captured = capsys.readouterr()
    bar = (captured.out + captured.err).replace("\r", "\n")  # Lightning's bar writes to stdout
    postfix = re.findall(r"alive=(\d/\d), train/acc=([\d.]+\.\.[\d.]+), val/acc=([\d.]+\.\.[\d.]+)\]", bar)
    assert postfix, bar[-2000:]
    alive, train, val = postfix[-1]
    assert alive == "2/2" and val == _span(frames, "val/acc")
    first_epoch = [f[f["epoch"] == 0] for f in frames]
    assert train == _span(first_epoch, "train/acc")


@pytest.mark.slow  # a 2-member ensemble fit on the digits: ~4-9 s
def test_a_configured_monitor_is_the_only_one(tmp_path: Path) -> None:
    assert lm(*NO_CONFIG, "--run.root", str(tmp_path), "--trainer.max_epochs", "1",
              "--trainer.enable_progress_bar", "false",
              "--trainer.callbacks+=lightning_mem.callbacks.AlignmentMonitor",
              "--trainer.callbacks.every_n_steps", "4") == 0
    for run_dir in (tmp_path / "default").glob("e_*"):
        frame = pd.read_csv(run_dir / "metrics.csv")
        assert frame.loc[frame["align/rep/act"].notna(), "step"].tolist() == [0, 4]  # one row each


def test_the_default_monitor_follows_the_run_switches() -> None:
    assert default_monitor({"alignment_monitor": False}) is None
    assert default_monitor({"alignment_every_n_steps": 5}).every_n_steps == 5  # type: ignore[union-attr]
    assert default_monitor({}).every_n_steps == 10  # type: ignore[union-attr]  # AlignmentMonitor's own


def test_the_progress_line_counts_members_and_spans_their_accuracies(
    caplog: pytest.LogCaptureFixture,
) -> None:
    module, _ = build_ensemble([MemberSpec(0, 0.01), MemberSpec(1, 10.0), MemberSpec(2, 1.0)], width=8,
                               dataset="digits")
    module.alive.copy_(torch.tensor([True, False, True]))
    module.last_metrics = [{"train/acc": 0.5, "val/acc": 0.75}, {"train/acc": 0.125, "val/acc": float("nan")},
                           {"train/acc": 0.9375}]
    assert member_summary(module) == {"alive": "2/3", "train/acc": "0.125..0.938", "val/acc": "0.750..0.750"}
    trainer = L.Trainer(max_epochs=8, logger=False, enable_progress_bar=False, enable_checkpointing=False)
    trainer.fit_loop.epoch_progress.current.completed = 3  # trainer.current_epoch: 3 epochs done
    line = EnsembleProgressLog(every_n_seconds=3600)
    with caplog.at_level(logging.INFO, logger="lightning_mem.ensemble.progress"):
        line.on_train_epoch_start(trainer, module)
        line.on_train_epoch_start(trainer, module)  # within the hour: nothing
        line.on_train_end(trainer, module)  # the last: always
    assert [r.getMessage() for r in caplog.records if r.name == "lightning_mem.ensemble.progress"] == [
        "epoch 3/8: 2 of 3 members alive (1 diverged), train/acc 0.125..0.938, val/acc 0.750..0.750 "
        "(worst..best)"] * 2
