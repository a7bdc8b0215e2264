"""Reliability: divergence stops a run cleanly (lightning_mem.training.guard), a killed run resumes
exactly, bad input
fails before training without touching earlier runs, same seed gives the same metrics, and concurrent
runs keep to their own folders.

Runs go through the real CLI (``lightning_mem.cli.commands.main``) on scikit-learn's 8×8 digits (1,437 train
images: 23 steps of 64 per epoch); the kill tests start a real ``lightning-mem fit`` subprocess.
"""

from __future__ import annotations

import csv
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
import yaml
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from lightning_mem.data.datamodule import ImageClassificationData
from lightning_mem.errors import EXIT_DIVERGED
from lightning_mem.nets import ScaledMLP
from lightning_mem.rundir import FolderLock, read_hp, read_status
from lightning_mem.training.guard import DivergedError, DivergenceGuard, RunStatus
from lightning_mem.training.module import MemorizationModule
from tests.data.test_datamodule import no_md5  # noqa: F401  (fixture: torchvision's md5 checks off for fake files)
from tests.helpers.exitcodes import run_cli

TESTS = Path(__file__).resolve().parents[1]
QUICKSTART = TESTS.parent / "configs" / "quickstart.yaml"
EXE = Path(sys.executable).with_name("lightning-mem")
STEPS_PER_EPOCH = 23  # digits: ceil(1437 / 64)
TINY = ["fit", "--config", str(QUICKSTART), "--data.dataset", "digits", "--model.net.width", "16",
        "--data.batch_size", "64", "--trainer.enable_progress_bar", "false", "--trainer.accelerator", "cpu"]
# Squared loss at σ = 10 with ReLU: the logits scale with σ, the curvature with σ², and SGD at lr 0.03
# overflows to inf at step 25, in the second epoch (found by a scan over width, σ and lr).
DIVERGES = ["--model.net.width", "128", "--model.net.activation", "relu", "--model.net.init_std", "10",
            "--model.loss", "squared", "--model.lr", "0.03", "--trainer.max_epochs", "4"]


class Throttle(L.Callback):
    """Sleeps after every training batch, so a subprocess can be killed mid-run (numerics untouched)."""

    def __init__(self, seconds: float = 0.05) -> None:
        self.seconds = seconds

    def on_train_batch_end(self, *args: Any) -> None:
        time.sleep(self.seconds)


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def load_ckpt(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=False)


def finite(state_dict: dict[str, torch.Tensor]) -> bool:
    return all(bool(torch.isfinite(v).all()) for v in state_dict.values() if v.is_floating_point())


# ---------------------------------------------------------------- DivergenceGuard and RunStatus on a Trainer


class Poison(L.Callback):
    """Sets one weight to NaN after the batch of ``step``, or at the end of epoch ``epoch_end``."""

    def __init__(self, step: int | None = None, epoch_end: int | None = None) -> None:
        self.step, self.epoch_end = step, epoch_end

    def _poison(self, pl_module: L.LightningModule) -> None:
        with torch.no_grad():
            pl_module.net.out.weight[0, 0] = float("nan")  # type: ignore[union-attr, index]

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if trainer.global_step - 1 == self.step:
            self._poison(pl_module)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch == self.epoch_end:
            self._poison(pl_module)


def _trainer(tmp_path: Path, *callbacks: L.Callback, epochs: int = 3) -> tuple[L.Trainer, MemorizationModule,
                                                                               ImageClassificationData]:
    L.seed_everything(0, verbose=False)
    data = ImageClassificationData("digits", batch_size=64)
    module = MemorizationModule(ScaledMLP(data.input_shape, data.num_classes, width=16), lr=0.05)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "checkpoints", filename="epoch{epoch}",
                           auto_insert_metric_name=False, save_last=True, every_n_epochs=1)
    trainer = L.Trainer(max_epochs=epochs, logger=CSVLogger(tmp_path, name="", version=""),
                        callbacks=[*callbacks, RunStatus(str(tmp_path)), ckpt], enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0)
    return trainer, module, data


