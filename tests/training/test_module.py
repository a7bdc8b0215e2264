import copy
import re

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger

from lightning_mem.data.datamodule import ImageClassificationData
from lightning_mem.nets import ScaledMLP
from lightning_mem.training.losses import LOSSES
from lightning_mem.training.module import MemorizationModule


def _fit(tmp_path, label_noise: float = 0.0, loss: str = "cross_entropy", epochs: int = 2):
    L.seed_everything(0)
    data = ImageClassificationData(dataset="digits", batch_size=128, label_noise=label_noise)
    net = ScaledMLP(input_shape=data.input_shape, num_classes=data.num_classes, width=64)
    module = MemorizationModule(net, loss=loss, lr=0.05)  # type: ignore[arg-type]
    logger = CSVLogger(tmp_path, name="t", version="v")
    trainer = L.Trainer(
        max_epochs=epochs, logger=logger, enable_progress_bar=False, enable_checkpointing=False,
        enable_model_summary=False, num_sanity_val_steps=0,
    )
    trainer.fit(module, datamodule=data)
    return trainer, module, data


def test_fit_logs_documented_keys(tmp_path) -> None:
    trainer, module, data = _fit(tmp_path)
    metrics = trainer.callback_metrics
    assert {"train/loss", "train/acc", "val/loss", "val/acc"} <= set(metrics)
    assert "train/acc_clean" not in metrics
    # val/acc equals the accuracy recomputed from the final weights on the held-out split.
    with torch.no_grad():
        pred = module.net(data.val_x).argmax(1)
    assert metrics["val/acc"].item() == pytest.approx((pred == data.val_y).float().mean().item(), abs=1e-6)
    header = (tmp_path / "t" / "v" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"epoch", "step", "train/loss", "train/acc", "val/loss", "val/acc"} == set(header)


def test_label_noise_logs_clean_and_noisy_accuracy(tmp_path) -> None:
    trainer, _, data = _fit(tmp_path, label_noise=0.5)
    metrics = trainer.callback_metrics
    assert {"train/acc_clean", "train/acc_noisy"} <= set(metrics)
    frac = data.train_noisy.float().mean().item()
    # train/acc is the mask-weighted mix of the two (all on the last epoch's batches).
    mix = (1 - frac) * metrics["train/acc_clean"] + frac * metrics["train/acc_noisy"]
    assert metrics["train/acc"].item() == pytest.approx(mix.item(), abs=1e-5)


@pytest.mark.parametrize("loss", sorted(LOSSES))
def test_each_loss_trains(tmp_path, loss: str) -> None:
    trainer, _, _ = _fit(tmp_path, loss=loss, epochs=5)
    assert trainer.callback_metrics["val/acc"].item() > 0.3  # 10 classes: chance is 0.1


def test_sgd_is_plain_by_default() -> None:
    module = MemorizationModule(ScaledMLP(input_shape=(1, 8, 8), width=8))
    opt = module.configure_optimizers()
    assert isinstance(opt, torch.optim.SGD)
    group = opt.param_groups[0]
    assert (group["lr"], group["momentum"], group["weight_decay"]) == (0.01, 0.0, 0.0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"loss": "mse"}, "loss='mse' is not supported; allowed: cross_entropy, hinge, squared"),
        ({"lr": -0.1}, "lr=-0.1 must be a positive finite number"),
        ({"loss_scale": 0.0}, "loss_scale=0.0 must be a positive"),
        ({"momentum": -1.0}, "momentum=-1.0 must be a finite number >= 0"),
    ],
)
def test_module_bad_input(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        MemorizationModule(ScaledMLP(input_shape=(1, 8, 8), width=8), **kwargs)


def test_loss_scale_with_init_follows_sigma() -> None:
    net = ScaledMLP(input_shape=(1, 8, 8), width=8, init_std=4.0)
    module = MemorizationModule(net, loss="hinge", loss_scale=0.5, loss_scale_with_init=True)
    assert module.loss_scale == 2.0
    z, y = torch.randn(3, 10), torch.tensor([0, 4, 9])
    torch.testing.assert_close(module.loss_fn(z, y), LOSSES["hinge"](z, y, 2.0))
    with pytest.raises(ValueError, match="needs a net with a numeric init_std; ScaledMLP has init_std=None"):
        MemorizationModule(ScaledMLP(input_shape=(1, 8, 8), width=8), loss_scale_with_init=True)


def test_clean_and_noisy_accuracy_against_an_independent_recount(tmp_path) -> None:
    """``train/acc_clean`` and ``train/acc_noisy`` equal a recount from the network's own predictions and the
    datamodule's mask. Noise fraction 0.2 (far from 0.5) and a net that has learned the clean labels make the
    two values far apart, so swapping the masks in ``training_step`` fails here."""
    L.seed_everything(0)
    data = ImageClassificationData(dataset="digits", batch_size=128, label_noise=0.2)
    net = ScaledMLP(input_shape=data.input_shape, num_classes=data.num_classes, width=64)
    module = MemorizationModule(net, lr=0.5)
    L.Trainer(max_epochs=4, logger=False, enable_progress_bar=False, enable_checkpointing=False,
              enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0).fit(module, data)
    # One more epoch as a single full batch: its metrics are those of the weights before its one step.
    before = copy.deepcopy(module.net)
    full = ImageClassificationData(dataset="digits", batch_size=len(data.train_y), label_noise=0.2)
    trainer = L.Trainer(max_epochs=1, logger=False, enable_progress_bar=False, enable_checkpointing=False,
                        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0)
    trainer.fit(module, datamodule=full)
    assert torch.equal(full.train_noisy, data.train_noisy)  # the same seeded mask
    with torch.no_grad():
        correct = (before(full.train_x).argmax(1) == full.train_y).float()  # against the labels trained on
    noisy = full.train_noisy
    assert abs(noisy.float().mean().item() - 0.2) < 0.01
    clean_acc, noisy_acc = correct[~noisy].mean().item(), correct[noisy].mean().item()
    assert clean_acc - noisy_acc > 0.3  # the test can tell the two apart
    metrics = trainer.callback_metrics
    assert metrics["train/acc_clean"].item() == pytest.approx(clean_acc, abs=1e-6)
    assert metrics["train/acc_noisy"].item() == pytest.approx(noisy_acc, abs=1e-6)
    assert metrics["train/acc"].item() == pytest.approx(correct.mean().item(), abs=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"steps_per_call": 0}, "steps_per_call=0 must be an integer >= 1"),
        ({"steps_per_call": True}, "steps_per_call=True must be an integer >= 1"),
        ({"fused_backend": "cuda"},
         "fused_backend='cuda' is not supported; allowed: auto, graph, compile, eager"),
        ({"steps_per_call": 4, "momentum": 0.9},
         "steps_per_call=4 runs plain SGD only, not momentum=0.9: set momentum 0 or steps_per_call 1"),
    ],
)
def test_fused_arguments_are_checked(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=re.escape(match)):
        MemorizationModule(ScaledMLP(input_shape=(1, 8, 8), width=8), **kwargs)


