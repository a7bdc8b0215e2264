import csv
import json

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger

from lightning_mem.data.datamodule import ImageClassificationData
from lightning_mem.nets import ScaledMLP
from lightning_mem.training.grokking import GrokkingMonitor, first_step, weight_norm
from lightning_mem.training.module import MemorizationModule


def test_weight_norm_and_first_step_by_hand() -> None:
    net = torch.nn.Linear(2, 1)
    with torch.no_grad():
        net.weight.copy_(torch.tensor([[3.0, 0.0]]))
        net.bias.fill_(4.0)
    assert weight_norm(net) == 5.0
    assert first_step([(10, 0.5), (20, 0.99), (30, 1.0)], 0.99) == 20
    assert first_step([(10, 0.5)], 0.99) is None


def test_monitor_records_each_epoch_and_writes_the_summary(tmp_path) -> None:
    """A real fit on digits: one train-accuracy point and one weight norm per epoch, at the epoch's last step,
    equal to what the CSV logger recorded; the summary's steps follow from those points."""
    L.seed_everything(0)
    data = ImageClassificationData(dataset="digits", batch_size=479)  # 1,437 / 479: 3 steps an epoch
    net = ScaledMLP(input_shape=data.input_shape, num_classes=10, width=64, activation="relu", depth=2,
                    bias=True, init_rule="torch", init_scale=2.0)
    module = MemorizationModule(net, loss="squared", lr=1e-2, optimizer="adamw", weight_decay=0.01)
    monitor = GrokkingMonitor(train_threshold=0.8, val_threshold=0.75)
    trainer = L.Trainer(max_epochs=8, logger=CSVLogger(tmp_path, name="g", version="v"), callbacks=[monitor],
                        enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False,
                        num_sanity_val_steps=0, log_every_n_steps=1)
    trainer.fit(module, data)
    assert [s for s, _ in monitor.train_acc] == [3 * e for e in range(1, 9)]
    assert [s for s, _ in monitor.val_acc] == [3 * e for e in range(1, 9)]
    assert monitor.norms[-1] == (24, pytest.approx(weight_norm(module.net)))
    summary = json.loads((tmp_path / "g" / "v" / "grokking.json").read_text())
    assert summary["fit_step"] == first_step(monitor.train_acc, 0.8) is not None
    assert summary["val_step"] == first_step(monitor.val_acc, 0.75) is not None
    assert summary["delay_steps"] == summary["val_step"] - summary["fit_step"]
    rows = list(csv.DictReader((tmp_path / "g" / "v" / "metrics.csv").open()))
    logged_acc = [float(r["train/acc"]) for r in rows if r.get("train/acc")]
    assert logged_acc == pytest.approx([a for _, a in monitor.train_acc])
    norms = [float(r["weight_norm"]) for r in rows if r.get("weight_norm")]
    assert norms == pytest.approx([n for _, n in monitor.norms])
    assert norms[-1] != norms[0]


def test_plateau_step_without_a_threshold() -> None:
    monitor = GrokkingMonitor(plateau_tol=0.01)
    monitor.val_acc = [(1, 0.2), (2, 0.5), (3, 0.905), (4, 0.91), (5, 0.90)]
    assert monitor.val_step() == 3


def test_monitor_bad_input() -> None:
    with pytest.raises(ValueError, match=r"train_threshold=1.5 must be a number in \[0, 1\]"):
        GrokkingMonitor(train_threshold=1.5)


@pytest.mark.slow
def test_adamw_deep_net_resumes_after_a_kill_byte_identical(tmp_path) -> None:
    """AdamW on Omnigrok's kind of net (depth 2, biases, torch init times α) with the GrokkingMonitor: a fit
    SIGKILLed mid-epoch 2 and resumed from ``last`` ends with metrics.csv byte-identical to an uninterrupted
    run, the same weights and AdamW moments bit for bit, and the same grokking.json."""
    from tests.helpers.exitcodes import run_cli
    from tests.reliability.test_kill_resume import ARGS, STEPS, assert_killed_state, fit_killed, load_ckpt

    extra = ["--model.optimizer", "adamw", "--model.lr", "0.003", "--model.weight_decay", "0.01",
             "--model.loss", "squared", "--model.net.init_args.depth", "2",
             "--model.net.init_args.bias", "true",
             "--model.net.init_args.init_rule", "torch", "--model.net.init_args.init_scale", "4",
             "--model.net.init_args.activation", "relu",
             "--trainer.callbacks+=lightning_mem.training.grokking.GrokkingMonitor"]
    ref_root, root = tmp_path / "ref", tmp_path / "kill"
    ref_root.mkdir(), root.mkdir()
    assert run_cli(*ARGS, "--run.root", str(ref_root), "--run.id", "ref", *extra,
                   "--trainer.callbacks+=tests.helpers.killpoints.KillAt") == 0
    killed = fit_killed(root, f"batch@{STEPS + 12}", "KILL", "k", *extra)
    run_dir, ref = root / "quickstart" / "k", ref_root / "quickstart" / "ref"
    assert_killed_state(killed, run_dir, "KILL", f"batch@{STEPS + 12}")
    assert run_cli(*ARGS, "--run.root", str(root), "--run.id", "k", "--ckpt_path", "last", *extra) == 0
    assert (run_dir / "metrics.csv").read_bytes() == (ref / "metrics.csv").read_bytes()
    assert "weight_norm" in (ref / "metrics.csv").read_text().splitlines()[0]
    want, got = load_ckpt(ref / "checkpoints" / "last.ckpt"), load_ckpt(run_dir / "checkpoints" / "last.ckpt")
    assert all(torch.equal(want["state_dict"][k], got["state_dict"][k]) for k in want["state_dict"])
    (w_opt,), (g_opt,) = want["optimizer_states"], got["optimizer_states"]
    assert w_opt["param_groups"][0]["betas"] == (0.9, 0.999) and len(w_opt["state"]) == 6
    for i, state in w_opt["state"].items():
        for key in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(state[key], g_opt["state"][i][key])
    assert (run_dir / "grokking.json").read_text() == (ref / "grokking.json").read_text()
