"""Reference tests of lightning_mem.alignment.kernels against independent computations on tiny seeded nets:
explicit Θ from ``torch.func.jacrev`` Jacobians, per-example gradients from an autograd loop."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call, jacrev

from lightning_mem.alignment import kernels
from lightning_mem.nets import ConvNet, ScaledMLP


def _mlp(activation: str = "sin", sigma: float = 0.7, seed: int = 0) -> ScaledMLP:
    torch.manual_seed(seed)
    net = ScaledMLP(input_shape=(1, 3, 4), num_classes=3, width=7, activation=activation, init_std=sigma)
    return net.double()


def _explicit_ntk(net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(B, k, B, k) Θ from the full Jacobian J (B, k, P): J Jᵀ."""
    params = {n: p.detach() for n, p in net.named_parameters()}
    jac = jacrev(lambda ps: functional_call(net, ps, (x,)))(params)  # name -> (B, k, *shape)
    B, k = x.shape[0], next(iter(jac.values())).shape[1]
    J = torch.cat([j.reshape(B, k, -1) for j in jac.values()], -1)
    return torch.einsum("icp,jdp->icjd", J, J)


def _explicit_loss_grads(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    rows = []
    for i in range(len(x)):
        net.zero_grad()
        F.cross_entropy(net(x[i : i + 1]), y[i : i + 1]).backward()
        rows.append(torch.cat([p.grad.reshape(-1) for p in net.parameters()]).clone())
    return torch.stack(rows)


@pytest.mark.parametrize("activation", ["sin", "relu", "tanh", "gelu"])
def test_mlp_ntk_matches_jacrev(activation: str) -> None:
    net = _mlp(activation)
    x = torch.randn(6, 1, 3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    ref = _explicit_ntk(net, x)  # (B, k, B, k)
    flat = x.flatten(1)
    summed = kernels.mlp_ntk(flat, net.hidden.weight, net.out.weight, net.act)
    torch.testing.assert_close(summed, torch.einsum("icjc->ij", ref), rtol=1e-10, atol=1e-10)
    per = kernels.mlp_ntk(flat, net.hidden.weight, net.out.weight, net.act, per_output=True)
    torch.testing.assert_close(per, ref, rtol=1e-10, atol=1e-10)
    # the W2² weighting matters: uniform weights over h give another kernel
    h = net.hidden.weight.shape[0]
    pre = flat @ net.hidden.weight.T
    a, d = net.act(pre), kernels.activation_derivative(net.act, pre)
    unweighted = 3 * a @ a.T + (flat @ flat.T) * (d @ d.T) * (net.out.weight**2).sum() / h
    assert (unweighted - summed).abs().max() > 1e-3


def test_jacobian_ntk_matches_jacrev_on_convnet() -> None:
    torch.manual_seed(0)
    net = ConvNet(input_shape=(1, 15, 15), num_classes=3, init_std=0.3).double()
    with torch.no_grad():  # nonzero biases: every parameter counts
        for m in (net.conv1, net.conv2, net.fc, net.out):
            m.bias.normal_(0, 0.1)
    x = torch.randn(4, 1, 15, 15, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    ref = _explicit_ntk(net, x)
    summed = torch.einsum("icjc->ij", ref)
    torch.testing.assert_close(kernels.jacobian_ntk(net, x), summed, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(kernels.jacobian_ntk(net, x, per_output=True), ref, rtol=1e-9, atol=1e-9)
    with pytest.raises(ValueError, match="probe of 4 examples exceeds max_examples=3"):
        kernels.jacobian_ntk(net, x, max_examples=3)


def test_jacobian_ntk_at_other_params_is_the_kernel_there() -> None:
    net, init = _mlp(seed=0), _mlp(seed=5)
    x = torch.randn(5, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    params0 = {n: p.detach() for n, p in init.named_parameters()}
    at_init = kernels.jacobian_ntk(net, x.reshape(5, 1, 3, 4), params=params0)
    ref = kernels.mlp_ntk(x, init.hidden.weight, init.out.weight, init.act)
    torch.testing.assert_close(at_init, ref, rtol=1e-10, atol=1e-10)
    now = kernels.mlp_ntk(x, net.hidden.weight, net.out.weight, net.act)
    assert kernels.kernel_distance(ref, now) > 1e-3  # Θ₀ used for Θ_t would read as 0


def test_loss_gradient_grams_match_autograd_loop() -> None:
    net = _mlp("relu")
    x = torch.randn(8, 1, 3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 0])
    G = _explicit_loss_grads(net, x, y)
    ref = G @ G.T
    logits = net(x).detach().requires_grad_()
    (g,) = torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), logits)
    closed = kernels.mlp_loss_gradient_gram(x.flatten(1), net.hidden.weight, net.out.weight, net.act, g)
    torch.testing.assert_close(closed, ref, rtol=1e-10, atol=1e-12)
    jac = kernels.jacobian_loss_gradient_gram(net, x, y, lambda z, t: F.cross_entropy(z, t, reduction="none"))
    torch.testing.assert_close(jac, ref, rtol=1e-10, atol=1e-12)


def test_class_stiffness_matrix_from_explicit_gradients() -> None:
    net = _mlp("sin")
    x = torch.randn(9, 1, 3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 0])
    G = _explicit_loss_grads(net, x, y)
    unit = G / G.norm(dim=1, keepdim=True)
    ref = torch.empty(3, 3, dtype=torch.float64)
    for a in range(3):
        for b in range(3):
            pairs = [(i, j) for i in range(9) for j in range(9) if y[i] == a and y[j] == b and i != j]
            vals = [float(unit[i] @ unit[j]) for i, j in pairs]
            ref[a, b] = sum(vals) / len(vals)
    S = kernels.class_stiffness_matrix(G @ G.T, y, 3)
    torch.testing.assert_close(S, ref, rtol=1e-12, atol=1e-12)
    diag, off = kernels.stiffness_summary(S)
    assert float(diag) == pytest.approx(float(ref.diagonal().mean()))
    assert float(off) == pytest.approx(float((ref.sum() - ref.diagonal().sum()) / 6))
    # a class with one example has no in-class pair: NaN, left out of the means
    S1 = kernels.class_stiffness_matrix((G @ G.T)[:4, :4], y[:4], 3)
    assert math.isnan(float(S1[1, 1])) and math.isnan(float(S1[2, 2])) and not math.isnan(float(S1[0, 0]))
    assert not math.isnan(float(kernels.stiffness_summary(S1)[0]))


def test_target_alignment_against_definition() -> None:
    g = torch.Generator().manual_seed(7)
    A = torch.randn(6, 6, dtype=torch.float64, generator=g)
    K = A @ A.T
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    Y = F.one_hot(y, 3).double()
    T = Y @ Y.T
    ref = (K * T).sum() / (K.norm() * T.norm())
    assert float(kernels.target_alignment(K, y, 3)) == pytest.approx(float(ref), rel=1e-12)
    H = torch.eye(6, dtype=torch.float64) - 1 / 6
    Kc, Tc = H @ K @ H, H @ T @ H
    refc = (Kc * Tc).sum() / (Kc.norm() * Tc.norm())
    assert float(kernels.target_alignment(K, y, 3, centered=True)) == pytest.approx(float(refc), rel=1e-12)
    assert float(kernels.target_alignment(T * 3.0, y, 3)) == pytest.approx(1.0)  # the ideal kernel


def test_distances_and_pattern_change() -> None:
    K = torch.tensor([[2.0, 1.0], [1.0, 3.0]], dtype=torch.float64)
    assert float(kernels.kernel_distance(K, 5 * K)) == pytest.approx(0.0, abs=1e-15)
    assert float(kernels.kernel_distance(K, -K)) == pytest.approx(2.0)
    w0 = torch.tensor([3.0, 4.0])
    assert float(kernels.weight_distance(w0, w0 + torch.tensor([0.0, 1.0]))) == pytest.approx(0.2)
    assert float(kernels.weight_distance(torch.zeros(2), torch.zeros(2))) == 0.0
    pre0 = torch.tensor([[-1.0, 0.5, 1.0, 4.0]])
    pre1 = torch.tensor([[1.0, 0.6, 2.0, 5.0]])
    # ReLU: only the first sign flips; sin: round(pre/π) is 0,0,0,1 then 0,0,1,2 -> the last two
    assert float(kernels.pattern_change(pre0, pre1, "relu")) == pytest.approx(0.25)
    assert float(kernels.pattern_change(pre0, pre1, "sin")) == pytest.approx(0.5)
    with pytest.raises(ValueError, match=r"shapes differ: \(1, 4\) vs \(1, 3\)"):
        kernels.pattern_change(pre0, pre1[:, :3], "relu")
