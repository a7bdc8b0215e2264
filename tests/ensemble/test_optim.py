"""Per-member SGD (momentum, weight decay), Adam and AdamW against torch's optimizers on each member alone.

The reference is independent: ``torch.optim.SGD`` / ``Adam`` / ``AdamW`` on one member's slice, stepped
with the same gradients. Tolerance: fp32, 1e-6 relative + 1e-7 absolute per step (the bias corrections are
float64 here and Python floats in torch; the other operations may round in a different order).
"""

from __future__ import annotations

import copy
import logging
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import pandas as pd
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger

from lightning_mem.data.datamodule import ImageClassificationData
from lightning_mem.ensemble.optim import MemberOptimizer
from lightning_mem.ensemble.stacked import MemberSpec
from lightning_mem.ensemble.train import build_ensemble, fit_ensemble
from lightning_mem.nets import ScaledMLP
from lightning_mem.training.module import MemorizationModule

K, STEPS = 3, 6
LR = [0.1, 0.01, 0.003]
WD = [0.0, 0.01, 0.5]
MOMENTUM = [0.0, 0.9, 0.5]
BETAS = [(0.9, 0.999), (0.8, 0.99), (0.0, 0.9)]


@pytest.fixture(autouse=True)
def _quiet() -> None:
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*(does not have many workers|Experiment logs directory).*")


def _torch_optimizer(kind: str, p: torch.nn.Parameter, k: int) -> torch.optim.Optimizer:
    if kind == "sgd":
        return torch.optim.SGD([p], lr=LR[k], momentum=MOMENTUM[k], weight_decay=WD[k], foreach=False)
    cls = torch.optim.Adam if kind == "adam" else torch.optim.AdamW
    return cls([p], lr=LR[k], betas=BETAS[k], weight_decay=WD[k], foreach=False)


def _member_optimizer(kind: str, params: list[torch.Tensor], active: torch.Tensor | None = None
                      ) -> MemberOptimizer:
    t = torch.tensor
    return MemberOptimizer(params, kind, t(LR), t(WD, dtype=torch.float64),  # type: ignore[arg-type]
                           t(MOMENTUM if kind == "sgd" else [0.0] * K, dtype=torch.float64),
                           t([b[0] for b in BETAS], dtype=torch.float64),
                           t([b[1] for b in BETAS], dtype=torch.float64), active=active)


def _grads(shape: tuple[int, ...], seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(K, *shape, generator=g) for _ in range(STEPS)]


@pytest.mark.parametrize("kind", ["sgd", "adam", "adamw"])
@pytest.mark.parametrize("shape", [(40, 30), (7,)], ids=["weight", "bias"])
def test_each_member_steps_as_torch_on_it_alone(kind: str, shape: tuple[int, ...]) -> None:
    w = torch.randn(K, *shape, generator=torch.Generator().manual_seed(1))
    grads = _grads(shape, 2)
    stacked = torch.nn.Parameter(w.clone())
    opt = _member_optimizer(kind, [stacked])
    singles = [torch.nn.Parameter(w[k].clone()) for k in range(K)]
    refs = [_torch_optimizer(kind, singles[k], k) for k in range(K)]
    for step in range(STEPS):
        stacked.grad = grads[step].clone()
        opt.step()
        for k in range(K):
            singles[k].grad = grads[step][k].clone()
            refs[k].step()
            torch.testing.assert_close(stacked.detach()[k], singles[k].detach(), rtol=1e-6, atol=1e-7,
                                       msg=lambda m, k=k, step=step: f"member {k}, step {step}: {m}")
    assert not torch.equal(stacked.detach(), w)  # it moved


@pytest.mark.parametrize("kind", ["sgd", "adam", "adamw"])
def test_an_inactive_member_keeps_weights_and_state_bitwise(kind: str) -> None:
    w = torch.randn(K, 5, 4)
    grads = _grads((5, 4), 3)
    active = torch.tensor([True, True, True])
    p = torch.nn.Parameter(w.clone())
    opt = _member_optimizer(kind, [p], active)
    p.grad = grads[0].clone()
    opt.step()
    frozen_w = p.detach()[1].clone()
    frozen_state = {name: v[1].clone() for name, v in opt.state[p].items() if v.dim()}
    active[1] = False  # diverged: the guard zeroes its gradient; momentum and decay must not move it either
    for step in range(1, STEPS):
        p.grad = grads[step].clone()
        p.grad[1] = 0.0
        opt.step()
    assert torch.equal(p.detach()[1], frozen_w)
    for name, value in frozen_state.items():
        assert torch.equal(opt.state[p][name][1], value), name
    assert not torch.equal(p.detach()[0], w[0])