def test_nan_weights_at_epoch_end_never_reach_a_checkpoint(tmp_path: Path) -> None:
    # Poisoned after epoch 1's last step, before its checkpoint: the guard's epoch-end check fires first.
    trainer, module, data = _trainer(tmp_path, Poison(epoch_end=1), DivergenceGuard())
    match = r"at step 46 \(epoch 1\): weights are non-finite \(net.out.weight\)"
    with pytest.raises(DivergedError, match=match):
        trainer.fit(module, datamodule=data)
    last = load_ckpt(tmp_path / "checkpoints" / "last.ckpt")
    assert last["global_step"] == STEPS_PER_EPOCH  # epoch 0's: epoch 1's was never written
    assert finite(last["state_dict"])
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["epoch0.ckpt", "last.ckpt"]
    status = read_status(tmp_path)
    assert status is not None
    assert (status["status"], status["diverged_step"], status["epoch"]) == ("diverged", 46, 1)
    assert "step" not in status  # one unambiguous name per field (status.json of issue 11, fault 10)
    assert "weights are non-finite" in status["reason"]
    rows = read_rows(tmp_path / "metrics.csv")
    assert [(r["diverged"], r["diverged_step"]) for r in rows if r["diverged"]] == [("1.0", "46.0")]
    assert all(r["train/loss"] != "nan" for r in rows)


def test_first_bad_step_is_exact_between_checks(tmp_path: Path) -> None:
    # NaN weights after step 30 -> the loss of step 31 is NaN; read every 10 steps -> stops at step 40.
    seen: list[int] = []

    class Stop(L.Callback):
        def on_exception(self, trainer: L.Trainer, *args: Any) -> None:
            seen.append(trainer.global_step)

    guard = DivergenceGuard(check_every_n_steps=10)
    trainer, module, data = _trainer(tmp_path, Poison(step=30), guard, Stop())
    with pytest.raises(DivergedError, match=r"at step 31 \(epoch 1\): the training loss is nan") as exc:
        trainer.fit(module, datamodule=data)
    assert (exc.value.step, exc.value.epoch, seen) == (31, 1, [40])
    assert "lr=0.05" in str(exc.value) and "lower --model.lr or --model.net.init_std" in str(exc.value)
    # status.json: the first bad step, and where the guard noticed it (global_step), each under its own name.
    status = read_status(tmp_path)
    assert status is not None
    assert (status["status"], status["diverged_step"], status["global_step"], status["epoch"]) == (
        "diverged", 31, 40, 1)


def test_saving_nan_weights_raises_and_writes_nothing(tmp_path: Path) -> None:
    trainer, module, data = _trainer(tmp_path, DivergenceGuard(), epochs=1)
    trainer.fit(module, datamodule=data)
    assert read_status(tmp_path)["status"] == "finished"  # type: ignore[index]
    Poison()._poison(module)
    with pytest.raises(DivergedError, match="weights are non-finite"):
        trainer.save_checkpoint(tmp_path / "nan.ckpt")
    assert not (tmp_path / "nan.ckpt").exists()


@pytest.mark.parametrize("value", [0, -1, 1.5, True])
def test_guard_rejects_bad_interval(value: object) -> None:
    with pytest.raises(ValueError, match=rf"check_every_n_steps={value!r} must be an integer >= 1"):
        DivergenceGuard(check_every_n_steps=value)  # type: ignore[arg-type]


# ---------------------------------------------------------------- divergence through the CLI


def test_squared_loss_at_large_sigma_diverges_cleanly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="lightning_mem")
    code = run_cli(*TINY, *DIVERGES, "--run.root", str(tmp_path), "--run.id", "div")
    assert code == EXIT_DIVERGED == 3
    run_dir = tmp_path / "quickstart" / "div"
    status = read_status(run_dir)
    assert status is not None
    assert (status["status"], status["diverged_step"], status["epoch"]) == ("diverged", 25, 1)
    assert status["reason"] == "the training loss is inf"
    message = status["message"]
    assert message in caplog.text  # the same message on stderr
    # ... followed by the one-line summary of the fit.
    assert caplog.records[-1].getMessage().startswith("fit diverged at step 25 (epoch 1): train/acc ")
    assert caplog.records[-1].getMessage().endswith(f"; run folder {tmp_path / 'quickstart' / 'div'}")
    for part in ("step 25 (epoch 1)", "init_std=10.0", "lr=0.03", "loss=squared", "last.ckpt"):
        assert part in message
    # The last good checkpoint (end of epoch 0) is kept and finite; nothing of the diverged epoch was saved.
    last = load_ckpt(run_dir / "checkpoints" / "last.ckpt")
    assert last["global_step"] == STEPS_PER_EPOCH and finite(last["state_dict"])
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["epoch0.ckpt", "last.ckpt"]
    rows = read_rows(run_dir / "metrics.csv")
    assert [r["diverged_step"] for r in rows if r["diverged"] == "1.0"] == ["25.0"]
    assert [r["epoch"] for r in rows if r["train/loss"]] == ["0"]  # no NaN/inf epoch row


