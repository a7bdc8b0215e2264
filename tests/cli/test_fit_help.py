"""Tests of lightning_mem.cli.fit_help: ``lightning-mem fit --help`` is short, fast and torch-free, its
defaults and choices are the classes' own, and ``--help-all`` is LightningCLI's full help."""

from __future__ import annotations

import inspect
import subprocess
import sys
import time
import typing

import pytest

from lightning_mem.cli import commands, fit_help
from lightning_mem.cli.defaults import ALIGNMENT_EVERY_N_STEPS
from lightning_mem.data.datamodule import ImageClassificationData
from lightning_mem.data.datasets import DATASETS, DatasetName
from lightning_mem.nets.paper import Activation, ScaledMLP
from lightning_mem.training.module import LossName, MemorizationModule, OptimizerName

SCRIPT = ("import sys; from lightning_mem.cli.commands import main; main(['fit', '--help']); "
          "sys.stderr.write(repr(sorted(m for m in ('torch', 'lightning', 'torchvision') "
          "if m in sys.modules)))")
MAIN = ("--model.net.init_std", "--model.net.width", "--model.net.activation", "--model.net", "--model.loss",
        "--model.loss_scale", "--model.lr", "--data.dataset", "--data.label_noise", "--data.batch_size",
        "--trainer.max_epochs", "--run.alignment_every_n_steps", "--run.name", "--run.root")


def test_fit_help_is_short_fast_and_imports_no_torch() -> None:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60)
    elapsed = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) < 150, len(lines)
    assert elapsed < 3.0, elapsed  # the bound, generous: ~0.1 s when idle
    assert proc.stderr == "[]"  # neither torch nor Lightning nor torchvision
    for option in MAIN:  # one line each, with a default and the allowed values
        rows = [line for line in lines if line.split()[:1] == [option]]
        assert len(rows) == 1, option
    assert any(line.split()[:2] == ["--config", "logger/wandb"] for line in lines)  # W&B
    assert "`lightning-mem fit --help-all`" in proc.stdout


def test_fit_help_defaults_and_choices_are_the_classes_own() -> None:
    rows = {o: (d, a) for o, d, a, _ in fit_help.OPTIONS}
    assert rows["--model.net.activation"] == ("sin", "|".join(typing.get_args(Activation)))
    assert rows["--model.loss"] == ("cross_entropy", "|".join(typing.get_args(LossName)))
    assert rows["--data.dataset"] == ("mnist5k", "|".join(typing.get_args(DatasetName)))
    assert set(typing.get_args(DatasetName)) == set(DATASETS)
    net = inspect.signature(ScaledMLP).parameters
    mod = inspect.signature(MemorizationModule).parameters
    data = inspect.signature(ImageClassificationData).parameters
    assert rows["--model.net.width"][0] == str(net["width"].default)
    assert rows["--model.net.activation"][0] == net["activation"].default
    assert rows["--model.net.init_std"][0] == "null" and net["init_std"].default is None
    assert rows["--model.lr"][0] == str(mod["lr"].default)
    assert rows["--model.optimizer"] == (mod["optimizer"].default, "|".join(typing.get_args(OptimizerName)))
    assert rows["--model.loss"][0] == mod["loss"].default
    assert rows["--model.loss_scale"][0] == str(mod["loss_scale"].default)
    assert rows["--data.dataset"][0] == data["dataset"].default
    assert rows["--data.batch_size"][0] == str(data["batch_size"].default)
    assert rows["--data.label_noise"][0] == str(data["label_noise"].default)
    assert rows["--run.alignment_every_n_steps"][0] == str(ALIGNMENT_EVERY_N_STEPS)


def test_only_fit_help_is_the_short_one(capsys: pytest.CaptureFixture[str]) -> None:
    # `fit --help-all`: tests/cli/test_commands.py::test_fit_help_all_goes_to_lightning.
    commands.main(["fit", "--config", "quickstart", "-h"])
    assert capsys.readouterr().out == fit_help.short_help()
    assert fit_help.full_help_args(["fit", "--help-all"]) == ["fit", "--help"]
    assert fit_help.wants_short_help(["fit", "-h"]) and not fit_help.wants_short_help(["validate", "--help"])
