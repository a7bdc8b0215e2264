"""Tier 2: KernelMonitor on a real Trainer; logged values against an independent recomputation
(jacrev Jacobians, an autograd loop of per-example gradients) at the logged weights."""

from __future__ import annotations

import copy
import csv
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import CSVLogger
from torch import Tensor, nn
from torch.func import functional_call, jacrev
from torch.utils.data import DataLoader, TensorDataset

from lightning_mem.alignment.kernel_monitor import KernelMonitor
from lightning_mem.data.datamodule import ImageClassificationData
from lightning_mem.nets import ConvNet, ScaledMLP
from lightning_mem.training.module import MemorizationModule

pytestmark = [
    pytest.mark.filterwarnings("ignore:The number of training batches"),
    pytest.mark.filterwarnings("ignore:.*does not have many workers"),
]


def explicit_ntk(net: nn.Module, x: Tensor) -> Tensor:
    """Σ_c J_c J_cᵀ from the full Jacobian (B, k, P), in fp64."""
    net = copy.deepcopy(net).double()
    params = {n: p.detach() for n, p in net.named_parameters()}
    jac = jacrev(lambda ps: functional_call(net, ps, (x.double(),)))(params)
    B, k = x.shape[0], next(iter(jac.values())).shape[1]
    J = torch.cat([j.reshape(B, k, -1) for j in jac.values()], -1)
    return torch.einsum("icp,jcp->ij", J, J)


def cos_f(a: Tensor, b: Tensor) -> float:
    return float((a * b).sum() / (a.norm() * b.norm()))


def target(y: Tensor, classes: int) -> Tensor:
    Y = F.one_hot(y, classes).double()
    return Y @ Y.T


