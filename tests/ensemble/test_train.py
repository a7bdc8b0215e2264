"""The ensemble against its reference, the single runs: init, batches, first step, runs, divergence, resume.

Tolerances (fp32; the stacked bmm and the single run's mm may sum in a different order):
- initial weights, batches, the SGD update rule: bitwise;
- first step: loss to 1e-6 relative, gradients to 1e-5 of the gradient's largest entry
  (observed on this CPU: loss and ∂W1 bitwise, ∂W2 bitwise or ≤ 1e-6 relative);
- whole runs: every logged value to 1e-4 relative + 1e-6 absolute, final weights to 1e-4 of their
  largest entry; accuracies are then equal unless an example sits on a decision boundary to 1e-4
  (observed on this CPU: bitwise equal weights and values in the default tier);
- a diverging member leaves the others bitwise unchanged: each member's slice of every batched kernel
  is computed from its own values only, and the frozen member's update is exactly zero.
"""

from __future__ import annotations

import logging
import math
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import pandas as pd
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger

from lightning_mem.alignment.monitor import AlignmentMonitor
from lightning_mem.data.datamodule import ImageClassificationData
from lightning_mem.ensemble.data import EnsembleData
from lightning_mem.ensemble.module import EnsembleModule
from lightning_mem.ensemble.monitor import EnsembleAlignmentMonitor
from lightning_mem.ensemble.plan import PACKABLE_PARAMS
from lightning_mem.ensemble.stacked import MemberSGD, MemberSpec, StackedMLP, member_net
from lightning_mem.ensemble.train import build_ensemble, fit_ensemble
from lightning_mem.nets import ScaledMLP
from lightning_mem.training.guard import DivergedError, DivergenceGuard
from lightning_mem.training.module import MemorizationModule

REPO = Path(__file__).resolve().parents[2]
RTOL, ATOL = 1e-4, 1e-6


@pytest.fixture(autouse=True)
def _quiet() -> None:
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*(does not have many workers|Experiment logs directory).*")


def _trainer_kwargs(epochs: int, **extra: Any) -> dict[str, Any]:
    return {"max_epochs": epochs, "accelerator": "cpu", "enable_progress_bar": False,
            "enable_model_summary": False, "num_sanity_val_steps": 0, **extra}


class CleanNoisyReference(L.Callback):
    """train/acc_clean and train/acc_noisy of a single run, computed here from each batch before its step.

    An independent recount of what ``MemorizationModule`` logs: both the single run's logged values and
    the ensemble's are checked against it.
    """

    def __init__(self) -> None:
        self.sums: list[list[float]] = []

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.sums.append([0.0, 0.0, 0.0, 0.0])

    @torch.no_grad()
    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, *_: Any
                             ) -> None:
        x, y, noisy = batch
        correct = (pl_module(x).argmax(1) == y).double()
        s = self.sums[-1]
        s[0] += float((correct * ~noisy).sum())
        s[1] += float((~noisy).sum())
        s[2] += float((correct * noisy).sum())
        s[3] += float(noisy.sum())

    def check(self, frame: pd.DataFrame) -> None:
        """The logged train/acc_clean and train/acc_noisy equal the recount of every epoch."""
        clean = frame["train/acc_clean"].dropna().to_numpy()
        noisy = frame["train/acc_noisy"].dropna().to_numpy()
        assert clean == pytest.approx([s[0] / s[1] for s in self.sums], rel=1e-6)
        assert noisy == pytest.approx([s[2] / s[3] for s in self.sums], rel=1e-6)


