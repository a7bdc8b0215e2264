"""Tests of lightning_mem.cli: a real ``lightning-mem fit``, every file in configs/ printed and smoke-run,
and the console script / ``python -m`` entry points.

Paper configs run on tiny fake CIFAR-10/100 and SVHN files in their real on-disk formats (the writers
of tests/test_data.py), with torchvision's md5 checks patched as its own tests do.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from test_data import WRITERS, no_md5  # noqa: F401  (fixture, used by name)

from lightning_mem.cli import build_cli, main
from lightning_mem.data import DATASETS

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
QUICKSTART = CONFIGS / "quickstart.yaml"
PAPER_BASE = CONFIGS / "paper" / "base.yaml"
EXE = Path(sys.executable).with_name("lightning-mem")
# A few CPU steps on scikit-learn's 8x8 digits: the cheapest real data.
TINY = ["--data.dataset", "digits", "--model.net.width", "16", "--data.batch_size", "64",
        "--trainer.enable_progress_bar", "false", "--trainer.accelerator", "cpu"]


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _config_stack(path: Path) -> list[Path]:
    """The configs a file is meant to be combined with, then the file itself.

    Complete configs (with ``seed_everything``) stand alone; ``configs/paper/*`` and files whose header
    says "Override of configs/paper/base.yaml" go on top of paper/base.yaml; ``configs/logger/*`` on
    top of the quickstart; other overrides on top of the complete config of their own folder.
    """
    text = path.read_text()
    if "seed_everything" in (yaml.safe_load(text) or {}):
        return [path]
    if path.parent.name == "logger":
        return [QUICKSTART, path]
    if path.parent.name == "paper" or "configs/paper/base.yaml" in text.split("\n", 1)[0]:
        return [PAPER_BASE, path]
    bases = [p for p in sorted(path.parent.glob("*.yaml"))
             if "seed_everything" in (yaml.safe_load(p.read_text()) or {})]
    assert bases, f"{path}: an override with no complete config beside it; teach _config_stack its base"
    return [bases[0], path]


ALL_CONFIGS = sorted(CONFIGS.rglob("*.yaml"))
STACKS = {str(p.relative_to(CONFIGS)): _config_stack(p) for p in ALL_CONFIGS}


def _uses_zoo(name: str) -> bool:
    return any("lightning_mem.zoo." in p.read_text() for p in STACKS[name])


def _params(slow_zoo: bool = False) -> list[object]:
    """Config names; with ``slow_zoo`` the torchvision ResNet/DenseNet configs are marked slow
    (1-2 s each on an idle machine, 15-40 s on 2 busy CPU cores)."""
    return [pytest.param(n, marks=[pytest.mark.slow] if slow_zoo and _uses_zoo(n) else []) for n in STACKS]


def _config_args(stack: list[Path]) -> list[str]:
    return [arg for p in stack for arg in ("--config", str(p))]


def test_every_config_is_covered() -> None:
    assert len(STACKS) >= 13  # quickstart, logger/wandb, paper/* (11), repro/*
    assert STACKS["paper/cifar100.yaml"] == [PAPER_BASE, CONFIGS / "paper" / "cifar100.yaml"]
    assert STACKS["logger/wandb.yaml"] == [QUICKSTART, CONFIGS / "logger" / "wandb.yaml"]


# ---------------------------------------------------------------- a real run of the console script


def test_fit_subprocess_writes_documented_files_and_keys(tmp_path: Path) -> None:
    proc = subprocess.run(
        [str(EXE), "fit", "--config", str(QUICKSTART), *TINY, "--trainer.max_epochs", "2",
         "--run.root", str(tmp_path), "--run.id", "r1"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = tmp_path / "quickstart" / "r1"
    files = {p.name for p in run_dir.iterdir()}
    assert files >= {"metrics.csv", "hparams.yaml", "config.yaml", "checkpoints", "status.json"}
    assert {p.name for p in (run_dir / "checkpoints").iterdir()} == {"epoch1.ckpt", "last.ckpt"}
    rows = read_rows(run_dir / "metrics.csv")
    keys = set(rows[0])
    assert {"epoch", "step", "train/loss", "train/acc", "val/loss", "val/acc"} <= keys
    assert {"align/grad/hidden.weight", "align/grad/logits", "align/rep/act", "val/align/rep/act"} <= keys
    # One train/* and one val/* row per epoch, at the epoch's last step (1437 / 64 -> 23 steps).
    train = [r for r in rows if r["train/loss"]]
    val = [r for r in rows if r["val/acc"]]
    assert [(r["epoch"], r["step"]) for r in train] == [("0", "22"), ("1", "45")]
    assert [(r["epoch"], r["step"]) for r in val] == [("0", "22"), ("1", "45")]
    assert 0.0 <= float(val[-1]["val/acc"]) <= 1.0
    status = json.loads((run_dir / "status.json").read_text())
    assert (status["status"], status["global_step"]) == ("finished", 46)
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["data"]["dataset"] == "digits"
    assert config["model"]["net"]["init_args"]["width"] == 16
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 46
    assert ckpt["state_dict"]["net.hidden.weight"].shape == (16, 64)


@pytest.mark.parametrize("subcommand", ["validate", "test"])
def test_validate_and_test_reproduce_the_fits_held_out_accuracy(subcommand: str, tmp_path: Path) -> None:
    """``validate``/``test`` on the fit's last checkpoint evaluate the same weights on the same split."""
    base = ["--config", str(QUICKSTART), *TINY, "--run.root", str(tmp_path)]
    main(["fit", *base, "--trainer.max_epochs", "1", "--run.id", "fit"])
    fit_rows = read_rows(tmp_path / "quickstart" / "fit" / "metrics.csv")
    fit_acc = float([r["val/acc"] for r in fit_rows if r["val/acc"]][-1])
    ckpt = tmp_path / "quickstart" / "fit" / "checkpoints" / "last.ckpt"
    main([subcommand, *base, "--ckpt_path", str(ckpt), "--run.id", subcommand])
    stage = "val" if subcommand == "validate" else "test"
    rows = read_rows(tmp_path / "quickstart" / subcommand / "metrics.csv")
    assert float(rows[-1][f"{stage}/acc"]) == pytest.approx(fit_acc, abs=1e-6)
    assert float(rows[-1][f"{stage}/loss"]) > 0


@pytest.mark.parametrize("command", [[str(EXE), "--help"], [sys.executable, "-m", "lightning_mem", "--help"]],
                         ids=["console_script", "python_m"])
def test_entry_points_help(command: list[str], tmp_path: Path) -> None:
    proc = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "{fit,validate,test,predict}" in proc.stdout
    assert not list(tmp_path.iterdir())  # --help writes nothing


# ---------------------------------------------------------------- every config: printed, then smoke-run


@pytest.mark.parametrize("name", _params())
def test_print_config(name: str, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    stack = STACKS[name]
    with pytest.raises(SystemExit) as exc:
        main(["fit", *_config_args(stack), "--run.root", str(tmp_path), "--print_config"])
    assert exc.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    # The last file's own values win over its base's.
    override = yaml.safe_load(stack[-1].read_text()) or {}
    for section in ("data", "model"):
        for key, value in (override.get(section) or {}).items():
            if not isinstance(value, dict):
                assert printed[section][key] == value, (section, key)
    # Classes and input shape are linked from the dataset row, never typed twice.
    cli = build_cli([*_config_args(stack), "--run.root", str(tmp_path)], run=False)
    spec = DATASETS[printed["data"]["dataset"]]
    net = cli.model.net
    assert (net.num_classes, tuple(net.input_shape)) == (spec.num_classes, spec.input_shape)
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]  # nothing written (W&B's folder may exist)


@pytest.mark.usefixtures("no_md5")
@pytest.mark.parametrize("name", _params(slow_zoo=True))
def test_every_config_smoke_runs(name: str, tmp_path: Path) -> None:
    stack = STACKS[name]
    data_dir = tmp_path / "data"
    for writer in ("cifar10", "cifar100", "svhn"):
        WRITERS[writer](data_dir)  # 20 / 4 / 12 training images in the real formats: >= 2 batches of 2
    args = ["fit", *_config_args(stack), "--data.data_dir", str(data_dir), "--data.batch_size", "2",
            "--trainer.accelerator", "cpu", "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2",
            "--trainer.limit_val_batches", "1", "--trainer.enable_progress_bar", "false",
            "--run.root", str(tmp_path / "runs"), "--run.id", "smoke"]
    main(args)
    if "WandbLogger" in "".join(p.read_text() for p in stack):
        import wandb

        wandb.finish()  # Lightning leaves the (disabled) W&B run open in this process
    (run_dir,) = (tmp_path / "runs").glob("*/smoke")
    status = json.loads((run_dir / "status.json").read_text())
    assert (status["status"], status["global_step"]) == ("finished", 2)
    rows = read_rows(run_dir / "metrics.csv")
    assert any(r.get("train/loss") for r in rows) and any(r.get("val/acc") for r in rows)