def rows_of(path: Path) -> list[dict[str, str]]:
    with (path / "metrics.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def test_probe_measures_in_metrics_csv_equal_an_independent_recomputation(tmp_path: Path) -> None:
    L.seed_everything(0, verbose=False)
    data = ImageClassificationData("digits", batch_size=128)  # 1,437 examples: 12 steps per epoch
    net = ScaledMLP(data.input_shape, data.num_classes, width=16, activation="sin", init_std=0.5)
    init = copy.deepcopy(net)
    module = MemorizationModule(net, lr=0.2)
    monitor = KernelMonitor(probe_size=60, train_every_n_steps=5)
    trainer = L.Trainer(max_epochs=2, logger=CSVLogger(tmp_path, name="", version=""), callbacks=[monitor],
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=2)
    trainer.fit(module, datamodule=data)
    rows = rows_of(tmp_path)
    probe = [r for r in rows if r["kernel/target_alignment"]]
    for epoch, r in enumerate(probe):  # one row per validation, at the step and epoch of its val/acc
        val_acc = [v for v in rows if v["val/acc"] and v["epoch"] == str(epoch)]
        assert (r["step"], r["epoch"]) == (val_acc[0]["step"], str(epoch))
        assert r["step"] == str(12 * epoch + 11)
    assert len(probe) == 2
    assert not probe[0]["kernel/velocity"] and probe[1]["kernel/velocity"]
    train = [r for r in rows if r["train/kernel/target_alignment"]]
    assert [(r["step"], r["epoch"]) for r in train] == [(str(s), str(s // 12)) for s in range(0, 24, 5)]
    assert float(train[0]["train/kernel/distance_from_init"]) == pytest.approx(0.0, abs=1e-12)  # step 0

    x, y = data.val_x[:60], data.val_y[:60]
    theta, theta0 = explicit_ntk(module.net, x), explicit_ntk(init, x)
    last = {k: float(v) for k, v in probe[-1].items() if v and k not in ("epoch", "step")}
    assert last["kernel/target_alignment"] == pytest.approx(cos_f(theta, target(y, 10)), rel=1e-6)
    H = torch.eye(60, dtype=torch.float64) - 1 / 60
    centred = cos_f(H @ theta @ H, H @ target(y, 10) @ H)
    assert last["kernel/target_alignment_centered"] == pytest.approx(centred, rel=1e-6)
    assert last["kernel/distance_from_init"] == pytest.approx(1 - cos_f(theta0, theta), rel=1e-5)
    assert last["kernel/distance_from_init"] > 1e-4  # the kernel moved: Θ₀ in place of Θ_t would read 0
    for name in ("hidden.weight", "out.weight"):
        w, w0 = module.net.get_parameter(name).detach(), init.get_parameter(name).detach()
        expected = float((w - w0).norm() / w0.norm())
        assert last[f"weights/distance_from_init/{name}"] == pytest.approx(expected, rel=1e-6)
    with torch.no_grad():
        pre, pre0 = x.flatten(1) @ module.net.hidden.weight.T, x.flatten(1) @ init.hidden.weight.T
    changed = float((torch.round(pre / torch.pi) != torch.round(pre0 / torch.pi)).double().mean())
    assert last["act/pattern_change"] == pytest.approx(changed, abs=1e-12)

    grads = []  # per-example gradients of each example's own loss, one backward each
    for i in range(60):
        module.net.zero_grad()
        module.loss_fn(module.net(x[i : i + 1]), y[i : i + 1]).sum().backward()
        grads.append(torch.cat([p.grad.reshape(-1) for p in module.net.parameters()]).double())
    G = torch.nn.functional.normalize(torch.stack(grads), dim=1)
    cos = G @ G.T
    same, eye = y[:, None] == y[None, :], torch.eye(60, dtype=torch.bool)
    S = torch.full((10, 10), float("nan"), dtype=torch.float64)
    for a in range(10):
        for b in range(10):
            mask = (y[:, None] == a) & (y[None, :] == b) & ~eye
            if mask.any():
                S[a, b] = cos[mask].mean()
                assert last[f"stiffness/class_matrix/{a}_{b}"] == pytest.approx(float(S[a, b]), abs=1e-6)
    assert last["stiffness/class_matrix/diag_mean"] == pytest.approx(float(S.diagonal().nanmean()), abs=1e-6)
    off = S[~torch.eye(10, dtype=torch.bool)].nanmean()
    assert last["stiffness/class_matrix/off_diag_mean"] == pytest.approx(float(off), abs=1e-6)
    assert same.any()
    assert monitor.last_metrics["kernel/target_alignment"] == pytest.approx(last["kernel/target_alignment"])


@pytest.mark.slow  # ~4 s alone, 11 s on the loaded 2-core machine: torch.func Jacobians of a ConvNet
def test_convnet_gets_the_keys_through_torch_func_on_a_cut_probe(tmp_path: Path) -> None:
    L.seed_everything(0, verbose=False)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(40, 1, 15, 15, generator=g), torch.randint(0, 3, (40,), generator=g)
    train = DataLoader(TensorDataset(x, y, torch.zeros(40, dtype=torch.bool)), batch_size=20)
    val = DataLoader(TensorDataset(x[:30] + 0.1, y[:30]), batch_size=20)
    module = MemorizationModule(ConvNet((1, 15, 15), num_classes=3, init_std=0.2), lr=0.1)
    monitor = KernelMonitor(probe_size=30, jacobian_probe_size=8, stiffness_matrix=False)
    trainer = L.Trainer(max_epochs=1, logger=CSVLogger(tmp_path, name="", version=""), callbacks=[monitor],
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, train, val)
    (row,) = [r for r in rows_of(tmp_path) if r["kernel/target_alignment"]]
    xp, yp = x[:8] + 0.1, y[:8]
    theta = explicit_ntk(module.net, xp)
    assert float(row["kernel/target_alignment"]) == pytest.approx(cos_f(theta, target(yp, 3)), rel=1e-5)
    assert {f"weights/distance_from_init/{n}" for n, _ in module.net.named_parameters()} <= set(row)
    assert row["act/pattern_change"] and row["stiffness/class_matrix/diag_mean"]
    assert "stiffness/class_matrix/0_0" not in row


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"probe_size": 1}, "probe_size=1 must be an integer >= 2"),
        ({"train_every_n_steps": 0}, "train_every_n_steps=0 must be an integer >= 1, or None"),
        ({"jacobian_probe_size": 65}, r"jacobian_probe_size=65 must be an integer in \[2, 64\]"),
    ],
)
def test_bad_arguments_name_the_value_and_the_allowed_ones(kwargs: dict[str, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        KernelMonitor(**kwargs)


class _Snapshot(L.Callback):
    """The net's weights and the batch at the start of step ``at`` (before its update)."""

    def __init__(self, at: int) -> None:
        self.at, self.net, self.batch = at, None, None

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule,
                             batch: tuple[Tensor, ...], batch_idx: int) -> None:
        if trainer.global_step == self.at:
            self.net, self.batch = copy.deepcopy(pl_module.net), (batch[0].clone(), batch[1].clone())


@pytest.mark.parametrize(("activation", "matmul"),
                         [("sin", "highest"), pytest.param("relu", "high", marks=pytest.mark.slow)])
def test_training_batch_measures_are_of_the_weights_before_the_step(tmp_path: Path, activation: str,
                                                                    matmul: str) -> None:
    """The training-batch Θ_t must be the explicit kernel at the weights before that step's update, Θ₀
    the one at init, on that batch: taken from the step's own forward (x W1ᵀ reused) when fp32 matmuls
    are IEEE ("highest"), measured before the step otherwise ("high", TF32 where there is one)."""
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(matmul)
    try:
        _check_training_batch_measures(tmp_path, activation)
    finally:
        torch.set_float32_matmul_precision(previous)


def _check_training_batch_measures(tmp_path: Path, activation: str) -> None:
    L.seed_everything(0, verbose=False)
    data = ImageClassificationData("digits", batch_size=128)
    net = ScaledMLP(data.input_shape, data.num_classes, width=16, activation=activation, init_std=0.5)
    init = copy.deepcopy(net)
    module = MemorizationModule(net, lr=0.5)
    snap = _Snapshot(10)
    monitor = KernelMonitor(probe_size=50, train_every_n_steps=5, stiffness=False)
    trainer = L.Trainer(max_steps=11, logger=CSVLogger(tmp_path, name="", version=""),
                        callbacks=[snap, monitor], enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0)
    trainer.fit(module, datamodule=data)
    (row,) = [r for r in rows_of(tmp_path) if r["train/kernel/target_alignment"] and r["step"] == "10"]
    assert snap.net is not None and snap.batch is not None
    x, y = snap.batch[0][:50], snap.batch[1][:50]
    theta, theta0 = explicit_ntk(snap.net, x), explicit_ntk(init, x)
    assert float(row["train/kernel/target_alignment"]) == pytest.approx(cos_f(theta, target(y, 10)), rel=1e-6)
    assert float(row["train/kernel/distance_from_init"]) == pytest.approx(1 - cos_f(theta0, theta), rel=1e-4)
    after = explicit_ntk(module.net, x)  # the weights after the last step: another kernel
    assert abs(cos_f(after, target(y, 10)) - cos_f(theta, target(y, 10))) > 1e-5
    with torch.no_grad():
        pre, pre0 = x.flatten(1) @ snap.net.hidden.weight.T, x.flatten(1) @ init.hidden.weight.T
    changed = (pre > 0) != (pre0 > 0) if activation == "relu" else (
        torch.round(pre / torch.pi) != torch.round(pre0 / torch.pi))
    assert float(row["train/act/pattern_change"]) == pytest.approx(float(changed.double().mean()), abs=1e-12)


@pytest.mark.parametrize("kwargs", [{"depth": 2}, {"bias": True}])
def test_a_scaled_mlp_outside_the_closed_form_gets_the_jacobian_kernel(kwargs: dict[str, object]) -> None:
    """z = W2 φ(W1 x) is the closed form's net: a deeper or biased ScaledMLP takes torch.func."""
    from lightning_mem.alignment.kernel_monitor import NetKernels

    torch.manual_seed(0)
    net = ScaledMLP((1, 4, 4), 3, width=6, activation="sin", init_std=0.5, **kwargs)
    nk = NetKernels(net, lambda z, y: F.cross_entropy(z, y, reduction="none"), 8)
    assert not nk.closed_form
    x = torch.randn(5, 1, 4, 4)
    params = {n: p.detach() for n, p in net.named_parameters()}
    torch.testing.assert_close(nk.ntk(params, x), explicit_ntk(net, x), rtol=1e-5, atol=1e-8)
    assert NetKernels(ScaledMLP((1, 4, 4), 3, width=6), nk.loss_fn, 8).closed_form
