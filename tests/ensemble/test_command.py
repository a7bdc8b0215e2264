"""``lightning-mem ensemble fit`` against ``lightning-mem fit`` of the same points, file by file.

Each member's folder must be its single run's: ``config.yaml``, ``hp.json`` and ``hparams.yaml`` byte for
byte (root aside), ``status.json`` field for field, ``metrics.csv`` with the same keys and rows and every
value within the ensemble's stated tolerance (tests/ensemble/test_train.py: 1e-4 relative + 1e-6 absolute;
observed on this CPU: accuracies equal to fp32 rounding — the single run's torchmetrics means are fp32,
the ensemble's sums fp64 —, losses and alignments within 1e-7 relative or 1e-8 absolute), the member's
``checkpoints/last.ckpt`` the single run's weights to 1e-6 of their scale, with the same hyperparameters.
A crashed ensemble resumed with ``--ckpt_path last`` ends byte-identical to an uninterrupted one; a member
that ended before the crash is left untouched; bad input exits 2 and writes nothing.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

import lightning as L
import pandas as pd
import pytest
import torch

from lightning_mem import rundir
from lightning_mem.ensemble.pack import prepare_pack
from lightning_mem.ensemble.plan import read_pack
from tests.helpers.ensembles import BASE, QUICKSTART, lm, packed_and_single

REPO = Path(__file__).resolve().parents[2]
RTOL, ATOL = 1e-4, 1e-6
# ReLU + squared loss at σ = 10, lr 1: overflows within the first epoch (tests/ensemble/test_train.py)
WILD = ["--config", QUICKSTART, "--data.dataset", "digits", "--model.net.width", "32",
        "--model.net.activation", "relu", "--model.loss", "squared", "--trainer.max_epochs", "4",
        "--trainer.enable_progress_bar", "false"]


@pytest.fixture(autouse=True)
def _quiet() -> None:
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)


def assert_same_rows(packed: Path, single: Path) -> None:
    """Same columns and rows (step, epoch, which keys are logged); every value within the tolerance."""
    a, b = pd.read_csv(packed), pd.read_csv(single)
    assert list(a.columns) == list(b.columns)
    assert a[["step", "epoch"]].equals(b[["step", "epoch"]])
    assert a.notna().equals(b.notna())
    for key in a.columns:
        for x, y in zip(a[key].dropna(), b[key].dropna(), strict=True):
            assert math.isclose(x, y, rel_tol=RTOL, abs_tol=ATOL), (key, x, y)


def same_text(packed: Path, single: Path, roots: tuple[Path, Path]) -> bool:
    return packed.read_text() == single.read_text().replace(str(roots[1]), str(roots[0]))


@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """2 σ × 2 seeds as one ensemble (--run.id e), and the same four points as single fits."""
    root, single_root = tmp_path_factory.mktemp("packed"), tmp_path_factory.mktemp("single")
    code, members = packed_and_single(root, single_root, BASE, "--ensemble.init_std", "0.01,10",
                                      "--ensemble.seed", "0,1")
    return {"code": code, "root": root, "single_root": single_root, "members": members}


def test_members_are_the_single_runs_of_their_points(grid: dict[str, Any]) -> None:
    root, single_root = grid["root"], grid["single_root"]
    assert grid["code"] == 0
    ids = [m["run_id"] for m in grid["members"]]
    assert ids == ["e_00_init_std0.01_seed0", "e_01_init_std0.01_seed1", "e_02_init_std10_seed0",
                   "e_03_init_std10_seed1"]
    assert grid["members"][3]["argv"][-6:] == ["--model.net.init_std", "10", "--seed_everything", "1",
                                               "--run.id", ids[3]]
    for rid in ids:
        packed, single = root / "g" / rid, single_root / "g" / rid
        for name in ("config.yaml", "hp.json", "hparams.yaml"):
            assert same_text(packed / name, single / name, (root, single_root)), (rid, name)
        assert_same_rows(packed / "metrics.csv", single / "metrics.csv")
        a, b = rundir.read_status(packed), rundir.read_status(single)
        assert a is not None and b is not None
        assert {k: v for k, v in a.items() if k != "time"} == {k: v for k, v in b.items() if k != "time"}
        assert a["status"] == "finished" and a["global_step"] == 12 and a["epoch"] == 2
        ck_a = torch.load(packed / "checkpoints" / "last.ckpt", weights_only=True)
        ck_b = torch.load(single / "checkpoints" / "last.ckpt", weights_only=True)
        for key in ("hyper_parameters", "datamodule_hyper_parameters", "epoch", "global_step"):
            assert ck_a[key] == ck_b[key], key
        for key, w in ck_b["state_dict"].items():
            torch.testing.assert_close(ck_a["state_dict"][key], w, rtol=0, atol=1e-6 * float(w.abs().max()))
        assert rundir.lock_holder(packed) is None  # released at the end
    config = (root / "g" / ids[2] / "config.yaml").read_text()
    assert "init_std: 10.0" in config and "seed_everything: 0" in config and f"id: {ids[2]}" in config
    assert sorted(p.name for p in (root / "g" / "e").iterdir()) == [".lock", "checkpoints", "pack.json"]
    assert sorted(p.name for p in (root / "g").iterdir()) == sorted([*ids, "e"])


def test_a_member_checkpoint_alone_validates(grid: dict[str, Any], tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    member = grid["root"] / "g" / grid["members"][1]["run_id"]
    assert lm("validate", "--ckpt_path", str(member / "checkpoints" / "last.ckpt"),
              "--run.root", str(tmp_path)) == 0
    (row,) = [r for r in pd.read_csv(next(tmp_path.rglob("metrics.csv"))).to_dict("records")]
    last = rundir.final_metrics(member)
    assert row["val/acc"] == pytest.approx(last["val/acc"], rel=1e-6)
    assert row["val/loss"] == pytest.approx(last["val/loss"], rel=1e-5)


def test_report_sees_ordinary_runs(grid: dict[str, Any], tmp_path: Path) -> None:
    """``report`` writes the same summary; the runs ``report`` and ``dashboard`` load (``runlog``) have the
    same canonical hyperparameters, config, status and metric keys as the single runs'."""
    from lightning_mem.results.runs import load_runs

    packed, single = (load_runs([root / "g"], statuses=None) for root in (grid["root"], grid["single_root"]))
    assert [r.path.name for r in packed] == [r.path.name for r in single] and len(packed) == 4
    for a, b in zip(packed, single, strict=True):
        assert (a.hp, a.status, sorted(a.metrics)) == (b.hp, b.status, sorted(b.metrics))
        old, new = str(grid["single_root"]), str(grid["root"])
        assert json.dumps(a.params, default=str) == json.dumps(b.params, default=str).replace(old, new)
    out = {}
    for name, root in (("packed", grid["root"]), ("single", grid["single_root"])):
        assert lm("report", str(root / "g"), "--out", str(tmp_path / name)) == 0
        out[name] = (tmp_path / name / "summary.md").read_text()
    assert out["packed"] == out["single"]
    assert "| 0.01 | 2 |" in out["packed"] and "| 10 | 2 |" in out["packed"]


