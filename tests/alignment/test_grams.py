"""Tier 1: the Gram builders and their hooks against per-example autograd, and the precision guard."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import nn

from lightning_mem.alignment.grams import GramCapture, conv2d_per_example_grads, gram, ieee_fp32, linear_grams

# ----------------------------------------------------------------------------- Gram builders


@pytest.mark.parametrize("T, d_in, d_out", [(1, 4, 5), (3, 4, 5), (6, 2, 3)])  # T=1, Gram form, P Pᵀ form
def test_linear_grams_with_sequence_dims(T: int, d_in: int, d_out: int) -> None:
    g = torch.Generator().manual_seed(8)
    a, go = (
        torch.randn(5, T, d_in, generator=g, dtype=torch.float64),
        torch.randn(5, T, d_out, generator=g, dtype=torch.float64),
    )
    per_example = torch.einsum("bto,bti->boi", go, a).reshape(5, -1)  # Σ_t g_t a_tᵀ
    k_w, k_b = linear_grams(a, go, bias=True)
    torch.testing.assert_close(k_w, per_example @ per_example.T)
    assert k_b is not None
    torch.testing.assert_close(k_b, go.sum(1) @ go.sum(1).T)


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
@pytest.mark.parametrize(
    "kwargs",
    [
        dict(kernel_size=3, padding=1),
        dict(kernel_size=(3, 2), stride=2, padding=(1, 0), dilation=(1, 2)),
        dict(kernel_size=4, padding="same", dilation=1),
        dict(kernel_size=3, padding="valid", groups=2),
    ],
)
def test_conv2d_per_example_grads_match_autograd(kwargs: dict) -> None:
    torch.manual_seed(9)
    conv = nn.Conv2d(4, 6, **kwargs).double()
    x = torch.randn(3, 4, 9, 8, dtype=torch.float64)
    out = conv(x)
    go = torch.randn_like(out)
    weight, bias = conv2d_per_example_grads(conv, x, go)
    for i in range(3):
        gw, gb = torch.autograd.grad(conv(x[i : i + 1]), [conv.weight, conv.bias], go[i : i + 1])
        torch.testing.assert_close(weight[i], gw.flatten())
        torch.testing.assert_close(bias[i], gb)


def test_conv2d_rejects_other_padding_modes() -> None:
    conv = nn.Conv2d(1, 1, 3, padding=1, padding_mode="reflect")
    with pytest.raises(ValueError, match=r"padding_mode=.reflect.*allowed: zeros"):
        conv2d_per_example_grads(conv, torch.randn(2, 1, 5, 5), torch.randn(2, 1, 5, 5))



@pytest.mark.parametrize("n, blocks", [(5, 4), (130, 2), (300, 4)])
def test_blocked_gram_is_exact_and_symmetric(n: int, blocks: int) -> None:
    v = torch.randn(n, 7, generator=torch.Generator().manual_seed(20), dtype=torch.float64)
    K = gram(v, blocks=blocks)
    torch.testing.assert_close(K, v @ v.T)
    assert torch.equal(K, K.T)


# ----------------------------------------------------------------------------- GramCapture


def test_capture_grams_equal_per_example_autograd_and_list_unhooked_parameters() -> None:
    torch.manual_seed(22)
    net = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.LayerNorm(4), nn.Linear(4, 3)).double()
    x, y = torch.randn(6, 5, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1, 2])
    capture = GramCapture(net, rep_layers=["1"])
    assert capture.unhooked() == ["2.weight", "2.bias"]  # LayerNorm: not Linear/Conv2d
    with capture:
        loss = nn.functional.cross_entropy(net(x), y, reduction="sum")
        torch.autograd.grad(loss, list(net.parameters()))
    assert not capture.attached
    grams = capture.grams()
    assert set(grams) == {"0.weight", "0.bias", "3.weight", "3.bias", "logits", "rep:1"}
    for name, p in net.named_parameters():
        if name.startswith("2."):
            continue
        per_example = torch.stack([
            torch.autograd.grad(nn.functional.cross_entropy(net(x[i : i + 1]), y[i : i + 1]), p)[0].flatten()
            for i in range(6)
        ])
        torch.testing.assert_close(grams[name], per_example @ per_example.T)
    h = torch.tanh(net[0](x))
    torch.testing.assert_close(grams["rep:1"], h @ h.T)


# ----------------------------------------------------------------------------- precision


@pytest.fixture
def pristine_precision() -> Iterator[None]:
    """Leave torch's fp32 matmul settings as found (both APIs), whatever the test set."""
    backends = [torch.backends.cuda.matmul, torch.backends.mkldnn.matmul]
    saved = [b.fp32_precision for b in backends]
    yield
    torch.set_float32_matmul_precision("highest")  # the legacy state of a fresh process ...
    for b, value in zip(backends, saved, strict=True):  # ... and the per-backend values found
        b.fp32_precision = value
    torch.get_float32_matmul_precision()  # raises if the two APIs disagree now


def test_ieee_fp32_with_the_legacy_api(pristine_precision: None) -> None:
    torch.set_float32_matmul_precision("medium")  # TF32 on CUDA, bf16 in oneDNN on the CPU
    with ieee_fp32():
        assert torch.backends.cuda.matmul.fp32_precision == "ieee"
        assert torch.backends.mkldnn.matmul.fp32_precision == "ieee"
    assert torch.get_float32_matmul_precision() == "medium"


def test_ieee_fp32_with_the_per_backend_api(pristine_precision: None) -> None:
    # torch >= 2.9: once a user sets the new API, the legacy getter raises; every measuring step
    # read it before.
    torch.backends.cuda.matmul.fp32_precision = "tf32"
    torch.backends.mkldnn.matmul.fp32_precision = "bf16"
    with pytest.raises(RuntimeError, match="mix of the legacy and new APIs"):
        torch.get_float32_matmul_precision()
    v = torch.randn(70, 9, generator=torch.Generator().manual_seed(23))
    with ieee_fp32():
        assert torch.backends.cuda.matmul.fp32_precision == "ieee"
        assert torch.backends.mkldnn.matmul.fp32_precision == "ieee"
    assert (torch.backends.cuda.matmul.fp32_precision, torch.backends.mkldnn.matmul.fp32_precision) == (
        "tf32", "bf16")
    torch.testing.assert_close(gram(v), v.double() @ v.double().T, rtol=1e-6, atol=1e-5)
    conv = nn.Conv2d(2, 3, 3)
    x = torch.randn(4, 2, 6, 6)
    weight, _ = conv2d_per_example_grads(conv, x, torch.randn(4, 3, 4, 4))  # unfold + matmul, no conv
    assert weight.shape == (4, 3 * 2 * 9)
    assert (torch.backends.cuda.matmul.fp32_precision, torch.backends.mkldnn.matmul.fp32_precision) == (
        "tf32", "bf16")
