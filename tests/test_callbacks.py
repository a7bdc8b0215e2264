"""Tier 2: AlignmentMonitor on a real Trainer with tiny random data."""

from __future__ import annotations

import copy
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import Logger
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_mem.alignment import gradient_alignment, representation_alignment
from lightning_mem.callbacks import AlignmentMonitor
from lightning_mem.module import MemorizationModule
from lightning_mem.nets import ConvNet, ScaledMLP

SHAPE = (1, 4, 4)
pytestmark = [
    pytest.mark.filterwarnings("ignore:You defined a `validation_step` but have no `val_dataloader`"),
    pytest.mark.filterwarnings("ignore:The number of training batches"),
    pytest.mark.filterwarnings("ignore:.*LeafSpec.*is deprecated"),
]


class RecordingLogger(Logger):
    """Keeps every ``log_metrics`` call as (metrics, step)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[dict[str, float], int | None]] = []

    @property
    def name(self) -> str:
        return "recording"

    @property
    def version(self) -> int:
        return 0

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.calls.append((dict(metrics), step))

    def align_calls(self) -> list[tuple[dict[str, float], int | None]]:
        return [(m, s) for m, s in self.calls if any(k.startswith(("align/", "val/align/")) for k in m)]


class Snapshots(L.Callback):
    """Net weights and batch at the start of every training batch (before the optimizer moves them)."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, dict[str, Tensor], Any]] = []

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        state = copy.deepcopy(pl_module.net.state_dict())
        self.seen.append((trainer.global_step, state, [t.clone() for t in batch]))


def loaders(n: int = 48, batch: int = 16, shape: tuple[int, ...] = SHAPE, classes: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n, *shape, generator=g), torch.randint(0, classes, (n,), generator=g)
    train = DataLoader(TensorDataset(x, y, torch.zeros(n, dtype=torch.bool)), batch_size=batch)
    val = DataLoader(TensorDataset(x[:30] + 0.1, y[:30]), batch_size=batch)
    return train, val


def fit(
    net: nn.Module,
    callbacks: list[L.Callback],
    max_steps: int = 5,
    val: bool = False,
    seed: int = 0,
    **trainer_kwargs: Any,
) -> tuple[MemorizationModule, RecordingLogger]:
    L.seed_everything(seed, verbose=False)
    module = MemorizationModule(net, lr=0.5)
    logger = RecordingLogger()
    trainer = L.Trainer(
        max_steps=max_steps,
        accelerator="cpu",
        devices=1,
        logger=logger,
        callbacks=callbacks,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=None if val else 0,
        **trainer_kwargs,
    )
    train, val_loader = loaders()
    trainer.fit(module, train_dataloaders=train, val_dataloaders=val_loader if val else None)
    return module, logger


def mlp(seed: int = 0, **kwargs: Any) -> ScaledMLP:
    torch.manual_seed(seed)
    return ScaledMLP(SHAPE, num_classes=3, width=12, activation="sin", init_std=0.7, **kwargs)


def to_logged(ref: dict[str, float]) -> dict[str, float]:
    """gradient_alignment keys -> AlignmentMonitor keys: "hidden.weight" -> "align/grad/hidden.weight",
    "diversity/hidden.weight/class_0" -> "diversity/grad/hidden.weight/class_0"."""
    out = {}
    for key, value in ref.items():
        measure, rest = (
            key.split("/", 1)
            if key.startswith(("diversity/", "stiffness/", "confusion/"))
            else ("align", key)
        )
        out[f"{measure}/grad/{rest}"] = value
    return out


def test_logged_values_equal_gradient_alignment_on_the_same_batch_and_weights() -> None:
    snaps = Snapshots()
    monitor = AlignmentMonitor(every_n_steps=2, per_class=True, comparison_measures=True)
    module, logger = fit(mlp(), [monitor, snaps], max_steps=4)
    calls = logger.align_calls()
    assert [s for _, s in calls] == [0, 2]
    for (logged, step), (seen_step, state, batch) in zip(calls, snaps.seen[::2], strict=True):
        assert seen_step == step
        net = mlp()
        net.load_state_dict(state)
        x, y = batch[0], batch[1]
        measures = ("alignment", "diversity", "stiffness", "confusion")
        want = to_logged(
            gradient_alignment(net, module.loss_fn, x, y, per_class=True, num_classes=3, measures=measures)
        )
        h = net.act(net.hidden(net.flatten(x)))
        rep = representation_alignment(h, y, per_class=True, num_classes=3)
        assert isinstance(rep, dict)
        want |= {("align/rep/act" + ("" if k == "in_class" else f"/{k}")): v for k, v in rep.items()}
        net.zero_grad()
        module.loss_fn(net(x), y).mean().backward()
        for name, p in net.named_parameters():
            assert p.grad is not None
            want[f"norm/grad_over_weight/{name}"] = float(p.grad.norm() / p.detach().norm())
        assert set(logged) == set(want)
        for key, value in want.items():
            assert logged[key] == pytest.approx(value, rel=1e-5, abs=1e-8), key