class Crash(L.Callback):
    """Stops the fit with an error at the start of epoch ``epoch`` (a crash after that epoch's checkpoint)."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch == self.epoch:
            raise RuntimeError("crash")


def _wild(root: Path, run_id: str) -> list[str]:
    return ["ensemble", "fit", *WILD, "--run.root", str(root), "--run.name", "w", "--run.id", run_id,
            "--ensemble.init_std", "0.1,10", "--ensemble.lr", "0.01,1"]


@pytest.fixture(scope="module")
def wild(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """σ ∈ {0.1, 10} × lr ∈ {0.01, 1} on ReLU + squared loss: σ = 10 with lr 1 diverges in epoch 0."""
    root = tmp_path_factory.mktemp("wild")
    assert lm(*_wild(root, "e")) == 3  # the fit ended; a member diverged
    return root


def test_a_diverging_member_is_recorded_and_the_others_finish(wild: Path, tmp_path: Path) -> None:
    ids = [m["run_id"] for m in read_pack(wild / "w" / "e")]
    assert [m.split("_", 2)[2] for m in ids] == ["init_std0.1_lr0.01", "init_std0.1_lr1", "init_std10_lr0.01",
                                                 "init_std10_lr1"]
    statuses = [rundir.read_status(wild / "w" / rid) for rid in ids]
    assert [s["status"] for s in statuses] == ["finished", "finished", "finished", "diverged"]  # type: ignore[index]
    # the single run of the diverging point names the same first bad step and reason
    single = ["fit", *WILD, "--model.net.init_std", "10", "--model.lr", "1", "--run.root",
              str(tmp_path / "s"), "--run.id", "wild"]
    assert lm(*single) == 3
    ref = rundir.read_status(tmp_path / "s" / "quickstart" / "wild")
    got = statuses[3]
    assert ref is not None and got is not None
    keys = ("diverged_step", "epoch", "reason")
    assert [got[k] for k in keys] == [ref[k] for k in keys]
    frame = pd.read_csv(wild / "w" / ids[3] / "metrics.csv")
    assert frame["diverged_step"].dropna().tolist() == [ref["diverged_step"]]


def test_a_crashed_ensemble_resumes_every_member_exactly(wild: Path, tmp_path: Path) -> None:
    straight = wild
    crashed = tmp_path / "crashed"
    argv = _wild(crashed, "e")
    # the ensemble as the CLI builds it, with a crash at the start of epoch 2 (after epoch 1's checkpoint)
    from lightning_mem.ensemble import command as ensemble_cli

    args, fit_args = ensemble_cli.parser().parse_known_args(argv[1:])
    pack_dir, members, _ = ensemble_cli._direct(args, fit_args)
    with pytest.raises(RuntimeError, match="crash"):
        prepare_pack(pack_dir, members, None, write_members=True).fit(callbacks=[Crash(2)])
    ids = [m["run_id"] for m in members]
    wild_dir = crashed / "w" / ids[3]
    before = {p.name: p.read_bytes() for p in wild_dir.iterdir() if p.is_file() and p.name != ".lock"}
    assert rundir.read_status(wild_dir)["status"] == "diverged"  # type: ignore[index]
    assert rundir.read_status(crashed / "w" / ids[0])["status"] == "failed"  # type: ignore[index]
    assert lm(*argv, "--ckpt_path", "last") == 0  # the diverged member rode along: no member diverged now
    for rid in ids:
        a, b = straight / "w" / rid, crashed / "w" / rid
        assert (a / "metrics.csv").read_bytes() == (b / "metrics.csv").read_bytes(), rid
        ckpt = Path("checkpoints", "last.ckpt")
        assert (a / ckpt).is_file() == (b / ckpt).is_file() == (rid != ids[3])  # none before it diverged
        if rid != ids[3]:
            wa, wb = (torch.load(d / ckpt, weights_only=True)["state_dict"] for d in (a, b))
            assert all(torch.equal(wa[k], wb[k]) for k in wa), rid
        status = rundir.read_status(b)
        assert status is not None and status["status"] == ("diverged" if rid == ids[3] else "finished")
    after = {p.name: p.read_bytes() for p in wild_dir.iterdir() if p.is_file() and p.name != ".lock"}
    assert after == before and set(before) == {"config.yaml", "hp.json", "hparams.yaml", "metrics.csv",
                                               "status.json"}  # untouched (its lock was held meanwhile)
    assert not list(crashed.rglob("metrics.resume.csv"))


@pytest.mark.parametrize(("extra", "message"), [
    (["--ensemble.width", "16,32"], "--ensemble.width: not a packable key; an ensemble's members may differ "
     "in --ensemble.init_std, --ensemble.seed, --ensemble.lr, --ensemble.loss_scale, --ensemble.label_seed, "
     "--ensemble.init_scale, --ensemble.weight_decay, --ensemble.momentum only"),
    (["--ensemble.seed", ""], "--ensemble.seed '': give comma-separated values, e.g. --ensemble.seed 0,1 (an "
     "ensemble needs at least one member)"),
    (["--ensemble.seed", "0,,1"], "--ensemble.seed '0,,1': give comma-separated values"),
    (["--config", str(REPO / "configs/repro/convnet.yaml"), "--data.dataset", "mnist5k"],
     "model.net is lightning_mem.nets.ConvNet: an ensemble stacks lightning_mem.nets.ScaledMLP only"),
    (["--model.steps_per_call", "2"], "model.steps_per_call=2: an ensemble has no fused step (it runs one "
     "stacked step per batch for all members); set steps_per_call 1"),
    (["--trainer.accumulate_grad_batches", "2"], "trainer.accumulate_grad_batches=2: an ensemble trains on "
     "one device in FP32 with one batch per step"),
    (["--ckpt_path", "last"], "--ckpt_path last: no ensemble with a checkpoint under"),
    (["--ensemble.seed", "3,3"], "_seed3 are the same run (model.net.init_args.init_std=0.1, "
     "seed_everything=3, model.lr="),
    (["--ensemble.lr", "0.05,5e-2"], "are the same run (model.net.init_args.init_std=0.1, seed_everything=0, "
     "model.lr=0.05, model.loss_scale=1.0, data.label_seed=None, model.net.init_args.init_scale=1.0, "
     "model.weight_decay=0.0, model.momentum=0.0, model.betas=(0.9, 0.999)): give each value once"),
], ids=["not-packable", "k-0", "empty-value", "convnet", "fused-step",
        "accumulate", "nothing-to-resume",
        "same-seed-twice", "same-lr-written-twice"])
def test_bad_input_exits_2_and_writes_nothing(extra: list[str], message: str, tmp_path: Path,
                                              caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="lightning_mem"):
        code = lm("ensemble", "fit", *BASE, "--run.root", str(tmp_path / "runs"), "--ensemble.init_std",
                  "0.1,1", *extra)
    assert code == 2
    assert message in caplog.text
    assert not (tmp_path / "runs").exists()


def test_members_that_differ_in_other_keys_are_refused(tmp_path: Path,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    """A pack file whose members differ in a key that is not packable (the width): exit 2, nothing written."""
    pack = tmp_path / "pack"
    members = [{"run_id": f"m{k}", "argv": [*BASE, "--run.root", str(tmp_path / "runs"), "--run.id", f"m{k}",
                                            *extra]}
               for k, extra in enumerate([[], ["--model.net.width", "32"]])]
    pack.mkdir()
    (pack / "pack.json").write_text(json.dumps({"members": members}))
    with caplog.at_level(logging.ERROR, logger="lightning_mem"):
        assert lm("ensemble", "fit", "--pack", str(pack)) == 2
    assert ("members m0 and m1 differ in model.net.init_args.width (16 vs 32); only "
            "model.net.init_args.init_std, seed_everything, model.lr, model.loss_scale, data.label_seed, "
            "model.net.init_args.init_scale, model.weight_decay, model.momentum, model.betas may differ"
            ) in caplog.text
    assert not (tmp_path / "runs").exists() and sorted(p.name for p in pack.iterdir()) == ["pack.json"]


def test_a_member_folder_in_use_is_refused(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    argv = ["ensemble", "fit", *BASE, "--run.root", str(tmp_path), "--run.name", "g", "--run.id", "e",
            "--ensemble.seed", "0,1"]
    with rundir.FolderLock(tmp_path / "g" / "e_01_seed1", "run folder"), \
            caplog.at_level(logging.ERROR, logger="lightning_mem"):
        assert lm(*argv) == 2
    held = tmp_path / "g" / "e_01_seed1"
    assert f"the run folder {held} (run.id='e_01_seed1') is in use by another process (pid {os.getpid()}" \
        in caplog.text
    assert sorted(p.name for p in (tmp_path / "g").iterdir()) == ["e_01_seed1"]  # no other folder was created


@pytest.mark.slow  # an ensemble of 3 with W&B offline in a subprocess: ~20 s
def test_each_member_is_its_own_wandb_run(tmp_path: Path) -> None:
    """One offline W&B run per member in its run folder: id = member id, group = run.name, the nested
    config and the ``hp`` block (= hp.json), the declared metrics, every row of its metrics.csv; finished."""
    import csv
    import subprocess
    import sys

    from tests.training.test_loggers import _history, read_wandb_records, wandb_config

    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env |= {"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path / "wandb_dir"), "WANDB_SILENT": "true",
            "WANDB_CACHE_DIR": str(tmp_path / "cache"), "WANDB_CONFIG_DIR": str(tmp_path / "config")}
    cmd = [sys.executable, "-m", "lightning_mem", "ensemble", "fit", *BASE, "--config",
           str(REPO / "configs/logger/wandb.yaml"), "--run.root", str(tmp_path / "runs"), "--run.name", "wb",
           "--run.id", "e", "--ensemble.init_std", "0.01,1,10"]
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    members = [tmp_path / "runs" / "wb" / m["run_id"] for m in read_pack(tmp_path / "runs" / "wb" / "e")]
    sigmas = []
    for run_dir in members:
        (path,) = (run_dir / "wandb").glob("offline-run-*/run-*.wandb")
        assert path.name == f"run-{run_dir.name}.wandb"
        records = read_wandb_records(path)
        run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
        assert (run.run_id, run.run_group) == (run_dir.name, "wb")
        config = wandb_config(records)
        hp = json.loads((run_dir / "hp.json").read_text())
        assert config["hp"] == hp and config["run"]["id"] == run_dir.name
        assert config["model"]["net"]["init_args"]["init_std"] == hp["init_std"]
        sigmas.append(hp["init_std"])
        defined = {r.metric.name or r.metric.glob_name: r.metric.step_metric
                   for r in records if r.WhichOneof("record_type") == "metric"}
        assert defined["val/acc"] == defined["align/*"] == "trainer/global_step"
        with (run_dir / "metrics.csv").open(newline="") as fh:
            rows = [{k: float(v) for k, v in row.items() if v} for row in csv.DictReader(fh)]
        history = [{k: v for k, v in h.items() if not k.startswith("_")} for h in _history(records)]
        for h in history:
            h["step"] = h.pop("trainer/global_step")
        assert history == rows and len(rows) > 4
        assert any(r.WhichOneof("record_type") == "exit" and r.exit.exit_code == 0 for r in records)
    assert sigmas == [0.01, 1.0, 10.0]
