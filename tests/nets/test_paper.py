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


@pytest.mark.parametrize("init_std", [None, 0.5])
def test_scaled_mlp_defaults_draw_todays_weights(init_std: float | None) -> None:
    """The paper's net (depth 1, no bias, α = 1) draws W1 then W2 from the seed exactly as before."""
    torch.manual_seed(7)
    torch.nn.Linear(64, 32, bias=False), torch.nn.Linear(32, 10, bias=False)  # construction draws too
    w1 = torch.empty(32, 64)
    if init_std is None:
        torch.nn.init.xavier_uniform_(w1)
    else:
        torch.nn.init.normal_(w1, 0.0, init_std)
    w2 = torch.nn.init.xavier_uniform_(torch.empty(10, 32))
    torch.manual_seed(7)
    net = ScaledMLP(input_shape=(1, 8, 8), num_classes=10, width=32, init_std=init_std)
    assert list(net.state_dict()) == ["hidden.weight", "out.weight"]
    assert torch.equal(net.hidden.weight, w1) and torch.equal(net.out.weight, w2)


def test_scaled_mlp_depth_bias_and_init_scale_like_omnigrok() -> None:
    """Omnigrok's net: 784→200→200→10, biases, torch's default init, every parameter times α."""
    torch.manual_seed(3)
    ref = torch.nn.Sequential(torch.nn.Linear(784, 200), torch.nn.Linear(200, 200), torch.nn.Linear(200, 10))
    for layer in ref:
        layer.reset_parameters()  # the net draws at construction, then once more in reset_parameters
    torch.manual_seed(3)
    net = ScaledMLP(input_shape=(1, 28, 28), num_classes=10, width=200, activation="relu", depth=2, bias=True,
                    init_rule="torch", init_scale=8.0)
    got = [p for layer in net.linears() for p in (layer.weight, layer.bias)]
    want = [8.0 * p for p in ref.parameters()]
    assert [tuple(p.shape) for p in got] == [(200, 784), (200,), (200, 200), (200,), (10, 200), (10,)]
    assert all(torch.equal(g, w) for g, w in zip(got, want, strict=True))
    x = torch.randn(5, 1, 28, 28)
    with torch.no_grad():
        for p in ref.parameters():
            p.mul_(8.0)
        want_out = ref[2](torch.relu(ref[1](torch.relu(ref[0](x.flatten(1))))))
        assert torch.allclose(net(x), want_out, rtol=1e-5, atol=1e-4)


def test_scaled_mlp_glorot_deep_biases_zero_and_scaled() -> None:
    net = ScaledMLP(input_shape=(1, 4, 4), num_classes=3, width=8, depth=3, bias=True, init_scale=2.0,
                    init_std=0.1)
    assert len(net.linears()) == 4
    assert all(torch.count_nonzero(layer.bias) == 0 for layer in net.linears())  # type: ignore[arg-type]
    bound = 2.0 * math.sqrt(6 / 16)  # Glorot bound of an 8x8 layer, times α
    assert net.linears()[1].weight.abs().max() <= bound
    assert net.linears()[1].weight.abs().max() > bound / 2 > 0


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"depth": 0}, r"depth=0 must be an integer >= 1"),
    ({"init_scale": 0.0}, r"init_scale=0.0 must be a positive finite number"),
    ({"init_rule": "kaiming"}, r"init_rule='kaiming' is not supported; allowed: glorot, torch"),
])
def test_scaled_mlp_bad_new_knobs(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ScaledMLP(**kwargs)