def test_training_is_bit_identical_with_and_without_the_callback() -> None:
    monitor = AlignmentMonitor(every_n_steps=1, per_class=True, comparison_measures=True)
    with_cb, logger = fit(mlp(), [monitor], max_steps=5, val=True)
    without, _ = fit(mlp(), [], max_steps=5, val=True)
    assert len(logger.align_calls()) >= 5
    for (name, a), (_, b) in zip(
        with_cb.net.state_dict().items(), without.net.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name


def test_keys_interval_and_one_log_call_per_measuring_step() -> None:
    _, logger = fit(mlp(), [AlignmentMonitor(every_n_steps=2)], max_steps=5)
    calls = logger.align_calls()
    assert [s for _, s in calls] == [0, 2, 4]  # one call per measuring step, none in between
    want = {
        "align/grad/hidden.weight",
        "align/grad/out.weight",
        "align/grad/logits",
        "align/rep/act",
        "norm/grad_over_weight/hidden.weight",
        "norm/grad_over_weight/out.weight",
    }
    for metrics, _ in calls:
        assert set(metrics) == want
        assert all(-1.0 <= metrics[k] <= 1.0 for k in want if k.startswith("align/"))


def test_validation_logs_representation_alignment_of_held_out_examples() -> None:
    monitor = AlignmentMonitor(every_n_steps=100, gradients=False, per_class=True, val_max_examples=20)
    module, logger = fit(mlp(), [monitor], max_steps=3, val=True, limit_train_batches=3, max_epochs=1)
    val_calls = [(m, s) for m, s in logger.calls if any(k.startswith("val/align/") for k in m)]
    assert len(val_calls) == 1
    logged, step = val_calls[0]
    assert step == 3
    _, val = loaders()
    x, y = next(iter(DataLoader(val.dataset, batch_size=20)))
    net = module.net
    with torch.no_grad():
        rep = representation_alignment(net.act(net.hidden(net.flatten(x))), y, per_class=True, num_classes=3)
    assert isinstance(rep, dict)
    want = {"val/align/rep/act" + ("" if k == "in_class" else f"/{k}"): v for k, v in rep.items()}
    assert set(logged) == set(want)
    for key, value in want.items():
        assert logged[key] == pytest.approx(value, rel=1e-9), key


def test_max_classes_measures_only_the_first_classes() -> None:
    snaps = Snapshots()
    _, logger = fit(
        mlp(), [AlignmentMonitor(every_n_steps=10, per_class=True, max_classes=2), snaps], max_steps=1
    )
    (logged, _), (_, state, batch) = logger.align_calls()[0], snaps.seen[0]
    assert not any(k.endswith("/class_2") for k in logged)
    assert "align/grad/hidden.weight/class_1" in logged
    net = mlp()
    net.load_state_dict(state)
    keep = batch[1] < 2
    want = gradient_alignment(
        net, MemorizationModule(net).loss_fn, batch[0][keep], batch[1][keep], num_classes=2
    )
    assert logged["align/grad/hidden.weight"] == pytest.approx(want["hidden.weight"], rel=1e-5)


def test_gradient_accumulation_measures_the_first_micro_batch() -> None:
    snaps = Snapshots()
    monitor = AlignmentMonitor(every_n_steps=1)
    module, logger = fit(mlp(), [monitor, snaps], max_steps=2, accumulate_grad_batches=2)
    calls = logger.align_calls()
    assert [s for _, s in calls] == [0, 1]
    (logged, _), (_, state, batch) = calls[1], snaps.seen[2]  # micro-batches 2, 3 make step 1
    net = mlp()
    net.load_state_dict(state)
    want = gradient_alignment(net, module.loss_fn, batch[0], batch[1], num_classes=3)
    assert logged["align/grad/hidden.weight"] == pytest.approx(want["hidden.weight"], rel=1e-5)


def test_convnet_keys() -> None:
    torch.manual_seed(0)
    net = ConvNet((3, 16, 16), num_classes=3)
    L.seed_everything(0, verbose=False)
    module = MemorizationModule(net)
    logger = RecordingLogger()
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 3, 16, 16, generator=g), torch.arange(16) % 3
    trainer = L.Trainer(
        max_steps=1,
        logger=logger,
        callbacks=[AlignmentMonitor(every_n_steps=1)],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, DataLoader(TensorDataset(x, y, torch.zeros(16, dtype=torch.bool)), batch_size=16))
    logged = logger.align_calls()[0][0]
    for name in ("conv1.weight", "conv1.bias", "conv2.weight", "fc.weight", "out.bias", "logits"):
        assert f"align/grad/{name}" in logged
    assert "align/rep/act" in logged


def test_batchnorm_net_warns_and_measures_representations_only() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    with pytest.warns(UserWarning, match="BatchNorm"):
        _, logger = fit(net, [AlignmentMonitor(every_n_steps=1, layers=["3"])], max_steps=2)
    for metrics, _ in logger.align_calls():
        assert set(metrics) == {"align/rep/3"}


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(every_n_steps=0), "every_n_steps=0 must be an integer >= 1"),
        (dict(gradients=False, representations=False), "measure nothing"),
        (dict(max_classes=0), "max_classes=0"),
        (dict(val_max_examples=-1), "val_max_examples=-1"),
        (dict(layers="act"), "must be a list of module names"),
    ],
)
def test_invalid_arguments_are_rejected(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        AlignmentMonitor(**kwargs)


def test_unknown_layer_names_the_allowed_ones() -> None:
    with pytest.raises(
        ValueError, match=r"\['nope'\] are not modules of ScaledMLP; allowed: act, flatten, hidden, out"
    ):
        fit(mlp(), [AlignmentMonitor(layers=["nope"])], max_steps=1)