@pytest.mark.parametrize("layer", [torch.nn.BatchNorm1d(10), torch.nn.Dropout(0.1)])
def test_fused_step_refuses_batchnorm_and_dropout(layer: torch.nn.Module) -> None:
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10), layer)
    name = type(layer).__name__
    with pytest.raises(ValueError, match=rf"steps_per_call=2 cannot run Sequential: it has {name} "):
        MemorizationModule(net, steps_per_call=2)
    assert MemorizationModule(net).automatic_optimization  # the ordinary step runs it


def test_steps_per_call_selects_the_optimization() -> None:
    net = ScaledMLP(input_shape=(1, 8, 8), width=8)
    assert MemorizationModule(net).automatic_optimization and MemorizationModule(net).train_block_plan is None
    fused = MemorizationModule(net, steps_per_call=8)
    assert not fused.automatic_optimization and callable(fused.train_block_plan)
    assert fused.hparams["steps_per_call"] == 8 and fused.hparams["fused_backend"] == "auto"


@pytest.mark.parametrize(("optimizer", "extra"), [
    ("adamw", {"weight_decay": 0.01, "betas": (0.8, 0.99)}),
    ("adam", {"weight_decay": 0.001}),
    ("sgd", {"momentum": 0.9, "weight_decay": 0.01}),
])
def test_optimizers_step_like_torch_on_the_net_alone(optimizer: str, extra: dict) -> None:
    """Five full-batch steps under the real Trainer equal five steps of torch's optimizer on a copy of the net
    (MSE on one-hot targets: Omnigrok's loss)."""
    L.seed_everything(0)
    data = ImageClassificationData(dataset="digits", batch_size=1437)  # all of train: a step an epoch
    net = ScaledMLP(input_shape=data.input_shape, num_classes=data.num_classes, width=32, activation="relu",
                    depth=2, bias=True, init_rule="torch", init_scale=2.0)
    ref, init = copy.deepcopy(net), copy.deepcopy(net)
    module = MemorizationModule(net, loss="squared", lr=1e-3,
                                optimizer=optimizer, **extra)  # type: ignore[arg-type]
    L.Trainer(max_epochs=5, logger=False, enable_progress_bar=False, enable_checkpointing=False,
              enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0).fit(module, data)
    opt = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[optimizer](
        ref.parameters(), lr=1e-3, **extra)
    x, y = data.train_x, data.train_y
    assert len(y) == 1437
    for _ in range(5):
        opt.zero_grad()
        target = torch.nn.functional.one_hot(y, 10).float()
        torch.nn.functional.mse_loss(ref(x), target).backward()
        opt.step()
    gap = max((a - b).abs().max().item() for a, b in zip(net.parameters(), ref.parameters(), strict=True))
    moved = max((a - b).abs().max().item() for a, b in zip(net.parameters(), init.parameters(), strict=True))
    assert gap < 1e-6 and moved > 1e-4
    names = {"sgd": "SGD", "adam": "Adam", "adamw": "AdamW"}
    assert type(module.optimizers().optimizer).__name__ == names[optimizer]


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"optimizer": "lamb"}, r"optimizer='lamb' is not supported; allowed: sgd, adam, adamw"),
    ({"optimizer": "adamw", "momentum": 0.9}, r"momentum=0.9 is SGD's; optimizer='adamw' has betas instead"),
    ({"optimizer": "adam", "steps_per_call": 4},
     r"steps_per_call=4 runs plain SGD only, not optimizer='adam' \(the fused step captures SGD's update"),
    ({"optimizer": "adam", "betas": (0.9, 1.0)}, r"betas=\(0.9, 1.0\) must be two numbers in \[0, 1\)"),
])
def test_optimizer_bad_input(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        MemorizationModule(ScaledMLP(input_shape=(1, 8, 8), width=8), **kwargs)
