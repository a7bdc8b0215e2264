"""Tests of lightning_mem.cli.fit: a real ``lightning-mem fit``, every file in configs/ printed and smoke-run,
and the console script / ``python -m`` entry points.

Paper configs run on tiny fake CIFAR-10/100 and SVHN files in their real on-disk formats (the writers
of tests/data/test_datamodule.py), with torchvision's md5 checks patched as its own tests do.
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from lightning_mem.cli.commands import main
from lightning_mem.cli.run import build_cli
from lightning_mem.data.datasets import DATASETS
from tests.data.test_datamodule import WRITERS, no_md5  # noqa: F401  (fixture, used by name)
from tests.helpers.exitcodes import run_cli

REPO = Path(__file__).resolve().parents[2]
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
    return any("lightning_mem.nets.zoo." in p.read_text() for p in STACKS[name])


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
    assert files >= {"metrics.csv", "hparams.yaml", "config.yaml", "hp.json", "checkpoints", "status.json",
                     ".lock"}
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
    assert (status["status"], status["global_step"], status["epoch"]) == ("finished", 46, 2)
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["data"]["dataset"] == "digits"
    assert config["model"]["net"]["init_args"]["width"] == 16
    assert config["trainer"]["devices"] == 1  # one device unless asked
    hp = json.loads((run_dir / "hp.json").read_text())
    assert (hp["width"], hp["dataset"], hp["init_std"], hp["run_name"], hp["seed"]) == (16, "digits", 0.01,
                                                                                      "quickstart", 0)
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 46
    assert ckpt["state_dict"]["net.hidden.weight"].shape == (16, 64)
    assert ckpt["hyper_parameters"]["net"]["init_args"]["width"] == 16  # the network's config travels along
    # The last line: how it ended, the final train/held-out accuracy (and the best), and the run folder.
    best = max(float(r["val/acc"]) for r in val)
    assert proc.stderr.rstrip().splitlines()[-1] == (
        f"fit finished at epoch 2, step 46: train/acc {float(train[-1]['train/acc']):.3f}, "
        f"val/acc {float(val[-1]['val/acc']):.3f} (best {best:.3f}); run folder {run_dir}")


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 1-epoch fit (width 16, digits): its run folder."""
    root = tmp_path_factory.mktemp("fitted")
    assert run_cli("fit", "--config", str(QUICKSTART), *TINY, "--trainer.max_epochs", "1",
                   "--run.root", str(root), "--run.id", "fit") == 0
    return root / "quickstart" / "fit"


@pytest.mark.parametrize("subcommand", ["validate", "test"])
def test_validate_and_test_need_only_the_checkpoint(subcommand: str, fitted: Path, tmp_path: Path) -> None:
    """``validate``/``test --ckpt_path`` alone rebuild the network and the data from the checkpoint and
    evaluate the fit's weights on the same split."""
    fit_acc = float([r["val/acc"] for r in read_rows(fitted / "metrics.csv") if r["val/acc"]][-1])
    ckpt = fitted / "checkpoints" / "last.ckpt"
    assert run_cli(subcommand, "--ckpt_path", str(ckpt), "--run.root", str(tmp_path), "--run.id", subcommand,
                   "--trainer.enable_progress_bar", "false") == 0
    stage = "val" if subcommand == "validate" else "test"
    (run_dir,) = tmp_path.glob(f"*/{subcommand}")
    rows = read_rows(run_dir / "metrics.csv")
    assert float(rows[-1][f"{stage}/acc"]) == pytest.approx(fit_acc, abs=1e-6)
    assert float(rows[-1][f"{stage}/loss"]) > 0
    assert json.loads((run_dir / "hp.json").read_text())["width"] == 16


def test_load_from_checkpoint_needs_no_net(fitted: Path) -> None:
    from lightning_mem.training.module import MemorizationModule

    ckpt = fitted / "checkpoints" / "last.ckpt"
    module = MemorizationModule.load_from_checkpoint(ckpt)
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    assert type(module.net).__name__ == "ScaledMLP" and module.net.hidden.weight.shape == (16, 64)
    assert torch.equal(module.net.hidden.weight, saved["net.hidden.weight"])