def single_run(
    member: MemberSpec, root: Path, name: str, epochs: int, data: dict[str, Any], width: int,
    activation: str = "sin", loss: str = "cross_entropy", loss_scale_with_init: bool = False,
    monitor: AlignmentMonitor | None = None, max_steps: int = -1,
) -> tuple[ScaledMLP, pd.DataFrame, DivergedError | None]:
    """The reference: a single run as the CLI makes it (seed_everything, ScaledMLP, MemorizationModule,
    ImageClassificationData, DivergenceGuard checking every step) on a real Trainer."""
    L.seed_everything(member.seed, verbose=False)
    dm = ImageClassificationData(**data, seed=member.seed, label_seed=member.label_seed)
    net = ScaledMLP(dm.input_shape, dm.num_classes, width, activation, member.init_std)  # type: ignore[arg-type]
    module = MemorizationModule(net, loss, member.loss_scale, loss_scale_with_init, member.lr)  # type: ignore[arg-type]
    reference = CleanNoisyReference()
    callbacks: list[L.Callback] = [DivergenceGuard(check_every_n_steps=1), reference]
    if monitor is not None:
        callbacks.append(monitor)
    trainer = L.Trainer(logger=CSVLogger(root, name=name, version="single"), callbacks=callbacks,
                        enable_checkpointing=False, max_steps=max_steps, **_trainer_kwargs(epochs))
    error = None
    try:
        trainer.fit(module, datamodule=dm)
    except DivergedError as err:
        error = err
    frame = pd.read_csv(root / name / "single" / "metrics.csv")
    if "train/acc_clean" in frame:
        reference.check(frame)
    return net, frame, error


def ensemble_run(
    members: list[MemberSpec], root: Path, name: str, epochs: int, data: dict[str, Any], width: int,
    activation: str = "sin", loss: str = "cross_entropy", loss_scale_with_init: bool = False,
    monitor: EnsembleAlignmentMonitor | None = None, **fit_kwargs: Any,
) -> tuple[EnsembleModule, list[Any], list[Path]]:
    module, dm = build_ensemble(members, width=width, activation=activation, loss=loss,  # type: ignore[arg-type]
                                loss_scale_with_init=loss_scale_with_init, **data)
    loggers = [[CSVLogger(root, name=name, version=f"member{k}")] for k in range(len(members))]
    results = fit_ensemble(module, dm, member_loggers=loggers, monitor=monitor, **fit_kwargs,
                           **_trainer_kwargs(epochs))
    return module, results, [root / name / f"member{k}" / "metrics.csv" for k in range(len(members))]


def _series(frame: pd.DataFrame) -> dict[str, list[tuple[int | None, float]]]:
    """{key: [(at, value), ...]} in row order: per-step keys at their step, epoch keys at their epoch.

    ``val/align/...`` is compared by order only: the single run's AlignmentMonitor logs it one step after
    ``val/acc`` and without an epoch (issue 10); the ensemble follows the logging contract (checked apart).
    """
    out: dict[str, list[tuple[int | None, float]]] = {}
    for _, row in frame.iterrows():
        for key, value in row.items():
            key = str(key)
            if key in ("epoch", "step") or pd.isna(value):
                continue
            if key.startswith(("align/", "norm/", "diverged", "diversity/", "stiffness/", "confusion/")):
                at: int | None = int(row["step"])
            else:
                at = None if key.startswith("val/align/") else int(row["epoch"])
            out.setdefault(key, []).append((at, float(value)))
    return out


def assert_same_metrics(ensemble_csv: Path, single: pd.DataFrame) -> None:
    ens = pd.read_csv(ensemble_csv)
    assert sorted(ens.columns) == sorted(single.columns)
    assert ens["epoch"].notna().all() and ens["step"].notna().all()  # the logging contract: every row
    val = ens.dropna(subset=["val/acc"])
    val_align = ens.dropna(subset=["val/align/rep/act"]) if "val/align/rep/act" in ens else val
    assert val["step"].tolist() == val_align["step"].tolist()  # held-out alignment at its val/acc's step
    a, b = _series(ens), _series(single)
    assert a.keys() == b.keys()
    for key, ref in b.items():
        assert [at for at, _ in a[key]] == [at for at, _ in ref], key
        for (_, got), (_, want) in zip(a[key], ref, strict=True):
            assert math.isclose(got, want, rel_tol=RTOL, abs_tol=ATOL), (key, got, want)


def assert_close_weights(stacked: StackedMLP, k: int, single: ScaledMLP) -> None:
    for name, p in single.named_parameters():
        q = dict(stacked.named_parameters())[name][k]
        torch.testing.assert_close(q, p.detach(), rtol=0, atol=RTOL * float(p.detach().abs().max()))


