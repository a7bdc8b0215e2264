"""``dashboard wandb --print RUNS...``: the workspace spec chosen from local run folders (the keys they
logged, the factors that vary), and the keys it assumes without them. Offline: no server."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from lightning_mem.results.dashboard import main
from tests.results.test_dashboard import panels
from tests.results.test_runs import config, epoch_rows, write_run


def test_print_reads_local_runs_for_keys_and_groups(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    # ConvNet-like keys (conv1.weight, features) that the default spec does not assume; the run name
    # and max_epochs vary too but are no factor.
    for i, (sigma, act, seed) in enumerate([(0.01, "sin", 0), (0.01, "sin", 1), (10.0, "relu", 0)]):
        align = {"align/grad/conv1.weight": 0.5, "align/rep/features": 0.25, "epoch": 0}
        rows = [*epoch_rows([0.5], [0.6]), (5, align)]
        cfg = config(sigma, seed, act, name=f"study{i}")
        cfg["trainer"]["max_epochs"] = 3 + i
        write_run(tmp_path, f"r{i}", rows, cfg)
    main(["wandb", "--entity", "me", "--project", "mem", "--print", str(tmp_path)])
    printed = json.loads(capsys.readouterr().out)
    grouping = printed["spec"]["section"]["runSets"][0]["grouping"]
    assert [g["name"] for g in grouping] == ["hp.value.init_std", "hp.value.activation"]
    align = panels(printed)["Alignment vs epoch"]
    assert [p["metrics"] for p in align] == [["align/grad/conv1.weight"], ["align/rep/features"]]
    scatter = [p["xAxis"] for p in panels(printed)["Accuracy and alignment vs σ"]]
    assert "summary:align/grad/conv1.weight" in scatter and "summary:align/grad/hidden.weight" not in scatter


def test_print_without_runs_says_which_keys_it_assumed(capsys: pytest.CaptureFixture,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="lightning_mem.results.workspace"):
        main(["wandb", "--entity", "me", "--project", "mem", "--print"])
    assert json.loads(capsys.readouterr().out)["displayName"] == "lightning-mem mem"
    assert "no local runs given; assumed the keys train/acc, val/acc, align/grad/logits, " \
           "align/grad/hidden.weight" in caplog.text
    assert "grouping init_std" in caplog.text


def test_local_runs_without_print_or_without_metrics_exit_2(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as info:
        main(["wandb", "--entity", "me", "--project", "mem", str(tmp_path)])
    assert info.value.code == 2
    assert f"RUNS ({tmp_path}): local runs are read with --print only" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["wandb", "--entity", "me", "--project", "mem", "--print", str(tmp_path)])
    assert info.value.code == 2
    assert f"no runs (folders with a metrics.csv) under {tmp_path}" in capsys.readouterr().err


def test_print_draws_noisy_label_loss_and_kernel_panels_only_where_runs_logged_them(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    def printed(root: Path, extra: dict[str, float]) -> dict[str, list[dict]]:
        for seed in (0, 1):
            rows = [*epoch_rows([0.5], [0.6]), (5, {**extra, "epoch": 0})]
            write_run(root, f"r{seed}", rows, config(0.01, seed))
        main(["wandb", "--entity", "me", "--project", "mem", "--print", str(root)])
        return panels(json.loads(capsys.readouterr().out))

    plain = printed(tmp_path / "plain", {"align/grad/hidden.weight": 0.5})
    assert [p["metrics"] for p in plain["Memorization curves"]] == [["train/acc", "val/acc"]]
    assert "Kernels and laziness" not in plain
    noisy = printed(tmp_path / "noisy", {"train/acc_noisy": 0.2, "train/acc_clean": 0.9, "train/loss": 1.0,
                                         "val/loss": 2.0, "kernel/target_alignment": 0.4,
                                         "kernel/distance_from_init": 0.1})
    assert [p["metrics"] for p in noisy["Memorization curves"]] == [
        ["train/acc", "val/acc"], ["train/acc_noisy", "train/acc_clean", "val/acc"],
        ["train/loss", "val/loss"]]
    assert [p["metrics"] for p in noisy["Kernels and laziness"]] == [
        ["kernel/target_alignment"], ["kernel/distance_from_init"]]