# ---------------------------------------------------------------- resume (kill points: test_kill_resume.py)

EPOCHS = 4
RESUME_ARGS = [*TINY, "--trainer.max_epochs", str(EPOCHS)]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted run with the same seed and config: its run folder."""
    root = tmp_path_factory.mktemp("reference")
    assert run_cli(*RESUME_ARGS, "--run.root", str(root), "--run.id", "ref") == 0
    return root / "quickstart" / "ref"


def test_resume_keeps_rows_up_to_the_checkpoint(tmp_path: Path) -> None:
    """Rows logged after the checkpoint (the killed epoch) are dropped; the resumed run logs them again."""
    assert run_cli(*TINY, "--trainer.max_epochs", "2", "--run.root", str(tmp_path), "--run.id", "r") == 0
    run_dir = tmp_path / "quickstart" / "r"
    full = (run_dir / "metrics.csv").read_text()
    # Pretend the process died in epoch 2 after a row of it was flushed, and during a resume's rename.
    header = full.splitlines()[0].split(",")
    with (run_dir / "metrics.csv").open("a", newline="") as f:
        csv.DictWriter(f, fieldnames=header).writerow({"epoch": 2, "step": 50, "train/loss": 9.9})
    os.replace(run_dir / "metrics.csv", run_dir / "metrics.resume.csv")
    assert run_cli(*TINY, "--trainer.max_epochs", "2", "--run.root", str(tmp_path), "--run.id", "r",
                   "--ckpt_path", "last") == 0  # nothing left to train: only the rows are carried over
    assert (run_dir / "metrics.csv").read_text() == full
    assert not (run_dir / "metrics.resume.csv").exists()


@pytest.mark.slow
def test_wandb_offline_run_resumes_with_the_same_id(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    wandb.finish()  # a run an earlier test left open in this process would be reused
    wandb.teardown()  # and W&B keeps the settings of its first use (mode=disabled)
    logger = tmp_path / "wandb_only.yaml"
    wandb_logger = {"class_path": "lightning.pytorch.loggers.WandbLogger", "init_args": {"project": "lm"}}
    logger.write_text(yaml.safe_dump({"trainer": {"logger": [wandb_logger]}}))
    args = [*TINY, "--config", str(logger), "--run.name", "wb", "--run.root", str(tmp_path)]
    assert run_cli(*args, "--trainer.max_epochs", "1", "--run.id", "w1") == 0
    wandb.finish()  # as the end of the first process would
    time.sleep(1.1)  # W&B names offline folders by the second they start in
    assert run_cli(*args, "--trainer.max_epochs", "2", "--ckpt_path", "last") == 0
    wandb.finish()
    wandb.teardown()
    runs = sorted((tmp_path / "wb" / "w1" / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and all(p.name.endswith("-w1") for p in runs)  # one W&B run id, two sessions
    assert all((p / "run-w1.wandb").is_file() for p in runs)
    rows = read_rows(tmp_path / "wb" / "w1" / "metrics.csv")
    assert [r["epoch"] for r in rows if r["train/loss"]] == ["0", "1"]


# ---------------------------------------------------------------- bad input: a message, before training


def _snapshot(root: Path) -> dict[str, tuple[int, bytes]]:
    files = (p for p in root.rglob("*") if p.is_file())
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, p.read_bytes()) for p in files}


@pytest.fixture
def earlier_run(tmp_path: Path) -> Path:
    """A finished run's folder under the root the bad commands write to."""
    run_dir = tmp_path / "runs" / "quickstart" / "old"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "metrics.csv").write_text("epoch,step,val/acc\n0,22,0.9\n")
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"weights")
    (run_dir / "config.yaml").write_text("seed_everything: 0\n")
    return tmp_path / "runs"


def _cifar(root: Path, damage: str) -> Path:
    from tests.data.test_datamodule import write_cifar10

    write_cifar10(root)
    batch = root / "cifar-10-batches-py" / "data_batch_1"
    if damage == "truncate":
        batch.write_bytes(batch.read_bytes()[:100])
    else:
        batch.unlink()
    return root


