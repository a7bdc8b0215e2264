"""Section 5 networks: shapes, representation layer, σ of the stem, CLI selection."""

import pytest
import torch
from torch import nn

from lightning_mem.nets.zoo import ZOO, DenseNet121, ResNet18, ResNet50, feature_dim

FEATURES = {ResNet18: 512, ResNet50: 2048, DenseNet121: 1024}


@pytest.mark.parametrize(
    "cls",
    [ResNet18, *(pytest.param(c, marks=pytest.mark.slow) for c in (ResNet50, DenseNet121))],
)
def test_output_shape_and_representation_layer(cls) -> None:
    torch.manual_seed(0)
    net = cls(input_shape=(3, 32, 32), num_classes=7).eval()
    assert net.representation_layer == "features"
    layer = net.get_submodule(net.representation_layer)
    assert isinstance(layer, nn.Identity)
    seen = []
    handle = layer.register_forward_hook(lambda m, i, o: seen.append(o))
    with torch.no_grad():
        out = net(torch.randn(2, 3, 32, 32))
    handle.remove()
    assert out.shape == (2, 7)
    assert seen[0].shape == (2, FEATURES[cls]) == (2, feature_dim(net))
    # The head is a Linear on the hooked features: logits = out(features).
    assert torch.allclose(net.out(seen[0]), out, atol=1e-5)


def test_small_image_stem() -> None:
    net = ResNet18(input_shape=(1, 28, 28), num_classes=10)
    conv = net.first_conv()
    assert (conv.in_channels, conv.kernel_size, conv.stride) == (1, (3, 3), (1, 1))
    assert isinstance(net.backbone.maxpool, nn.Identity)
    dense = DenseNet121(input_shape=(3, 32, 32))
    assert dense.first_conv().kernel_size == (3, 3) and isinstance(dense.backbone.features.pool0, nn.Identity)
    with torch.no_grad():
        assert net.eval()(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_init_std_sets_first_conv_scale() -> None:
    torch.manual_seed(0)
    net = ResNet18(num_classes=10, init_std=3.0)
    std = net.first_conv().weight.std().item()  # 64*3*9 = 1728 draws
    assert std == pytest.approx(3.0, rel=0.1)
    assert net.init_std == 3.0 and net.num_classes == 10
    with pytest.raises(ValueError, match="init_std"):
        ResNet18(init_std=-1.0)
    with pytest.raises(ValueError, match="too small"):
        ResNet18(input_shape=(3, 4, 4))


def test_zoo_table_and_batchnorm_caveat() -> None:
    assert set(ZOO) == {"resnet18", "resnet50", "densenet121"}
    for cls in ZOO.values():
        assert "representation alignment only" in (cls.__doc__ or "")


def test_selectable_from_cli(tmp_path, monkeypatch) -> None:
    from lightning_mem.cli.run import build_cli

    monkeypatch.setattr("sys.argv", ["lightning-mem"])  # pytest's own arguments are not the CLI's

    cli = build_cli(
        ["--data.dataset", "digits", "--model.net", "lightning_mem.nets.zoo.ResNet18",
         "--run.root", str(tmp_path), "--trainer.logger", "false"],
        run=False,
    )
    net = cli.model.net
    assert isinstance(net, ResNet18)
    assert net.num_classes == 10 and net.input_shape == (1, 8, 8)  # linked from the data


@pytest.mark.slow  # ~10 s idle, ~35 s on a loaded 2-core machine
def test_fit_logs_representation_alignment_only(tmp_path, monkeypatch) -> None:
    """A real fit through the CLI: BatchNorm turns gradient alignment off, representations are measured."""
    import csv

    from lightning_mem.cli.commands import main

    monkeypatch.setattr("sys.argv", ["lightning-mem"])
    main([
        "fit", "--model.net", "lightning_mem.nets.zoo.ResNet18", "--data.dataset", "digits",
        "--data.train_subset", "128", "--data.batch_size", "64", "--trainer.max_epochs", "1",
        "--trainer.limit_val_batches", "1", "--trainer.num_sanity_val_steps", "0",
        "--trainer.callbacks+=lightning_mem.callbacks.AlignmentMonitor",
        "--trainer.callbacks.every_n_steps", "1",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_checkpointing", "false",
        "--trainer.enable_model_summary", "false",
        "--run.root", str(tmp_path), "--run.name", "r", "--run.id", "x",
    ])
    with (tmp_path / "r" / "x" / "metrics.csv").open() as f:
        header = next(csv.reader(f))
    assert {"align/rep/features", "val/align/rep/features", "val/acc"} <= set(header)
    assert not any(k.startswith("align/grad/") for k in header)