@pytest.mark.parametrize(("args", "says"), [
    (["validate", "--model.net.width", "32"],
     "checkpoint has width 16, config asks for 32; drop those options"),
    (["test", "--data.dataset", "cifar100"], "checkpoint has num_classes 10, config asks for 100"),
    (["fit", "--config", str(QUICKSTART), *TINY, "--model.net.width", "32"],
     "checkpoint has width 16, config asks for 32; resume with the model options of that run"),
    (["fit", "--config", str(QUICKSTART), *TINY, "--model.net.activation", "relu", "--ckpt_path", "last",
      "--run.root", "{root}"], "checkpoint has activation 'sin', config asks for 'relu'"),
], ids=["validate-width", "test-dataset", "resume-width", "resume-last-activation"])
def test_a_checkpoint_of_another_model_is_refused_before_anything_is_written(
    args: list[str], says: str, fitted: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = fitted.parent.parent
    before = snapshot(root)
    ckpt = ["--ckpt_path", str(fitted / "checkpoints" / "last.ckpt")] if "last" not in args else []
    code = run_cli(*[a.format(root=root) for a in args], *ckpt, *([] if "last" in args else
                                                              ["--run.root", str(tmp_path)]))
    err = capsys.readouterr().err
    assert code == 2, err[-2000:]
    assert says in err[err.rfind("error:"):]
    assert snapshot(root) == before  # the fit's folder is untouched (config.yaml, status.json, metrics)
    assert not list(tmp_path.iterdir())


def test_a_truncated_last_checkpoint_changes_nothing(fitted: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    shutil.copytree(fitted, tmp_path / "quickstart" / "fit")
    last = tmp_path / "quickstart" / "fit" / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:3000])
    before = snapshot(tmp_path)
    code = run_cli("fit", "--config", str(QUICKSTART), *TINY, "--trainer.max_epochs", "2", "--run.root",
                   str(tmp_path), "--ckpt_path", "last")
    err = capsys.readouterr().err
    assert code == 2 and "does not load as a checkpoint (empty, truncated or not a torch file" in err
    assert snapshot(tmp_path) == before  # metrics.csv is not set aside, status.json not rewritten


@pytest.mark.parametrize(("key", "value"), [("run.name", "../../escape"), ("run.id", ".."), ("run.id", "a/b"),
                                            ("run.name", "-x"), ("run.id", ".hidden")])
def test_run_names_must_be_one_folder(key: str, value: str, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "root"
    code = run_cli("fit", "--config", str(QUICKSTART), *TINY, "--run.root", str(root), f"--{key}={value}")
    err = capsys.readouterr().err
    assert code == 2, err[-1000:]
    assert f"{key}={value!r} must be one folder name" in err and "(no '/', not '.' or '..')" in err
    assert not list(tmp_path.iterdir())  # no folder created, not even the root


def test_interpolation_across_config_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "lr.yaml").write_text("model:\n  lr: 0.05\n")
    (tmp_path / "remedy.yaml").write_text("model:\n  loss_scale: ${model.lr}\ndata:\n  batch_size: 64\n")
    base = ["fit", "--config", str(QUICKSTART), "--config", str(tmp_path / "lr.yaml"), "--config",
            str(tmp_path / "remedy.yaml"), "--run.root", str(tmp_path / "runs")]
    assert run_cli(*base, "--print_config") == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert (printed["model"]["lr"], printed["model"]["loss_scale"]) == (0.05, 0.05)
    # On the command line the path starts at the subcommand.
    assert run_cli(*base, "--model.lr", "0.2", "--data.batch_size", "${fit.model.lr}", "--print_config") == 2
    assert run_cli(*base, "--model.lr", "0.2", "--model.loss_scale", "${fit.model.lr}", "--print_config") == 0
    assert yaml.safe_load(capsys.readouterr().out)["model"]["loss_scale"] == 0.2
    (tmp_path / "bad.yaml").write_text("model:\n  loss_scale: ${model.lrr}\n")
    assert run_cli(*base, "--config", str(tmp_path / "bad.yaml")) == 2
    err = capsys.readouterr().err
    assert "InterpolationKeyError: Interpolation key '.lrr' not found" in err
    assert "supported: ${key} refers to a key of the config" in err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("command", [[str(EXE), "--help"], [sys.executable, "-m", "lightning_mem", "--help"]],
                         ids=["console_script", "python_m"])
def test_entry_points_help(command: list[str], tmp_path: Path) -> None:
    proc = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: lightning-mem {fit,validate,test,sweep,report,theorem1")
    assert "predict" not in proc.stdout
    assert not list(tmp_path.iterdir())  # --help writes nothing


def test_the_cli_offers_no_predict(capsys: pytest.CaptureFixture[str]) -> None:
    from lightning_mem.cli.fit import MemCLI

    assert list(MemCLI.subcommands()) == ["fit", "validate", "test"]
    assert run_cli("predict", "--ckpt_path", "x.ckpt") == 2
    assert "unknown subcommand 'predict'" in capsys.readouterr().err


# ---------------------------------------------------------------- every config: printed, then smoke-run


@pytest.mark.parametrize("name", _params())
def test_print_config(name: str, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    stack = STACKS[name]
    with pytest.raises(SystemExit) as exc:
        main(["fit", *_config_args(stack), "--run.root", str(tmp_path), "--print_config"])
    assert exc.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["trainer"]["devices"] == 1  # never every visible GPU unless asked (issue 12)
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