@pytest.mark.parametrize("kind", ["sgd", "adamw"])
def test_state_dict_round_trip_continues_bitwise(kind: str) -> None:
    w = torch.randn(K, 6, 3)
    grads = _grads((6, 3), 4)
    a = torch.nn.Parameter(w.clone())
    opt_a = _member_optimizer(kind, [a])
    for step in range(STEPS):
        a.grad = grads[step].clone()
        opt_a.step()
        if step == 2:
            saved_w, saved = a.detach().clone(), copy.deepcopy(opt_a.state_dict())  # as saved to disk
    b = torch.nn.Parameter(saved_w)
    opt_b = _member_optimizer(kind, [b])
    opt_b.load_state_dict(saved)
    for step in range(3, STEPS):
        b.grad = grads[step].clone()
        opt_b.step()
    assert torch.equal(a.detach(), b.detach())


# ---------------------------------------------------------------------------------------------- tier 2

DATA: dict[str, Any] = {"dataset": "digits", "batch_size": 64, "normalization": "none", "train_subset": 500}
NET: dict[str, Any] = {"width": 24, "activation": "relu", "depth": 2, "bias": True, "init_rule": "torch"}


def _kwargs(epochs: int) -> dict[str, Any]:
    return {"max_epochs": epochs, "accelerator": "cpu", "enable_progress_bar": False,
            "enable_model_summary": False, "num_sanity_val_steps": 0}


def _single(m: MemberSpec, root: Path, name: str, epochs: int) -> tuple[ScaledMLP, pd.DataFrame]:
    L.seed_everything(m.seed, verbose=False)
    dm = ImageClassificationData(**DATA, seed=m.seed)
    net = ScaledMLP(dm.input_shape, dm.num_classes, init_std=m.init_std, init_scale=m.init_scale, **NET)
    module = MemorizationModule(net, "squared", lr=m.lr, weight_decay=m.weight_decay, optimizer="adamw",
                                betas=m.betas)
    trainer = L.Trainer(logger=CSVLogger(root, name=name, version="single"), enable_checkpointing=False,
                        **_kwargs(epochs))
    trainer.fit(module, datamodule=dm)
    return net, pd.read_csv(root / name / "single" / "metrics.csv")


def test_packed_adamw_members_train_as_their_single_runs(tmp_path: Path) -> None:
    """Omnigrok's net (2 hidden layers, biases, torch init times α) under AdamW with per-member lr, weight
    decay and betas: every logged value and the final weights as the single runs'."""
    members = [MemberSpec(0, None, lr=1e-3, init_scale=1.0, weight_decay=0.01),
               MemberSpec(1, None, lr=3e-3, init_scale=4.0, weight_decay=0.1, betas=(0.8, 0.99))]
    module, dm = build_ensemble(members, loss="squared", optimizer="adamw", **NET, **DATA)
    loggers = [[CSVLogger(tmp_path, name="ens", version=f"m{k}")] for k in range(len(members))]
    fit_ensemble(module, dm, member_loggers=loggers, **_kwargs(3))
    for k, m in enumerate(members):
        net, single = _single(m, tmp_path, f"s{k}", 3)
        ens = pd.read_csv(tmp_path / "ens" / f"m{k}" / "metrics.csv")
        for key in ("train/loss", "train/acc", "val/loss", "val/acc"):
            got, want = ens[key].dropna().to_numpy(), single[key].dropna().to_numpy()
            assert len(got) == len(want) == 3
            assert got == pytest.approx(want, rel=1e-4, abs=1e-6), key
        stacked = dict(module.net.named_parameters())
        for name, p in net.named_parameters():
            torch.testing.assert_close(stacked[name][k].detach(), p.detach(), rtol=0,
                                       atol=1e-4 * float(p.detach().abs().max()))
    assert type(module.trainer.optimizers[0]) is MemberOptimizer
