import math

import pytest
import torch

from lightning_mem.nets import ACTIVATIONS, ConvNet, ScaledMLP


@pytest.mark.parametrize("init_std", [0.01, 0.1, 1.0, 10.0])
def test_scaled_mlp_w1_std_matches_init_std(init_std: float) -> None:
    torch.manual_seed(0)
    net = ScaledMLP(input_shape=(3, 32, 32), num_classes=10, width=256, init_std=init_std)
    w1 = net.hidden.weight
    assert w1.shape == (256, 3072)
    # 786k samples: the empirical std is within 0.5% of sigma.
    assert w1.std().item() == pytest.approx(init_std, rel=5e-3)
    assert w1.mean().abs().item() < 0.01 * init_std


def test_scaled_mlp_glorot_bounds_and_no_bias() -> None:
    torch.manual_seed(0)
    net = ScaledMLP(input_shape=(1, 28, 28), num_classes=10, width=512)
    for layer, fan_in, fan_out in ((net.hidden, 784, 512), (net.out, 512, 10)):
        bound = math.sqrt(6.0 / (fan_in + fan_out))
        w = layer.weight
        assert w.abs().max().item() <= bound
        assert w.abs().max().item() > 0.98 * bound  # uniform fills the interval
        assert w.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.05)
        assert layer.bias is None
    assert [n for n, _ in net.named_parameters()] == ["hidden.weight", "out.weight"]


def test_scaled_mlp_w2_is_glorot_even_with_init_std() -> None:
    torch.manual_seed(0)
    net = ScaledMLP(input_shape=(1, 28, 28), num_classes=10, width=512, init_std=10.0)
    assert net.out.weight.abs().max().item() <= math.sqrt(6.0 / 522)


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_scaled_mlp_forward(activation: str) -> None:
    net = ScaledMLP(input_shape=(1, 8, 8), num_classes=10, width=32, activation=activation)  # type: ignore[arg-type]
    x = torch.randn(5, 1, 8, 8)
    out = net(x)
    assert out.shape == (5, 10)
    hidden = net.act(net.hidden(x.flatten(1)))
    torch.testing.assert_close(out, hidden @ net.out.weight.T)


def test_sin_is_sin() -> None:
    x = torch.linspace(-7, 7, 50)
    torch.testing.assert_close(ACTIVATIONS["sin"]()(x), torch.sin(x))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"activation": "swish"}, "activation='swish' is not supported; allowed: sin, relu"),
        ({"init_std": -1.0}, "init_std=-1.0 must be a positive"),
        ({"init_std": float("nan")}, "init_std=nan must be a positive"),
        ({"width": 0}, "width=0 must be >= 1"),
    ],
)
def test_scaled_mlp_bad_input(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ScaledMLP(**kwargs)


def test_convnet_shapes_and_layers() -> None:
    torch.manual_seed(0)
    net = ConvNet(input_shape=(3, 32, 32), num_classes=10, init_std=0.5)
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    # 32 -> pool 15 -> conv(valid) 11 -> pool 5: 64*5*5 features into the dense layer.
    assert net.fc.in_features == 64 * 5 * 5
    assert net.conv1.weight.shape == (32, 3, 5, 5) and net.conv2.weight.shape == (64, 32, 5, 5)
    assert net.conv1.weight.std().item() == pytest.approx(0.5, rel=0.05)
    assert all(layer.bias is not None for layer in (net.conv1, net.conv2, net.fc, net.out))
    assert net.representation_layer == "act" and net.fc.out_features == 1024
    mnist = ConvNet(input_shape=(1, 28, 28), num_classes=10)
    assert mnist(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    with pytest.raises(ValueError, match="too small for ConvNet"):
        ConvNet(input_shape=(1, 8, 8))