BAD_INPUT = [
    # (id, arguments, parts of the message: key, value, what is allowed)
    ("unknown-activation", ["--model.net.activation", "swish"], ["activation", "swish", "'sin', 'relu'"]),
    ("unknown-dataset", ["--data.dataset", "cifar11"], ["data.dataset", "cifar11", "'cifar10'", "'mnist5k'"]),
    ("unknown-loss", ["--model.loss", "mse"], ["model.loss", "mse", "'cross_entropy', 'hinge', 'squared'"]),
    ("unknown-key", ["--model.lrr", "0.1"], ["unrecognized arguments", "--model.lrr"]),
    ("negative-width", ["--model.net.width", "-5"], ["width=-5", "must be >= 1"]),
    ("zero-width", ["--model.net.width", "0"], ["width=0", "must be >= 1"]),
    ("negative-sigma", ["--model.net.init_std", "-1"], ["init_std=-1.0", "positive finite number"]),
    ("negative-lr", ["--model.lr", "-0.1"], ["lr=-0.1", "positive finite number"]),
    ("zero-lr", ["--model.lr", "0"], ["lr=0.0", "positive finite number"]),
    ("negative-epochs", ["--trainer.max_epochs", "-3"], ["max_epochs", "-3", "non-negative integer or -1"]),
    ("batch-too-large", ["--data.batch_size", "5000"],
     ["batch_size=5000", "1437 examples", "--data.batch_size"]),
    ("label-noise-above-1", ["--data.label_noise", "1.5"], ["label_noise=1.5", "[0, 1]"]),
    ("label-noise-below-0", ["--data.label_noise", "-0.1"], ["label_noise=-0.1", "[0, 1]"]),
    ("dataset-folder-missing", ["--data.dataset", "cifar10", "--data.data_dir", "{tmp}/nodata"],
     ["'cifar10'", "cifar-10-batches-py does not exist", "--data.download true", "--data.data_dir"]),
    ("dataset-file-missing", ["--data.dataset", "cifar10", "--data.data_dir", "{cifar_missing}"],
     ["'cifar10'", "lacks data_batch_1"]),
    ("dataset-file-corrupt", ["--data.dataset", "cifar10", "--data.data_dir", "{cifar_truncated}"],
     ["'cifar10'", "corrupt or unreadable", "--data.download true"]),
    ("run-root-through-a-file", ["--run.root", "{tmp}/a_file/runs"],
     ["run.root='{tmp}/a_file/runs'", "a_file is a file, not a directory", "--run.root"]),
    ("run-id-already-used", ["--run.id", "old"], ["run.id='old'", "already holds a run", "--ckpt_path last"]),
    ("checkpoint-missing", ["--ckpt_path", "{tmp}/nope.ckpt"],
     ["ckpt_path=", "nope.ckpt", "no such checkpoint"]),
    ("resume-without-checkpoint", ["--run.name", "fresh", "--ckpt_path", "last"],
     ["--ckpt_path last", "no last.ckpt"]),
    ("resume-from-a-corrupt-last-checkpoint", ["--run.id", "old", "--ckpt_path", "last"],
     ["ckpt_path=", "quickstart/old/checkpoints/last.ckpt", "does not load as a checkpoint"]),
    ("checkpoint-empty", ["--ckpt_path", "{tmp}/empty.ckpt"], ["empty.ckpt", "EOFError"]),
    ("checkpoint-random-bytes", ["--ckpt_path", "{tmp}/random.ckpt"], ["random.ckpt", "does not load"]),
    ("checkpoint-is-a-folder", ["--ckpt_path", "{tmp}"], ["no such checkpoint file"]),
    ("run-name-escapes-the-root", ["--run.name", "../../escape"],
     ["run.name='../../escape' must be one folder name", "no '/'"]),
    ("run-id-is-the-root", ["--run.id", ".."], ["run.id='..' must be one folder name"]),
    ("run-id-nests-in-a-run", ["--run.id", "old/inner"], ["run.id='old/inner' must be one folder name"]),
    ("tf32-at-large-sigma", ["--model.net.init_std", "10", "--precision.tf32", "true"],
     ["TF32", "sin net at init_std=10", "--precision.accept_large_sigma_error true"]),
    ("interpolation-of-a-missing-key", ["--config", "{tmp}/bad_interpolation.yaml"],
     ["InterpolationKeyError", "supported: ${{key}}"]),
]


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The damaged inputs of BAD_INPUT, built once for the module: {name: path}."""
    tmp = tmp_path_factory.mktemp("bad_files")
    (tmp / "a_file").write_text("not a folder")
    (tmp / "empty.ckpt").write_bytes(b"")
    (tmp / "random.ckpt").write_bytes(bytes(range(256)) * 16)
    (tmp / "bad_interpolation.yaml").write_text("model:\n  loss_scale: ${model.nope}\n")
    return {"tmp": str(tmp), "cifar_missing": str(_cifar(tmp / "missing", "delete")),
            "cifar_truncated": str(_cifar(tmp / "truncated", "truncate"))}


@pytest.mark.usefixtures("no_md5")
@pytest.mark.parametrize(("args", "parts"), [row[1:] for row in BAD_INPUT], ids=[row[0] for row in BAD_INPUT])
def test_bad_input_fails_before_training(
    args: list[str], parts: list[str], earlier_run: Path, bad_files: dict[str, str],
    capsys: pytest.CaptureFixture[str]
) -> None:
    before = _snapshot(earlier_run)
    code = run_cli(*TINY, "--trainer.max_epochs", "1", "--run.root", str(earlier_run),
                   *[a.format(**bad_files) for a in args])
    err = capsys.readouterr().err
    assert code == 2, err[-2000:]
    assert "Traceback" not in err
    message = err[err.rfind("error:"):]
    for part in parts:
        assert part.format(**bad_files) in message, message
    assert _snapshot(earlier_run) == before  # the earlier run is untouched, nothing new was written
    assert [p.name for p in (earlier_run / "quickstart").iterdir()] == ["old"]
    assert sorted(p.name for p in earlier_run.iterdir()) == ["quickstart"]


def _sweep_cases() -> list[Any]:
    head, cmd = "name: s\nparameters:\n  model.lr: ", "\ncommand: [lightning-mem, fit]\n"
    return [
        pytest.param(head + "0.1" + cmd, ["parameter 'model.lr'", "0.1", "{values: [...]}"],
                     id="parameter-not-a-mapping"),
        pytest.param(head + "{min: 0.1, max: 1.0}" + cmd,
                     ["parameter 'model.lr'", "cannot grid", "values: [...]"], id="not-griddable"),
        pytest.param(head + "{values: []}" + cmd, ["parameter 'model.lr'", "non-empty list"],
                     id="empty-values"),
        pytest.param(head + "{values: [0.1]}\n", ["s.yaml", "`command:` list"], id="no-command"),
        pytest.param(head + "{values: [0.1" + cmd, ["s.yaml"], id="yaml-syntax"),
    ]


@pytest.mark.parametrize(("text", "parts"), _sweep_cases())
def test_malformed_sweep_yaml_is_rejected(
    text: str, parts: list[str], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sweep = pytest.importorskip("lightning_mem.sweeps.command", reason="lightning_mem/sweep.py is absent")
    path = tmp_path / "s.yaml"
    path.write_text(text)
    assert sweep.run(["local", str(path), "--root", str(tmp_path / "runs"), "--dry-run"]) == 2
    for part in parts:
        assert part in caplog.text, caplog.text
    assert not (tmp_path / "runs").exists()


# ---------------------------------------------------------------- determinism and concurrency


def test_same_seed_same_metrics_on_cpu(tmp_path: Path) -> None:
    args = [*TINY, "--trainer.max_epochs", "1", "--run.root", str(tmp_path)]
    for run_id, seed in (("a", "0"), ("b", "0"), ("c", "1")):
        assert run_cli(*args, "--seed_everything", seed, "--run.id", run_id) == 0
    text = {r: (tmp_path / "quickstart" / r / "metrics.csv").read_text() for r in "abc"}
    assert text["a"] == text["b"]  # every value, alignment included, bit for bit
    assert text["a"] != text["c"]  # and the seed matters
    a, b = (load_ckpt(tmp_path / "quickstart" / r / "checkpoints" / "last.ckpt")["state_dict"] for r in "ab")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_concurrent_runs_keep_to_their_own_folders(tmp_path: Path) -> None:
    procs = [
        subprocess.Popen([str(EXE), *TINY, "--trainer.max_epochs", "1", "--run.root", str(tmp_path),
                          "--seed_everything", str(seed)], cwd=tmp_path, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True)
        for seed in (0, 1, 2)
    ]
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], errors
    run_dirs = sorted((tmp_path / "quickstart").iterdir())
    assert len(run_dirs) == 3
    seeds = set()
    for run_dir in run_dirs:
        config = yaml.safe_load((run_dir / "config.yaml").read_text())
        seeds.add(config["seed_everything"])
        assert read_status(run_dir)["status"] == "finished"  # type: ignore[index]
        assert len([r for r in read_rows(run_dir / "metrics.csv") if r["train/loss"]]) == 1
        assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["epoch0.ckpt", "last.ckpt"]
        assert load_ckpt(run_dir / "checkpoints" / "last.ckpt")["global_step"] == STEPS_PER_EPOCH
    assert seeds == {0, 1, 2}
    assert len({(d / "metrics.csv").read_text() for d in run_dirs}) == 3


# ---------------------------------------------------------------- claiming a run folder


def test_a_held_run_folder_is_refused_naming_its_holder(tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """While another owner holds a run folder's lock, a fit with that --run.id exits 2 naming the holder's
    pid and changes nothing there (repeated: the refusal leaves no state behind)."""
    run_dir = tmp_path / "quickstart" / "busy"
    with FolderLock(run_dir, "run folder"):  # another open file of this process: flock conflicts all the same
        before = _snapshot(tmp_path)
        for _ in range(3):
            code = run_cli(*TINY, "--trainer.max_epochs", "1", "--run.root", str(tmp_path), "--run.id",
                           "busy")
            err = capsys.readouterr().err
            assert code == 2, err[-2000:]
            assert f"is in use by another process (pid {os.getpid()} on " in err
            assert _snapshot(tmp_path) == before
    # Free again: the same command now runs.
    assert run_cli(*TINY, "--trainer.max_epochs", "1", "--run.root", str(tmp_path), "--run.id", "busy") == 0


@pytest.mark.slow  # two real fits at once: ~30 s on 2 busy cores
def test_two_fits_with_one_run_id_at_once(reference: Path, tmp_path: Path) -> None:
    """The second of two fits started with the same --run.id stops (exit 2) naming the first's pid; the
    first ends exactly as an uninterrupted run with its seed (metrics.csv and weights), its config intact."""
    path = [str(TESTS / "helpers"), str(TESTS.parent), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
    args = [str(EXE), *RESUME_ARGS, "--run.root", str(tmp_path), "--run.id", "same"]
    throttle = "--trainer.callbacks+=tests.reliability.test_faults.Throttle"
    first = subprocess.Popen([*args, throttle], cwd=tmp_path, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    run_dir = tmp_path / "quickstart" / "same"
    deadline = time.monotonic() + 240
    while (read_status(run_dir) or {}).get("status") != "running" and first.poll() is None \
            and time.monotonic() < deadline:
        time.sleep(0.05)
    second = subprocess.run([*args, "--seed_everything", "1"], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=300)
    assert first.poll() is None, "the first fit ended before the second started; slow it down"
    _, first_err = first.communicate(timeout=300)
    assert first.returncode == 0, first_err[-2000:]
    assert second.returncode == 2, second.stderr[-2000:]
    assert f"is in use by another process (pid {first.pid} on " in second.stderr
    assert "Traceback" not in second.stderr
    # Nothing of the first run changed: seed 0 everywhere, and the same bytes as the reference run.
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["seed_everything"] == 0
    assert read_hp(run_dir)["seed"] == 0  # type: ignore[index]
    assert (run_dir / "metrics.csv").read_text() == (reference / "metrics.csv").read_text()
    want, got = (load_ckpt(d / "checkpoints" / "last.ckpt")["state_dict"] for d in (reference, run_dir))
    assert all(torch.equal(want[k], got[k]) for k in want)
    assert read_status(run_dir)["status"] == "finished"  # type: ignore[index]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="address-space limit: Linux's RLIMIT_AS")
def test_running_out_of_memory_in_the_fit_exits_2_naming_the_size(tmp_path: Path) -> None:
    # Weights that fit (51 MB) but a batch whose activations do not (1437 × 400,000 floats = 2.3 GB), in a
    # process whose address space is capped at 6 GB: the allocator's error inside the fit is exit 2 with
    # the bytes asked for and the options to lower, no traceback, and the run recorded as failed.
    import resource

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (6 * 2**30, 6 * 2**30))

    argv = [sys.executable, "-m", "lightning_mem", *TINY, "--model.net.width", "400000",
            "--data.batch_size", "1437", "--trainer.max_epochs", "1", "--run.root", str(tmp_path),
            "--run.id", "oom"]
    proc = subprocess.run(argv, preexec_fn=cap, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert "error: out of memory: 2.3 GB asked for at once" in proc.stderr
    assert "lower --model.net.width or --data.batch_size" in proc.stderr
    assert (read_status(tmp_path / "quickstart" / "oom") or {})["status"] == "failed"