# ---------------------------------------------------------------------------------------------- tier 1


def test_member_spec_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match=r"member seed=-1 must be an integer >= 0"):
        MemberSpec(-1, 0.1)
    with pytest.raises(ValueError, match=r"init_std=0.0 must be a positive finite number"):
        MemberSpec(0, 0.0)
    with pytest.raises(ValueError, match=r"member lr=nan must be a positive finite number"):
        MemberSpec(0, 0.1, lr=math.nan)
    assert set(PACKABLE_PARAMS.values()) == {"seed", "init_std", "lr", "loss_scale", "label_seed",
                                             "init_scale", "weight_decay", "momentum", "betas"}
    with pytest.raises(ValueError, match=r"member weight_decay=-1 must be a finite number >= 0"):
        MemberSpec(0, 0.1, weight_decay=-1)
    with pytest.raises(ValueError, match=r"member betas=\(0.9, 1.0\) must be two numbers in \[0, 1\)"):
        MemberSpec(0, 0.1, betas=(0.9, 1.0))


def test_initial_weights_are_those_of_the_cli_run_bitwise(tmp_path: Path) -> None:
    from lightning_mem.cli.run import build_cli

    members = [MemberSpec(3, 10.0), MemberSpec(0, None), MemberSpec(7, 0.01)]
    net = StackedMLP.from_members(members, (1, 8, 8), 10, width=32, activation="sin")
    state = torch.get_rng_state()
    for k, m in enumerate(members):
        std = ["--model.net.init_std", str(m.init_std) if m.init_std else "null"]
        cli = build_cli(["--config", str(REPO / "configs/quickstart.yaml"), "--data.dataset", "digits",
                         "--model.net.width", "32", "--seed_everything", str(m.seed), *std,
                         "--run.root", str(tmp_path)], run=False)
        single = cli.model.net
        assert torch.equal(net.hidden.weight[k], single.hidden.weight)
        assert torch.equal(net.out.weight[k], single.out.weight)
        assert torch.equal(net.member(k).hidden.weight, single.hidden.weight)
    torch.set_rng_state(state)
    member_net(members[0], (1, 8, 8), 10, 32, "sin")
    assert torch.equal(torch.get_rng_state(), state)  # building members leaves the caller's RNG alone


def test_each_member_sees_the_batches_of_its_single_run() -> None:
    members = [MemberSpec(0, 0.1), MemberSpec(5, 1.0), MemberSpec(5, 1.0, label_seed=9)]
    kw = {"dataset": "digits", "batch_size": 128, "label_noise": 0.3, "train_subset": 700}
    ens = EnsembleData(members, **kw)
    ens.setup("fit")
    loader = ens.train_dataloader()  # no trainer: epoch e is the e-th iteration, as for the single loader
    epochs = [list(loader) for _ in range(2)]
    assert len(loader) == 6 and epochs[0][0][0].shape == (3, 128, 1, 8, 8)
    for k, m in enumerate(members):
        single = ImageClassificationData(**kw, seed=m.seed, label_seed=m.label_seed)
        single.setup("fit")
        ref = single.train_dataloader()
        for batches in epochs:
            for (x, y, noisy), (rx, ry, rnoisy) in zip(batches, ref, strict=True):
                assert torch.equal(x[k], rx) and torch.equal(y[k], ry) and torch.equal(noisy[k], rnoisy)
    x, y, _ = epochs[1][0]  # members 1 and 2 share the seed (subset, order), not the label seed
    assert torch.equal(x[1], x[2]) and not torch.equal(y[1], y[2])
    assert not torch.equal(epochs[0][0][0][0], epochs[1][0][0][0])  # a new order every epoch