# ---------------------------------------------------------------- benchmark scripts run


def _run_bench(name: str, argv: list[str], monkeypatch: pytest.MonkeyPatch) -> Any:
    """``benchmarks/bench_<name>.py argv`` in this process (no CUDA needed, no second interpreter)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "benchmarks" / f"bench_{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    monkeypatch.setattr(sys, "argv", [f"bench_{name}.py", *argv])
    return module.main()


def test_bench_gpu_exits_cleanly_without_cuda(monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert _run_bench("gpu", [], monkeypatch) == 0
    assert "CUDA is not available on this machine; nothing was measured" in capsys.readouterr().out


def test_bench_gpu_cpu_dry_run(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--device", "cpu", "--steps", "3", "--warmup", "1", "--n", "256", "--n-val", "64",
            "--batch-size", "16"]
    assert _run_bench("gpu", argv, monkeypatch) == 0
    out = capsys.readouterr().out
    cells = [[c.strip() for c in line.split("|")[1:-1]] for line in out.splitlines() if line.startswith("| ")]
    rows = [r for r in cells[1:] if r[1] != "per epoch"]  # after the header
    loops = [("hand-written", "none"), ("Lightning", "none"), ("Lightning", "every 196 steps"),
             ("Lightning", "every step")]
    assert [tuple(r[:3]) for r in rows] == [(net, *loop) for net in ("MLP", "ConvNet") for loop in loops]
    assert all(float(r[3].replace(",", "")) > 0 for r in rows)
    assert "a dry run of the script, not a GPU figure" in out and "16 steps/epoch" in out


def test_bench_loop_quick(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    _run_bench("loop", ["--quick", "--repeats", "1"], monkeypatch)
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith(("| paper MLP", "| small MLP"))]
    assert len(rows) == 2 and "target (paper MLP)" in out  # and the two loops' final losses agreed