@pytest.mark.parametrize("loss", ["cross_entropy", "hinge", "squared"])
def test_first_step_loss_and_gradients_match_the_single_run(loss: str) -> None:
    members = [MemberSpec(0, 0.1, lr=0.1, loss_scale=2.0), MemberSpec(1, 1.0, loss_scale=0.5),
               MemberSpec(2, 10.0, lr=0.3, loss_scale=2.0)]
    module, dm = build_ensemble(members, width=256, loss=loss, loss_scale_with_init=True,  # type: ignore[arg-type]
                                dataset="digits", batch_size=64)
    dm.setup("fit")
    x, y, noisy = next(iter(dm.train_dataloader()))
    total = module.training_step((x, y, noisy), 0)
    total.backward()
    losses = module._step_loss
    assert losses is not None
    for k, m in enumerate(members):
        net = member_net(m, (1, 8, 8), 10, 256, "sin")
        single = MemorizationModule(net, loss, m.loss_scale, True, m.lr)  # type: ignore[arg-type]
        ref = single.training_step((x[k], y[k], noisy[k]), 0)
        ref.backward()
        torch.testing.assert_close(losses[k], ref.detach(), rtol=1e-6, atol=0)
        for name, p in net.named_parameters():
            g = dict(module.net.named_parameters())[name].grad[k]
            assert p.grad is not None
            torch.testing.assert_close(g, p.grad, rtol=0, atol=1e-5 * float(p.grad.abs().max()))


def test_member_sgd_is_torch_sgd_bitwise() -> None:
    g = torch.Generator().manual_seed(0)
    w, grad = torch.randn(3, 40, 30, generator=g), torch.randn(3, 40, 30, generator=g)
    lr = torch.tensor([0.1, 0.013, 3.0])
    ref = []
    for k in range(3):
        p = torch.nn.Parameter(w[k].clone())
        p.grad = grad[k].clone()
        torch.optim.SGD([p], lr=float(lr[k])).step()
        ref.append(p.detach())
    p = torch.nn.Parameter(w.clone())
    p.grad = grad.clone()
    MemberSGD([p], lr).step()
    assert torch.equal(p.detach(), torch.stack(ref))


def test_in_class_gram_blocks_give_the_measures_of_full_grams() -> None:
    """The monitor's in-class blocks against full per-member Grams from grams.py (the single run's path),
    with a class absent from one member's batch and a class with a single example in another."""
    from lightning_mem.alignment.grams import gram, linear_grams
    from lightning_mem.alignment.measures import class_measures_from_gram
    from lightning_mem.ensemble.monitor import StackedCapture

    K, B, C = 3, 40, 5
    net = StackedMLP((6,), C, 16, "sin", [1.0] * K)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        net.hidden.weight.normal_(generator=g)
        net.out.weight.normal_(generator=g)
    x = torch.randn(K, B, 6, generator=g)
    y = torch.randint(0, C, (K, B), generator=g)
    y[0][y[0] == 4] = 3  # member 0: no class 4
    y[1][y[1] == 2] = 1
    y[1, 7] = 2  # member 1: one example of class 2 (not measured)
    monitor = EnsembleAlignmentMonitor(per_class=True, comparison_measures=True)
    monitor._num_classes = C
    capture = StackedCapture(net, gradients=True, rep_layer="act")
    capture.attach()
    logits = net(x)
    losses = torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none")
    losses.view(K, B).mean(1).sum().backward()
    capture.detach()
    result = monitor._measure(capture, y)
    assert result is not None
    keys, values = result
    h, g_h, g_z = capture.features, capture.grads["hidden"], capture.grads["out"]
    assert h is not None
    for k in range(K):
        full = {"hidden.weight": linear_grams(x[k], g_h[k])[0], "out.weight": linear_grams(h[k], g_z[k])[0],
                "logits": gram(g_z[k]), "rep:act": gram(h[k])}
        stats = class_measures_from_gram(torch.stack(list(full.values())), y[k], C)
        for i, name in enumerate(full):
            kind, sub = ("rep", "act") if name == "rep:act" else ("grad", name)
            for measure, ref in stats.items():
                if kind == "rep" and measure != "alignment":
                    continue
                prefix = "align" if measure == "alignment" else measure
                scale = B**2 if measure == "confusion" else 1.0
                got = values[k, keys.index(f"{prefix}/{kind}/{sub}")]
                torch.testing.assert_close(got, ref.mean[i] * scale, rtol=1e-5, atol=1e-9)
                per_class = values[k, [keys.index(f"{prefix}/{kind}/{sub}/class_{c}") for c in range(C)]]
                torch.testing.assert_close(per_class, ref.values[i] * scale, rtol=1e-5, atol=1e-9,
                                           equal_nan=True)
    assert torch.isnan(values[0, keys.index("align/grad/logits/class_4")])
    assert torch.isnan(values[1, keys.index("align/grad/logits/class_2")])


DIGITS = {"dataset": "digits", "batch_size": 256, "label_noise": 0.2}


@pytest.fixture(scope="module")
def packed_and_single(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Three members (σ, seed, lr all differ) on digits for 2 epochs, packed and as single runs."""
    root = tmp_path_factory.mktemp("runs")
    members = [MemberSpec(0, 0.01, lr=0.1), MemberSpec(1, 10.0, lr=0.1), MemberSpec(2, 1.0, lr=0.05)]
    module, results, csvs = ensemble_run(
        members, root, "ens", 2, DIGITS, 32, monitor=EnsembleAlignmentMonitor(every_n_steps=3, per_class=True,
                                                                             comparison_measures=True),
        member_checkpoint_dirs=[root / "ckpt" / str(k) for k in range(3)],
    )
    singles = [single_run(m, root, f"single{k}", 2, DIGITS, 32,
                          monitor=AlignmentMonitor(every_n_steps=3, per_class=True, comparison_measures=True))
               for k, m in enumerate(members)]
    return {"members": members, "module": module, "results": results, "csvs": csvs, "singles": singles}


def test_packed_members_log_the_metrics_of_their_single_runs(packed_and_single: dict[str, Any]) -> None:
    run = packed_and_single
    for k, (net, frame, error) in enumerate(run["singles"]):
        assert error is None
        assert "train/acc_noisy" in frame.columns and "diversity/grad/hidden.weight" in frame.columns
        assert_same_metrics(run["csvs"][k], frame)
        assert_close_weights(run["module"].net, k, net)
        result = run["results"][k]
        assert result.status == "finished" and result.divergence is None
        assert result.metrics["val/acc"] == pytest.approx(frame["val/acc"].dropna().iloc[-1], rel=RTOL)
        assert result.status_record() == {"status": "finished"}


def test_member_checkpoint_validates_alone(packed_and_single: dict[str, Any]) -> None:
    run = packed_and_single
    k, m = 2, run["members"][2]
    ckpt = run["results"][k].checkpoint
    assert ckpt is not None and ckpt.endswith("last.ckpt")
    state = torch.load(ckpt, weights_only=False)
    assert set(state["state_dict"]) == {"net.hidden.weight", "net.out.weight"}
    net = ScaledMLP((1, 8, 8), 10, 32, "sin", m.init_std)
    module = MemorizationModule(net, **state["hyper_parameters"])
    dm = ImageClassificationData(**DIGITS, seed=m.seed)
    trainer = L.Trainer(logger=False, **_trainer_kwargs(1))
    (metrics,) = trainer.validate(module, datamodule=dm, ckpt_path=ckpt, verbose=False)
    assert metrics["val/acc"] == pytest.approx(run["results"][k].metrics["val/acc"], rel=1e-6)
    assert metrics["val/loss"] == pytest.approx(run["results"][k].metrics["val/loss"], rel=1e-5)


def test_ensemble_test_stage_reports_each_member(packed_and_single: dict[str, Any]) -> None:
    run = packed_and_single
    module = run["module"]
    module.member_loggers = [[] for _ in run["members"]]  # keep the fit's metrics.csv files as they are
    trainer = L.Trainer(logger=False, **_trainer_kwargs(1))
    trainer.test(module, datamodule=EnsembleData(run["members"], **DIGITS), verbose=False)
    for k, result in enumerate(run["results"]):  # the held-out split again, with the final weights
        assert module.last_metrics[k]["test/acc"] == pytest.approx(result.metrics["val/acc"], abs=1e-12)


DIVERGE = {"dataset": "digits", "batch_size": 256}


def test_a_diverging_member_stops_alone(tmp_path: Path) -> None:
    tame = [MemberSpec(0, 0.1, lr=0.01), MemberSpec(1, 0.01, lr=0.02)]
    wild = MemberSpec(2, 10.0, lr=1.0)  # squared loss, ReLU at σ = 10: overflows within a few steps
    kw: dict[str, Any] = {"activation": "relu", "loss": "squared"}
    module, results, csvs = ensemble_run([*tame, wild], tmp_path, "wild", 3, DIVERGE, 32, **kw)
    calm, _, _ = ensemble_run([*tame, MemberSpec(2, 0.1, lr=0.01)], tmp_path, "calm", 3, DIVERGE, 32, **kw)
    for k in range(2):  # the others: bitwise as if the diverging member were a tame one
        assert torch.equal(module.net.hidden.weight[k], calm.net.hidden.weight[k])
        assert torch.equal(module.net.out.weight[k], calm.net.out.weight[k])
        assert results[k].status == "finished"
        assert pd.read_csv(csvs[k]).equals(pd.read_csv(tmp_path / "calm" / f"member{k}" / "metrics.csv"))
    # the diverged member: the step its single run's guard names, weights frozen just before it
    _, _, error = single_run(wild, tmp_path, "wild_single", 3, DIVERGE, 32, **kw)
    assert error is not None
    div = results[2].divergence
    assert results[2].status == "diverged" and div is not None
    assert (div["step"], div["epoch"]) == (error.step, error.epoch)
    assert div["reason"] == error.reason and div["reason"].startswith("the training loss is")
    assert "init_std=10.0, lr=1.0, loss=squared" in div["message"]
    net, _, _ = single_run(wild, tmp_path, "wild_before", 3, DIVERGE, 32, max_steps=error.step, **kw)
    assert torch.isfinite(module.net.hidden.weight[2]).all()
    assert_close_weights(module.net, 2, net)
    frame = pd.read_csv(csvs[2])
    assert frame["diverged_step"].dropna().tolist() == [error.step]
    assert frame["step"].max() == error.step  # nothing logged after it
    assert results[2].status_record()["status"] == "diverged"


def test_resume_from_an_epoch_checkpoint_is_exact(tmp_path: Path) -> None:
    members = [MemberSpec(0, 0.1, lr=0.05), MemberSpec(1, 10.0, lr=1.0), MemberSpec(3, 1.0, lr=0.02)]
    kw: dict[str, Any] = {"activation": "relu", "loss": "squared", "monitor": None}
    straight, _, _ = ensemble_run(members, tmp_path, "straight", 3, DIVERGE, 32, **kw)
    ckpts = tmp_path / "ckpt"
    ensemble_run(members, tmp_path, "first", 2, DIVERGE, 32, checkpoint_dir=ckpts, **kw)
    assert sorted(p.name for p in ckpts.iterdir()) == ["epoch1.ckpt", "last.ckpt"]
    epoch, last = (ckpts / "epoch1.ckpt").stat(), (ckpts / "last.ckpt").stat()
    assert (last.st_ino, last.st_nlink) == (epoch.st_ino, 2)  # one copy of the bytes: last.ckpt a hard link
    resumed, _, csvs = ensemble_run(members, tmp_path, "resumed", 3, DIVERGE, 32,
                                    ckpt_path=ckpts / "last.ckpt", **kw)
    assert not bool(straight.alive[1])  # the wild member diverged before the checkpoint and stays frozen
    for name, tensor in straight.state_dict().items():
        assert torch.equal(resumed.state_dict()[name], tensor), name
    for k in (0, 2):
        last = pd.read_csv(csvs[k])
        assert set(last["epoch"]) == {2}  # the resumed run logs epoch 2 only
        ref = pd.read_csv(tmp_path / "straight" / f"member{k}" / "metrics.csv")
        assert last.reset_index(drop=True).equals(ref[ref["epoch"] == 2].reset_index(drop=True))
    other, dm = build_ensemble(members[:2], width=32, **DIVERGE)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"the checkpoint's ensemble has members="):
        fit_ensemble(other, dm, ckpt_path=ckpts / "last.ckpt", **_trainer_kwargs(3))


def test_bad_combinations_are_refused() -> None:
    members = [MemberSpec(0, 0.1), MemberSpec(1, None)]
    net = StackedMLP.from_members(members, (1, 8, 8), 10, width=8)
    with pytest.raises(ValueError, match=r"members have init_std \[0.1\] but the net was built with"):
        EnsembleModule(net, members[:1])
    with pytest.raises(ValueError, match=r"loss_scale_with_init=True needs a numeric init_std"):
        EnsembleModule(net, members, loss_scale_with_init=True)
    with pytest.raises(ValueError, match=r"loss='l1' is not supported; allowed: cross_entropy, hinge, sq"):
        EnsembleModule(net, members, loss="l1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"layers=\['hidden'\], max_classes=None are not supported"):
        EnsembleAlignmentMonitor.from_monitor(AlignmentMonitor(layers=["hidden"]))
    with pytest.raises(ValueError, match=r"every_n_steps=0 must be an integer >= 1"):
        EnsembleAlignmentMonitor(every_n_steps=0)
    single = MemorizationModule(ScaledMLP((1, 8, 8), 10, 8))
    trainer = L.Trainer(logger=False, **_trainer_kwargs(1))
    with pytest.raises(TypeError, match=r"EnsembleAlignmentMonitor needs an EnsembleModule"):
        EnsembleAlignmentMonitor().setup(trainer, single, "fit")
    module, dm = build_ensemble(members, width=8, dataset="digits")
    with pytest.raises(ValueError, match=r"accumulate_grad_batches=1 and precision='32-true' only; got 2"):
        fit_ensemble(module, dm, accumulate_grad_batches=2, **_trainer_kwargs(1))
    with pytest.raises(ValueError, match=r"train_subset=5000 is larger than the digits train split"):
        EnsembleData(members, dataset="digits", train_subset=5000).setup("fit")


# ---------------------------------------------------------------------------------------------- slow tier


@pytest.mark.slow
def test_packed_grid_matches_cli_single_runs(tmp_path: Path) -> None:
    """2 σ × 2 seeds on digits, 8 epochs, width 256, label noise and a class-balanced subset: each
    member against its single run from the real CLI (``lightning-mem fit`` in-process)."""
    from lightning_mem.cli.commands import main

    members = [MemberSpec(s, sigma, lr=0.1) for sigma in (0.01, 10.0) for s in (0, 1)]
    data = {"dataset": "digits", "batch_size": 128, "label_noise": 0.25, "train_subset": 1000}
    _, results, csvs = ensemble_run(members, tmp_path, "ens", 8, data, 256,
                                    monitor=EnsembleAlignmentMonitor(every_n_steps=4))
    for k, m in enumerate(members):
        main(["fit", "--config", str(REPO / "configs/quickstart.yaml"), "--data.dataset", "digits",
              "--data.batch_size", "128", "--data.label_noise", "0.25", "--data.train_subset", "1000",
              "--model.net.width", "256", "--model.net.init_std", str(m.init_std),
              "--seed_everything", str(m.seed), "--trainer.max_epochs", "8",
              "--trainer.enable_progress_bar", "false", "--run.root", str(tmp_path), "--run.name", f"cli{k}",
              "--run.id", "r"])  # quickstart.yaml: AlignmentMonitor every 4 steps
        single = pd.read_csv(tmp_path / f"cli{k}" / "r" / "metrics.csv")
        assert_same_metrics(csvs[k], single)
        last = single["train/acc"].dropna().iloc[-1]
        assert results[k].metrics["train/acc"] == pytest.approx(last, rel=RTOL)
    # the grid reproduces the paper's contrast: σ = 10 memorizes the noisy labels, σ = 0.01 generalizes
    acc = {(m.init_std, m.seed): r.metrics for m, r in zip(members, results, strict=True)}
    assert acc[(10.0, 0)]["train/acc_noisy"] > acc[(0.01, 0)]["train/acc_noisy"]
    assert acc[(0.01, 0)]["val/acc"] > acc[(10.0, 0)]["val/acc"] + 0.3
